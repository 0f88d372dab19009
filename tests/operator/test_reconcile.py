"""Every decision of `reconcile`, driven through a small in-memory cluster (sim.py): no
server, no kopf, a fixed clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from spin_operator import launchers
from spin_operator.builders import meta
from spin_operator.kube.objects import Observed
from spin_operator.reconcile.actions import Create, Delete, PatchJob
from spin_operator.reconcile.conditions import is_terminal
from spin_operator.reconcile.decide import parse_spec, reconcile
from tests.operator.fixtures import make_body
from tests.operator.sim import T0, Sim, annotation


def cond(status: dict, ctype: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def reasons(sim: Sim) -> list[str]:
    return [r for d in sim.decisions for (_, r, _) in d.events]


# --------------------------------------------------------------------------- start


def test_first_pass_creates_claim_spec_and_generation_job() -> None:
    sim = Sim(make_body())
    d = sim.tick()
    assert [(type(a).__name__, getattr(a, "kind", ""), getattr(a, "name", "")) for a in d.actions] == [
        ("Create", "PersistentVolumeClaim", "demo-data"),
        ("Create", "ConfigMap", "demo-it0-spec"),
        ("Create", "Job", "demo-it0-gen"),
    ]
    st = sim.status
    assert st["phase"] == "Generating"
    assert st["currentIteration"] == 0 and st["completedIterations"] == 0
    assert st["startTime"] == "2026-01-01T12:00:00Z"
    assert st["observedGeneration"] == 1
    assert st["iterations"] == [
        {"iteration": 0, "generation": 1, "steps": [
            {"step": "generate", "jobName": "demo-it0-gen", "retries": 0, "startTime": "2026-01-01T12:00:00Z"}]}
    ]
    assert cond(st, "Progressing")["status"] == "True"
    # ClaimCreated (issue #12) says what happens to the data when the run is deleted
    assert [e[1] for e in d.events] == ["Started", "ClaimCreated", "IterationStarted", "StepStarted"]
    assert "kept when the SpinRun is deleted" in d.events[1][2]


def test_second_pass_with_nothing_new_is_a_no_op() -> None:
    sim = Sim(make_body())
    sim.tick()
    before = dict(sim.status)
    d = sim.tick()
    assert d.actions == [] and d.events == []
    assert d.status_document() == before


def test_existing_claim_creates_no_pvc() -> None:
    sim = Sim(make_body(spec={"storage": {"newClaim": None, "existingClaim": "shared"}}))
    sim.body["spec"]["storage"].pop("newClaim")
    d = sim.tick()
    assert "PersistentVolumeClaim" not in [a.kind for a in d.actions if isinstance(a, Create)]


# --------------------------------------------------------------------------- happy path


def test_two_iterations_walk_every_phase_to_complete() -> None:
    sim = Sim(make_body())
    phases = []
    sim.tick()
    order = ["gen", "convert", "train", "eval"]
    for k in range(2):
        for s in order:
            phases.append(sim.status["phase"])
            sim.finish(f"demo-it{k}-{s}")
            sim.tick()
    assert phases == ["Generating", "Converting", "Training", "Evaluating"] * 2
    st = sim.status
    assert st["phase"] == "Complete" and st["reason"] == "RunCompleted"
    assert st["completedIterations"] == 2 and st["currentIteration"] == 1
    assert st["lastCheckpoint"]["path"] == "/data/runs/demo/iter-1/model"
    assert st["lastCheckpoint"]["iteration"] == 1
    assert cond(st, "Complete")["status"] == "True"
    assert cond(st, "Progressing")["status"] == "False"
    assert st["completionTime"]
    assert reasons(sim).count("IterationCompleted") == 2 and reasons(sim).count("RunCompleted") == 1
    assert reasons(sim).count("StepSucceeded") == 8
    assert [s["step"] for s in st["iterations"][1]["steps"]] == ["generate", "convert", "train", "evaluate"]
    assert all(s["completionTime"] for it in st["iterations"] for s in it["steps"])


def test_next_step_starts_in_the_same_pass_as_the_previous_one_completes() -> None:
    sim = Sim(make_body())
    sim.tick()
    sim.finish("demo-it0-gen")
    d = sim.tick()
    assert d.creates() == ["demo-it0-convert"]


def test_last_checkpoint_is_set_only_after_training_succeeds() -> None:
    sim = Sim(make_body())
    sim.tick()
    for s in ("gen", "convert"):
        sim.finish(f"demo-it0-{s}")
        sim.tick()
    assert "lastCheckpoint" not in sim.status
    sim.running("demo-it0-train")
    sim.tick()
    assert "lastCheckpoint" not in sim.status
    sim.finish("demo-it0-train")
    sim.tick()
    assert sim.status["lastCheckpoint"]["path"] == "/data/runs/demo/iter-0/model"


def test_synthetic_data_iteration_starts_with_convert_and_no_eval() -> None:
    sim = Sim(make_body(spec={"syntheticData": [{"iteration": 0, "hub": "UCLA-AGI/SPIN_iter0"}], "evaluation": {"enabled": False}}))
    d = sim.tick()
    assert d.creates()[-1] == "demo-it0-convert"
    sim.run_to_end()
    assert "demo-it0-gen" not in sim.jobs() and "demo-it1-gen" in sim.jobs()
    assert not any(n.endswith("-eval") for n in sim.jobs())


def test_start_iteration_skips_earlier_iterations() -> None:
    sim = Sim(make_body(spec={"iterations": 3, "startIteration": 2, "syntheticData": [{"iteration": 1, "path": "/data/syn1"}]}))
    sim.run_to_end()
    assert sim.status["completedIterations"] == 1
    assert all(n.startswith("demo-it2-") for n in sim.jobs())


# --------------------------------------------------------------------------- deleted children


def test_done_job_deleted_later_is_not_recreated() -> None:
    sim = Sim(make_body())
    sim.tick()
    sim.finish("demo-it0-gen")
    sim.tick()
    del sim.objects[("Job", "demo-it0-gen")]  # TTL controller or a human
    d = sim.tick()
    assert "demo-it0-gen" not in d.creates()
    assert sim.status["phase"] == "Converting"


def test_unfinished_job_deleted_by_hand_is_recreated_with_the_same_attempt() -> None:
    sim = Sim(make_body())
    sim.tick()
    sim.running("demo-it0-gen")
    sim.tick()
    del sim.objects[("Job", "demo-it0-gen")]
    d = sim.tick()
    assert d.creates() == ["demo-it0-gen"]
    assert annotation(sim.job("demo-it0-gen"), meta.ANNOTATION_ATTEMPT) == "0"


def test_deleted_spec_config_map_is_recreated() -> None:
    sim = Sim(make_body())
    sim.tick()
    del sim.objects[("ConfigMap", "demo-it0-spec")]
    d = sim.tick()
    assert d.creates() == ["demo-it0-spec"]


# --------------------------------------------------------------------------- retries & failures


def _to_convert(sim: Sim) -> None:
    sim.tick()
    sim.finish("demo-it0-gen")
    sim.tick()


def test_failed_step_is_retried_as_a_new_attempt_once_the_old_job_is_gone() -> None:
    sim = Sim(make_body())
    _to_convert(sim)
    sim.finish("demo-it0-convert", ok=False)
    d = sim.tick()
    assert d.actions == [Delete("Job", "demo-it0-convert", "batch/v1")]  # no create beside the dying Job
    step = sim.status["iterations"][0]["steps"][1]
    assert step["retries"] == 1
    assert ("Warning", "StepRetrying") in [(t, r) for t, r, _ in d.events]
    assert (sim.status["phase"], sim.status["reason"]) == ("Converting", "WaitingForPreviousAttempt")
    assert d.requeue_after is not None and d.requeue_after <= 2
    d = sim.tick()
    assert d.creates() == ["demo-it0-convert"]
    assert annotation(sim.job("demo-it0-convert"), meta.ANNOTATION_ATTEMPT) == "1"
    assert [r for _, r, _ in d.events] == []  # StepRetrying said it; no StepStarted again
    assert (sim.status["phase"], sim.status["reason"]) == ("Converting", "StepRunning")


def test_a_retry_waits_for_the_failed_attempts_pods_to_stop() -> None:
    """A pod of the failed attempt still Terminating has the hostname the new attempt's pod gets:
    nothing is created until it is gone, and the run says which pod it waits for."""
    sim = Sim(make_body())
    _to_convert(sim)
    old = sim.pod("demo-it0-convert", phase="Running")["metadata"]["name"]
    sim.finish("demo-it0-convert", ok=False)
    sim.tick()  # the Job is deleted; its pod is still terminating
    d = sim.tick()
    assert d.creates() == [] and sim.status["reason"] == "WaitingForPreviousAttempt"
    assert old in sim.status["message"] and "kubectl delete pod" in sim.status["message"]
    del sim.objects[("Pod", old)]
    assert sim.tick().creates() == ["demo-it0-convert"]


def test_a_failed_job_still_listed_after_its_retry_is_not_counted_twice() -> None:
    sim = Sim(make_body())
    _to_convert(sim)
    sim.finish("demo-it0-convert", ok=False)
    stale = dict(sim.job("demo-it0-convert"))
    sim.tick()
    sim.objects[("Job", "demo-it0-convert")] = stale  # the watch index lags: old attempt seen again
    d = sim.tick()
    assert sim.status["iterations"][0]["steps"][1]["retries"] == 1
    assert d.deletes() == ["demo-it0-convert"] and d.creates() == []
    assert "StepRetrying" not in [r for _, r, _ in d.events]
    assert sim.tick().creates() == ["demo-it0-convert"]


def test_step_failing_past_backoff_limit_fails_the_run() -> None:
    sim = Sim(make_body(spec={"backoffLimit": 1}))
    _to_convert(sim)
    sim.tick()
    sim.finish("demo-it0-convert", ok=False)
    sim.tick()  # deleted
    sim.tick()  # attempt 2 created
    sim.finish("demo-it0-convert", ok=False)
    sim.tick()
    st = sim.status
    assert st["phase"] == "Failed" and st["reason"] == "StepFailed"
    assert "convert of iteration 0 failed 2 time(s)" in st["message"]
    assert "backoffLimit (1)" in st["message"]
    assert cond(st, "Failed")["status"] == "True" and cond(st, "Failed")["reason"] == "StepFailed"
    assert st["iterations"][0]["steps"][1]["retries"] == 1
    assert st["completionTime"]


def test_backoff_limit_zero_fails_on_first_failure() -> None:
    sim = Sim(make_body(spec={"backoffLimit": 0}))
    _to_convert(sim)
    sim.finish("demo-it0-convert", ok=False)
    sim.tick()
    assert sim.status["phase"] == "Failed"


def test_failed_generation_job_fails_the_run_naming_the_shard() -> None:
    sim = Sim(make_body())
    sim.tick()
    sim.finish("demo-it0-gen", ok=False, failed_indexes="1", reason="FailedIndexes")
    d = sim.tick()
    st = sim.status
    assert st["phase"] == "Failed" and st["reason"] == "StepFailed"
    assert "generate of iteration 0 failed: shard 1" in st["message"]
    assert d.creates() == []


def test_status_lagging_behind_the_jobs_attempt_catches_up() -> None:
    sim = Sim(make_body())
    _to_convert(sim)
    sim.job("demo-it0-convert")["metadata"]["annotations"][meta.ANNOTATION_ATTEMPT] = "2"
    sim.running("demo-it0-convert")
    sim.tick()
    assert sim.status["iterations"][0]["steps"][1]["retries"] == 2


# --------------------------------------------------------------------------- terminal


def test_complete_is_sticky_even_when_children_vanish() -> None:
    sim = Sim(make_body())
    sim.run_to_end()
    sim.objects.clear()
    for _ in range(3):
        d = sim.tick()
        assert d.actions == [] and d.events == []
    assert sim.status["phase"] == "Complete"


def test_failed_is_sticky_across_spec_changes() -> None:
    sim = Sim(make_body(spec={"backoffLimit": 0}))
    _to_convert(sim)
    sim.finish("demo-it0-convert", ok=False)
    sim.tick()
    sim.set_spec({"backoffLimit": 5})
    d = sim.tick()
    assert d.creates() == [] and sim.status["phase"] == "Failed"
    assert sim.status["observedGeneration"] == 2


def test_ttl_deletes_jobs_after_completion_plus_ttl() -> None:
    sim = Sim(make_body(spec={"ttlSecondsAfterFinished": 60}))
    sim.run_to_end()
    assert sim.decisions[-1].requeue_after == 60
    d = sim.tick(10)
    assert d.deletes() == [] and 49 <= (d.requeue_after or 0) <= 60
    sim.now = T0 + timedelta(hours=1)
    d = sim.tick()
    assert sorted(d.deletes()) == sorted(f"demo-it{k}-{s}" for k in range(2) for s in ("gen", "convert", "train", "eval"))
    assert [r for _, r, _ in d.events] == ["TTLExpired"]
    d = sim.tick()
    assert d.actions == [] and d.events == []
    assert sim.status["phase"] == "Complete"


def test_deadline_fails_the_run_and_stops_active_jobs() -> None:
    sim = Sim(make_body(spec={"activeDeadlineSeconds": 100}))
    d = sim.tick()
    assert d.requeue_after == 100
    sim.running("demo-it0-gen")
    sim.now = T0 + timedelta(seconds=101)
    d = sim.tick()
    st = sim.status
    assert st["phase"] == "Failed" and st["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds (100s) in iteration 0, step generate" in st["message"]
    assert cond(st, "Failed")["reason"] == "DeadlineExceeded"
    assert d.deletes() == ["demo-it0-gen"]
    assert ("Warning", "DeadlineExceeded") in [(t, r) for t, r, _ in d.events]


# --------------------------------------------------------------------------- suspend


def test_suspend_suspends_active_jobs_and_resume_unsuspends_them() -> None:
    sim = Sim(make_body())
    sim.tick()
    sim.running("demo-it0-gen")
    sim.set_spec({"suspend": True})
    d = sim.tick()
    assert d.actions == [PatchJob("demo-it0-gen", True)]
    st = sim.status
    assert st["phase"] == "Suspended" and cond(st, "Suspended")["status"] == "True"
    assert annotation(sim.job("demo-it0-gen"), meta.ANNOTATION_SUSPENDED_BY) == "spinrun"
    assert sim.tick().actions == []  # idempotent
    sim.set_spec({"suspend": False})
    d = sim.tick()
    assert d.actions == [PatchJob("demo-it0-gen", False)]
    assert sim.status["phase"] == "Generating" and cond(sim.status, "Suspended")["reason"] == "Resumed"
    assert [r for _, r, _ in d.events] == ["Resumed"]


def test_jobs_created_while_suspended_start_suspended() -> None:
    sim = Sim(make_body(spec={"suspend": True}))
    sim.tick()
    job = sim.job("demo-it0-gen")
    assert job["spec"]["suspend"] is True
    assert sim.status["phase"] == "Suspended"
    sim.finish("demo-it0-gen")  # finished before the suspension took effect
    sim.tick()
    assert sim.job("demo-it0-convert")["spec"]["suspend"] is True


def test_resume_leaves_jobs_suspended_by_kueue_alone() -> None:
    sim = Sim(make_body(spec={"queueName": "q"}))
    sim.tick()
    sim.job("demo-it0-gen")["spec"]["suspend"] = True  # Kueue has not admitted it yet
    d = sim.tick()
    assert d.actions == []
    assert sim.job("demo-it0-gen")["metadata"]["labels"][meta.LABEL_QUEUE] == "q"


def test_a_queued_run_on_an_operator_without_kueue_support_says_so_once() -> None:
    sim = Sim(make_body(spec={"queueName": "q"}))
    d = sim.tick()
    qc = cond(sim.status, "QueueUnmanaged")
    assert qc["status"] == "True" and qc["reason"] == "KueueDisabled" and "kueue.enabled=true" in qc["message"]
    assert ("Warning", "KueueDisabled") in [(t, r) for t, r, _ in d.events]
    assert "KueueDisabled" not in [r for _, r, _ in sim.tick().events], "said once"
    sim.set_spec({"queueName": None})
    sim.tick()
    assert cond(sim.status, "QueueUnmanaged")["status"] == "False"


def test_a_queued_run_on_an_operator_with_kueue_support_has_no_warning() -> None:
    from spin_operator.settings import DeploymentSettings

    sim = Sim(make_body(spec={"queueName": "q"}))
    sim.settings = DeploymentSettings(kueue=True)
    sim.tick()
    assert "QueueUnmanaged" not in [c["type"] for c in sim.status["conditions"]]
    plain = Sim(make_body())
    plain.tick()
    assert "QueueUnmanaged" not in [c["type"] for c in plain.status["conditions"]]


# --------------------------------------------------------------------------- spec changes


def test_spec_change_applies_from_the_next_iteration() -> None:
    sim = Sim(make_body())
    _to_convert(sim)
    sim.set_spec({"generation": {"shards": 4}, "backoffLimit": 0})
    sim.finish("demo-it0-convert", ok=False)
    d = sim.tick()
    # iteration 0 keeps its pinned spec (backoffLimit 2): retried, not failed
    assert d.deletes() == ["demo-it0-convert"] and sim.status["phase"] == "Converting"
    assert sim.tick().creates() == ["demo-it0-convert"]
    assert sim.status["observedGeneration"] == 2
    sim.run_to_end()  # it1 starts under generation 2
    gen1 = sim.job("demo-it1-gen")
    assert gen1["spec"]["completions"] == 4
    assert annotation(gen1, meta.ANNOTATION_GENERATION) == "2"
    assert sim.job("demo-it0-gen")["spec"]["completions"] == 2
    its = sim.status["iterations"]
    assert [it["generation"] for it in its] == [1, 2]


def test_the_decision_reads_the_spec_its_caller_parsed_once() -> None:
    """The driver parses the spec once per reconcile (parse_spec) and hands the result down: the
    decision decides on that result, valid or not, and parses the body itself only when given none."""
    body = make_body()
    observed = Observed.from_objects("demo")
    parsed = parse_spec(body)
    assert reconcile(body, observed, T0, spec=parsed) == reconcile(body, observed, T0)
    invalid = parse_spec(make_body(spec={"training": {"maxLength": 32, "maxPromptLength": 64}}))
    decided = reconcile(body, observed, T0, spec=invalid)
    assert decided.actions == [] and decided.status_document()["reason"] == "ValidationFailed"


def test_invalid_spec_reports_validation_failed_until_fixed() -> None:
    sim = Sim(make_body(spec={"training": {"maxLength": 32, "maxPromptLength": 64}}))
    d = sim.tick()
    st = sim.status
    assert d.actions == []
    assert st["phase"] == "Failed" and st["reason"] == "ValidationFailed"
    assert cond(st, "ValidationFailed")["status"] == "True"
    assert "maxPromptLength must be smaller than maxLength (got maxPromptLength 64, maxLength 32)" in st["message"]
    assert not is_terminal(st)
    assert sim.tick().events == []  # reported once
    sim.set_spec({"training": {"maxLength": 128}})
    d = sim.tick()
    assert d.creates()[-1] == "demo-it0-gen"
    assert cond(sim.status, "ValidationFailed")["status"] == "False"
    assert sim.status["phase"] == "Generating"


def test_iteration_history_is_bounded_and_still_completes() -> None:
    sim = Sim(make_body(spec={"iterations": 24, "evaluation": {"enabled": False}, "generation": {"shards": 1}}))
    sim.run_to_end(limit=400)
    st = sim.status
    assert st["phase"] == "Complete" and st["completedIterations"] == 24
    assert len(st["iterations"]) == 20 and st["iterations"][0]["iteration"] == 4


# --------------------------------------------------------------------------- training launchers


def test_multi_node_training_creates_headless_service_with_the_job() -> None:
    sim = Sim(make_body(spec={"training": {"nodes": 2}, "storage": {"newClaim": {"accessModes": ["ReadWriteMany"]}}}))
    _to_convert(sim)
    sim.finish("demo-it0-convert")
    d = sim.tick()
    assert [(a.kind, a.name) for a in d.actions if isinstance(a, Create)] == [("Service", "demo-it0-train"), ("Job", "demo-it0-train")]
    del sim.objects[("Service", "demo-it0-train")]
    assert sim.tick().creates() == ["demo-it0-train"]  # the Service again


def _training_without_its_crd(launcher: str) -> tuple[Sim, dict[str, Any]]:
    """A run of `launcher` whose CRD the cluster does not serve, once training is due: nothing
    created; the Progressing condition returned."""
    sim = Sim(make_body(spec={"training": {"launcher": launcher}}))
    sim.launcher_served = False
    _to_convert(sim)
    sim.finish("demo-it0-convert")
    d = sim.tick()
    assert d.creates() == []
    return sim, cond(sim.status, "Progressing")


def test_pytorchjob_launcher_without_crd_reports_a_clear_condition() -> None:
    sim, pc = _training_without_its_crd("pytorchjob")
    assert pc["status"] == "False" and pc["reason"] == "LauncherUnavailable"
    assert "install the Kubeflow training operator" in pc["message"]
    sim.launcher_served = True
    d = sim.tick()
    assert [a.kind for a in d.actions if isinstance(a, Create)] == ["PyTorchJob"]


def test_pytorchjob_status_is_read() -> None:
    obj = {"kind": "PyTorchJob", "apiVersion": "kubeflow.org/v1",
           "metadata": {"name": "x", "labels": {meta.LABEL_ITERATION: "1", meta.LABEL_STEP: "train"}},
           "spec": {"runPolicy": {"suspend": True}},
           "status": {"conditions": [{"type": "Succeeded", "status": "True"}]}}
    js = launchers.read_state(obj)
    assert js.complete and js.suspended and js.iteration == 1 and js.kind == "PyTorchJob"


# --------------------------------------------------------------------------- observation


def test_observed_keeps_only_this_runs_children() -> None:
    mine = {"metadata": {"name": "demo-it0-gen", "labels": meta.labels("demo", 0, "generate")}}
    other = {"metadata": {"name": "other-it0-gen", "labels": meta.labels("other", 0, "generate")}}
    foreign = {"metadata": {"name": "demo-x", "labels": {meta.LABEL_RUN: "demo"}}}
    gone = {"metadata": {"name": "demo-it1-gen", "labels": meta.labels("demo"), "deletionTimestamp": "x"}}
    obs = Observed.from_objects("demo", jobs=[mine, other, foreign, gone])
    assert list(obs.jobs) == ["demo-it0-gen"]


def test_kopf_bookkeeping_in_status_is_dropped() -> None:
    body = make_body()
    body["status"] = {"kopf": {"progress": {}}, "phase": "Pending"}
    d = reconcile(body, Observed(), T0)
    assert "kopf" not in d.status_document()


@pytest.mark.parametrize("bad", [{"iterations": 0}, {"generation": {"shards": 0}}, {"unknownField": 1}])
def test_specs_failing_pydantic_never_create_children(bad: dict) -> None:
    d = reconcile(make_body(spec=bad), Observed(), T0)
    assert d.actions == [] and d.status_document()["reason"] == "ValidationFailed"


# --------------------------------------------------------------------------- issue #12: nothing lost on a real cluster


def _to_train(sim: Sim) -> None:
    _to_convert(sim)
    sim.finish("demo-it0-convert")
    sim.tick()


def test_lowering_iterations_below_the_current_one_stops_its_job_before_completing() -> None:
    sim = Sim(make_body(spec={"iterations": 3}))
    sim.tick()
    for k in range(2):
        for s in ("gen", "convert", "train", "eval"):
            sim.finish(f"demo-it{k}-{s}")
            sim.tick()
    sim.running("demo-it2-gen")
    sim.pod("demo-it2-gen", phase="Running")
    sim.set_spec({"iterations": 2})  # iteration 2 is running: its Job holds the nodes
    d = sim.tick()
    assert d.deletes() == ["demo-it2-gen"]
    assert sim.status["phase"] != "Complete" and sim.status["reason"] == "StoppingIterations"
    assert "1 pod(s) still running" in sim.status["message"]
    assert "StoppingIterations" in [r for _, r, _ in d.events]
    d = sim.tick()  # the Job is gone, its pod still terminates
    assert sim.status["phase"] != "Complete" and d.events == []
    del sim.objects[("Pod", "demo-it2-gen-0-abcde")]
    sim.tick()
    st = sim.status
    assert st["phase"] == "Complete" and st["completedIterations"] == 2
    assert st["lastCheckpoint"]["iteration"] == 1


def test_deadline_does_not_count_suspended_time() -> None:
    sim = Sim(make_body(spec={"activeDeadlineSeconds": 100}))
    sim.tick()
    sim.running("demo-it0-gen")
    sim.now = T0 + timedelta(seconds=50)
    sim.set_spec({"suspend": True})
    sim.tick()
    sim.now = T0 + timedelta(seconds=550)  # suspended for 500 s: past the deadline on the wall clock
    d = sim.tick()
    assert sim.status["phase"] == "Suspended" and d.deletes() == []
    sim.set_spec({"suspend": False})
    d = sim.tick()
    assert sim.status["phase"] == "Generating" and sim.status["suspendedSeconds"] == 501  # 50 s → 551 s
    assert 45 <= (d.requeue_after or 0) <= 51  # 50 s of running time left
    sim.now = T0 + timedelta(seconds=560)
    assert sim.tick().deletes() == []
    sim.now = T0 + timedelta(seconds=602)  # 50 + 52 s running > 100 s
    d = sim.tick()
    assert sim.status["reason"] == "DeadlineExceeded" and d.deletes() == ["demo-it0-gen"]


def test_an_invalid_spec_mid_run_fails_the_run_and_suspends_its_jobs_until_fixed() -> None:
    sim = Sim(make_body())
    _to_convert(sim)
    sim.running("demo-it0-convert")
    sim.set_spec({"training": {"maxLength": 32, "maxPromptLength": 64}})
    d = sim.tick()
    st = sim.status
    assert st["phase"] == "Failed" and cond(st, "Failed")["status"] == "True"
    assert cond(st, "Failed")["reason"] == "ValidationFailed"
    assert d.actions == [PatchJob("demo-it0-convert", True)]
    assert sim.job("demo-it0-convert")["spec"]["suspend"] is True
    assert not is_terminal(st)  # fixing the spec resumes the run
    sim.set_spec({"training": {"maxLength": 128}})
    d = sim.tick()
    assert d.actions == [PatchJob("demo-it0-convert", False)]
    assert cond(sim.status, "Failed")["status"] == "False" and sim.status["phase"] == "Converting"


def _foreign(sim: Sim, kind: str, name: str, owner: str | None) -> None:
    obj = {"apiVersion": "batch/v1" if kind == "Job" else "v1", "kind": kind,
           "metadata": {"name": name, "uid": f"old-{name}", "labels": meta.labels("demo", 0, "generate")},
           "spec": {"template": {"metadata": {"labels": meta.labels("demo", 0, "generate")}}},
           "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    if owner is not None:
        obj["metadata"]["ownerReferences"] = [{"kind": "SpinRun", "name": "demo", "uid": owner, "controller": True}]
    sim.objects[(kind, name)] = obj


def test_a_recreated_run_does_not_adopt_the_old_runs_jobs_and_waits_for_their_collection() -> None:
    sim = Sim(make_body())
    _foreign(sim, "Job", "demo-it0-gen", owner="uid-of-the-deleted-run")  # done, would "complete" generation
    _foreign(sim, "ConfigMap", "demo-it0-spec", owner="uid-of-the-deleted-run")  # the old run's spec
    d = sim.tick()
    assert d.creates() == [] and sim.status["reason"] == "WaitingForOldObjects"
    pc = cond(sim.status, "Progressing")
    assert pc["status"] == "False" and "Job demo-it0-gen" in pc["message"] and "ConfigMap demo-it0-spec" in pc["message"]
    assert d.requeue_after == 5.0
    assert sim.status["iterations"] == []  # no step counted as done
    del sim.objects[("Job", "demo-it0-gen")], sim.objects[("ConfigMap", "demo-it0-spec")]  # the garbage collector
    d = sim.tick()
    assert d.creates() == ["demo-data", "demo-it0-spec", "demo-it0-gen"]
    assert annotation(sim.job("demo-it0-gen"), meta.ANNOTATION_ATTEMPT) == "0"


def test_orphaned_objects_are_named_with_the_command_that_removes_them() -> None:
    sim = Sim(make_body())
    _foreign(sim, "Job", "demo-it0-gen", owner=None)
    sim.tick()
    msg = cond(sim.status, "Progressing")["message"]
    assert "no owner (orphaned)" in msg and "kubectl delete -n ns1 job/demo-it0-gen" in msg


def test_an_unowned_claim_of_an_earlier_run_is_reused_and_said_so() -> None:
    sim = Sim(make_body())
    sim.objects[("PersistentVolumeClaim", "demo-data")] = {
        "kind": "PersistentVolumeClaim", "metadata": {"name": "demo-data", "labels": meta.labels("demo"),
                                                      "annotations": {meta.ANNOTATION_CREATED_BY_RUN: "old-uid"}}}
    d = sim.tick()
    assert "demo-data" not in d.creates() and d.creates()[-1] == "demo-it0-gen"
    reused = [m for _, r, m in d.events if r == "ClaimReused"]
    assert reused and "old-uid" in reused[0]


def test_a_claim_owned_by_a_deleted_run_is_not_reused() -> None:
    sim = Sim(make_body(spec={"storage": {"newClaim": {"deleteWithRun": True}}}))
    sim.objects[("PersistentVolumeClaim", "demo-data")] = {
        "kind": "PersistentVolumeClaim", "metadata": {"name": "demo-data", "labels": meta.labels("demo"),
                                                      "ownerReferences": [{"uid": "old", "controller": True}]}}
    d = sim.tick()
    assert d.creates() == [] and sim.status["reason"] == "WaitingForOldObjects"
    del sim.objects[("PersistentVolumeClaim", "demo-data")]
    d = sim.tick()
    assert d.creates()[0] == "demo-data"
    created = [m for _, r, m in d.events if r == "ClaimCreated"]
    assert created and "deleted with the SpinRun" in created[0]


@pytest.mark.parametrize(
    ("trouble", "kw"),
    [
        ("ImagePullBackOff", {"waiting": "ImagePullBackOff"}),
        ("ImagePullBackOff", {"waiting": "ErrImagePull"}),
        ("CreateContainerConfigError", {"waiting": "CreateContainerConfigError"}),
        ("ClaimPending", {"unschedulable": "0/4 nodes are available: pod has unbound immediate PersistentVolumeClaims."}),
    ],
)
def test_a_pod_that_cannot_start_is_reported_then_fails_the_run_after_the_grace_period(trouble: str, kw: dict) -> None:
    sim = Sim(make_body(spec={"podStartupTimeoutSeconds": 600}))
    sim.tick()
    sim.running("demo-it0-gen")
    sim.pod("demo-it0-gen", 0, **kw)
    d = sim.tick()
    pc = cond(sim.status, "Progressing")
    assert pc["status"] == "False" and pc["reason"] == trouble and sim.status["reason"] == trouble
    assert "demo-it0-gen-0-abcde" in pc["message"]
    assert [(t, r) for t, r, _ in d.events] == [("Warning", trouble)]
    assert 590 <= (d.requeue_after or 0) <= 600
    assert sim.tick(300).events == []  # reported once
    sim.now = T0 + timedelta(seconds=601)
    d = sim.tick()
    st = sim.status
    assert st["phase"] == "Failed" and st["reason"] == trouble and cond(st, "Failed")["reason"] == trouble
    assert "podStartupTimeoutSeconds (600s)" in st["message"]
    assert d.deletes() == ["demo-it0-gen"]


def test_pod_trouble_clears_when_the_pod_runs() -> None:
    sim = Sim(make_body())
    sim.tick()
    sim.running("demo-it0-gen")
    pod = sim.pod("demo-it0-gen", 0, waiting="ImagePullBackOff")
    sim.tick()
    pod["status"] = {"phase": "Running"}
    sim.tick()
    assert cond(sim.status, "Progressing")["status"] == "True" and sim.status["reason"] == "StepRunning"


def test_waiting_for_capacity_is_not_an_error_by_default() -> None:
    """Unschedulable 8-GPU pods on a busy or autoscaling cluster: the run waits (saying so), past
    podStartupTimeoutSeconds, as long as unschedulableTimeoutSeconds allows (default: always)."""
    sim = Sim(make_body(spec={"podStartupTimeoutSeconds": 600}))
    sim.tick()
    sim.running("demo-it0-gen")
    sim.pod("demo-it0-gen", 0, unschedulable="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
    d = sim.tick()
    pc = cond(sim.status, "Progressing")
    assert pc["status"] == "False" and pc["reason"] == "Unschedulable"
    assert "the run waits for capacity (spec.unschedulableTimeoutSeconds sets a limit)" in pc["message"]
    assert [(t, r) for t, r, _ in d.events] == [("Warning", "Unschedulable")] and d.requeue_after is None
    sim.now = T0 + timedelta(days=2)
    sim.tick()
    assert sim.status["phase"] == "Generating" and sim.status["reason"] == "Unschedulable"


def test_unschedulable_timeout_fails_a_run_that_waited_that_long_for_capacity() -> None:
    sim = Sim(make_body(spec={"unschedulableTimeoutSeconds": 3600}))
    sim.tick()
    sim.running("demo-it0-gen")
    sim.pod("demo-it0-gen", 0, unschedulable="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
    d = sim.tick()
    assert "waits for capacity up to unschedulableTimeoutSeconds (3600s)" in cond(sim.status, "Progressing")["message"]
    assert 3590 <= (d.requeue_after or 0) <= 3600
    sim.now = T0 + timedelta(seconds=1801)
    assert sim.tick() and sim.status["phase"] == "Generating", "podStartupTimeoutSeconds does not apply"
    sim.now = T0 + timedelta(seconds=3601)
    sim.tick()
    st = sim.status
    assert st["phase"] == "Failed" and st["reason"] == "Unschedulable"
    assert "unschedulableTimeoutSeconds (3600s)" in st["message"]


def test_zero_pod_startup_timeout_waits_forever() -> None:
    sim = Sim(make_body(spec={"podStartupTimeoutSeconds": 0}))
    sim.tick()
    sim.running("demo-it0-gen")
    sim.pod("demo-it0-gen", 0, unschedulable="0/1 nodes are available")
    sim.now = T0 + timedelta(days=3)
    sim.tick()
    assert sim.status["phase"] == "Generating" and sim.status["reason"] == "Unschedulable"


def test_multi_node_training_says_how_many_pods_it_waits_for() -> None:
    sim = Sim(make_body(spec={"training": {"nodes": 3}, "storage": {"newClaim": {"accessModes": ["ReadWriteMany"]}}}))
    _to_train(sim)
    sim.running("demo-it0-train")
    sim.pod("demo-it0-train", 0, phase="Running")
    sim.pod("demo-it0-train", 1, phase="Pending")
    sim.tick()
    assert sim.status["reason"] == "WaitingForPods"
    assert "waiting for 2 of 3 pods" in sim.status["message"]
    for i in (1, 2):
        sim.pod("demo-it0-train", i, phase="Running")
    sim.tick()
    assert sim.status["reason"] == "StepRunning"


def test_pods_of_another_runs_job_are_not_counted() -> None:
    sim = Sim(make_body())
    sim.tick()
    sim.running("demo-it0-gen")
    pod = sim.pod("demo-it0-gen", 0, waiting="ImagePullBackOff")
    pod["metadata"]["ownerReferences"][0]["uid"] = "a-job-of-the-old-run"
    pod["spec"]["containers"][0]["env"] = [{"name": "SPIN_RUN_UID", "value": "uid-of-the-old-run"}]
    sim.tick()
    assert sim.status["reason"] == "StepRunning"


def test_a_deterministic_exit_code_fails_the_run_without_a_retry() -> None:
    sim = Sim(make_body(spec={"backoffLimit": 3}))
    _to_convert(sim)
    sim.finish("demo-it0-convert", ok=False, reason="PodFailurePolicy")
    d = sim.tick()
    st = sim.status
    assert st["phase"] == "Failed" and st["reason"] == "StepFailed"
    assert "exit code a retry cannot fix" in st["message"] and "65: bad data" in st["message"]
    assert d.creates() == [] and st["iterations"][0]["steps"][1]["retries"] == 0


# --------------------------------------------------------------------------- Kubeflow Trainer v2 (issue #13)


def test_trainjob_launcher_waits_for_the_crd_then_creates_an_owned_trainjob() -> None:
    sim, pc = _training_without_its_crd("trainjob")
    assert pc["status"] == "False" and pc["reason"] == "LauncherUnavailable" and "Kubeflow Trainer v2" in pc["message"]
    sim.launcher_served = True
    d = sim.tick()
    (created,) = [a for a in d.actions if isinstance(a, Create)]
    assert created.kind == "TrainJob" and created.obj["metadata"]["ownerReferences"][0]["uid"] == sim.body["metadata"]["uid"]


def test_a_trainjob_is_followed_suspended_and_retried_like_a_job() -> None:
    sim = Sim(make_body(spec={"training": {"launcher": "trainjob"}}))
    sim.launcher_served = True
    _to_train(sim)
    tj = sim.objects[("TrainJob", "demo-it0-train")]
    sim.set_spec({"suspend": True})
    d = sim.tick()
    assert d.actions == [PatchJob("demo-it0-train", True, "TrainJob")] and tj["spec"]["suspend"] is True
    sim.set_spec({"suspend": False})
    assert sim.tick().actions == [PatchJob("demo-it0-train", False, "TrainJob")]
    tj["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "Failed", "message": "node 1 OOM"}]}
    d = sim.tick()
    assert d.deletes() == ["demo-it0-train"] and d.creates() == []
    assert "node 1 OOM" in next(m for _, r, m in d.events if r == "StepRetrying")
    assert sim.tick().creates() == ["demo-it0-train"]
    sim.objects[("TrainJob", "demo-it0-train")]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    sim.tick()
    assert sim.status["lastCheckpoint"]["iteration"] == 0 and sim.status["phase"] == "Evaluating"


def _trainjob_pod(sim: Sim, last_exit: int) -> dict:
    """A node pod of the TrainJob as JobSet's Job and the kubelet report it under restartPolicy
    OnFailure: Running, its container restarted after exiting `last_exit` and in back-off."""
    tj = sim.objects[("TrainJob", "demo-it0-train")]
    labels = tj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["metadata"]["labels"]
    pod = {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "node", "env": tj["spec"]["trainer"]["env"]}]},
           "metadata": {"name": "demo-it0-train-node-0-0-abcde", "labels": dict(labels),
                        "ownerReferences": [{"kind": "Job", "name": "demo-it0-train-node-0", "uid": "jobset-job", "controller": True}]},
           "status": {"phase": "Running", "containerStatuses": [{
               "name": "node", "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
               "lastState": {"terminated": {"exitCode": last_exit, "reason": "Error"}}}]}}
    sim.objects[("Pod", pod["metadata"]["name"])] = pod
    return pod


def test_a_trainjob_pod_exiting_with_a_deterministic_code_fails_the_run_at_once() -> None:
    """Trainer's runtime restarts the node container in place (OnFailure) and sets no
    podFailurePolicy: the operator reads the exit code in the pod's status (found against the real
    Trainer, tests/operator/test_e2e.py)."""
    sim = Sim(make_body(spec={"backoffLimit": 3, "training": {"launcher": "trainjob"}}))
    sim.launcher_served = True
    _to_train(sim)
    _trainjob_pod(sim, 1)
    sim.tick()
    assert sim.status["phase"] == "Training", "an ordinary failure is the runtime's to retry"
    _trainjob_pod(sim, 65)
    d = sim.tick()
    st = sim.status
    assert (st["phase"], st["reason"]) == ("Failed", "StepFailed")
    assert "exit code a retry cannot fix" in st["message"] and "exited 65" in st["message"]
    assert d.deletes() == ["demo-it0-train"] and d.creates() == []


# --------------------------------------------------------------------------- Kueue by Kueue's rules (issue #13)


def _kueue_sim(**spec: object) -> Sim:
    from spin_operator.settings import DeploymentSettings

    sim = Sim(make_body(spec={"queueName": "gpu-queue", **spec}))
    sim.settings = DeploymentSettings(kueue=True)
    return sim


def test_a_step_kueue_holds_says_it_waits_for_quota() -> None:
    sim = _kueue_sim()
    sim.tick()
    sim.job("demo-it0-gen")["spec"]["suspend"] = True  # Kueue's webhook: suspended until admitted
    d = sim.tick()
    assert d.actions == []  # Kueue's suspension is Kueue's to lift
    assert sim.status["reason"] == "WaitingForQuota" and "waiting for quota in queue gpu-queue" in sim.status["message"]
    sim.job("demo-it0-gen")["spec"]["suspend"] = False  # admitted
    sim.tick()
    assert sim.status["reason"] == "StepRunning"


def test_suspending_a_queued_run_deactivates_its_workload_and_never_touches_the_suspend_flag() -> None:
    sim = _kueue_sim()
    sim.tick()
    sim.running("demo-it0-gen")
    sim.set_spec({"suspend": True})
    d = sim.tick()
    assert [type(a).__name__ for a in d.actions] == ["SetWorkloadActive"]
    assert sim.workloads_active == {"demo-it0-gen": False}
    assert sim.job("demo-it0-gen")["spec"]["suspend"] is False  # Kueue evicts it, not us
    assert sim.status["phase"] == "Suspended"
    assert sim.tick().actions == []  # no patch loop while Kueue does its part
    sim.job("demo-it0-gen")["spec"]["suspend"] = True  # Kueue evicted the workload
    assert sim.tick().actions == []
    sim.set_spec({"suspend": False})
    d = sim.tick()
    assert [type(a).__name__ for a in d.actions] == ["SetWorkloadActive"] and sim.workloads_active["demo-it0-gen"] is True
    assert sim.tick().actions == []
    assert sim.status["reason"] == "WaitingForQuota"  # requeued: Kueue admits it again


def test_a_queued_run_suspended_before_a_step_starts_queues_nothing() -> None:
    sim = _kueue_sim(suspend=True)
    d = sim.tick()
    assert "demo-it0-gen" not in d.creates() and sim.status["phase"] == "Suspended"
    sim.set_spec({"suspend": False})
    assert "demo-it0-gen" in sim.tick().creates()


def test_gang_scheduling_needs_the_deployment_to_allow_pod_groups() -> None:
    from spin_operator.settings import DeploymentSettings

    sim = Sim(make_body(spec={"training": {"nodes": 2, "gangScheduling": {"enabled": True}},
                              "storage": {"newClaim": {"accessModes": ["ReadWriteMany"]}}}))
    _to_convert(sim)
    sim.finish("demo-it0-convert")
    d = sim.tick()
    assert d.creates() == [] and cond(sim.status, "Progressing")["reason"] == "GangSchedulingDisabled"
    sim.settings = DeploymentSettings(gang_scheduling=True)
    d = sim.tick()
    assert [(a.kind, a.name) for a in d.actions if isinstance(a, Create)] == [
        ("Service", "demo-it0-train"), ("PodGroup", "demo-it0-train"), ("Job", "demo-it0-train")]
