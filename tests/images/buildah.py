"""Running commands inside the locally built images with buildah (no daemon; `podman run` cannot
start containers in this sandbox): a working container per image, and `buildah run` argv with
what a step pod's securityContext asks for — a uid, a read-only root filesystem (emulated:
the image's own folders bind-mounted read-only over themselves, /tmp a tmpfs), host folders
mounted, the host network.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

#: The uid/gid the images run as (the operator's pods: runAsUser/runAsGroup 65532).
UID = 65532
#: Top-level folders buildah itself mounts or writes in every run (left as they are).
RUNTIME_DIRS = {"dev", "proc", "sys", "run", "tmp"}
#: What builds the images (`make images`).
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_images.py"


def build_script() -> ModuleType:
    """scripts/build_images.py as a module (its image tags and pure helpers)."""
    if "build_images" not in sys.modules:
        spec = importlib.util.spec_from_file_location("build_images", SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["build_images"] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    return sys.modules["build_images"]


def unavailable() -> str | None:
    """Why the image tests cannot run here (None when they can)."""
    if shutil.which("buildah") is None:
        return "buildah is not installed (apt-get install buildah debootstrap podman; .ci/run does)"
    if os.geteuid() != 0:
        return "the image tests run buildah as root (rootless storage and uid mapping are not set up)"
    return None


def image_exists(ref: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True).returncode == 0


def image_config(ref: str) -> dict[str, Any]:
    """The OCI config of an image (User, Entrypoint, Cmd, Env, WorkingDir, Labels, ...)."""
    out = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout)["OCIv1"]["config"])


@dataclass(frozen=True)
class Volume:
    """A host path mounted into the container."""

    host: Path
    path: str
    read_only: bool = False


class Container:
    """A buildah working container of `image`; `argv()` builds `buildah run` command lines that
    run in it as a pod would. Use as a context manager (removed on exit)."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.name = ""
        self.root = Path()

    def __enter__(self) -> Container:
        out = subprocess.run(["buildah", "from", "--pull-never", self.image], capture_output=True, text=True, check=True)
        self.name = out.stdout.strip().splitlines()[-1]
        self.root = Path(subprocess.run(["buildah", "mount", self.name], capture_output=True, text=True,
                                        check=True).stdout.strip())
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["buildah", "rm", self.name], capture_output=True)

    def read_only_mounts(self, skip: Sequence[str] = ()) -> list[str]:
        """`--mount` options that make every folder of the image read-only (buildah run has no
        --read-only; only `/` itself stays writable, and only for root), except `skip`."""
        out = []
        for entry in sorted(self.root.iterdir()):
            if entry.name in RUNTIME_DIRS or f"/{entry.name}" in skip or entry.is_symlink() or not entry.is_dir():
                continue
            out += ["--mount", f"type=bind,src={entry},dst=/{entry.name},ro"]
        return out

    def argv(
        self,
        command: Sequence[str],
        *,
        user: str = f"{UID}:{UID}",
        env: Mapping[str, str] | None = None,
        volumes: Sequence[Volume] = (),
        read_only: bool = True,
        network_host: bool = False,
    ) -> list[str]:
        """`buildah run` of `command` (an empty command gives a prefix ending in `--`)."""
        argv = ["buildah", "run", "--isolation", "chroot", "--user", user]
        if network_host:
            argv += ["--network", "host"]
        if read_only:
            argv += self.read_only_mounts(skip=[v.path.rstrip("/") for v in volumes])
            if not any(v.path == "/tmp" for v in volumes):
                argv += ["--mount", "type=tmpfs,dst=/tmp,tmpfs-mode=1777"]
        for v in volumes:
            self._make_target(v)
            argv += ["-v", f"{v.host}:{v.path}{':ro' if v.read_only else ''}"]
        for key, value in (env or {}).items():
            argv += ["-e", f"{key}={value}"]
        return [*argv, self.name, "--", *command]

    def _make_target(self, v: Volume) -> None:
        """Create a mount's target in this container (not the image) first, as a container
        runtime does before it makes the root read-only (buildah cannot mkdir under a ro bind)."""
        target = self.root / v.path.lstrip("/")
        if v.host.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()

    def run(self, command: Sequence[str], *, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run `command` in the container (see `argv`); output captured, never raises on failure.
        buildah's chroot runner can fail to start the command at all on a loaded machine (`Close_Fd
        sealing memfd copy: Device or resource busy`, seen once in a CI run): nothing ran, so that
        start is tried again, once."""
        done = subprocess.run(self.argv(command, **kw), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 and "sealing memfd copy" in done.stderr:
            done = subprocess.run(self.argv(command, **kw), capture_output=True, text=True, timeout=timeout)
        return done
