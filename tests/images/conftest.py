"""The image tests' session setup: the images are built (or found up to date) once per session by
scripts/build_images.py, the script `make images` runs; without buildah the tests are skipped."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.images.buildah import unavailable

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build_images.py"
BUILD_LOG = REPO / ".cache" / "images" / "build.log"


def build_script() -> ModuleType:
    """scripts/build_images.py as a module (for its image tags)."""
    spec = importlib.util.spec_from_file_location("build_images", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_images", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """{operator, trainer, generator: local image tag}, built when missing or out of date (a
    fresh machine: bases ~2 min, images ~3 min, generator base ~6 min; see images/README.md)."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    BUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(BUILD_LOG, "w") as log:
        done = subprocess.run([sys.executable, str(SCRIPT)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, timeout=3600)
    if done.returncode != 0:
        pytest.fail(f"scripts/build_images.py exited {done.returncode} after {time.monotonic() - t0:.0f} s; "
                    f"its log, {BUILD_LOG}, ends:\n{BUILD_LOG.read_text()[-3000:]}")
    return {name: image.tag for name, image in build_script().IMAGES.items()}
