"""Golden-file and invariant tests of the child-object builders (resources*.py, render.py).

Regenerate the golden files after an intended change with
`SPIN_UPDATE_GOLDEN=1 pytest tests/operator/test_resources.py` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from spin_operator import resources as res
from spin_operator.render import dump_all, render_objects, render_yaml
from spin_operator.resources_training import train_command

from spin_runtime.api.spec import SpinRun
from tests.operator.fixtures import UID, make_body

GOLDEN = Path(__file__).parent / "golden"
DEFAULTS = res.OperatorDefaults(generator_image="gen:test", trainer_image="train:test", pull_policy="IfNotPresent")

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
    "synthetic-no-eval": {
        "syntheticData": [{"iteration": 0, "hub": "UCLA-AGI/SPIN_iter0"}],
        "evaluation": {"enabled": False},
        "training": {"nodes": 1, "gpusPerNode": 2},
    },
}


def _run(case: str) -> tuple[SpinRun, res.RunRef]:
    body = make_body("demo", CASES[case])
    body["spec"] = {k: v for k, v in body["spec"].items()}
    if body["spec"]["storage"].get("newClaim") is None:
        body["spec"]["storage"].pop("newClaim", None)
    run = SpinRun.model_validate({"metadata": {"name": "demo", "namespace": "ns1"}, "spec": body["spec"]})
    return run, res.RunRef("demo", "ns1", UID, 3)


def _objects(case: str) -> list[dict[str, Any]]:
    run, ref = _run(case)
    objs: list[dict[str, Any]] = []
    pvc = res.persistent_volume_claim(ref, run.spec)
    if pvc:
        objs.append(pvc)
    k = run.spec.start_iteration
    objs.append(res.spec_config_map(ref, run.spec, k))
    ctx = res.BuildContext(ref, run.spec, k, attempt=0, suspend=run.spec.suspend, defaults=DEFAULTS)
    for step in res.step_names(run.spec, k):
        objs.extend(res.step_objects(ctx, step))
    return objs


@pytest.mark.parametrize("case", sorted(CASES))
def test_builders_match_golden_files(case: str) -> None:
    text = dump_all(_objects(case))
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("SPIN_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with SPIN_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{path} differs: review, then SPIN_UPDATE_GOLDEN=1 to accept"


def _walk_pods(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "Job":
        return [obj["spec"]["template"]["spec"]]
    if obj["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    return []


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_pod_is_restricted_and_uses_argument_lists(case: str) -> None:
    for obj in _objects(case):
        for pod in _walk_pods(obj):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            for c in pod["containers"] + pod["initContainers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"] == {"drop": ["ALL"]}
                assert isinstance(c["command"], list) and all(isinstance(a, str) for a in c["command"])
                assert c["command"][0] in ("spin", "torchrun")
                assert "-c" not in c["command"], "no shell strings"
                assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_children_are_owned_labelled_and_names_fit(case: str) -> None:
    for obj in _objects(case):
        meta = obj["metadata"]
        assert len(meta["name"]) + len("-999-abcde") <= 63
        assert meta["ownerReferences"] == [res.owner_reference(res.RunRef("demo", "ns1", UID))]
        assert meta["labels"][res.LABEL_RUN] == "demo"
        assert meta["labels"][res.LABEL_MANAGED_BY] == "spinrun"


def test_hf_token_only_as_secret_key_ref() -> None:
    objs = _objects("gpu-multi-node")
    for obj in objs:
        for pod in _walk_pods(obj):
            tokens = [e for c in pod["containers"] for e in c["env"] if e["name"] == "HF_TOKEN"]
            assert tokens == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}]
            assert all(e["name"] != "HF_TOKEN" for c in pod["initContainers"] for e in c["env"])


def test_generation_job_is_indexed_with_per_index_retries() -> None:
    gen = next(o for o in _objects("gpu-multi-node") if o["metadata"]["name"].endswith("-gen"))
    spec = gen["spec"]
    assert spec["completionMode"] == "Indexed"
    assert (spec["completions"], spec["parallelism"]) == (4, 2)
    assert spec["backoffLimitPerIndex"] == 2 and spec["maxFailedIndexes"] == 0
    assert "backoffLimit" not in spec
    assert spec["suspend"] is True
    assert gen["metadata"]["annotations"][res.ANNOTATION_SUSPENDED_BY] == "spinrun"
    assert gen["metadata"]["labels"][res.LABEL_QUEUE] == "gpu-queue"
    c = spec["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "--shard" not in c["command"] and c["command"][:2] == ["spin", "generate"]


def test_cpu_generation_requests_no_gpu() -> None:
    gen = next(o for o in _objects("cpu-single-node") if o["metadata"]["name"].endswith("-gen"))
    assert "nvidia.com/gpu" not in str(gen)


def test_multi_node_training_wires_torchrun_to_pod_zero() -> None:
    objs = _objects("gpu-multi-node")
    svc = next(o for o in objs if o["kind"] == "Service")
    train = next(o for o in objs if o["kind"] == "Job" and o["metadata"]["name"].endswith("-train"))
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert train["spec"]["template"]["spec"]["subdomain"] == svc["metadata"]["name"]
    assert (train["spec"]["completions"], train["spec"]["parallelism"]) == (2, 2)
    assert train["spec"]["backoffLimit"] == 0
    cmd = train["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:7] == ["torchrun", "--nnodes", "2", "--nproc_per_node", "8", "--master_addr", "demo-it0-train-0.demo-it0-train"]
    assert cmd[cmd.index("-m") + 1 : cmd.index("-m") + 3] == ["spin_runtime.cli", "train"]
    env = train["spec"]["template"]["spec"]["containers"][0]["env"]
    rank = next(e for e in env if e["name"] == "PET_NODE_RANK")
    assert "job-completion-index" in rank["valueFrom"]["fieldRef"]["fieldPath"]
    # the selector matches the pod labels
    assert svc["spec"]["selector"].items() <= train["spec"]["template"]["metadata"]["labels"].items()


def test_single_cpu_node_trains_without_torchrun() -> None:
    run, ref = _run("cpu-single-node")
    assert train_command(res.BuildContext(ref, run.spec, 0)) == ["spin", "train", "--run-dir", "/data/runs/demo", "--iteration", "0"]


def test_images_default_from_operator_env() -> None:
    d = res.OperatorDefaults.from_env({"SPIN_GENERATOR_IMAGE": "g:2", "SPIN_TRAINER_IMAGE": "t:2", "SPIN_IMAGE_PULL_POLICY": "Never"})
    assert (d.generator_image, d.trainer_image, d.pull_policy) == ("g:2", "t:2", "Never")
    assert res.OperatorDefaults.from_env({}) == res.OperatorDefaults()


def test_spec_config_map_round_trips() -> None:
    run, ref = _run("gpu-multi-node")
    cm = res.spec_config_map(ref, run.spec, 0)
    assert res.spec_from_config_map(cm) == run.spec


def test_render_lists_every_iteration_and_filters_one() -> None:
    run, _ = _run("cpu-single-node")
    names = [o["metadata"]["name"] for o in render_objects(run, "ns1")]
    assert names[0] == "demo-data"
    assert {"demo-it0-gen", "demo-it1-eval", "demo-it1-spec"} <= set(names)
    only = yaml.safe_load_all(render_yaml(run, "ns1", iteration=1))
    assert all(o["metadata"]["name"].startswith("demo-it1-") for o in only)
    with pytest.raises(ValueError, match="--iteration 7"):
        render_objects(run, "ns1", iteration=7)
