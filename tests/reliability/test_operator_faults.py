"""Operator faults besides a kill (the operator runs as the `spin-operator` process):
child Jobs deleted by hand, the SpinRun deleted mid-run, and an API server answering
5xx/409 bursts and dropping or expiring watch streams."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.operator.harness import Cluster
from tests.operator.test_e2e import run_body
from tests.reliability.conftest import Tally
from tests.reliability.faulty import Fault, FaultPlan, Zygote, faulty_cluster, operator_process, plan_of

pytestmark = pytest.mark.e2e

ALL_JOBS = sorted(f"e2e-it{k}-{s}" for k in range(2) for s in ("gen", "convert", "train", "eval"))


def delete_job(c: Cluster, name: str) -> None:
    """`kubectl delete job NAME` (background propagation)."""
    client.BatchV1Api(c.api).delete_namespaced_job(name, c.namespace, _preload_content=False)


def no_secret_requests(c: Cluster) -> list[dict[str, Any]]:
    return [r for r in c.emulator.requests() if r["resource"] == "secrets"]


def owned_children(c: Cluster) -> dict[str, list[dict[str, Any]]]:
    core, batch = client.CoreV1Api(c.api), client.BatchV1Api(c.api)
    import json

    out = {}
    for kind, lister in (("Job", batch.list_namespaced_job), ("ConfigMap", core.list_namespaced_config_map),
                         ("PersistentVolumeClaim", core.list_namespaced_persistent_volume_claim)):
        items = json.loads(lister(c.namespace, _preload_content=False).data)["items"]
        out.update({f"{kind}/{o['metadata']['name']}": o["metadata"].get("ownerReferences") or [] for o in items})
    return out


def test_child_job_deleted_by_hand_is_recreated_only_when_its_step_is_not_done(tmp_path: Path, tally: Tally, zygote: Zygote) -> None:
    with faulty_cluster(tmp_path) as c, operator_process(c, tmp_path / "operator.log", zygote=zygote) as op:
        c.kubelet.hold.add("it0-convert")
        op.start()
        c.create_run(run_body())
        c.wait(lambda: "e2e-it0-convert" in c.jobs(), 60, "convert Job")
        c.wait_phase("e2e", "Converting", 30)

        delete_job(c, "e2e-it0-gen")  # done: must stay deleted
        delete_job(c, "e2e-it0-convert")  # running: must come back, once
        plan = plan_of(c)
        c.wait(lambda: plan.admitted_creates().count("e2e-it0-convert") == 2, 30, "the running step's Job recreated")
        time.sleep(1.0)
        assert "e2e-it0-gen" not in c.jobs(), "a finished step's Job was recreated"
        c.kubelet.hold.clear()
        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        assert run["status"]["phase"] == "Complete", (run["status"], op.tail())

        delete_job(c, "e2e-it1-train")  # after completion: Complete is sticky
        time.sleep(1.5)
        assert "e2e-it1-train" not in c.jobs()

        created = Counter(plan.admitted_creates())
        assert created == Counter({**{n: 1 for n in ALL_JOBS}, "e2e-it0-convert": 2}), created
        starts = Counter(c.kubelet.pod_starts)
        assert starts[("e2e-it0-gen", 0)] == starts[("e2e-it0-gen", 1)] == 1, "generation ran again"
        st = c.get_run("e2e")["status"]
        convert = next(s for s in st["iterations"][0]["steps"] if s["step"] == "convert")
        assert convert["retries"] == 0, "a deleted Job is not a failed attempt"
        assert not no_secret_requests(c)
        tally.add("faults.job_deleted_by_hand", 3)
        tally.add("observed.duplicate_job_creations", 0)
        tally.add("observed.steps_recomputed", sum(n - 1 for n in starts.values() if n > 1))


def test_spinrun_deleted_mid_run_stops_the_operator_cleanly(tmp_path: Path, tally: Tally, zygote: Zygote) -> None:
    with faulty_cluster(tmp_path) as c, operator_process(c, tmp_path / "operator.log", zygote=zygote) as op:
        c.kubelet.hold.add("it0-train")
        op.start()
        c.create_run(run_body())
        c.wait(lambda: "e2e-it0-train" in c.jobs(), 60, "training Job")
        run = c.get_run("e2e")
        uid = run["metadata"]["uid"]
        children = owned_children(c)
        assert {"Job/e2e-it0-gen", "Job/e2e-it0-convert", "Job/e2e-it0-train", "ConfigMap/e2e-it0-spec",
                "PersistentVolumeClaim/e2e-data"} <= set(children)
        for name, refs in children.items():
            if name == "PersistentVolumeClaim/e2e-data":
                assert refs == [], "the claim outlives the run (storage.newClaim.deleteWithRun is false)"
                continue
            assert [(r["kind"], r["name"], r["uid"], r["controller"], r["blockOwnerDeletion"]) for r in refs] == [
                ("SpinRun", "e2e", uid, True, True)], name

        c.delete_run("e2e")
        c.wait(lambda: "e2e" not in {o["metadata"]["name"] for o in _spinruns(c)}, 30, "the SpinRun gone (finalizer removed)")
        before = len(c.job_creations())
        c.kubelet.hold.clear()  # the orphaned training Job finishes: its event reaches the operator
        c.wait(lambda: "e2e-it0-train" in c.kubelet.done_at, 30, "the orphaned Job to finish")
        gone = c.collect_garbage(uid)
        assert "e2e-it0-train" in gone
        time.sleep(1.5)
        assert len(c.job_creations()) == before, "Jobs created after the SpinRun was deleted"
        assert c.jobs() == {}
        assert op.alive(), op.tail()
        assert op.errors() == [], op.tail()
        assert not no_secret_requests(c)
        op.stop()
        assert op.returncode == 0, op.tail()
        tally.add("faults.spinrun_deleted_mid_run", 1)
        tally.add("observed.jobs_created_after_deletion", len(c.job_creations()) - before)


def _spinruns(c: Cluster) -> list[dict[str, Any]]:
    from spin_runtime.api.spec import GROUP, PLURAL, VERSION

    return c.custom.list_namespaced_custom_object(GROUP, VERSION, c.namespace, PLURAL)["items"]


def api_fault_plan() -> FaultPlan:
    """Bursts of errors on every kind of request the operator makes, and broken watches."""
    plan = FaultPlan()
    for f in [
        Fault("error", action="create", resource="jobs", status=500, times=2),  # refused, not created
        Fault("error-after", action="create", resource="jobs", status=504, times=2),  # created, client told 504
        Fault("error", action="create", resource="configmaps", status=503, times=1),
        Fault("error", action="create", resource="persistentvolumeclaims", status=500, times=1),
        Fault("error", action="update", resource="spinruns", subresource="status", status=409, times=3),
        Fault("error", action="update", resource="spinruns", subresource="status", status=500, times=2),
        Fault("error", action="update", resource="spinruns", subresource=None, status=500, times=2, agent="kopf"),
        Fault("error", action="list", resource="jobs", status=500, times=2, agent="kopf"),
        Fault("error", action="list", resource="spinruns", status=502, times=1, agent="kopf"),
        Fault("error", action="create", resource="events", status=500, times=1),
        Fault("expire", action="watch", resource="spinruns", times=2),
        Fault("expire", action="watch", resource="jobs", times=1),
        Fault("drop", action="watch", resource="jobs", times=3, after=1.0),
        Fault("drop", action="watch", resource="spinruns", times=2, after=1.5),
        Fault("drop", action="watch", resource="configmaps", times=2, after=1.0),
    ]:
        plan.add(f)
    return plan


def test_api_errors_and_broken_watches_do_not_stop_the_run_or_duplicate_jobs(tmp_path: Path, tally: Tally) -> None:
    plan = api_fault_plan()
    env = {"SPIN_RESYNC_SECONDS": "2"}  # a trigger lost to an error is picked up by the next resync
    with faulty_cluster(tmp_path, plan) as c, operator_process(c, tmp_path / "operator.log", env) as op:
        op.start()
        c.create_run(run_body())
        try:
            run = c.wait_phase("e2e", ("Complete", "Failed"), 150)
        except AssertionError as e:
            raise AssertionError(f"{e}\nfaults: {[(f.kind, f.action, f.resource, f.injected) for f in plan.faults]}\n{op.tail()}") from e
        assert run["status"]["phase"] == "Complete", (run["status"], op.tail())
        admitted = Counter(plan.admitted_creates("jobs"))
        assert admitted == Counter(ALL_JOBS), admitted
        assert sorted(c.jobs()) == ALL_JOBS
        conflicts = [a for a in plan.answers if a.action == "create" and a.resource == "jobs" and a.status == 409]
        # every create beyond the one that stored a Job was refused (an injected error, or 409
        # AlreadyExists for a retry of a create the operator was told had failed)
        extra = [a for a in plan.answers if a.action == "create" and a.resource == "jobs" and not a.applied]
        assert all(a.fault == "error" or a.status == 409 for a in extra), extra
        starts = Counter(c.kubelet.pod_starts)
        assert all(n == 1 for n in starts.values()), starts
        run_dir = tmp_path / "data" / "runs" / "e2e"
        assert (run_dir / "iter-1" / "DONE").exists()
        assert not no_secret_requests(c)
        unused = [(f.kind, f.action, f.resource) for f in plan.faults if f.injected < f.times]
        assert not unused, f"faults never triggered: {unused}"
        assert op.alive()

        by_kind = Counter()
        for f in plan.faults:
            key = {"error": f"api_{f.status}", "error-after": f"api_{f.status}_after_write", "drop": "watch_dropped",
                   "expire": "watch_expired_410"}[f.kind]
            by_kind[key] += f.injected
        for key, n in by_kind.items():
            tally.add(f"faults.{key}", n)
        tally.add("observed.duplicate_job_creations", sum(admitted.values()) - len(admitted))
        tally.add("observed.steps_recomputed", sum(n - 1 for n in starts.values()))
        tally.add("observed.create_retries_answered_409", len(conflicts))


def test_one_503_on_reading_the_spinrun_is_retried_within_seconds(tmp_path: Path, tally: Tally) -> None:
    plan = FaultPlan()
    plan.add(Fault("error", action="fetch", resource="spinruns", status=503, times=1, agent="spin-operator"))
    with faulty_cluster(tmp_path, plan) as c, operator_process(c, tmp_path / "operator.log") as op:
        op.start()
        c.create_run(run_body())
        backoff = "will try again in 60 seconds"

        def outcome() -> str | None:
            """What happened first: kopf's long backoff, or the run getting past its read (any
            phase after Pending; a fast run may be past Generating by the time it is read)."""
            if backoff in op.tail(100_000):
                return "backed off"
            phase = (c.get_run("e2e").get("status") or {}).get("phase")
            return phase if phase in ("Generating", "Converting", "Training", "Evaluating", "Complete") else None

        seen = c.wait(outcome, 30, "the run to start or the operator to back off")
        tally.add("faults.api_503_on_read", plan.injected())
        assert seen != "backed off", "a 503 on GET spinrun is retried only after kopf's 60 s default backoff"
        assert plan.injected() == 1, "the fault was injected once"


def test_fault_plan_counts_only_operator_requests(tmp_path: Path) -> None:
    """The harness's own requests (kubelet, test) are never faulted."""
    plan = FaultPlan()
    plan.add(Fault("error", action="list", resource="jobs", status=500, times=100))
    with faulty_cluster(tmp_path, plan) as c:
        c.kubelet.hold.add("x")
        time.sleep(0.3)
        assert c.jobs() == {}
        assert plan_of(c).injected() == 0 and c.kubelet.errors == []
