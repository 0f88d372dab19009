"""Faults the real control plane cannot make by itself, made by the fault proxy
(tests/reliability/fault_proxy.py) between the `spin-operator` process and the real apiserver:
503 storms and slow answers, a create answered 504 after it was stored, and a watch gap that ends
in 410 Gone (issue #20, item 7). The Jobs' creations are counted by the apiserver's audit log."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube import Kube
from tests.operator.e2e import E2E, run_body
from tests.reliability import test_real_faults as real
from tests.reliability.conftest import Tally
from tests.reliability.fault_proxy import Fault, FaultProxy, fault_proxy
from tests.reliability.test_real_faults import (
    JOBS_OF_ONE_ITERATION,
    ONE_ITERATION,
    OperatorProcess,
    complete,
    duplicates,
    reran,
    retries,
    running,
)

#: The fixtures of the real-fault tests: a namespace of the test's own, and afterwards no request
#: of the operator's refused by the chart's RBAC.
c, outages = real.c, real.outages


@pytest.fixture()
def proxy(kube: Kube) -> Iterator[FaultProxy]:
    with fault_proxy(kube.state) as p:
        yield p


def through(op: OperatorProcess, proxy: FaultProxy, tmp_path: Path) -> OperatorProcess:
    """The operator's requests go through the proxy (same token, same RBAC)."""
    op.kubeconfig = proxy.kubeconfig(op.kubeconfig, tmp_path / "operator-via-proxy.yaml")
    return op


def test_503_storms_and_slow_answers_cost_a_delay_not_a_duplicate(c: E2E, proxy: FaultProxy, tmp_path: Path,
                                                                  tally: Tally) -> None:
    """For 30 s, a third of the operator's requests (reads, writes, watches) are answered 503 and a
    fifth of the rest wait 2 s; the first two Job creates are stored and answered 504. The run
    completes; each Job was created once (the audit log), no step ran twice, no retry was spent."""
    op = through(OperatorProcess(c, tmp_path / "operator.log", {"SPIN_RESYNC_SECONDS": "3"}), proxy, tmp_path)
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
    op = through(OperatorProcess(c, tmp_path / "operator.log", {"SPIN_INDEX_AUDIT_SECONDS": "2"}), proxy, tmp_path)
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
