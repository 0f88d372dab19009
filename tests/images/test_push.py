"""`make push-images`: the operator image pushed with buildah to a real registry (Debian's
docker-registry, the CNCF distribution registry, on loopback), under the name and tag the chart
derives from images.registry and images.tag, and the digest the script prints is the one the
registry serves."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from spin_cluster.procs import free_port
from tests.images.buildah import SCRIPT, build_script

pytestmark = pytest.mark.slow

MANIFESTS = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


@pytest.fixture()
def registry(tmp_path: Path) -> Iterator[str]:
    """A registry on loopback (plain HTTP), its storage in tmp_path; yields host:port."""
    if shutil.which("docker-registry") is None:
        build_script().ensure_tools({"docker-registry": "docker-registry"})
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the registry did not start"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_push_images_puts_the_operator_image_where_the_chart_looks_for_it(
    images: dict[str, str], registry: str
) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "operator", "--push", f"{registry}/ml", "--tag", "t1",
                           "--insecure"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"--set images.registry={registry}/ml --set images.tag=t1" in done.stdout
    printed = done.stdout.split("--set images.operator.tag=", 1)[1].split()[0]

    tags = json.load(urllib.request.urlopen(f"http://{registry}/v2/ml/spinrun-operator/tags/list", timeout=10))
    assert tags == {"name": "ml/spinrun-operator", "tags": ["t1"]}
    request = urllib.request.Request(f"http://{registry}/v2/ml/spinrun-operator/manifests/t1", method="HEAD",
                                     headers={"Accept": MANIFESTS})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["Docker-Content-Digest"] == printed
