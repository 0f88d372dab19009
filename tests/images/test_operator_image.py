"""The operator image as the chart runs it: `spin-operator` inside the image, as uid 65532 with a
read-only root, drives a two-iteration SpinRun on the tiny model to Complete against the
emulated API server while the host harness plays kubelet (tests/operator/harness.py, `real`
mode: the Jobs' commands run on the host); and the image holds no compiler or sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.images.buildah import UID, Container, Volume, image_config
from tests.operator.fixtures import make_body
from tests.operator.harness import OperatorCommand, cluster

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
KUBECONFIG = "/etc/spin-operator/kubeconfig"


def run_body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = make_body(name, spec)
    for k in ("uid", "generation", "resourceVersion"):
        body["metadata"].pop(k)
    return body


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


def test_operator_in_its_image_drives_a_two_iteration_run_to_complete(images: dict[str, str], tmp_path: Path) -> None:
    spec = {
        "iterations": 2,
        "generation": {"shards": 2, "maxNewTokens": 8, "batchSize": 8},
        "training": {"maxLength": 64, "maxPromptLength": 32, "maxSteps": 1, "perDeviceBatchSize": 2, "reportTo": []},
        "evaluation": {"maxSamples": 4},
    }
    with cluster(tmp_path, mode="real") as c, Container(images["operator"]) as ctr:
        prefix = ctr.argv(
            [],
            network_host=True,  # the emulator listens on the host's loopback
            volumes=[Volume(c.kubeconfig, KUBECONFIG, read_only=True)],
            env={"KUBECONFIG": KUBECONFIG, "SPIN_TRAINER_IMAGE": images["trainer"],
                 "SPIN_GENERATOR_IMAGE": images["generator"]},
        )
        assert prefix[-1] == "--" and f"{UID}:{UID}" in prefix
        operator = c.start_operator(prefix)
        assert isinstance(operator, OperatorCommand)
        c.create_run(run_body("img", spec))
        try:
            run = c.wait_phase("img", ("Complete", "Failed"), timeout=600)
        except AssertionError as e:
            raise AssertionError(f"{e}\noperator log:\n{operator.tail()}") from e
        assert run["status"]["phase"] == "Complete", (run["status"], c.kubelet.errors[-2:], operator.tail())
        assert run["status"]["completedIterations"] == 2
        assert run["status"]["lastCheckpoint"]["path"] == "/data/runs/img/iter-1/model"
        jobs = c.jobs()
        assert sorted(jobs) == sorted(f"img-it{k}-{s}" for k in range(2) for s in ("gen", "convert", "train", "eval"))
        images_used = {ctr_["image"] for j in jobs.values() for ctr_ in j["spec"]["template"]["spec"]["containers"]}
        assert images_used == {images["generator"], images["trainer"]}, "the operator read its env inside the image"
        assert (tmp_path / "data" / "runs" / "img" / "iter-1" / "DONE").exists()
        agents = {r["agent"] for r in c.emulator.requests()}
        assert agents & {"kopf", "spin-operator"}, agents
        c.stop_operator()
        assert operator.proc is not None and operator.proc.returncode == 0, (operator.proc.returncode, operator.tail())
