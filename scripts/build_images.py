"""Build the spinrun container images on this machine, with no daemon and no registry: buildah
builds images/*.Dockerfile unchanged, on local bases made with debootstrap instead of pulled.

`python scripts/build_images.py` (what `make images` and the image tests run):

1. installs buildah, debootstrap and podman with apt-get when one is missing (needs root);
2. makes the local bases, each once (kept while the image exists; `--rebuild-bases` remakes them):
   - `localhost/spinrun-base:bookworm`: Debian bookworm minbase + python3/venv/pip from the
     machine's own Debian mirror, stand-in for `python:3.11-slim-bookworm`;
   - `localhost/spinrun-torch-cpu:2.13.0`: that + the CPU torch 2.13.0 wheel the host's pip
     resolves (stand-in for the CUDA `pytorch/pytorch` image);
   - `localhost/spinrun-vllm-cpu:0.31.0`: that + PyPI's vLLM 0.31.0 wheel and its dependencies,
     less the CUDA-only torchvision/torchaudio/torchcodec (stand-in for `vllm/vllm-openai`; vLLM's
     CUDA kernels cannot run here, so `spin generate` takes its transformers engine);
3. builds `localhost/spinrun-operator:local`, `localhost/spinrun-trainer:cpu`
   (INSTALL_FLASH_ATTN=false) and `localhost/spinrun-generator:cpu` from those bases;
4. with `--push REGISTRY` (`make push-images REGISTRY=...`), pushes them as
   REGISTRY/spinrun-<image>:<commit> and prints the helm values that install them.

An image is labelled with a hash of everything it is built from (Dockerfile, build context,
build arguments, base image id) and is rebuilt only when that hash changes, so a second run is a
no-op. pip inside the builds reaches package indexes the way the host's pip does: the host's
`pip config list` is written to a pip.conf mounted at /etc/pip.conf during each RUN, with every
local folder or file it names mounted read-only at the same path (nothing in the repository
names a host). Measured sizes and build times are printed and written to
`.cache/images/report.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".cache" / "images"
REPORT = WORK / "report.json"

TOOLS = {"buildah": "buildah", "debootstrap": "debootstrap", "podman": "podman"}  # command → Debian package
SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
TORCH_VERSION = "2.13.0"
VLLM_VERSION = "0.31.0"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INPUTS_LABEL = "dev.spinrun.inputs"
#: The build context the Dockerfiles COPY from (the root .dockerignore lets only these through).
CONTEXT = ("pyproject.toml", "README.md", "spin_runtime", "operator")

BASE = "localhost/spinrun-base:bookworm"
TORCH_BASE = f"localhost/spinrun-torch-cpu:{TORCH_VERSION}"
VLLM_BASE = f"localhost/spinrun-vllm-cpu:{VLLM_VERSION}"


@dataclass(frozen=True)
class Image:
    """One image of images/: its Dockerfile, local tag and the build arguments that put it on a local base."""

    name: str
    dockerfile: str
    tag: str
    base: str
    build_args: dict[str, str] = field(default_factory=dict)


IMAGES: dict[str, Image] = {
    "operator": Image("operator", "images/operator.Dockerfile", "localhost/spinrun-operator:local", BASE,
                      {"PYTHON_IMAGE": BASE}),
    "trainer": Image("trainer", "images/trainer.Dockerfile", "localhost/spinrun-trainer:cpu", TORCH_BASE,
                     {"PYTORCH_IMAGE": TORCH_BASE, "INSTALL_FLASH_ATTN": "false"}),
    "generator": Image("generator", "images/generator.Dockerfile", "localhost/spinrun-generator:cpu", VLLM_BASE,
                       {"VLLM_IMAGE": VLLM_BASE}),
}


class BuildError(RuntimeError):
    """A step of the build failed; the message says which and what to change."""


def log(msg: str) -> None:
    print(f"[build_images] {msg}", flush=True)


def run(argv: Sequence[str], *, capture: bool = False, quiet: bool = False, stdin: IO[bytes] | None = None,
        cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command (its output goes to ours, or is returned with `capture`, or dropped with
    `quiet`); on failure raise BuildError naming it."""
    stdout = subprocess.PIPE if capture else subprocess.DEVNULL if quiet else None
    done = subprocess.run(list(argv), stdin=stdin, stdout=stdout, cwd=cwd, env=env)
    if done.returncode != 0:
        raise BuildError(f"`{' '.join(argv[:6])} ...` exited {done.returncode}")
    return done.stdout.decode() if capture else ""


