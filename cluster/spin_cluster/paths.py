"""Where the cluster keeps things: the build cache (binaries by version, Go's module and build
caches, shared by every checkout) and a cluster's state folder."""

from __future__ import annotations

import os
from pathlib import Path

#: Overrides the build cache (default: $SPIN_CACHE_DIR/cluster, else ~/.cache/spinrun/cluster).
CACHE_ENV = "SPIN_CLUSTER_CACHE"
#: The state folder of `make cluster` (default: ~/.local/state/spinrun/cluster).
STATE_ENV = "SPIN_CLUSTER_STATE"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("SPIN_CACHE_DIR") or "~/.cache/spinrun"
    return Path(base).expanduser() / "cluster"


def go_env() -> dict[str, str]:
    """Go's module and build caches, kept with the binaries (one place, reused by every build)."""
    root = cache_dir() / "go"
    return {"GOMODCACHE": str(root / "mod"), "GOCACHE": str(root / "build"), "GOPATH": str(root / "path")}


def bin_dir(key: str) -> Path:
    return cache_dir() / "bin" / key


def default_state_dir() -> Path:
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV]).expanduser()
    return Path("~/.local/state/spinrun/cluster").expanduser()
