"""What a real cluster does that costs work, injected by the harness the way a cluster produces it
(issue #12): the garbage collector removing a deleted run's children some time later, a run
re-created under the same name, deletion with the operator gone (finalizers), preempted pods
(condition DisruptionTarget), deterministic exit codes, pods that cannot start (Unschedulable,
ImagePullBackOff, CreateContainerConfigError, an unbound claim), and spec changes mid-run. The
operator runs in-process (tests/operator/harness.py); each test tallies what the user loses."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from spin_runtime import errors
from tests.operator.harness import Cluster, cluster
from tests.operator.test_e2e import run_body, wait_event
from tests.reliability.conftest import Tally

pytestmark = pytest.mark.e2e


def _status(c: Cluster, name: str = "e2e") -> dict:
    return c.get_run(name).get("status") or {}


def _cond(st: dict, ctype: str) -> dict:
    return next((x for x in st.get("conditions") or [] if x["type"] == ctype), {})


# --------------------------------------------------------------------------- deletion and re-creation


def test_deleting_a_run_keeps_its_claim_while_the_collector_takes_the_rest(tmp_path: Path, tally: Tally) -> None:
    with cluster(tmp_path, gc_delay=0.3) as c:
        c.kubelet.hold.add("it0-convert")
        c.start_operator()
        c.create_run(run_body())
        c.wait(lambda: "e2e-it0-convert" in c.jobs(), 30, "convert Job")
        assert wait_event(c, "e2e", "ClaimCreated")
        (_, _, created), = [e for e in c.events("e2e") if e[1] == "ClaimCreated"]
        assert "kept when the SpinRun is deleted" in created
        c.delete_run("e2e")
        assert c.gc is not None
        c.wait(lambda: not c.jobs(), 30, "the garbage collector to remove the Jobs")
        time.sleep(0.6)
        assert "e2e-data" in c.pvcs(), "the claim with every checkpoint outlives the run"
        collected = {(k, n) for k, n, _ in c.gc.collected}
        assert ("job", "e2e-it0-gen") in collected and ("configmap", "e2e-it0-spec") in collected
        assert ("pvc", "e2e-data") not in collected
        tally.add("faults.spinrun_deleted_gc", 1)
        tally.add("observed.claims_deleted_with_the_run", 0)


def test_delete_with_run_takes_the_claim_too(tmp_path: Path, tally: Tally) -> None:
    with cluster(tmp_path, gc_delay=0.2) as c:
        c.kubelet.hold.add("it0-gen")
        c.start_operator()
        c.create_run(run_body(spec={"storage": {"newClaim": {"deleteWithRun": True}}}))
        c.wait(lambda: "e2e-data" in c.pvcs(), 30, "the claim")
        c.delete_run("e2e")
        c.wait(lambda: "e2e-data" not in c.pvcs(), 30, "the claim collected with its run")
        tally.add("observed.claims_deleted_with_delete_with_run", 1)


def test_a_run_recreated_under_the_same_name_adopts_nothing_of_the_old_one(tmp_path: Path, tally: Tally) -> None:
    with cluster(tmp_path, gc_delay=1.5) as c:
        c.kubelet.hold.add("it0-train")
        c.start_operator()
        c.create_run(run_body(spec={"iterations": 1}))
        c.wait(lambda: "e2e-it0-train" in c.jobs(), 30, "the old run's training Job")
        old_uid = c.get_run("e2e")["metadata"]["uid"]
        c.delete_run("e2e")
        c.kubelet.hold.clear()
        c.create_run(run_body(spec={"iterations": 1, "generation": {"maxNewTokens": 16}}))  # a fixed spec
        new_uid = c.get_run("e2e")["metadata"]["uid"]
        assert new_uid != old_uid
        st = c.wait(lambda: (s := _status(c)).get("reason") == "WaitingForOldObjects" and s, 10, "the new run to wait")
        assert "another SpinRun of this name" in _cond(st, "Progressing")["message"]
        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        assert run["status"]["phase"] == "Complete", run["status"]
        for job in c.jobs().values():
            assert [r["uid"] for r in job["metadata"]["ownerReferences"]] == [new_uid], job["metadata"]["name"]
        creations = c.job_creations()
        # the old run's gen and convert were done: the new run made and ran its own
        assert creations.count("e2e-it0-gen") == 2 and creations.count("e2e-it0-convert") == 2
        tally.add("faults.run_recreated_same_name", 1)
        tally.add("observed.children_adopted_from_old_run", 0)


def test_a_spinrun_can_be_deleted_with_the_operator_gone(tmp_path: Path, tally: Tally) -> None:
    """The emulator keeps an object with finalizers until they are removed (kmock 0.8 does), as
    an API server does: with the operator uninstalled, nobody would remove kopf's finalizer."""
    with cluster(tmp_path) as c:
        c.kubelet.hold.add("it0-gen")
        c.start_operator()
        c.create_run(run_body())
        c.wait(lambda: "e2e-it0-gen" in c.jobs(), 30, "a step running")
        time.sleep(0.5)
        assert not c.get_run("e2e")["metadata"].get("finalizers"), "the operator put a finalizer on the SpinRun"
        c.stop_operator()
        c.delete_run("e2e")
        assert not c.run_exists("e2e"), "deletion hangs on a finalizer nobody removes"
        tally.add("faults.deleted_with_operator_gone", 1)
        tally.add("observed.deletions_hung", 0)