# --------------------------------------------------------------------------- tools


def ensure_tools(tools: dict[str, str] = TOOLS) -> None:
    """apt-get install the Debian packages of these commands (buildah, debootstrap and podman)
    when missing."""
    missing = sorted({pkg for cmd, pkg in tools.items() if shutil.which(cmd) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise BuildError(f"{', '.join(missing)} missing and not root: run `apt-get install -y {' '.join(missing)}` as root")
    log(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], env=env)
    run(["apt-get", "install", "-y", "-q", *missing], env=env)


# --------------------------------------------------------------------------- host settings


def debian_mirror(sources: Iterable[Path] | None = None) -> str:
    """The URI of the machine's apt source that serves the plain `bookworm` suite (its Debian
    mirror), from /etc/apt/sources.list.d/*.sources (deb822) and /etc/apt/sources.list."""
    if sources is None:
        root = Path("/etc/apt")
        sources = [*sorted((root / "sources.list.d").glob("*.sources")), *sorted((root / "sources.list.d").glob("*.list")),
                   root / "sources.list"]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(_deb822_fields(stanza))
                if "deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split() \
                        and fields.get("enabled", "yes").lower() != "no":
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    raise BuildError(f"no apt source for the Debian suite {SUITE!r} in /etc/apt: add one (debootstrap needs a mirror)")


def _deb822_fields(stanza: str) -> Iterable[tuple[str, str]]:
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, value = line.split(":", 1)
        yield key.strip().lower(), value.strip()


def host_pip_settings(listing: str) -> dict[str, dict[str, str]]:
    """`pip config list` output (`section.key='value'` lines; `:env:` = PIP_* variables, which
    win over files) as {section: {key: value}}, the environment's settings put under [global]."""
    files: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for line in listing.splitlines():
        m = re.match(r"^([^.=]+)\.([^=]+)=(.*)$", line.strip())
        if not m:
            continue
        section, key, value = m.group(1), m.group(2), m.group(3).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if section == ":env:":
            env[key] = value
        else:
            files.setdefault(section, {})[key] = value
    files.setdefault("global", {}).update(env)
    return files


def local_paths(settings: dict[str, dict[str, str]]) -> list[Path]:
    """The host paths pip settings name (find-links folders, file:// indexes, cert, constraint
    files) that must be visible inside a build at the same path. A local index is mounted with
    its parent, where a PEP 503 tree keeps the files its pages link to (`../../files/...`)."""
    out: set[Path] = set()
    for values in settings.values():
        for key, value in values.items():
            for word in value.split():
                url = urlparse(word)
                if url.scheme == "file":
                    p = Path(url.path)
                    out.add(p.parent if key in ("index-url", "extra-index-url") else p)
                elif url.scheme == "" and word.startswith("/"):
                    out.add(Path(word))
    return sorted(p for p in out if p.exists())


Mount = tuple[Path, Path]  # (host path, path inside the build)


def pip_mounts() -> list[Mount]:
    """What gives a build the host's pip settings: the host's `pip config list` as a pip.conf
    (written to .cache/images/pip.conf) at /etc/pip.conf, and the local paths it names."""
    listing = run([sys.executable, "-m", "pip", "config", "list"], capture=True)
    settings = host_pip_settings(listing)
    WORK.mkdir(parents=True, exist_ok=True)
    conf = WORK / "pip.conf"
    conf.write_text("".join(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) for section, kv in settings.items()))
    return [(conf, Path("/etc/pip.conf")), *((p, p) for p in local_paths(settings))]


def volume_args(mounts: Iterable[Mount]) -> list[str]:
    return [a for src, dst in mounts for a in ("-v", f"{src}:{dst}:ro")]


@contextlib.contextmanager
def working_container(image: str) -> Iterator[tuple[str, Path]]:
    """(name, root folder on the host) of a buildah working container of `image`, removed afterwards."""
    name = run(["buildah", "from", "--pull-never", image], capture=True).strip().splitlines()[-1]
    try:
        yield name, Path(run(["buildah", "mount", name], capture=True).strip())
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True)


