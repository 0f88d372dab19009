"""Faults the real control plane cannot make by itself, made by the fault proxy
(tests/reliability/fault_proxy.py) between the `spin-operator` process and the real apiserver:
503 storms and slow answers, a create answered 504 after it was stored, and a watch gap that ends
in 410 Gone (issue #20, item 7). The Jobs' creations are counted by the apiserver's audit log."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.operator.e2e import E2E, run_body
from tests.reliability.conftest import Tally
from tests.reliability.fault_proxy import Fault, FaultProxy
from tests.reliability.real_cluster import (
    JOBS_OF_ONE_ITERATION,
    ONE_ITERATION,
    OperatorProcess,
    complete,
    duplicates,
    failed_pod_logs,
    reran,
    retries,
    running,
    through,
)


def test_503_storms_and_slow_answers_cost_a_delay_not_a_duplicate(c: E2E, proxy: FaultProxy, tmp_path: Path,
                                                                  tally: Tally) -> None:
    """For 30 s, a third of the operator's requests (reads, writes, watches) are answered 503 and a
    fifth of the rest wait 2 s; the first two Job creates are stored and answered 504. The run
    completes; each Job was created once (the audit log), no step ran twice, no retry was spent."""
    op = through(OperatorProcess(c.kube, c.namespace, tmp_path / "operator.log", {"SPIN_RESYNC_SECONDS": "3"}), proxy, tmp_path)
    lost = proxy.add(Fault("error-after", verbs=("create",), resource="jobs", status=504, times=2))
    try:
        op.start()
        storm = proxy.add(Fault("error", status=503, times=None, probability=1 / 3))
        slow = proxy.add(Fault("slow", delay=2.0, times=None, probability=0.2))
        calm = threading.Timer(30.0, lambda: (proxy.remove(storm), proxy.remove(slow)))
        calm.start()
        c.create_run(run_body(spec=ONE_ITERATION))
        run = complete(c, 240)
        calm.cancel()
        creations = c.job_creations()
        assert sorted(creations) == JOBS_OF_ONE_ITERATION, duplicates(creations) or creations
        assert not reran(c.kube), reran(c.kube)
        assert retries(run) == 0
        assert op.proc is not None and op.proc.poll() is None, op.tail()
    finally:
        op.kill()
        proxy.remove(lost)
    answered = Counter(a.fault for a in proxy.answers if a.fault)
    assert lost.fired == 2 and answered["error"] > 10, answered
    tally.add("faults.api_503_storm", answered["error"])
    tally.add("faults.api_slow_2s", answered["slow"])
    tally.add("faults.api_504_after_write", answered["error-after"])
    tally.add("observed.duplicate_job_creations", len(creations) - len(set(creations)))
    print(f"503 storm: {answered['error']} answers 503, {answered['slow']} slow, {answered['error-after']} 504 after "
          f"the write, of {len(proxy.answers)} requests; run Complete")


def test_a_service_deleted_during_a_watch_gap_is_recreated(c: E2E, proxy: FaultProxy, tmp_path: Path, tally: Tally) -> None:
    """Item 7. Two-node training runs (its headless Service gives the master address). The
    operator's Service watch is cut and held (a gap); the Service is deleted; the gap ends in 410
    Gone and kopf lists Services again. kopf's index keeps the deleted Service (a relist drops
    nothing), so before the fix the operator never recreated it. Now the index audit finds the
    ghost twice and kopf restarts; the Service is back and the run completes."""
    spec = {**ONE_ITERATION, "training": {"nodes": 2}, "storage": {"newClaim": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}}}
    c.hold("it0-train")
    op = through(OperatorProcess(c.kube, c.namespace, tmp_path / "operator.log", {"SPIN_INDEX_AUDIT_SECONDS": "2"}), proxy, tmp_path)
    try:
        op.start()
        c.create_run(run_body(spec=spec))
        c.wait(lambda: running(c, "e2e-it0-train", 2), 120, "two-node training running")
        service = services(c)["e2e-it0-train"]
        gap = proxy.add(Fault("gap", verbs=("watch",), resource="services", times=None))
        assert proxy.cut_watches("services") >= 1, "the operator watches Services"
        c.wait(lambda: gap.fired >= 1, 30, "the operator's next Service watch held in the gap")
        c.core.delete_namespaced_service("e2e-it0-train", c.namespace)
        c.wait(lambda: "e2e-it0-train" not in services(c), 30, "the Service deleted")
        time.sleep(1.0)
        t0 = time.monotonic()
        gap.release()
        back = c.wait(lambda: services(c).get("e2e-it0-train"), 90, "the Service recreated after the gap")
        recreated = time.monotonic() - t0
        assert back["metadata"]["uid"] != service["metadata"]["uid"]
        assert any(a.status == 410 for a in proxy.answers if a.call.resource == "services"), "the gap ended in 410 Gone"
        c.release()
        run = complete(c)
        creations = c.job_creations()
        assert sorted(creations) == JOBS_OF_ONE_ITERATION, duplicates(creations) or creations
        assert retries(run) == 0
        log = op.log.read_text(errors="replace")
        assert "children the API no longer lists" in log and "services" in log, log[-3000:]
    finally:
        op.kill()
    tally.add("faults.watch_gap_410", 1)
    tally.add("observed.services_never_recreated", 0)
    print(f"watch gap: the Service deleted in the gap was recreated {recreated:.1f}s after the 410")


def services(c: E2E) -> dict[str, dict[str, Any]]:
    """The namespace's Services by name: {"metadata": {"uid": ...}}."""
    return {s.metadata.name: {"metadata": {"uid": s.metadata.uid}} for s in c.core.list_namespaced_service(c.namespace).items}