def test_an_older_operators_finalizer_is_removed_at_start(tmp_path: Path, tally: Tally) -> None:
    with cluster(tmp_path) as c:
        body = run_body()
        body["metadata"]["finalizers"] = ["spin.dev/finalizer"]  # left by an operator with a kopf timer
        c.create_run(body)
        c.start_operator()  # the upgraded operator finds it
        c.wait(lambda: not c.get_run("e2e")["metadata"].get("finalizers"), 10, "the old finalizer removed")
        c.stop_operator()
        c.delete_run("e2e")
        assert not c.run_exists("e2e")
        tally.add("observed.old_finalizers_left", 0)


# --------------------------------------------------------------------------- preemption and exit codes


@pytest.mark.parametrize("policy", [True, False], ids=["with-pod-failure-policy", "as-before"])
def test_preempted_pods_cost_no_retry(policy: bool, tmp_path: Path, tally: Tally) -> None:
    with cluster(tmp_path, pods=True, gc_delay=0.2) as c:
        c.kubelet.honour_pod_failure_policy = policy
        c.kubelet.disruptions.update({("it0-convert", 0): 1, ("it0-train", 0): 2})
        c.start_operator()
        c.create_run(run_body(spec={"iterations": 1, "backoffLimit": 1}))
        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        st = run["status"]
        retries = sum(s["retries"] for it in st["iterations"] for s in it["steps"])
        assert len(c.kubelet.disrupted) >= 2
        if policy:
            assert st["phase"] == "Complete", st
            assert retries == 0 and c.job_creations().count("e2e-it0-train") == 1
        else:  # each preemption was a failed attempt: training spent its one retry, then failed the run
            assert st["phase"] == "Failed" and "train of iteration 0 failed 2 time(s)" in st["message"], st
        tally.add(f"faults.pod_preempted.{'policy' if policy else 'no_policy'}", len(c.kubelet.disrupted))
        tally.add(f"observed.step_retries_spent.{'policy' if policy else 'no_policy'}", retries)


@pytest.mark.parametrize("policy", [True, False], ids=["with-pod-failure-policy", "as-before"])
def test_a_bad_spec_exit_code_fails_at_once(policy: bool, tmp_path: Path, tally: Tally) -> None:
    with cluster(tmp_path, pods=True) as c:
        c.kubelet.honour_pod_failure_policy = policy
        c.kubelet.exit_codes[("it0-convert", 0)] = errors.EXIT_BAD_SPEC
        c.start_operator()
        c.create_run(run_body(spec={"backoffLimit": 3}))
        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        st = run["status"]
        attempts = c.job_creations().count("e2e-it0-convert")
        assert st["phase"] == "Failed", st
        if policy:
            assert attempts == 1 and "exit code a retry cannot fix" in st["message"]
        else:
            assert attempts == 4
        tally.add(f"observed.attempts_on_exit_78.{'policy' if policy else 'no_policy'}", attempts)


# --------------------------------------------------------------------------- pods that cannot start