def remove_mountpoints(root: Path, base_root: Path, targets: Iterable[Path]) -> list[Path]:
    """Delete from `root` the empty files and folders buildah 1.28 leaves behind as the targets
    of RUN -v mounts (and the parents it made for them): those the base (`base_root`) lacks."""
    stale: set[Path] = set()
    for target in targets:
        p = target
        while p != Path("/") and not os.path.lexists(base_root / p.relative_to("/")):
            stale.add(p)
            p = p.parent
    removed = []
    for p in sorted(stale, key=lambda p: len(p.parts), reverse=True):  # children first
        here = root / p.relative_to("/")
        if here.is_file() and not here.is_symlink() and here.stat().st_size == 0:
            here.unlink()
        elif here.is_dir() and not here.is_symlink() and not any(here.iterdir()):
            here.rmdir()
        else:
            continue
        removed.append(p)
    return removed


def drop_mountpoints(tag: str, base: str, targets: Sequence[Path]) -> None:
    """Re-commit `tag` without the empty mount targets its build left (one whiteout-only layer)."""
    with working_container(tag) as (ctr, root), working_container(base) as (_, base_root):
        if remove_mountpoints(root, base_root, targets):
            run(["buildah", "commit", "--quiet", "--format", "docker", ctr, tag], quiet=True)


# --------------------------------------------------------------------------- images in the store


