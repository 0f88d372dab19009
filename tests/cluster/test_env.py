"""A container's environment and command line, as the kubelet makes them."""

from __future__ import annotations

from typing import Any

import pytest

from spin_cluster.kubelet.env import ConfigError, command_line, container_env, expand, service_env

POD: dict[str, Any] = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"a": "b"}},
    "spec": {"nodeName": "n0", "serviceAccountName": "sa", "hostname": "h"},
}


def env_of(container: dict[str, Any], data: dict[tuple[str, str], dict[str, str]] | None = None) -> dict[str, str]:
    data = data or {}
    return container_env(POD, container, image_env={"PATH": "/bin"}, services=service_env("10.0.0.1", 443),
                         lookup=lambda kind, name: data.get((kind, name)), pod_ip="10.1.0.5", host_ip="10.1.0.1",
                         node_allocatable={"cpu": "8", "memory": "1Gi"})


def test_dollar_references_expand_and_double_dollars_escape() -> None:
    assert expand("$(A)-$(B)-$$(A)-$(MISSING)", {"A": "1", "B": "2"}) == "1-2-$(A)-$(MISSING)"


def test_env_sources_in_the_kubelets_order() -> None:
    c = {"name": "c", "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
         "env": [{"name": "X", "value": "x"}, {"name": "Y", "value": "$(X)y"},
                 {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                 {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                 {"name": "LAB", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['a']"}}},
                 {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                 {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                 {"name": "PATH", "value": "/mine"}]}
    env = env_of(c, {("configmap", "cm"): {"K": "v"}, ("secret", "s"): {"k": "secret"}})
    assert env["CM_K"] == "v" and env["Y"] == "xy" and env["NS"] == "ns" and env["IP"] == "10.1.0.5"
    assert env["LAB"] == "b" and env["S"] == "secret" and env["CPU"] == "8" and env["PATH"] == "/mine"
    assert env["KUBERNETES_SERVICE_HOST"] == "10.0.0.1" and env["KUBERNETES_SERVICE_PORT"] == "443"
    assert env["HOSTNAME"] == "h"


def test_a_missing_reference_is_a_config_error_unless_optional() -> None:
    ref = {"name": "S", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}
    with pytest.raises(ConfigError, match='secret "nope" not found'):
        env_of({"name": "c", "env": [ref]})
    ref["valueFrom"]["secretKeyRef"]["optional"] = True
    assert "S" not in env_of({"name": "c", "env": [ref]})


def test_the_command_is_needed_and_expanded() -> None:
    assert command_line({"name": "c", "command": ["spin", "$(X)"], "args": ["--a"]}, {"X": "run"}) == ["spin", "run", "--a"]
    with pytest.raises(ConfigError, match="sets no command"):
        command_line({"name": "c", "args": ["x"]}, {})
