"""The pod phase and conditions the process kubelet reports."""

from __future__ import annotations

import pytest

from spin_cluster.kubelet.status import ContainerState, conditions, phase, terminated


def ended(code: int) -> ContainerState:
    c = ContainerState("c", "img")
    c.state = {"terminated": terminated(code, "t")}
    c.started = True
    return c


def running() -> ContainerState:
    c = ContainerState("c", "img")
    c.state = {"running": {"startedAt": "t"}}
    return c


@pytest.mark.parametrize(("policy", "containers", "expected"), [
    ("Never", [ended(0), ended(0)], "Succeeded"),
    ("Never", [ended(0), ended(1)], "Failed"),
    ("Never", [ended(1), running()], "Running"),
    ("OnFailure", [ended(1)], "Running"),
    ("OnFailure", [ended(0)], "Succeeded"),
    ("Always", [ended(0)], "Running"),
    ("Never", [ContainerState("c", "img")], "Pending"),
])
def test_phase_follows_the_restart_policy(policy: str, containers: list[ContainerState], expected: str) -> None:
    assert phase(policy, [], containers, initialized=True) == expected


def test_a_failed_init_container_fails_a_never_restarting_pod() -> None:
    assert phase("Never", [ended(2)], [ContainerState("c", "img")], initialized=False) == "Failed"
    assert phase("OnFailure", [ended(2)], [ContainerState("c", "img")], initialized=False) == "Pending"


def test_conditions_keep_their_transition_time_and_foreign_conditions() -> None:
    first = conditions([{"type": "DisruptionTarget", "status": "True"}], sandbox=True, initialized=True, ready=False)
    again = conditions(first, sandbox=True, initialized=True, ready=True)
    by_type = {c["type"]: c for c in again}
    assert by_type["DisruptionTarget"]["status"] == "True"
    assert by_type["Initialized"] == next(c for c in first if c["type"] == "Initialized")
    assert by_type["Ready"]["status"] == "True"
