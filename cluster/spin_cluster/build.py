"""Builds the cluster's binaries from the Go module proxy into the cache, once per version: a
finished build is a folder renamed into place (never half a binary), a lock keeps two builds of
one version from racing, and a cached build is reused by every checkout."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from spin_cluster import paths
from spin_cluster.components import COMPONENTS, KUBERNETES, Component, version_ldflags

#: Written last into a build folder: the build finished.
COMPLETE = ".complete"


class BuildError(RuntimeError):
    """A build failed; the message ends with the tail of Go's output."""


def go_binary() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if found is None:
        raise BuildError("the cluster is built from source with Go >= 1.26: put `go` on PATH (e.g. /usr/local/go/bin)")
    return found


def built(component: Component) -> Path | None:
    """The folder of a finished build of `component`'s pinned version, or None."""
    folder = paths.bin_dir(component.key)
    return folder if (folder / COMPLETE).exists() else None


def ensure(component: Component, log: Path | None = None) -> Path:
    """The folder holding `component`'s binaries, building them first if the cache lacks them."""
    done = built(component)
    if done is not None:
        return done
    target = paths.bin_dir(component.key)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".lock-{component.key}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another build of this version finishes first
        done = built(component)
        if done is not None:
            return done
        _build(component, target, log)
    return target


#: Set to keep Go's build cache after a build (it only speeds up a rebuild after a pin changes).
KEEP_GOCACHE_ENV = "SPIN_CLUSTER_KEEP_GOCACHE"


def ensure_all(components: Iterable[Component] = COMPONENTS, log: Path | None = None) -> dict[str, Path]:
    """binary name → path, for every binary of `components`. After building, Go's build cache
    (about 4.5 GB for these modules) is emptied unless SPIN_CLUSTER_KEEP_GOCACHE is set; the
    module cache stays."""
    out: dict[str, Path] = {}
    built_any = False
    for component in components:
        built_any |= built(component) is None
        folder = ensure(component, log)
        out.update({name: folder / name for name, _ in component.binaries})
    if built_any and not os.environ.get(KEEP_GOCACHE_ENV):
        subprocess.run([go_binary(), "clean", "-cache"], env={**os.environ, **paths.go_env()}, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def module_source(component: Component) -> Path:
    """The upstream module's source at the pinned version in Go's module cache (its manifests:
    CRDs, RBAC, webhook configurations), downloaded through the proxy when the cache lacks it."""
    escaped = "".join(f"!{c.lower()}" if c.isupper() else c for c in component.module)
    folder = Path(paths.go_env()["GOMODCACHE"]) / f"{escaped}@{component.version}"
    if not folder.is_dir():
        env = {**os.environ, **paths.go_env(), "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly"}
        proc = subprocess.run([go_binary(), "mod", "download", f"{component.module}@{component.version}"],
                              cwd=component.go_dir, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not folder.is_dir():
            raise BuildError(f"downloading {component.module}@{component.version} failed: {proc.stderr[-2000:]}")
    return folder


def _build(component: Component, target: Path, log: Path | None) -> None:
    started = time.monotonic()
    print(f"spin-cluster: building {component.name} {component.version} from the Go module proxy "
          f"(once; cached in {target})", file=sys.stderr, flush=True)
    env = {**os.environ, **paths.go_env(), "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly"}
    ldflags = ["-s", "-w", *(version_ldflags(component.version) if component is KUBERNETES else [])]
    staging = Path(tempfile.mkdtemp(prefix=f".{component.key}-", dir=target.parent))
    out_path = log or staging / "build.log"
    try:
        for name, package in component.binaries:  # one at a time: Go's build cache shares the compiling
            cmd = [go_binary(), "build", "-trimpath", "-ldflags", " ".join(ldflags), "-o", str(staging / name), package]
            with open(out_path, "ab") as out:
                proc = subprocess.run(cmd, cwd=component.go_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                tail = Path(out_path).read_text(errors="replace")[-3000:]
                raise BuildError(f"building {name} {component.version} failed (exit {proc.returncode}):\n{tail}")
        (staging / "build-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
        (staging / COMPLETE).write_text(component.version + "\n")
        if target.exists():  # an unfinished leftover of an interrupted build
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    print(f"spin-cluster: built {component.name} {component.version} in {time.monotonic() - started:.0f} s",
          file=sys.stderr, flush=True)
