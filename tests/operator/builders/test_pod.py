"""The pod template every step shares (builders/pod.py): restricted security, argument lists,
the token only by secretKeyRef, images from the spec or the deployment."""

from __future__ import annotations

import pytest

from spin_operator.settings import DeploymentSettings
from spin_runtime.launch import RUN_UID_ENV
from tests.operator.builders.cases import CASES, objects, pod_specs, stage_objects
from tests.operator.fixtures import UID


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_pod_is_restricted_and_uses_argument_lists(case: str) -> None:
    for obj in objects(case):
        for pod in pod_specs(obj):
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


def test_hf_token_only_as_secret_key_ref() -> None:
    for obj in objects("gpu-multi-node"):
        for pod in pod_specs(obj):
            tokens = [e for c in pod["containers"] for e in c["env"] if e["name"] == "HF_TOKEN"]
            assert tokens == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}]
            assert all(e["name"] != "HF_TOKEN" for c in pod["initContainers"] for e in c["env"])


def test_images_default_from_operator_env() -> None:
    d = DeploymentSettings.from_env({"SPIN_GENERATOR_IMAGE": "g:2", "SPIN_TRAINER_IMAGE": "t:2", "SPIN_IMAGE_PULL_POLICY": "Never"})
    assert (d.generator_image, d.trainer_image, d.pull_policy) == ("g:2", "t:2", "Never")
    assert DeploymentSettings.from_env({}) == DeploymentSettings()


def test_spec_images_win_over_the_deployments() -> None:
    pods = [p for o in objects("gpu-multi-node") for p in pod_specs(o)]
    images = {c["name"]: (c["image"], c["imagePullPolicy"]) for p in pods for c in p["containers"]}
    assert images["generate"] == ("my/gen:1", "Always") and images["train"] == ("my/train:1", "Always")
    defaults = {c["name"]: c["image"] for o in objects("cpu-single-node") for p in pod_specs(o) for c in p["containers"]}
    assert defaults["generate"] == "gen:test" and defaults["convert"] == "train:test"


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_pod_knows_its_runs_uid(case: str) -> None:
    for obj in objects(case):
        for pod in pod_specs(obj):
            for c in pod["containers"]:
                assert {"name": RUN_UID_ENV, "value": UID} in c["env"]


def test_pods_run_as_spec_pod_security_says_for_volumes_that_ignore_fs_group(monkeypatch: pytest.MonkeyPatch) -> None:
    default = stage_objects("cpu-single-node")[0]["spec"]["template"]["spec"]["securityContext"]
    assert (default["runAsUser"], default["runAsGroup"], default["fsGroup"]) == (65532, 65532, 65532)
    monkeypatch.setitem(CASES, "nfs", {"podSecurity": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}})
    for obj in stage_objects("nfs"):
        for spec in pod_specs(obj):
            sec = spec["securityContext"]
            assert (sec["runAsUser"], sec["runAsGroup"], sec["fsGroup"], sec["runAsNonRoot"]) == (1000, 1000, 1000, True)
