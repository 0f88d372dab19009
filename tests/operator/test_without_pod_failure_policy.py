"""What a run loses on a cluster whose Job controller ignores the Jobs' podFailurePolicy (the chart
supports clusters from 1.29, where an administrator could still turn JobPodFailurePolicy off; the
real 1.37 control plane of the e2e suite always honours it). Such a Job controller fails the Job
with BackoffLimitExceeded for any pod that fails: a preempted pod and a bad-spec exit code look
like any other failure, and the operator can only count a retry. These pin that cost, which
docs/reliability.md states, on the decisions the operator makes (tests/operator/sim.py)."""

from __future__ import annotations

from spin_runtime import errors
from tests.operator.fixtures import make_body
from tests.operator.sim import Sim


def _fail_without_policy(sim: Sim, job: str, exit_code: int) -> None:
    """The Job failed as a Job controller without podFailurePolicy reports it, whatever the pod's
    exit code or disruption (the operator's Jobs have backoffLimit 0: one pod failure fails them)."""
    sim.finish(job, ok=False, reason="BackoffLimitExceeded")
    sim.job(job)["status"]["conditions"][0]["message"] = f"Job has reached the specified backoff limit (pod exit {exit_code})"


def _attempts(sim: Sim, job: str, exit_code: int, limit: int) -> int:
    """Fail every attempt of `job` until the run fails; the attempts made."""
    attempts = 0
    for _ in range(4 * (limit + 2)):
        if sim.status.get("phase") == "Failed":
            break
        if ("Job", job) in sim.objects and not (sim.job(job).get("status") or {}).get("conditions"):
            attempts += 1
            _fail_without_policy(sim, job, exit_code)
        sim.tick()
    return attempts


def test_each_preempted_pod_costs_a_retry_where_the_pod_failure_policy_is_ignored() -> None:
    """A preemption (exit 137, DisruptionTarget ignored) of convert, then two of training, with
    backoffLimit 1: convert spends its one retry, training its one retry and then fails the run;
    with the policy honoured none of them would have cost a retry."""
    sim = Sim(make_body(spec={"iterations": 1, "backoffLimit": 1}))
    sim.tick()
    sim.finish("demo-it0-gen")
    sim.tick()
    _fail_without_policy(sim, "demo-it0-convert", 137)
    sim.tick()  # deleted; its retry once it is gone
    sim.tick()
    sim.finish("demo-it0-convert")
    sim.tick()
    assert _attempts(sim, "demo-it0-train", 137, limit=1) == 2
    st = sim.status
    assert st["phase"] == "Failed" and "train of iteration 0 failed 2 time(s)" in st["message"], st
    retries = {s["step"]: s.get("retries", 0) for s in st["iterations"][0]["steps"]}
    assert retries == {"generate": 0, "convert": 1, "train": 1}, retries


def test_a_bad_spec_exit_code_is_retried_where_the_pod_failure_policy_is_ignored() -> None:
    """Conversion exits 78 (a spec no retry can fix): honoured, the policy fails the Job with
    reason PodFailurePolicy and the run fails at once; ignored, every retry of backoffLimit 3 is
    spent first (4 attempts) before the run fails."""
    sim = Sim(make_body(spec={"backoffLimit": 3}))
    sim.tick()
    sim.finish("demo-it0-gen")
    sim.tick()
    assert _attempts(sim, "demo-it0-convert", errors.EXIT_BAD_SPEC, limit=3) == 4
    st = sim.status
    assert st["phase"] == "Failed" and "convert of iteration 0 failed 4 time(s)" in st["message"], st


def test_a_bad_spec_exit_code_fails_at_once_where_the_pod_failure_policy_is_honoured() -> None:
    """The same exit with the policy honoured (the real control plane's case, pinned end to end by
    tests/reliability/test_real_cluster_faults.py::test_a_bad_spec_exit_code_fails_at_once)."""
    sim = Sim(make_body(spec={"backoffLimit": 3}))
    sim.tick()
    sim.finish("demo-it0-gen")
    sim.tick()
    sim.finish("demo-it0-convert", ok=False, reason="PodFailurePolicy")
    sim.tick()
    st = sim.status
    assert st["phase"] == "Failed" and "a retry cannot fix" in st["message"], st
    assert st["iterations"][0]["steps"][1].get("retries", 0) == 0