# --------------------------------------------------------------------------- moved from the emulator suite

TWO_ITERATIONS = {"iterations": 2}
JOBS_OF_TWO_ITERATIONS = sorted(f"e2e-it{k}-{s}" for k in range(2) for s in ("gen", "convert", "train", "eval"))


def api_faults() -> list[Fault]:
    """Bursts of errors on every kind of request the operator makes, and broken watches (the
    emulator suite's plan, now between the operator and the real apiserver)."""
    return [
        Fault("error", verbs=("create",), resource="jobs", status=500, times=2),  # refused, not created
        Fault("error-after", verbs=("create",), resource="jobs", status=504, times=2),  # created, client told 504
        Fault("error", verbs=("create",), resource="configmaps", status=503),
        Fault("error", verbs=("create",), resource="persistentvolumeclaims", status=500),
        Fault("error", verbs=("patch",), resource="spinruns", subresource="status", status=409, times=3),
        Fault("error", verbs=("patch",), resource="spinruns", subresource="status", status=500, times=2),
        Fault("error", verbs=("patch",), resource="spinruns", status=500, times=2, agent="kopf"),
        Fault("error", verbs=("list",), resource="jobs", status=500, times=2, agent="kopf"),
        Fault("error", verbs=("list",), resource="spinruns", status=502, agent="kopf"),
        Fault("error", verbs=("create",), resource="events", status=500),
        Fault("expire", verbs=("watch",), resource="spinruns", times=2),
        Fault("expire", verbs=("watch",), resource="jobs"),
        Fault("cut", verbs=("watch",), resource="jobs", times=3, after=1.0),
        Fault("cut", verbs=("watch",), resource="spinruns", times=2, after=1.5),
        Fault("cut", verbs=("watch",), resource="configmaps", times=2, after=1.0),
    ]


def test_api_errors_and_broken_watches_do_not_stop_the_run_or_duplicate_jobs(c: E2E, proxy: FaultProxy, tmp_path: Path,
                                                                             tally: Tally) -> None:
    """Every fault of `api_faults` fires while a 2-iteration run goes; it completes, the apiserver
    stored each of its 8 Jobs once (the audit log), every step ran once, no retry was spent."""
    faults = [proxy.add(f) for f in api_faults()]
    op = through(OperatorProcess(c.kube, c.namespace, tmp_path / "operator.log", {"SPIN_RESYNC_SECONDS": "2"}), proxy, tmp_path)
    try:
        op.start(timeout=120)
        c.create_run(run_body(spec=TWO_ITERATIONS))
        try:
            run = complete(c, 240)
        except AssertionError as e:
            raise AssertionError(f"{e}\nfaults: {[(f.kind, f.verbs, f.resource, f.fired) for f in faults]}\n"
                                 f"failed pods: {failed_pod_logs(c)}\n{op.tail()}") from e
        creations = c.job_creations()
        assert sorted(creations) == JOBS_OF_TWO_ITERATIONS, duplicates(creations) or creations
        assert not reran(c.kube), reran(c.kube)
        assert retries(run) == 0
        assert op.proc is not None and op.proc.poll() is None, op.tail()
        unused = [(f.kind, f.verbs, f.resource, f.subresource, f.agent) for f in faults if f.fired < (f.times or 1)]
        assert not unused, f"faults never triggered: {unused}"
    finally:
        op.kill()
    by_kind = Counter(a.fault for a in proxy.answers if a.fault)
    for kind, n in by_kind.items():
        tally.add(f"faults.proxy_{kind.replace('-', '_')}", n)
    tally.add("observed.duplicate_job_creations", len(creations) - len(set(creations)))


def test_one_503_on_reading_the_spinrun_is_retried_within_seconds(c: E2E, proxy: FaultProxy, tmp_path: Path,
                                                                  tally: Tally) -> None:
    """The operator's first read of the SpinRun is answered 503: the run starts within seconds
    (the operator's own retry), not after kopf's 60 s back-off of a failed handler."""
    fault = proxy.add(Fault("error", verbs=("get",), resource="spinruns", status=503, agent="spin-operator"))
    op = through(OperatorProcess(c.kube, c.namespace, tmp_path / "operator.log"), proxy, tmp_path)
    try:
        op.start()
        c.create_run(run_body(spec=ONE_ITERATION))
        backoff = "will try again in 60 seconds"

        def outcome() -> str | None:
            if backoff in op.log.read_text(errors="replace"):
                return "backed off"
            phase = (c.get_run("e2e").get("status") or {}).get("phase")
            return phase if phase in ("Generating", "Converting", "Training", "Evaluating", "Complete") else None

        seen = c.wait(outcome, 30, "the run to start or the operator to back off")
    finally:
        op.kill()
    assert fault.fired == 1, "the fault was injected once"
    assert seen != "backed off", "a 503 on GET spinrun is retried only after kopf's 60 s default backoff"
    tally.add("faults.api_503_on_read", 1)
