"""The Kubeflow Trainer v2 launcher (launchers/trainjob.py): golden file, the fields Trainer
v2.3.0 defines, restricted pods through runtimePatches, state read back, suspension, availability."""

from __future__ import annotations

from pathlib import Path

from spin_operator.builders import meta
from spin_operator.launchers.trainjob import TrainJobLauncher
from tests.operator.builders.cases import check_golden, stage_objects
from tests.operator.fixtures import UID

GOLDEN = Path(__file__).parent / "golden" / "trainjob"
LAUNCHER = TrainJobLauncher()


def _trainjob() -> dict:
    (obj,) = stage_objects("trainjob", training=True)
    return obj


def test_trainjob_matches_golden_file() -> None:
    check_golden(GOLDEN / "trainjob.yaml", [_trainjob()])


def test_trainjob_references_the_runtime_and_runs_spin_train_on_every_node() -> None:
    obj = _trainjob()
    assert (obj["apiVersion"], obj["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert set(obj["spec"]) == {"runtimeRef", "trainer", "runtimePatches", "suspend"}
    assert obj["spec"]["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                         "kind": "ClusterTrainingRuntime"}
    trainer = obj["spec"]["trainer"]
    assert set(trainer) == {"image", "command", "env", "numNodes", "numProcPerNode", "resourcesPerNode"}
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["command"][:4] == ["spin", "torchrun", "-m", "spin_runtime.cli"] and "train" in trainer["command"]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    env = {e["name"]: e for e in trainer["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    assert env["SPIN_RUN_UID"]["value"] == UID and env["PET_RDZV_CONF"]["value"] == "timeout=1800"


def test_trainer_pods_are_restricted_labelled_and_mount_the_run_volume() -> None:
    obj = _trainjob()
    (patch,) = obj["spec"]["runtimePatches"]
    assert patch["manager"] == "spin.dev/spin-operator"
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["labels"] == meta.labels("demo", 0, "train")
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = spec["containers"]
    assert container["name"] == "node"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert {v["name"] for v in spec["volumes"]} == {"data", "spec", "tmp", "dshm"}
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "H100"} and spec["serviceAccountName"] == "spin-runner"
    assert "priorityClassName" not in spec  # no field of a runtime patch: the runtime's priority class applies


def test_trainjob_is_owned_and_queued() -> None:
    m = _trainjob()["metadata"]
    assert m["ownerReferences"] == [meta.owner_reference(meta.RunRef("demo", "ns1", UID))]
    assert m["labels"][meta.LABEL_QUEUE] == "gpu-queue" and m["labels"][meta.LABEL_STEP] == "train"


def test_state_suspension_and_availability() -> None:
    from spin_operator.settings import DeploymentSettings

    obj = {**_trainjob(), "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    js = LAUNCHER.read_state(obj)
    assert js.complete and js.kind == "TrainJob" and js.iteration == 0 and js.step == "train"
    failed = {**obj, "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}}
    assert LAUNCHER.read_state(failed).failed_condition and LAUNCHER.read_state(failed).reason == "DeadlineExceeded"
    assert LAUNCHER.suspend_patch(True)["spec"] == {"suspend": True}
    gone = LAUNCHER.availability(DeploymentSettings(), served=False)
    assert gone is not None and gone.reason == "LauncherUnavailable" and "trainer.kubeflow.org/v1alpha1 TrainJob" in gone.message
    off = LAUNCHER.availability(DeploymentSettings(launchers_enabled={"trainjob": False}), served=True)
    assert off is not None and off.reason == "LauncherDisabled" and "SPIN_TRAINJOB_ENABLED=false" in off.message
