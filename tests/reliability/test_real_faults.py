"""The fault suite on the real control plane (tests/kube.py; issue #20): the faults a cluster makes
by itself, made by the real components — kube-apiserver and etcd SIGKILLed and started again
(`spin_cluster.controlplane.crashed`), the operator process SIGKILLed, a pod evicted through the
Eviction API, a node deleted, the CRD deleted. The operator holds the chart's RBAC; its Jobs are
run by the real Job controller, collected by the real garbage collector and pod GC, their pods run
by the process kubelet in the instant image (steps that finish at once unless held). Each test
tallies what the user loses (tests/reliability/conftest.py)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spin_cluster import controlplane
from spin_cluster.api import path
from spin_runtime.plan import stages
from tests.kube import Kube, wait
from tests.operator.e2e import E2E, job_done, run_body
from tests.reliability.conftest import Tally
from tests.reliability.real_cluster import (
    JOBS_OF_ONE_ITERATION,
    ONE_ITERATION,
    OperatorProcess,
    complete,
    duplicates,
    iso,
    reran,
    retries,
    running,
)

pytestmark = pytest.mark.e2e

#: How long a crashed component stays down (longer than the kubelet's lease renewal period).
OUTAGE_SECONDS = 12.0


# --------------------------------------------------------------------------- helpers


class PodHistory:
    """Every version of every pod of a namespace, from a watch (the kubelet removes an evicted pod
    a moment after its last status: polling could miss that version)."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.api, self.namespace = kube.api, namespace
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PodHistory:
        listing = self.api.get(path("", "v1", "pods", self.namespace))
        for pod in listing.get("items") or []:
            self.versions.setdefault(pod["metadata"]["name"], []).append(pod)
        self.rv = listing["metadata"]["resourceVersion"]
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _watch(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(Exception):
                for event in self.api.watch(path("", "v1", "pods", self.namespace), timeout_seconds=2,
                                            resourceVersion=self.rv):
                    obj = event.get("object") or {}
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self.versions.setdefault(obj["metadata"]["name"], []).append(obj)
                        self.rv = obj["metadata"]["resourceVersion"]
                    if self.stop.is_set():
                        return


def condition(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((x for x in (pod.get("status") or {}).get("conditions") or [] if x["type"] == kind), {})


# --------------------------------------------------------------------------- control plane crashes


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_control_plane_crash_mid_step_loses_nothing(component: str, c: E2E, tally: Tally,
                                                      outages: list[tuple[str, str]]) -> None:
    """SIGKILL while training runs; the step ends while the component is down (its marker is on the
    claim, its pod's status cannot be written); the same binary with the same flags starts again
    (etcd on its data folder). The kubelet reports the pod once the API answers, the Job controller
    completes the Job, the operator goes on: each Job was created once, no step ran twice."""
    c.hold("it0-train")
    c.start_operator()
    c.create_run(run_body(spec=ONE_ITERATION))
    c.wait(lambda: running(c, "e2e-it0-train"), 120, "training running")
    marker = c.run_dir() / stages.Step(0, "train").marker
    t0 = time.monotonic()
    with controlplane.crashed(c.kube.state, component):
        c.release()
        wait(lambda: marker.exists(), 30, "the training step to end while the API is down", errors=())
        ended_down = time.monotonic()
        # down long enough for a node heartbeat (every 10 s) and the pod's last status to hit the outage
        time.sleep(max(0.0, OUTAGE_SECONDS - (ended_down - t0)))
    back = time.monotonic()
    outages.append((iso(time.time() - (back - t0)), iso(time.time() + 10)))
    c.wait(lambda: job_done(c.jobs().get("e2e-it0-train")), 120, "the Job controller to complete training")
    job_done_at = time.monotonic()
    run = complete(c)
    done = time.monotonic()
    creations = c.job_creations()
    assert sorted(creations) == JOBS_OF_ONE_ITERATION, duplicates(creations) or creations
    assert not reran(c.kube), reran(c.kube)
    assert retries(run) == 0
    assert c.operator.thread.is_alive()
    tally.add(f"faults.{component}_sigkill", 1)
    tally.add("observed.duplicate_job_creations", len(creations) - len(set(creations)))
    tally.add("observed.steps_recomputed", sum(n - 1 for n in reran(c.kube).values()))
    tally.add(f"observed.{component}_seconds_down", round(back - t0))
    tally.add(f"observed.{component}_seconds_back_to_job_complete", round(job_done_at - back))
    tally.add(f"observed.{component}_seconds_back_to_complete", round(done - back))
    print(f"{component}: down {back - t0:.1f}s (step ended {ended_down - t0:.1f}s in); back: Job Complete "
          f"{job_done_at - back:.1f}s later, run Complete {done - back:.1f}s later")


def test_the_operator_sigkilled_mid_step_and_restarted_duplicates_nothing(c: E2E, tmp_path: Path, tally: Tally) -> None:
    """Killed while training runs; the step completes while it is down (the boundary passes with
    no operator); started again, it creates the next Job once; killed and started again with
    evaluation in flight. Each Job created once, no step ran twice, the run completes."""
    c.hold("it0-train", "it0-eval")
    op = OperatorProcess(c.kube, c.namespace, tmp_path / "operator.log")
    try:
        op.start()
        c.create_run(run_body(spec=ONE_ITERATION))
        c.wait(lambda: running(c, "e2e-it0-train"), 120, "training running")
        op.kill()
        c.release("it0-train")
        c.wait(lambda: job_done(c.jobs().get("e2e-it0-train")), 60, "training done while the operator is down")
        t0 = time.monotonic()
        op.start()
        c.wait(lambda: running(c, "e2e-it0-eval"), 120, "evaluation running after the restart")
        recovered = time.monotonic() - t0
        op.kill()
        op.start()
        c.release()
        run = complete(c)
        creations = c.job_creations()
        assert sorted(creations) == JOBS_OF_ONE_ITERATION, duplicates(creations) or creations
        assert not reran(c.kube), reran(c.kube)
        assert retries(run) == 0
        assert not op.tracebacks(), op.tail()
    finally:
        op.kill()
    tally.add("faults.operator_sigkill", 2)
    tally.add("observed.duplicate_job_creations", len(creations) - len(set(creations)))
    tally.add("observed.steps_recomputed", sum(n - 1 for n in reran(c.kube).values()))
    tally.add("observed.operator_seconds_restart_to_next_step", round(recovered))
    print(f"operator: restarted and started the next step in {recovered:.1f}s")


# --------------------------------------------------------------------------- eviction


def test_a_training_pod_evicted_costs_no_retry(c: E2E, tally: Tally) -> None:
    """policy/v1 Eviction of the running training pod: the apiserver marks it DisruptionTarget, the
    kubelet stops it within its grace period and reports it Failed, the Job's podFailurePolicy
    ignores it (the Job controller starts a replacement, counting no failure), the step's retries
    stay 0 and the Job is not recreated. Lost: the evicted attempt's work."""
    c.hold("it0-train")
    c.start_operator()
    c.create_run(run_body(spec=ONE_ITERATION))
    c.wait(lambda: c.starts("e2e-it0-train") == [0], 120, "the training step started (held)")
    (pod,) = running(c, "e2e-it0-train") or [None]
    name = pod["metadata"]["name"]
    with PodHistory(c.kube, c.namespace) as history:
        t0 = time.monotonic()
        c.kube.api.create(path("", "v1", "pods", c.namespace, name, "eviction"),
                          {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": c.namespace}})
        c.wait(lambda: c.starts("e2e-it0-train") == [0, 0], 120, "the replacement pod's training step started")
        replacement = [p for p in running(c, "e2e-it0-train") or [] if p["metadata"]["name"] != name]
        replaced = time.monotonic() - t0
        c.release()
        run = complete(c)
    last = history.versions[name][-1]
    disrupted = [v for v in history.versions[name] if condition(v, "DisruptionTarget").get("status") == "True"]
    assert disrupted, [v["status"].get("conditions") for v in history.versions[name]]
    assert condition(disrupted[0], "DisruptionTarget")["reason"] == "EvictionByEvictionAPI", disrupted[0]["status"]
    assert (last["status"]["phase"], condition(last, "DisruptionTarget").get("status")) == ("Failed", "True"), last["status"]
    assert replacement, "the step restarted in the evicted pod itself"
    job = c.jobs()["e2e-it0-train"]
    assert job["status"].get("failed", 0) == 0, job["status"]  # ignored by the podFailurePolicy
    assert c.job_creations().count("e2e-it0-train") == 1
    assert retries(run) == 0, run["status"]["iterations"]
    tally.add("faults.pod_evicted", 1)
    tally.add("observed.step_retries_spent_on_eviction", retries(run))
    tally.add("observed.seconds_eviction_to_replacement_running", round(replaced))
    print(f"eviction: replacement running {replaced:.1f}s after the Eviction")


# --------------------------------------------------------------------------- a node deleted


def test_a_node_deleted_under_a_running_shard_reruns_that_shard_alone(c: E2E, tally: Tally) -> None:
    """`kubectl delete node` under generation shard 1 (shard 0 has finished; the claim is
    ReadWriteMany, so no affinity keeps the shards together): the controller-manager's pod GC fails
    and removes the orphaned pod (DisruptionTarget, DeletionByPodGC), the kubelet stops its process,
    the Job controller reruns shard 1 on the other node. Shard 0 does not run again, the Job is not
    recreated, no retry is spent. Afterwards the kubelet is restarted, which registers the node again
    (as a real kubelet does)."""
    from spin_cluster.cluster import restart_kubelet

    c.hold("it0-gen/1")
    c.start_operator()
    c.create_run(run_body(spec={**ONE_ITERATION, "storage": {"newClaim": {"accessModes": ["ReadWriteMany"]}}}))
    c.wait(lambda: sorted(c.starts("e2e-it0-gen")) == [0, 1] and job_done_index(c, "e2e-it0-gen", 0), 120,
           "shard 0 done and shard 1 running (held)")
    (pod,) = [p for p in running(c, "e2e-it0-gen") or [] if p["metadata"]["annotations"].get(INDEX) == "1"]
    node = pod["spec"]["nodeName"]
    with PodHistory(c.kube, c.namespace) as history:
        t0 = time.monotonic()
        try:
            c.kube.kubectl("delete", "node", node)
            rerun = c.wait(lambda: [p for p in running(c, "e2e-it0-gen") or [] if p["metadata"]["name"] != pod["metadata"]["name"]
                                    and sorted(c.starts("e2e-it0-gen")) == [0, 1, 1]], 180, "shard 1 running again")
            recovered = time.monotonic() - t0
            c.release()
            run = complete(c)
        finally:
            restart_kubelet(c.kube.state)
    assert [p["spec"]["nodeName"] for p in rerun] != [node], "shard 1 reran on the deleted node"
    lost = history.versions[pod["metadata"]["name"]]
    assert condition(lost[-1], "DisruptionTarget").get("reason") == "DeletionByPodGC", lost[-1]["status"]
    assert sorted(c.starts("e2e-it0-gen")) == [0, 1, 1]
    assert c.job_creations().count("e2e-it0-gen") == 1
    assert retries(run) == 0, run["status"]["iterations"]
    tally.add("faults.node_deleted", 1)
    tally.add("observed.shards_rerun_besides_the_lost_one", 0)
    tally.add("observed.seconds_node_deleted_to_shard_rerunning", round(recovered))
    print(f"node deleted: shard 1 running again {recovered:.1f}s later")


INDEX = "batch.kubernetes.io/job-completion-index"


def job_done_index(c: E2E, job: str, index: int) -> bool:
    """Whether the Job controller counts `index` of `job` as completed."""
    done = ((c.jobs().get(job) or {}).get("status") or {}).get("completedIndexes") or ""
    return str(index) in done.replace("-", ",").split(",")


# --------------------------------------------------------------------------- the CRD deleted


def test_the_crd_deleted_with_runs_present_takes_them_and_their_children(
    c: E2E, caplog: pytest.LogCaptureFixture, tally: Tally
) -> None:
    """`kubectl delete crd spinruns.spin.dev` with a run in flight: the apiserver deletes the
    SpinRuns; the operator stays alive and logs no traceback. Whether the garbage collector takes
    the run's Jobs, pods and ConfigMaps while the CRD is gone is a race of upstream's (its monitor
    of the deleted kind can go before it has seen the SpinRuns' deletions; then the owner's kind
    cannot be resolved and the dependents are kept): observed here, not asserted. Once the CRD is
    applied again the collector resolves the owner, finds it gone, and takes them (asserted); the
    claim stays (no deleteWithRun)."""
    import logging

    caplog.set_level(logging.INFO)
    c.hold("it0-convert")
    c.start_operator()
    c.create_run(run_body(spec=ONE_ITERATION))
    c.wait(lambda: running(c, "e2e-it0-convert"), 120, "convert running")
    t0 = time.monotonic()
    with crd_deleted(c.kube):
        with contextlib.suppress(AssertionError):
            wait(lambda: not c.jobs() and not c.pods(), CRD_GONE_SECONDS, "the children collected while the CRD is gone")
        left = sorted(c.jobs())
        assert c.operator.thread.is_alive()
    c.wait(lambda: not c.jobs() and not c.pods(), 180, "the garbage collector to remove the Jobs and their pods")
    collected = time.monotonic() - t0
    configmaps = c.core.list_namespaced_config_map(c.namespace, label_selector="spin.dev/run=e2e").items
    assert not configmaps, [m.metadata.name for m in configmaps]
    assert "e2e-data" in c.pvcs(), "the claim outlives the run unless deleteWithRun"
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, tracebacks
    tally.add("faults.crd_deleted", 1)
    tally.add("observed.operator_tracebacks_on_crd_deletion", len(tracebacks))
    tally.add("observed.jobs_left_while_the_crd_was_gone", len(left))
    tally.add("observed.seconds_crd_deleted_to_children_collected", round(collected))
    print(f"crd deleted: Jobs left after {CRD_GONE_SECONDS:.0f}s without the CRD: {left}; all collected {collected:.1f}s "
          f"after the deletion")


#: How long the CRD stays deleted in the test above (the collector's discovery resync is 30 s).
CRD_GONE_SECONDS = 45.0


def test_a_run_created_after_the_crd_is_applied_again_is_reconciled(c: E2E, tmp_path: Path, tally: Tally) -> None:
    """The CRD deleted and applied again under a running `spin-operator` process. kopf rescans the
    group on each CRD watch event, and the new CRD's last event can come before discovery serves
    `spinruns` again: the operator then never watched SpinRuns again (before the fix: 2 runs in 7
    never reconciled, 60 s and 180 s waited). Now the operator notices the new CRD's uid once it is
    served and starts kopf again in the same process; a run created afterwards completes."""
    op = OperatorProcess(c.kube, c.namespace, tmp_path / "operator.log", {"SPIN_CRD_CHECK_SECONDS": "1"})
    try:
        op.start()
        with crd_deleted(c.kube):
            pass
        t0 = time.monotonic()
        c.create_run(run_body("again", spec=ONE_ITERATION))
        again = c.wait_phase("again", ("Complete", "Failed"), 90)
        assert again["status"]["phase"] == "Complete", again["status"]
        took = time.monotonic() - t0
        log = op.log.read_text(errors="replace")
        assert "The SpinRun CRD was applied again" in log and "starting it again" in log, log[-3000:]
        assert op.proc is not None and op.proc.poll() is None, "one process throughout"
        assert not op.tracebacks(), op.tail()
    finally:
        op.kill()
    tally.add("faults.crd_recreated", 1)
    tally.add("observed.runs_missed_after_crd_recreated", 0)
    print(f"crd applied again: the run created after it was Complete {took:.1f}s later")


@contextlib.contextmanager
def crd_deleted(kube: Kube) -> Iterator[None]:
    """The SpinRun CRD deleted (`kubectl delete crd`, waiting for its objects to go) for the body of
    the `with`, then applied again and Established."""
    try:
        kube.kubectl("delete", "crd", "spinruns.spin.dev", "--wait=true", "--timeout=120s")
        kube._crd = False
        yield
    finally:
        kube._crd = False
        kube.ensure_crd()


# --------------------------------------------------------------------------- Jobs deleted by hand


def test_a_child_job_deleted_by_hand_is_recreated_only_when_its_step_is_not_done(c: E2E, tally: Tally) -> None:
    """`kubectl delete job` of a finished step's Job and of the running step's Job: the running one
    comes back once (its step is not done; a deletion is not a failed attempt, so no retry is
    spent), the finished one stays deleted, nothing finished runs again; after the run is Complete
    a deleted Job stays deleted."""
    c.hold("it0-convert")
    c.start_operator()
    c.create_run(run_body(spec=ONE_ITERATION))
    c.wait(lambda: running(c, "e2e-it0-convert"), 120, "convert running")
    c.kube.kubectl("delete", "job", "e2e-it0-gen", "e2e-it0-convert", "-n", c.namespace, "--wait=false")
    c.wait(lambda: c.job_creations().count("e2e-it0-convert") == 2, 60, "the running step's Job created again")
    assert "e2e-it0-gen" not in c.jobs(), "a finished step's Job was recreated"
    c.release()
    run = complete(c)
    c.kube.kubectl("delete", "job", "e2e-it0-train", "-n", c.namespace, "--wait=true")
    time.sleep(2.0)  # a recreation would follow the deletion's event at once
    assert "e2e-it0-train" not in c.jobs(), "Complete is final: a deleted Job is not recreated"
    creations = Counter(c.job_creations())
    assert creations == Counter({**dict.fromkeys(JOBS_OF_ONE_ITERATION, 1), "e2e-it0-convert": 2}), creations
    starts = Counter(c.kube.starts())
    assert all(n == 1 for (job, _), n in starts.items() if job != "e2e-it0-convert"), starts
    convert = next(s for s in run["status"]["iterations"][0]["steps"] if s["step"] == "convert")
    assert convert["retries"] == 0, "a deleted Job is not a failed attempt"
    tally.add("faults.job_deleted_by_hand", 3)
    tally.add("observed.duplicate_job_creations", 0)


# --------------------------------------------------------------------------- deleting a run with no operator


def test_a_spinrun_is_deleted_with_the_operator_gone(c: E2E, tally: Tally) -> None:
    """The operator stopped while a step runs; `kubectl delete spinrun` returns (no finalizer waits
    for an operator) and the garbage collector takes its Jobs and pods."""
    c.hold("it0-gen")
    c.start_operator()
    c.create_run(run_body(spec=ONE_ITERATION))
    c.wait(lambda: running(c, "e2e-it0-gen"), 120, "generation running")
    c.stop_operator()
    assert not c.get_run("e2e")["metadata"].get("finalizers")
    deleted = c.kube.kubectl("delete", "spinrun", "e2e", "-n", c.namespace, "--wait=true", "--timeout=30s", check=False)
    assert deleted.returncode == 0, deleted.stderr
    assert not c.run_exists("e2e")
    c.wait(lambda: not c.jobs() and not c.pods(), 120, "the garbage collector to remove the Jobs and their pods")
    tally.add("faults.deleted_with_operator_gone", 1)
    tally.add("observed.deletions_hung", 0)
