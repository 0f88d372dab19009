"""The operator image as the chart runs it: `spin-operator` inside the image, as uid 65532 with a
read-only root, drives a two-iteration SpinRun to Complete on the session's real control plane
(tests/kube.py; its process kubelet runs the Jobs' pods, here the instant steps); and the image
holds no compiler or sources."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.images.buildah import Container, image_config
from tests.kube import INSTANT_IMAGE, Kube
from tests.operator.e2e import E2E, e2e, run_body
from tests.reliability.real_cluster import OperatorProcess

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
INSTANT_REPOSITORY = INSTANT_IMAGE.rsplit(":", 1)[0]


def test_operator_image_config_matches_the_chart(images: dict[str, str]) -> None:
    cfg = image_config(images["operator"])
    values = yaml.safe_load((REPO / "charts" / "spin-operator" / "values.yaml").read_text())
    deployment = (REPO / "charts" / "spin-operator" / "templates" / "deployment.yaml").read_text()
    assert cfg["User"] == f"{values['podSecurityContext']['runAsUser']}:{values['podSecurityContext']['runAsGroup']}"
    assert cfg["Entrypoint"] == ["spin-operator"] and 'command: ["spin-operator"]' in deployment
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["HOME"] == "/tmp", "the chart mounts an emptyDir at /tmp under a read-only root"
    assert values["securityContext"]["readOnlyRootFilesystem"] is True


def test_operator_image_has_no_compiler_no_sources_and_no_build_leftovers(images: dict[str, str]) -> None:
    with Container(images["operator"]) as ctr:
        done = ctr.run(["sh", "-c", "for c in gcc cc c++ g++ clang ld as make; do command -v $c; done; "
                                    "ls -d /src /opt/spinrun/src /etc/pip.conf /wheels 2>/dev/null; true"])
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "", f"found in the operator image: {done.stdout.split()}"
        version = ctr.run(["python", "-c", "import kopf, spin_operator, spin_runtime; print(kopf.__version__)"])
        assert version.returncode == 0, version.stderr
        assert "torch" not in ctr.run(["python", "-m", "pip", "list"]).stdout, "the operator image has no ML library"


@pytest.fixture()
def c(kube: Kube) -> Iterator[E2E]:
    """A namespace of the test's own on the session's real control plane."""
    with e2e(kube) as run:
        yield run


def test_operator_in_its_image_drives_a_two_iteration_run_to_complete(images: dict[str, str], c: E2E, tmp_path: Path) -> None:
    """`spin-operator` from the operator image's own files (buildah, uid 65532, read-only root),
    as the chart's ServiceAccount with the chart's environment, drives a two-iteration run to
    Complete on the real control plane; the step images it gives the Jobs come from its
    container's environment (two tags of the instant image, whose steps the process kubelet runs)."""
    step_images = {"SPIN_GENERATOR_IMAGE": f"{INSTANT_REPOSITORY}:generator", "SPIN_TRAINER_IMAGE": f"{INSTANT_REPOSITORY}:trainer"}
    with Container(images["operator"]) as ctr:
        operator = OperatorProcess(c.kube, c.namespace, tmp_path / "operator.log", env=step_images, container=ctr)
        operator.start(timeout=180)
        try:
            c.create_run(run_body("img", {"iterations": 2}, instant=False))
            run = c.wait_phase("img", ("Complete", "Failed"), timeout=300)
            assert run["status"]["phase"] == "Complete", (run["status"], operator.tail())
        finally:
            operator.stop()
        assert operator.proc is not None and operator.proc.returncode == 0, (operator.proc.returncode, operator.tail())
    assert run["status"]["completedIterations"] == 2
    assert run["status"]["lastCheckpoint"]["path"] == "/data/runs/img/iter-1/model"
    jobs = c.jobs()
    assert sorted(jobs) == sorted(f"img-it{k}-{s}" for k in range(2) for s in ("gen", "convert", "train", "eval"))
    used = {ctr_["image"] for j in jobs.values() for ctr_ in j["spec"]["template"]["spec"]["containers"]}
    assert used == set(step_images.values()), "the operator read its environment inside the image"
    assert sorted(c.job_creations()) == sorted(jobs), "each Job created once, by the chart's ServiceAccount"
    assert "Traceback" not in operator.log.read_text(errors="replace")
