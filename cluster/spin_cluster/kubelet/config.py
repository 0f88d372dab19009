"""The process kubelet's configuration (state/kubelet.json): its nodes, and how an image runs here.
There are no image files: every image runs on the host's root (an overlay of it), its command found
on the image's PATH, which starts with the project's environment (and, for an image matched by a
pattern, folders of the test's own). The registry has every image except those its `registry` file
lists as not pushed (yet): pulling one fails as a registry's missing tag does."""

from __future__ import annotations

import fnmatch
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The file (in the cluster's state folder) listing the image tags the registry lacks.
REGISTRY_FILE = "registry-unpushed.json"
#: Label and value of the nodes whose pods the process kubelet runs (kwok fakes the others).
NODE_LABEL = "spin.dev/kubelet"


@dataclass
class NodeConfig:
    name: str
    capacity: dict[str, str] = field(default_factory=lambda: {
        "cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8", "pods": "110", "ephemeral-storage": "200Gi"})
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)
    #: the port of this node's kubelet API (logs), on the pods' gateway address
    port: int = 0


@dataclass
class ImageConfig:
    """Pattern (fnmatch over the image reference) → folders put first on PATH and extra variables."""

    pattern: str
    path: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: host folders the image carries: {"source": host path, "target": path in the container}
    mounts: list[dict[str, str]] = field(default_factory=list)


@dataclass
class KubeletConfig:
    nodes: list[NodeConfig]
    images: list[ImageConfig] = field(default_factory=list)
    #: the project environment's bin folder (spin, spin-operator, torchrun, python)
    venv_bin: str = field(default_factory=lambda: str(Path(sys.executable).parent))
    #: the host folders every image is made of (the environment, its Python, the project's
    #: sources of an editable install): bound again over any volume that would hide them (a
    #: checkout under /tmp, where pods mount an emptyDir)
    image_paths: list[str] = field(default_factory=lambda: sorted(
        {sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parents[3])}))
    #: a JSON file listing image references the registry does not have (yet); read at each pull,
    #: so writing it "pushes" or "deletes" a tag while the kubelet runs ("" = every image is there)
    registry: str = ""

    def unpushed(self) -> set[str]:
        """The image references a pull cannot find now."""
        if not self.registry:
            return set()
        try:
            return {str(ref) for ref in json.loads(Path(self.registry).read_text())}
        except (OSError, ValueError, TypeError):
            return set()

    def image(self, image: str) -> ImageConfig | None:
        """The first image configuration whose pattern matches `image`."""
        return next((img for img in self.images if fnmatch.fnmatchcase(image, img.pattern)), None)

    def image_env(self, image: str) -> dict[str, str]:
        """The variables an image's containers start with (PATH first)."""
        img = self.image(image)
        path = [*(img.path if img else []), self.venv_bin, BASE_PATH]
        return {"PATH": ":".join(path), **(img.env if img else {})}

    def image_mounts(self, image: str) -> list[dict[str, str]]:
        img = self.image(image)
        return list(img.mounts) if img else []

    def traversable(self) -> list[str]:
        """Host folders a container's user must be able to enter to run the environment's Python."""
        python = Path(sys.executable)
        return sorted({str(Path(self.venv_bin)), str(python.resolve().parent), sys.base_prefix, sys.prefix})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> KubeletConfig:
        doc: dict[str, Any] = json.loads(path.read_text())
        return cls(nodes=[NodeConfig(**n) for n in doc["nodes"]], images=[ImageConfig(**i) for i in doc["images"]],
                   venv_bin=doc["venv_bin"], image_paths=doc["image_paths"], registry=doc.get("registry", ""))