def image_id(ref: str) -> str | None:
    done = subprocess.run(["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref],
                          capture_output=True, text=True)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def image_label(ref: str, key: str) -> str | None:
    done = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    labels = json.loads(done.stdout)["OCIv1"]["config"].get("Labels") or {}
    return labels.get(key)


def image_size(ref: str) -> int:
    """Uncompressed size in bytes (what `buildah images` shows, rounded)."""
    return int(run(["podman", "image", "inspect", "--format", "{{.Size}}", ref], capture=True).strip())


def human(n: float) -> str:
    """Bytes as `buildah images` shows them (decimal units)."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


# --------------------------------------------------------------------------- bases


def make_debian_base(tag: str = BASE) -> None:
    """debootstrap a minbase bookworm with python3 + venv + pip and import it as `tag`."""
    mirror = debian_mirror()
    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=WORK) as tmp:
        root = Path(tmp) / "rootfs"
        log(f"debootstrap {SUITE} from {mirror}")
        run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(root), mirror],
            quiet=True)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (root / cache).glob("*"):
                if f.is_file():
                    f.unlink()
        # pip inside the images verifies TLS against the same roots as the host's pip
        if HOST_CA_BUNDLE.is_file():
            shutil.copyfile(HOST_CA_BUNDLE, root / HOST_CA_BUNDLE.relative_to("/"))
        python = root / "usr/local/bin/python"
        python.unlink(missing_ok=True)
        python.symlink_to("/usr/bin/python3")
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        run(["podman", "import", "--change", f"ENV=PATH={DEFAULT_PATH}", "--change", 'CMD=["/bin/bash"]', "-", tag],
            stdin=tar.stdout, quiet=True)
        if tar.wait() != 0:
            raise BuildError(f"tar of the debootstrapped root {root} failed")


def torch_wheel() -> Path:
    """The torch wheel the host's pip resolves for torch==2.13.0 (this machine: the local CPU
    build), copied once into .cache/images/wheels; SPIN_TORCH_WHEEL names another file."""
    given = os.environ.get("SPIN_TORCH_WHEEL")
    if given:
        return Path(given)
    dest = WORK / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "download", "-q", f"torch=={TORCH_VERSION}", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.11", "--dest", str(dest)])
    found = sorted(dest.glob(f"torch-{TORCH_VERSION}*.whl"))
    if not found:
        raise BuildError(f"pip download torch=={TORCH_VERSION} left no wheel in {dest}")
    cpu = [w for w in found if "+cpu" in w.name]
    if not cpu:
        log(f"warning: {found[0].name} is not a CPU build; the trainer image will carry CUDA libraries")
    return (cpu or found)[0]


def derive_base(frm: str, tag: str, script: str, mounts: Sequence[Mount] = ()) -> None:
    """`tag` = `frm` + one shell command run as root in it (buildah from / run / commit)."""
    mounts = [*pip_mounts(), *mounts]
    with working_container(frm) as (ctr, root), working_container(frm) as (_, base_root):
        run(["buildah", "run", "--isolation", "chroot", "--network", "host", *volume_args(mounts), ctr,
             "--", "/bin/sh", "-ec", script])
        remove_mountpoints(root, base_root, [dst for _, dst in mounts])
        run(["buildah", "commit", "--quiet", "--format", "docker", ctr, tag], quiet=True)


def make_torch_base() -> None:
    wheel = torch_wheel()
    derive_base(BASE, TORCH_BASE,
                f"python3 -m pip install --no-cache-dir --break-system-packages /wheels/{wheel.name}"
                " && python3 -c 'import torch; print(\"torch\", torch.__version__)'",
                [(wheel.parent, Path("/wheels"))])


#: PyPI's builds of these are linked against CUDA torch and fail to load on the CPU torch (a
#: broken torchvision makes transformers fail to import any model); text generation needs none.
CUDA_ONLY_EXTENSIONS = ("torchvision", "torchaudio", "torchcodec")


def make_vllm_base() -> None:
    derive_base(TORCH_BASE, VLLM_BASE,
                f"python3 -m pip install --no-cache-dir --break-system-packages vllm=={VLLM_VERSION}"
                f" && python3 -m pip uninstall -y --break-system-packages {' '.join(CUDA_ONLY_EXTENSIONS)}"
                " && python3 -c 'import torch, vllm; from transformers import LlamaForCausalLM;"
                " print(\"vllm\", vllm.__version__, \"torch\", torch.__version__)'")


BASES = {BASE: make_debian_base, TORCH_BASE: make_torch_base, VLLM_BASE: make_vllm_base}
BASE_OF = {BASE: None, TORCH_BASE: BASE, VLLM_BASE: TORCH_BASE}


def ensure_base(tag: str, rebuild: bool, timings: dict[str, float]) -> None:
    """Make base `tag` (and the bases under it) unless it exists."""
    parent = BASE_OF[tag]
    if parent:
        ensure_base(parent, rebuild, timings)
    if image_id(tag) and not (rebuild and tag not in timings):
        return
    log(f"making base {tag}")
    t0 = time.monotonic()
    BASES[tag]()
    timings[tag] = time.monotonic() - t0
    log(f"base {tag}: {timings[tag]:.0f} s, {human(image_size(tag))}")


# --------------------------------------------------------------------------- images


def inputs_hash(image: Image) -> str:
    """sha256 of what `image` is built from: Dockerfile, context files, build args, base id, this script."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update((REPO / image.dockerfile).read_bytes())
    h.update(json.dumps(image.build_args, sort_keys=True).encode())
    h.update((image_id(image.base) or "").encode())
    for top in CONTEXT:
        path = REPO / top
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            rel = f.relative_to(REPO)
            if "__pycache__" in rel.parts or f.suffix == ".pyc" or any(p.endswith(".egg-info") for p in rel.parts):
                continue
            h.update(str(rel).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_image(image: Image, force: bool) -> float | None:
    """buildah bud `image` unless an image with the same inputs hash is there; seconds taken, or None when skipped."""
    digest = inputs_hash(image)
    if not force and image_label(image.tag, INPUTS_LABEL) == digest:
        log(f"{image.tag} is up to date ({INPUTS_LABEL}={digest})")
        return None
    args = [f"--build-arg={k}={v}" for k, v in image.build_args.items()]
    log(f"building {image.tag} from {image.dockerfile} ({' '.join(args)})")
    t0 = time.monotonic()
    before = image_id(image.tag)
    mounts = pip_mounts()
    # docker format: OCI image configs have no SHELL, and the Dockerfiles' RUNs rely on pipefail
    run(["buildah", "bud", "--format", "docker", "--isolation", "chroot", "--network", "host", "--pull-never",
         "--layers=false", "--force-rm",
         "-f", image.dockerfile, "-t", image.tag, f"--label={INPUTS_LABEL}={digest}", *args, *volume_args(mounts), "."],
        cwd=REPO)
    built = image_id(image.tag)
    drop_mountpoints(image.tag, image.base, [dst for _, dst in mounts])
    for old in {before, built} - {image_id(image.tag), None}:  # now untagged: free their layers
        subprocess.run(["buildah", "rmi", old], capture_output=True)
    took = time.monotonic() - t0
    log(f"{image.tag}: built in {took:.0f} s, {human(image_size(image.tag))}")
    return took


def write_report(built: dict[str, float | None], bases: dict[str, float]) -> dict[str, object]:
    """Merge this run's measurements into .cache/images/report.json (earlier ones are kept for skipped images)."""
    report: dict[str, dict[str, object]] = json.loads(REPORT.read_text()) if REPORT.is_file() else {}
    for tag, seconds in bases.items():
        report[tag] = {"kind": "base", "seconds": round(seconds, 1)}
    for name, seconds in built.items():
        tag = IMAGES[name].tag
        entry = report.get(tag, {"kind": "image"})
        if seconds is not None:
            entry["seconds"] = round(seconds, 1)
        report[tag] = entry
    for tag in report:
        if image_id(tag):
            report[tag]["bytes"] = image_size(tag)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    return report


# --------------------------------------------------------------------------- push


def release_tag(names: Sequence[str]) -> str:
    """The tag `--push` gives the images: the commit they were built from, and for a tree with
    uncommitted changes also the images' inputs hash (a tag is never reused for other contents,
    which nodes with pullPolicy IfNotPresent would keep running)."""
    commit = run(["git", "rev-parse", "--short=12", "HEAD"], capture=True, cwd=REPO).strip()
    if not run(["git", "status", "--porcelain", "--untracked-files=no"], capture=True, cwd=REPO).strip():
        return commit
    inputs = hashlib.sha256("".join(inputs_hash(IMAGES[n]) for n in sorted(names)).encode()).hexdigest()[:8]
    return f"{commit}-dirty-{inputs}"


def pushed_ref(registry: str, name: str, tag: str) -> str:
    """Where image `name` goes: <registry>/spinrun-<name>:<tag>, the names the chart derives from
    images.registry and images.tag."""
    return f"{registry.rstrip('/')}/spinrun-{name}:{tag}"


def push_command(image: Image, ref: str, digest_file: Path, insecure: bool) -> list[str]:
    """buildah push of a local image to `ref` in a registry, writing the pushed manifest's digest."""
    tls = ["--tls-verify=false"] if insecure else []
    return ["buildah", "push", *tls, "--digestfile", str(digest_file), image.tag, f"docker://{ref}"]


def install_hint(registry: str, tag: str, digests: dict[str, str]) -> str:
    """The helm flags that install the chart with the pushed images (by tag, or pinned by digest)."""
    lines = ["install the chart with these images:",
             "  helm install spin-operator charts/spin-operator -n spinrun-system --create-namespace \\",
             f"    --set images.registry={registry.rstrip('/')} --set images.tag={tag}"]
    if digests:
        pins = " ".join(f"--set images.{name}.tag={digest}" for name, digest in digests.items())
        lines += ["or pinned by digest (the tag may be pushed again; a digest cannot change):", f"    {pins}"]
    return "\n".join(lines)


def push(names: Sequence[str], registry: str, tag: str | None, insecure: bool) -> str:
    """Push the built images to `registry` as spinrun-<name>:<tag>; returns the install hint."""
    tag = tag or release_tag(names)
    digests: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            ref = pushed_ref(registry, name, tag)
            digest_file = Path(tmp) / f"{name}.digest"
            log(f"pushing {IMAGES[name].tag} to {ref}")
            run(push_command(IMAGES[name], ref, digest_file, insecure))
            digests[name] = digest_file.read_text().strip()
            log(f"{ref}: {digests[name]}")
    return install_hint(registry, tag, digests)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help=f"images to build (default: all of {', '.join(IMAGES)})")
    p.add_argument("--force", action="store_true", help="rebuild the images even when up to date")
    p.add_argument("--rebuild-bases", action="store_true", help="remake the local base images too")
    p.add_argument("--push", metavar="REGISTRY",
                   help="then push them as REGISTRY/spinrun-<image>:<tag> (e.g. registry.example.com:5000/ml) and "
                        "print the helm values that install them")
    p.add_argument("--tag", help="tag of the pushed images (default: the commit, plus a hash of the inputs when "
                                 "the tree has uncommitted changes)")
    p.add_argument("--insecure", action="store_true", help="push over plain HTTP (a registry without TLS)")
    args = p.parse_args(argv)
    names = args.images or list(IMAGES)
    unknown = sorted(set(names) - set(IMAGES))
    if unknown:
        p.error(f"unknown image(s) {', '.join(unknown)}: choose from {', '.join(IMAGES)}")
    try:
        ensure_tools()
        bases: dict[str, float] = {}
        for name in names:
            ensure_base(IMAGES[name].base, args.rebuild_bases, bases)
        built = {name: build_image(IMAGES[name], args.force) for name in names}
        report = write_report(built, bases)
        hint = push(names, args.push, args.tag, args.insecure) if args.push else ""
    except BuildError as e:
        print(f"build_images: {e}", file=sys.stderr)
        return 1
    for tag, entry in report.items():
        seconds = entry.get("seconds")
        log(f"{tag:40s} {human(float(entry.get('bytes', 0))):>9s}  {'' if seconds is None else f'{seconds:.0f} s'}")
    if hint:
        print(hint, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
