"""The specs the builder and launcher tests render, the objects each yields, and the golden-file
check. Regenerate golden files after an intended change with
`SPIN_UPDATE_GOLDEN=1 pytest tests/operator/builders tests/operator/launchers` and review the diff."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from spin_operator.builders.context import BuildContext
from spin_operator.builders.meta import RunRef
from spin_operator.builders.storage import persistent_volume_claim, spec_config_map
from spin_operator.launchers import step_objects
from spin_operator.render import dump_all
from spin_operator.settings import DeploymentSettings
from spin_runtime.api.spec import SpinRun
from spin_runtime.plan import stages
from tests.operator.fixtures import UID, make_body

SETTINGS = DeploymentSettings(generator_image="gen:test", trainer_image="train:test", pull_policy="IfNotPresent")

CASES: dict[str, dict[str, Any]] = {
    "cpu-single-node": {},
    "gpu-multi-node": {
        "generation": {"shards": 4, "parallelism": 2, "engine": "vllm", "tensorParallelSize": 2,
                       "resources": {"requests": {"cpu": "8", "memory": "64Gi"}}},
        "training": {"nodes": 2, "gpusPerNode": 8, "resources": {"limits": {"memory": "512Gi"}}},
        "storage": {"newClaim": None, "existingClaim": "shared-data", "subPath": "spin/runs"},
        "hfTokenSecret": {"name": "hf-token", "key": "token"},
        "queueName": "gpu-queue",
        "nodeSelector": {"nvidia.com/gpu.product": "H100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "training",
        "serviceAccountName": "spin-runner",
        "imagePullSecrets": [{"name": "regcred"}],
        "env": [{"name": "NCCL_DEBUG", "value": "WARN"}],
        "images": {"generator": "my/gen:1", "trainer": "my/train:1", "pullPolicy": "Always"},
        "suspend": True,
    },
    "pytorchjob": {"training": {"launcher": "pytorchjob", "nodes": 3, "gpusPerNode": 4},
                   "storage": {"newClaim": {"accessModes": ["ReadWriteMany"]}}},
    "trainjob": {"training": {"launcher": "trainjob", "nodes": 2, "gpusPerNode": 8,
                              "resources": {"requests": {"cpu": "32", "memory": "512Gi"}}},
                 "storage": {"newClaim": {"accessModes": ["ReadWriteMany"]}},
                 "hfTokenSecret": {"name": "hf-token"}, "queueName": "gpu-queue",
                 "nodeSelector": {"nvidia.com/gpu.product": "H100"}, "serviceAccountName": "spin-runner",
                 "priorityClassName": "training"},
    "synthetic-no-eval": {
        "syntheticData": [{"iteration": 0, "hub": "UCLA-AGI/SPIN_iter0"}],
        "evaluation": {"enabled": False},
        "training": {"nodes": 1, "gpusPerNode": 2},
    },
}


def run_of(case: str) -> tuple[SpinRun, RunRef]:
    """The case's SpinRun and the identity its children are owned by."""
    body = make_body("demo", CASES[case])
    if body["spec"]["storage"].get("newClaim") is None:
        body["spec"]["storage"].pop("newClaim", None)
    run = SpinRun.model_validate({"metadata": {"name": "demo", "namespace": "ns1"}, "spec": body["spec"]})
    return run, RunRef("demo", "ns1", UID, 3)


def context_of(case: str) -> BuildContext:
    """The build context of the case's first iteration, attempt 0."""
    run, ref = run_of(case)
    return BuildContext(ref, run.spec, run.spec.start_iteration, attempt=0, suspend=run.spec.suspend, settings=SETTINGS)


def storage_objects(case: str) -> list[dict[str, Any]]:
    """The PVC (a new claim only) and the first iteration's spec ConfigMap."""
    run, ref = run_of(case)
    pvc = persistent_volume_claim(ref, run.spec)
    return [*([pvc] if pvc else []), spec_config_map(ref, run.spec, run.spec.start_iteration)]


def stage_objects(case: str, *, training: bool | None = None) -> list[dict[str, Any]]:
    """The objects of the first iteration's stages: all, only training (True) or all but training (False)."""
    ctx = context_of(case)
    out: list[dict[str, Any]] = []
    for stage in stages.stages_for_iteration(ctx.spec, ctx.iteration):
        if training is None or (stage.name == "train") == training:
            out.extend(step_objects(ctx, stage))
    return out


def objects(case: str) -> list[dict[str, Any]]:
    """Everything the first iteration of the case creates, in creation order."""
    return storage_objects(case) + stage_objects(case)


def check_golden(path: Path, objs: list[dict[str, Any]]) -> None:
    """`objs` as YAML equals the golden file (rewritten with SPIN_UPDATE_GOLDEN=1)."""
    text = dump_all(objs)
    if os.environ.get("SPIN_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with SPIN_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{path} differs: review, then SPIN_UPDATE_GOLDEN=1 to accept"


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs inside a workload object (a Job's template, each PyTorchJob replica's)."""
    if obj["kind"] == "Job":
        return [obj["spec"]["template"]["spec"]]
    if obj["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    return []
