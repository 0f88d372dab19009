"""The cluster's components: which Go module builds which binary at which version (the committed
go.mod files under cluster/go are the one source of the versions)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

GO_DIR = Path(__file__).resolve().parents[1] / "go"


@dataclass(frozen=True)
class Component:
    """One Go module of ours (cluster/go/<name>) and the binaries built from it."""

    name: str
    #: the upstream module whose version names the build
    module: str
    #: binary name → package path
    binaries: tuple[tuple[str, str], ...]

    @property
    def go_dir(self) -> Path:
        return GO_DIR / self.name

    @property
    def version(self) -> str:
        return required_version(self.go_dir / "go.mod", self.module)

    @property
    def key(self) -> str:
        """The cache key of a build: the module version and a digest of our go.mod and go.sum
        (a changed pin is a new build, never a stale binary)."""
        import hashlib

        digest = hashlib.sha256()
        for f in ("go.mod", "go.sum"):
            digest.update((self.go_dir / f).read_bytes())
        return f"{self.name}-{self.version}-{digest.hexdigest()[:12]}"


KUBERNETES = Component(
    "kubernetes",
    "k8s.io/kubernetes",
    (
        ("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"),
        ("kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager"),
        ("kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler"),
        ("kubectl", "k8s.io/kubernetes/cmd/kubectl"),
    ),
)
ETCD = Component("etcd", "go.etcd.io/etcd/server/v3", (("etcd", "go.etcd.io/etcd/server/v3"),))
KWOK = Component("kwok", "sigs.k8s.io/kwok", (("kwok", "sigs.k8s.io/kwok/cmd/kwok"),
                                              ("kwok-stages", "spinrun.dev/cluster/kwok/stages")))

#: Kueue's controller manager, run only by the tests that need a real Kueue (tests/kueue.py).
KUEUE = Component("kueue", "sigs.k8s.io/kueue", (("kueue", "sigs.k8s.io/kueue/cmd/kueue"),))

#: JobSet at the version Trainer's go.mod requires (tests/cluster checks that the two pins agree).
JOBSET = Component("jobset", "sigs.k8s.io/jobset", (("jobset", "sigs.k8s.io/jobset"),))
TRAINER = Component("trainer", "github.com/kubeflow/trainer/v2",
                    (("trainer-controller-manager", "github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager"),))

COMPONENTS = (ETCD, KUBERNETES, KWOK, KUEUE, JOBSET, TRAINER)


@cache
def required_version(go_mod: Path, module: str) -> str:
    """The version `go_mod` requires of `module` (`require M vX.Y.Z`, alone or in a block)."""
    text = go_mod.read_text()
    m = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if not m:
        raise ValueError(f"{go_mod} does not require {module}")
    return m.group(1)


def version_ldflags(version: str) -> list[str]:
    """The `-X` flags of kubernetes' hack/lib/version.sh, so that `--version` and `/version` say
    `version` (without them they say v0.0.0-master, and clients that parse it break)."""
    m = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", version)
    if not m:
        raise ValueError(f"not a release version: {version}")
    values = {"gitVersion": version, "gitMajor": m.group(1), "gitMinor": m.group(2), "gitTreeState": "clean",
              "buildDate": "1970-01-01T00:00:00Z"}
    flags = []
    for package in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        flags += [f"-X '{package}.{key}={value}'" for key, value in values.items()]
    return flags
