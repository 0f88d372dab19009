"""The Kubeflow PyTorchJob launcher (launchers/pytorchjob.py): golden file, its state read back,
its suspend patch and its availability rules."""

from __future__ import annotations

from pathlib import Path

from spin_operator.builders import meta
from spin_operator.launchers.pytorchjob import PyTorchJobLauncher
from spin_operator.settings import DeploymentSettings
from tests.operator.builders.cases import check_golden, stage_objects

GOLDEN = Path(__file__).parent / "golden" / "pytorchjob"
LAUNCHER = PyTorchJobLauncher()


def test_pytorchjob_matches_golden_file() -> None:
    check_golden(GOLDEN / "pytorchjob.yaml", stage_objects("pytorchjob", training=True))


def test_master_and_workers_run_torchrun_configured_by_the_training_operator() -> None:
    (job,) = stage_objects("pytorchjob", training=True)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 2)
    assert job["spec"]["nprocPerNode"] == "4"
    c = replicas["Master"]["template"]["spec"]["containers"][0]
    assert c["name"] == "pytorch" and c["command"][:4] == ["spin", "torchrun", "-m", "spin_runtime.cli"]


def test_state_and_suspension_are_read_from_run_policy() -> None:
    obj = {"kind": "PyTorchJob", "apiVersion": "kubeflow.org/v1",
           "metadata": {"name": "x", "labels": {meta.LABEL_ITERATION: "1", meta.LABEL_STEP: "train"}},
           "spec": {"runPolicy": {"suspend": True}},
           "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "OOM", "message": "m"}]}}
    js = LAUNCHER.read_state(obj)
    assert js.failed_condition and not js.complete and js.suspended and js.reason == "OOM" and js.kind == "PyTorchJob"
    assert LAUNCHER.suspend_patch(False)["spec"] == {"runPolicy": {"suspend": False}}


def test_availability_names_the_switch_and_the_missing_crd() -> None:
    assert LAUNCHER.availability(DeploymentSettings(), served=True) is None
    assert LAUNCHER.availability(DeploymentSettings(), served=None) is None
    gone = LAUNCHER.availability(DeploymentSettings(), served=False)
    assert gone is not None and gone.reason == "LauncherUnavailable" and "kubeflow.org/v1 PyTorchJob" in gone.message
    off = LAUNCHER.availability(DeploymentSettings(launchers_enabled={"pytorchjob": False}), served=True)
    assert off is not None and off.reason == "LauncherDisabled" and "SPIN_PYTORCHJOB_ENABLED=false" in off.message
