"""What `spin validate` admits, the real kube-apiserver admits as the objects the operator builds
from it (server-side dry runs of every rendered object); what it refuses, the CRD refuses too,
naming the field. A spec the apiserver would refuse only at its Job's create used to leave the run
retrying for ever (#20.2): tolerations, nodeSelector, resources and env are checked up front."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from spin_cluster.api import ApiError, path
from spin_operator.render import render_objects
from spin_operator.settings import DeploymentSettings
from spin_runtime.api.load import SpecError, validate_data
from tests.admission import NAMESPACE, Admission

REPO = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((REPO / "examples" / "spinrun-local.yaml").read_text())

#: (name, where in spec, value, the field a refusal must name or None when admitted)
CASES: list[tuple[str, str, Any, str | None]] = [
    ("toleration exists", "tolerations", [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}], None),
    ("toleration of every taint", "tolerations", [{"operator": "Exists"}], None),
    ("toleration for a while", "tolerations", [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                                                 "effect": "NoExecute", "tolerationSeconds": 60}], None),
    ("toleration equal", "tolerations", [{"key": "pool", "operator": "Equal", "value": "gpu-h100"}], None),
    ("tolerationSeconds without NoExecute", "tolerations",
     [{"key": "pool", "operator": "Equal", "value": "gpu", "effect": "NoSchedule", "tolerationSeconds": 30}], "spec.tolerations[0]"),
    ("value with Exists", "tolerations", [{"key": "pool", "operator": "Exists", "value": "gpu"}], "spec.tolerations[0]"),
    ("empty key without Exists", "tolerations", [{"operator": "Equal", "value": "gpu"}], "spec.tolerations[0]"),
    ("toleration key not a label key", "tolerations", [{"key": "gpu pool", "operator": "Exists"}], "spec.tolerations[0].key"),
    ("toleration value not a label value", "tolerations", [{"key": "pool", "value": "gpu pool!"}], "spec.tolerations[0].value"),
    ("node selector", "nodeSelector", {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb", "pool": ""}, None),
    ("node selector key not a label key", "nodeSelector", {"gpu pool": "a"}, "spec.nodeSelector"),
    ("node selector key with an empty name", "nodeSelector", {"example.com/": "a"}, "spec.nodeSelector"),
    ("node selector value not a label value", "nodeSelector", {"pool": "gpu pool"}, "spec.nodeSelector"),
    ("requests under limits", "training.resources", {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}, None),
    ("extended resource with its limit", "generation.resources",
     {"requests": {"example.com/fpga": 1}, "limits": {"example.com/fpga": 1}}, None),
    ("hugepages", "training.resources", {"requests": {"hugepages-2Mi": "64Mi", "memory": "1Gi"},
                                         "limits": {"hugepages-2Mi": "64Mi", "memory": "1Gi"}}, None),
    ("request above its limit", "training.resources", {"requests": {"memory": "8Gi"}, "limits": {"memory": "4Gi"}},
     "spec.training.resources"),
    ("resource name not a qualified name", "training.resources", {"requests": {"gpu memory": "1"}}, "spec.training.resources"),
    ("resource name neither standard nor extended", "training.resources", {"requests": {"gpus": "1"}}, "spec.training.resources"),
    ("resource in the kubernetes.io domain", "training.resources", {"requests": {"kubernetes.io/gpu": "1"}}, None),
    ("negative request", "generation.resources", {"requests": {"cpu": "-1"}}, "spec.generation.resources"),
    ("fractional extended resource", "generation.resources", {"limits": {"example.com/fpga": "500m"}}, "spec.generation.resources"),
    ("extended request without a limit", "generation.resources", {"requests": {"example.com/fpga": 1}}, "spec.generation.resources"),
    ("extended request unlike its limit", "generation.resources",
     {"requests": {"example.com/fpga": 1}, "limits": {"example.com/fpga": 2}}, "spec.generation.resources"),
    ("GPU request on a CPU step", "training.resources", {"requests": {"nvidia.com/gpu": 1}}, "spec.training"),
    ("env of the user's own", "env", [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "WANDB_MODE", "value": "offline"}], None),
    ("env twice", "env", [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "NCCL_DEBUG", "value": "WARN"}], "spec.env"),
    ("env the operator sets", "env", [{"name": "SPIN_RUN_UID", "value": "x"}], "spec.env"),
    ("env HOME the operator sets", "env", [{"name": "HOME", "value": "/home/me"}], "spec.env"),
    ("env Trainer reserves", "env", [{"name": "PET_NNODES", "value": "2"}], "spec.env"),
]

#: The same on a GPU training step: gpusPerNode 8, the operator adds nvidia.com/gpu: 8.
GPU_CASES: list[tuple[str, str, Any, str | None]] = [
    ("GPU request equal to gpusPerNode", "training.resources", {"requests": {"nvidia.com/gpu": 8}}, None),
    ("GPU limit of the user's own", "training.resources", {"limits": {"nvidia.com/gpu": 4}}, None),
    ("GPU request unlike gpusPerNode", "training.resources", {"requests": {"nvidia.com/gpu": 4}}, "spec.training"),
    ("fractional GPU", "training.resources", {"limits": {"nvidia.com/gpu": "0.5"}}, "spec.training.resources"),
]


def _spec_with(where: str, value: Any, gpu: bool) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["metadata"]["name"] = "admitted"
    if gpu:
        doc["spec"]["training"].update({"gpusPerNode": 8, "precision": "bf16"})
    node = doc["spec"]
    *parents, last = where.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = copy.deepcopy(value)
    return doc


def _refusals(admission: Admission, objs: list[dict[str, Any]]) -> list[str]:
    """What the apiserver says of each object in a dry-run create (nothing when all are admitted)."""
    out = []
    for obj in objs:
        group, _, version = obj["apiVersion"].rpartition("/")
        plural = {"PersistentVolumeClaim": "persistentvolumeclaims", "ConfigMap": "configmaps", "Job": "jobs",
                  "Service": "services"}[obj["kind"]]
        body = copy.deepcopy(obj)
        body["metadata"]["namespace"] = NAMESPACE
        try:
            admission.kube.api.request("POST", path(group, version, plural, NAMESPACE), body,
                                       params={"dryRun": "All", "fieldValidation": "Strict"})
        except ApiError as e:
            out.append(f"{obj['kind']} {obj['metadata']['name']}: {e.message}")
    return out


@pytest.mark.parametrize(("name", "where", "value", "field", "gpu"),
                         [(*c, False) for c in CASES] + [(*c, True) for c in GPU_CASES],
                         ids=[c[0] for c in CASES] + [c[0] for c in GPU_CASES])
def test_what_spin_validate_admits_the_apiserver_admits_as_objects(
    admission: Admission, name: str, where: str, value: Any, field: str | None, gpu: bool
) -> None:
    doc = _spec_with(where, value, gpu)
    try:
        run = validate_data(doc)
    except SpecError as e:
        assert field is not None, f"{name}: spin validate refuses a spec the apiserver admits: {e.problems}"
        assert any(p.startswith(field) for p in e.problems), e.problems
        crd = admission.problems(doc)
        assert crd, f"{name}: spin validate refuses it, the CRD admits it"
        return
    refused = _refusals(admission, render_objects(run, NAMESPACE, iteration=0, settings=DeploymentSettings()))
    assert not refused, f"{name}: spin validate admits it, the apiserver refuses its objects: {refused}"
    assert field is None, f"{name}: expected spin validate to refuse it at {field}"
    assert admission.problems(doc) == []


def _env_names(obj: Any) -> set[str]:
    """Every env variable name anywhere in an object (containers, a TrainJob's trainer.env)."""
    if isinstance(obj, dict):
        found = {e["name"] for e in obj.get("env", []) if isinstance(e, dict) and "name" in e}
        return found.union(*(_env_names(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(_env_names(v) for v in obj))
    return set()


@pytest.mark.parametrize("launcher", ["indexedjob", "pytorchjob", "trainjob"])
def test_every_variable_the_operator_sets_is_one_spec_env_may_not_set(launcher: str) -> None:
    """spec.env may not repeat a name the operator sets (a TrainJob's trainer.env is a map keyed
    by name): the reserved lists hold every name the builders write, on every launcher."""
    from spin_runtime.api.spec import OPERATOR_ENV, RESERVED_ENV, TRAINER_RESERVED_ENV

    doc = _spec_with("training", {**BASE["spec"]["training"], "nodes": 2, "launcher": launcher}, gpu=False)
    doc["spec"]["storage"] = {"newClaim": {"accessModes": ["ReadWriteMany"]}}
    doc["spec"]["hfTokenSecret"] = {"name": "hf", "key": "token"}
    doc["spec"]["env"] = [{"name": "NCCL_DEBUG", "value": "INFO"}]
    settings = DeploymentSettings(launchers_enabled={"pytorchjob": True, "trainjob": True})
    names = _env_names(render_objects(validate_data(doc), NAMESPACE, iteration=0, settings=settings))
    unreserved = names - set(RESERVED_ENV) - set(OPERATOR_ENV) - set(TRAINER_RESERVED_ENV) - {"NCCL_DEBUG"}
    assert unreserved == set()