@pytest.mark.parametrize("trouble", ["Unschedulable", "ImagePullBackOff", "CreateContainerConfigError", "ClaimPending"])
def test_a_pod_that_cannot_start_is_reported_and_the_run_continues_once_fixed(trouble: str, tmp_path: Path, tally: Tally) -> None:
    with cluster(tmp_path, pods=True, gc_delay=0.2) as c:
        c.kubelet.troubles[("it0-gen", 1)] = trouble
        c.start_operator()
        c.create_run(run_body(spec={"iterations": 1}))
        st = c.wait(lambda: (s := _status(c)).get("reason") == trouble and s, 30, f"{trouble} reported")
        pc = _cond(st, "Progressing")
        assert pc["status"] == "False" and "e2e-it0-gen-1-" in pc["message"], pc
        reasons = wait_event(c, "e2e", trouble)
        assert reasons.count(trouble) == 1
        del c.kubelet.troubles[("it0-gen", 1)]  # the image pushed, the Secret created, a node added
        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        assert run["status"]["phase"] == "Complete", run["status"]
        tally.add(f"faults.pod_{trouble}", 1)


def test_a_pod_that_never_starts_fails_the_run_after_the_grace_period(tmp_path: Path, tally: Tally) -> None:
    with cluster(tmp_path, pods=True) as c:
        c.kubelet.troubles[("it0-convert", 0)] = "ImagePullBackOff"
        c.start_operator()
        t0 = time.monotonic()
        c.create_run(run_body(spec={"podStartupTimeoutSeconds": 3}))
        run = c.wait_phase("e2e", ("Complete", "Failed"), 30)
        waited = time.monotonic() - t0
        st = run["status"]
        assert st["phase"] == "Failed" and st["reason"] == "ImagePullBackOff", st
        assert "podStartupTimeoutSeconds (3s)" in st["message"]
        assert "e2e-it0-convert" not in c.jobs() or c.jobs()["e2e-it0-convert"]["status"].get("active", 0) == 0
        tally.add("observed.seconds_until_a_stuck_step_failed", int(waited))


def test_multi_node_training_reports_how_many_pods_it_waits_for(tmp_path: Path, tally: Tally) -> None:
    spec = {"iterations": 1, "training": {"nodes": 2}, "storage": {"newClaim": {"accessModes": ["ReadWriteMany"]}}}
    with cluster(tmp_path, pods=True, gc_delay=0.2) as c:
        c.kubelet.troubles[("it0-train", 1)] = "ContainerCreating"  # scheduled, not running yet
        c.kubelet.hold.add("it0-train")
        c.start_operator()
        c.create_run(run_body(spec=spec))
        st = c.wait(lambda: (s := _status(c)).get("reason") == "WaitingForPods" and s, 30, "waiting for pods")
        assert "waiting for 1 of 2 pods" in st["message"], st


# --------------------------------------------------------------------------- spec changes mid-run


def test_lowering_iterations_mid_run_stops_the_running_job_then_completes(tmp_path: Path, tally: Tally) -> None:
    with cluster(tmp_path, gc_delay=0.2) as c:
        c.kubelet.hold.add("it1-gen")
        c.start_operator()
        c.create_run(run_body(spec={"iterations": 3}))
        c.wait(lambda: "e2e-it1-gen" in c.jobs(), 30, "iteration 1 running")
        c.patch_spec("e2e", {"iterations": 1})
        run = c.wait_phase("e2e", ("Complete", "Failed"), 30)
        assert run["status"]["phase"] == "Complete" and run["status"]["completedIterations"] == 1
        assert "e2e-it1-gen" not in c.jobs(), "the Job of a dropped iteration kept running"
        assert "StoppingIterations" in wait_event(c, "e2e", "StoppingIterations")
        tally.add("observed.jobs_left_running_after_iterations_lowered", 0)


def test_an_invalid_spec_mid_run_suspends_its_jobs_until_fixed(tmp_path: Path, tally: Tally) -> None:
    with cluster(tmp_path) as c:
        c.kubelet.hold.add("it0-convert")
        c.start_operator()
        c.create_run(run_body(spec={"iterations": 1}))
        c.wait(lambda: "e2e-it0-convert" in c.jobs(), 30, "convert running")
        c.patch_spec("e2e", {"training": {"maxLength": 16, "maxPromptLength": 32}})
        st = c.wait(lambda: _cond(s := _status(c), "Failed").get("status") == "True" and s, 10, "Failed condition")
        assert _cond(st, "Failed")["reason"] == "ValidationFailed"
        c.wait(lambda: c.jobs()["e2e-it0-convert"]["spec"]["suspend"] is True, 10, "the Job suspended")
        c.kubelet.hold.clear()
        c.patch_spec("e2e", {"training": {"maxLength": 64}})
        run = c.wait_phase("e2e", ("Complete",), 30)
        assert _cond(run["status"], "Failed")["status"] == "False"
        tally.add("observed.jobs_running_while_spec_invalid", 0)
