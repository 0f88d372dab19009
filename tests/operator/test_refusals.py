"""What a refused action does to the run (reconcile/refusals.py): a lasting refusal fails the
run once with the API's message; a passing one keeps it waiting and warns once."""

from __future__ import annotations

import json

import pytest

from spin_operator.builders.meta import ANNOTATION_ATTEMPT
from spin_operator.reconcile.actions import Create
from spin_operator.reconcile.conditions import is_terminal
from spin_operator.reconcile.refusals import (
    IN_THE_WAY,
    REFUSED,
    RETRYING,
    Refusal,
    after_refusal,
    in_the_way,
    refusal_of,
)
from tests.operator.fixtures import make_body
from tests.operator.sim import Sim

NOW = "2026-01-01T12:00:00Z"


def _first_pass() -> tuple[Sim, Create]:
    sim = Sim(make_body())
    d = sim.tick()
    job = next(a for a in d.actions if isinstance(a, Create) and a.kind == "Job")
    return sim, job


@pytest.mark.parametrize(("code", "message", "lasting"), [
    (422, 'Job.batch "demo-it0-gen" is invalid: spec.template.spec.tolerations[0].operator: Invalid value', True),
    (400, "bad request", True),
    (403, 'jobs.batch is forbidden: User "system:serviceaccount:spin:spin-operator" cannot create', True),
    (403, 'admission webhook "policy.example.com" denied the request', True),
    (403, 'jobs.batch "demo-it0-gen" is forbidden: exceeded quota: objects, requested: count/jobs.batch=1', False),
    (429, "too many requests", False),
    (404, 'namespaces "ns1" not found', False),
    (500, "etcdserver: request timed out", False),
])
def test_which_refusals_no_retry_can_change(code: int, message: str, lasting: bool) -> None:
    assert Refusal(code, "", message).lasting is lasting


def test_refusal_reads_the_status_message_of_the_body() -> None:
    body = json.dumps({"kind": "Status", "code": 422, "reason": "Invalid", "message": "spec.x: Invalid value"})
    assert refusal_of(422, "Unprocessable Entity", body) == Refusal(422, "Unprocessable Entity", "spec.x: Invalid value")
    assert refusal_of(500, "Internal Server Error", "<html>oops</html>").message == "<html>oops</html>"
    assert refusal_of(503, "Service Unavailable", None).message == "Service Unavailable"


def test_a_lasting_refusal_fails_the_run_once_with_the_apis_message() -> None:
    sim, job = _first_pass()
    decision = sim.decisions[-1]
    refused = after_refusal(decision, job, Refusal(422, "Invalid", "spec.template.spec.tolerations[0]: bad"), {}, NOW, 1)
    st = refused.status_document()
    assert st["phase"] == "Failed" and st["reason"] == REFUSED
    assert "create Job demo-it0-gen (422 Invalid: spec.template.spec.tolerations[0]: bad)" in st["message"]
    assert is_terminal(refused.status)
    assert refused.actions == [] and refused.requeue_after is None
    reasons = [r for _, r, _ in refused.events]
    assert "StepStarted" not in reasons and "ClaimCreated" not in reasons  # what did not happen is not announced
    assert reasons.count(REFUSED) == 1


