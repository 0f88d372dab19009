"""The image tests' session setup: the images are built (or found up to date) once per session by
scripts/build_images.py, the script `make images` runs; without buildah the tests are skipped."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.images.buildah import SCRIPT, build_script, unavailable

REPO = Path(__file__).resolve().parents[2]
BUILD_LOG = REPO / ".cache" / "images" / "build.log"


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