def test_a_passing_refusal_keeps_the_step_waiting_and_warns_once() -> None:
    sim, job = _first_pass()
    quota = Refusal(403, "Forbidden", "exceeded quota: objects, requested: count/jobs.batch=1, used: 1, limited: 1")
    first = after_refusal(sim.decisions[-1], job, quota, {}, NOW, 1)
    st = first.status_document()
    assert st["phase"] == "Generating" and st["reason"] == RETRYING and "exceeded quota" in st["message"]
    progressing = next(c for c in st["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", RETRYING)
    assert not is_terminal(first.status)
    assert [r for _, r, _ in first.events].count(RETRYING) == 1
    assert "StepStarted" not in [r for _, r, _ in first.events]
    # the next pass starts the step again and is refused alike: no second warning, no StepStarted
    sim.body["status"] = st
    sim.objects.pop(("Job", job.name), None)
    again = sim.tick()
    second = after_refusal(again, job, quota, st, NOW, 1)
    assert [r for _, r, _ in second.events] == []


def test_a_refused_suspension_keeps_the_phase_and_says_why() -> None:
    from spin_operator.reconcile.actions import SetWorkloadActive
    from spin_operator.reconcile.refusals import REQUEST_RETRYING

    sim, job = _first_pass()
    before = dict(sim.status)
    sim.body["spec"]["suspend"] = True
    decision = sim.tick()
    assert decision.status_document()["phase"] == "Suspended"
    stop = SetWorkloadActive(job.name, "uid-1", False)
    gone = Refusal(404, "Kueue's Workload API is not served", "Kueue's Workload API is not served")
    refused = after_refusal(decision, stop, gone, before, NOW, 2).status_document()
    assert refused["phase"] == "Generating" and refused["reason"] == REQUEST_RETRYING
    assert "setworkloadactive Job demo-it0-gen (404" in refused["message"]


def _taken_by(job: Create, *, owner: str | None, attempt: str | None, deleting: bool = False,
              finalizers: tuple[str, ...] = ()) -> dict[str, object]:
    """The object a create of `job` met: `job`'s own, with another owner, attempt or deletion state."""
    meta = json.loads(json.dumps(job.obj["metadata"]))
    meta["ownerReferences"] = [{"kind": "SpinRun", "uid": owner, "controller": True}] if owner else []
    meta.setdefault("annotations", {})[ANNOTATION_ATTEMPT] = attempt
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T11:59:00Z"
    meta["finalizers"] = list(finalizers)
    return {"kind": job.kind, "metadata": meta}


def test_a_create_meeting_its_own_object_counts_as_done_and_any_other_says_whose_it_is() -> None:
    _, job = _first_pass()
    ours = job.obj["metadata"]["ownerReferences"][0]["uid"]
    attempt = job.obj["metadata"]["annotations"][ANNOTATION_ATTEMPT]
    assert in_the_way(_taken_by(job, owner=ours, attempt=attempt), job, "ns1") is None
    earlier = in_the_way(_taken_by(job, owner=ours, attempt=f"{attempt}-earlier", deleting=True), job, "ns1")
    assert earlier is not None and "an earlier attempt of this run" in earlier and "being deleted since 2026-01-01T11:59:00Z" in earlier
    held = in_the_way(_taken_by(job, owner="old-uid", attempt=attempt, deleting=True, finalizers=("example.com/hold",)), job, "ns1")
    assert held is not None
    assert held.startswith("Job demo-it0-gen in the way belongs to another SpinRun of this name (a deleted one)"), held
    assert "held by finalizer(s) example.com/hold" in held
    assert "kubectl patch job demo-it0-gen -n ns1 --type=json" in held and '"path":"/metadata/finalizers"' in held
    orphan = in_the_way(_taken_by(job, owner=None, attempt=attempt), job, "ns1")
    assert orphan is not None and "no SpinRun (orphaned)" in orphan and "kubectl delete job demo-it0-gen -n ns1" in orphan
    dying = in_the_way(_taken_by(job, owner=ours, attempt=attempt, deleting=True, finalizers=("foregroundDeletion",)), job, "ns1")
    assert dying is not None and "this attempt of this run" in dying and "garbage collector" in dying and "patch" not in dying
    cron = _taken_by(job, owner="cron-uid", attempt=None)
    cron["metadata"]["ownerReferences"][0]["kind"] = "CronJob"  # type: ignore[index]
    theirs = in_the_way(cron, job, "ns1")
    assert theirs is not None and "not made by spinrun (it belongs to a CronJob)" in theirs and "rename the SpinRun" in theirs
    unlabelled = _taken_by(job, owner=None, attempt=None)
    unlabelled["metadata"]["labels"] = {}  # type: ignore[index]
    assert "not made by spinrun (it belongs to someone else)" in (in_the_way(unlabelled, job, "ns1") or "")


def test_a_create_whose_name_is_taken_waits_for_the_old_object_and_says_so_once() -> None:
    sim, job = _first_pass()
    why = "Job demo-it0-gen in the way belongs to another SpinRun of this name (a deleted one): it is being deleted"
    first = after_refusal(sim.decisions[-1], job, Refusal(409, "AlreadyExists", why), {}, NOW, 1)
    st = first.status_document()
    assert (st["phase"], st["reason"], st["message"]) == ("Generating", IN_THE_WAY, f"waiting: {why}")
    progressing = next(c for c in st["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", IN_THE_WAY)
    assert not is_terminal(first.status) and [r for _, r, _ in first.events].count(IN_THE_WAY) == 1
    again = after_refusal(sim.decisions[-1], job, Refusal(409, "AlreadyExists", why), st, NOW, 1)
    assert IN_THE_WAY not in [r for _, r, _ in again.events]  # said once
