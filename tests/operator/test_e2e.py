"""Operator end-to-end on a real control plane (tests/kube.py): the operator (kopf, in a thread)
holds exactly the chart's RBAC; its SpinRun, Jobs, ConfigMaps, Services and claims are admitted by
the real kube-apiserver, run by the real Job controller and scheduler, collected by the real
garbage collector; pods run in our process kubelet. Most scenarios use the instant image (real
pods whose steps write their markers at once, steered through the control file); one runs the
real `spin` steps on the tiny random model.

Set SPIN_E2E_KUBECONFIG to also run the main scenario against another cluster."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from spin_runtime.cli import main as spin_cli
from spin_runtime.plan import stages
from tests.kube import INSTANT_IMAGE, OPERATOR_USERS, Kube
from tests.operator.e2e import (
    E2E,
    JOBSET_NAME_LABEL,
    JOBSETS,
    KUEUE,
    KUEUE_PRIORITY_LABEL,
    KUEUE_QUEUE_LABEL,
    TRAINJOBS,
    KueueQueues,
    Player,
    e2e,
    job_done,
    run_body,
    true_condition,
)

pytestmark = pytest.mark.e2e



@pytest.fixture()
def c(kube: Kube) -> Iterator[E2E]:
    """A namespace of the test's own with the instant image's control reset; on exit, no request
    of the operator's was refused by RBAC while the test ran (the authorizer's decision: a 403 of
    admission, e.g. quota, is not RBAC's)."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    with e2e(kube) as run:
        yield run
    refused = [f"{e['verb']} {e['objectRef'].get('apiGroup') or 'core'}/{e['objectRef'].get('resource')}"
               f"{'/' + e['objectRef']['subresource'] if e['objectRef'].get('subresource') else ''}"
               for e in kube.rbac_refused(started)]
    assert not refused, f"the chart's RBAC refused the operator: {sorted(set(refused))}"


@pytest.fixture(scope="module", autouse=True)
def _least_privilege(kube: Kube) -> Iterator[None]:
    """After the module: the chart's cluster-wide rules that no request of the operator used (read
    from the apiserver's audit log) are reported, a failure with SPIN_RBAC_STRICT=1. Refusals fail
    each test already (the `c` fixture)."""
    yield
    from tests.chart.rbac import KNOWN_UNEXERCISED, check_requests, render
    from tests.chart.rbac import operator_rules as rules_of

    requests = [{"verb": e["verb"], "group": e["objectRef"].get("apiGroup", ""),
                 "resource": e["objectRef"].get("resource", "") + (f"/{e['objectRef']['subresource']}"
                                                                  if e["objectRef"].get("subresource") else ""),
                 "namespace": e["objectRef"].get("namespace", "")}
                for e in kube.audit() if e["user"]["username"].startswith(OPERATOR_USERS) and e.get("objectRef")]
    if not requests:
        return
    _, unused = check_requests(requests, rules_of(render({})))
    unexplained = [g for g in unused if g not in KNOWN_UNEXERCISED]
    if unexplained:
        msg = "RBAC grants no request of the operator used: " + ", ".join(f"{v} {g or 'core'}/{r}" for g, r, v in unexplained)
        if os.environ.get("SPIN_RBAC_STRICT") == "1":
            pytest.fail(msg)
        warnings.warn(msg, stacklevel=1)


def wait_event(c: E2E, name: str, reason: str, timeout: float = 15) -> list[str]:
    """The event reasons of a SpinRun once `reason` is among them (kopf posts events async)."""

    def seen() -> list[str] | None:
        reasons = [r for _, r, _ in c.events(name)]
        return reasons if reason in reasons else None

    return c.wait(seen, timeout, f"event {reason}")


def test_two_iterations_complete_with_status_events_and_columns(c: E2E) -> None:
    c.start_operator(clusterwide=True)
    c.create_run(run_body())
    run = c.wait_phase("e2e", ("Complete", "Failed"), timeout=120)
    st = run["status"]
    assert st["phase"] == "Complete", st
    assert st["completedIterations"] == 2
    assert st["lastCheckpoint"]["path"] == "/data/runs/e2e/iter-1/model"
    assert [it["iteration"] for it in st["iterations"]] == [0, 1]
    assert all(s["completionTime"] for it in st["iterations"] for s in it["steps"])
    assert sorted(c.jobs()) == sorted(f"e2e-it{k}-{s}" for k in range(2) for s in ("gen", "convert", "train", "eval"))
    creations = c.job_creations()
    assert len(creations) == len(set(creations)) == 8, creations
    run_dir = c.run_dir()
    assert (run_dir / "spec.json").exists() and (run_dir / "iter-1" / "DONE").exists()
    reasons = wait_event(c, "e2e", "RunCompleted")
    for expected in ("Started", "IterationStarted", "StepStarted", "StepSucceeded", "IterationCompleted", "RunCompleted"):
        assert expected in reasons
    table = c.kube.kubectl("get", "spinruns", "-n", c.namespace).stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "PHASE", "ITERATION", "MAX"], table
    assert table[1].split()[:5] == ["e2e", "Complete", "1", "2", "/data/runs/e2e/iter-1/model"], table
    wide = c.kube.kubectl("get", "spinrun", "e2e", "-n", c.namespace, "-o", "wide").stdout
    assert "REASON" in wide.splitlines()[0] and "RunCompleted" in wide.splitlines()[1], wide


def test_generation_shards_on_a_read_write_once_volume_share_one_node(c: E2E) -> None:
    """The real kube-scheduler with the builders' required pod affinity: the four shards of a run
    whose new claim is ReadWriteOnce run at once on one node (of two), held running until all are."""
    c.hold("it0-gen")
    c.start_operator()
    spec = {"iterations": 1, "generation": {"shards": 4}, "storage": {"newClaim": {"size": "1Gi", "accessModes": ["ReadWriteOnce"]}}}
    c.create_run(run_body("rwo", spec))

    def running() -> list[Any] | None:
        pods = c.core.list_namespaced_pod(c.namespace, label_selector="spin.dev/run=rwo,spin.dev/step=generate").items
        return pods if len(pods) == 4 and all(p.status.phase == "Running" for p in pods) else None

    pods = c.wait(running, 90, "the four shards running")
    assert len({p.spec.node_name for p in pods}) == 1, [(p.metadata.name, p.spec.node_name) for p in pods]
    c.release()
    assert c.wait_phase("rwo", ("Complete", "Failed"), timeout=120)["status"]["phase"] == "Complete"


def test_operator_restarts_mid_step_and_at_a_phase_boundary_create_no_duplicates(c: E2E) -> None:
    c.hold("it0-train", "it1-gen")
    c.start_operator()
    c.create_run(run_body())
    c.wait(lambda: "e2e-it0-train" in c.jobs(), 60, "it0 train Job")
    c.stop_operator()  # mid-step: training runs
    c.release("it0-train")
    c.wait(lambda: job_done(c.jobs().get("e2e-it0-train")), 60, "training done while the operator is down")
    c.start_operator()  # the phase boundary passed while it was down
    c.wait(lambda: "e2e-it1-gen" in c.jobs(), 60, "it1 generation Job")
    c.stop_operator()
    c.start_operator()  # restart with a step in flight and nothing changed
    c.release()
    run = c.wait_phase("e2e", ("Complete", "Failed"), 120)
    assert run["status"]["phase"] == "Complete", run["status"]
    creations = c.job_creations()
    assert sorted(creations) == sorted(set(creations)) and len(creations) == 8, creations


def test_one_failing_generation_shard_reruns_alone(c: E2E) -> None:
    c.kube.control(fail={"it0-gen/1": 1})
    c.start_operator()
    c.create_run(run_body(spec={"generation": {"shards": 3}, "iterations": 1}))
    run = c.wait_phase("e2e", ("Complete", "Failed"), 120)
    assert run["status"]["phase"] == "Complete", run["status"]
    assert sorted(c.starts("e2e-it0-gen")) == [0, 1, 1, 2]
    gen = c.jobs()["e2e-it0-gen"]
    assert gen["status"]["failed"] == 1 and gen["status"]["completedIndexes"] == "0-2"
    assert c.job_creations().count("e2e-it0-gen") == 1
    assert run["status"]["iterations"][0]["steps"][0]["retries"] == 0


def test_generation_shard_over_its_limit_fails_the_run_naming_it(c: E2E) -> None:
    c.kube.control(fail={"it0-gen/1": 5})
    c.start_operator()
    c.create_run(run_body(spec={"backoffLimit": 1}))
    run = c.wait_phase("e2e", ("Complete", "Failed"), 120)
    st = run["status"]
    assert st["phase"] == "Failed" and st["reason"] == "StepFailed", st
    assert "shard 1" in st["message"]


def test_training_failing_past_backoff_limit_fails_the_run(c: E2E) -> None:
    c.kube.control(fail={"it0-train/0": 10})
    c.start_operator()
    c.create_run(run_body(spec={"backoffLimit": 1}))
    run = c.wait_phase("e2e", ("Complete", "Failed"), 120)
    st = run["status"]
    assert st["phase"] == "Failed" and st["reason"] == "StepFailed", st
    assert "train of iteration 0 failed 2 time(s), more than backoffLimit (1)" in st["message"]
    failed = next(x for x in st["conditions"] if x["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "StepFailed"
    assert c.job_creations().count("e2e-it0-train") == 2
    assert "e2e-it0-eval" not in c.jobs()
    reasons = wait_event(c, "e2e", "StepFailed")
    assert "StepRetrying" in reasons


def test_suspend_and_resume_mid_iteration(c: E2E) -> None:
    c.hold("it0-convert")
    c.start_operator()
    c.create_run(run_body(spec={"iterations": 1}))
    c.wait(lambda: "e2e-it0-convert" in c.jobs(), 60, "convert Job")
    c.patch_spec("e2e", {"suspend": True})
    run = c.wait_phase("e2e", "Suspended", 60)
    assert next(x for x in run["status"]["conditions"] if x["type"] == "Suspended")["status"] == "True"
    job = c.wait(lambda: (j := c.jobs()["e2e-it0-convert"])["spec"]["suspend"] is True and j, 30, "Job suspended")
    c.wait(lambda: not [p for p in c.pods().values() if p["metadata"]["labels"].get("spin.dev/step") == "convert"
                        and p["status"].get("phase") in ("Pending", "Running")], 60, "the Job controller to stop its pod")
    assert job["spec"]["suspend"] is True
    c.release()
    c.patch_spec("e2e", {"suspend": False})
    run = c.wait_phase("e2e", ("Complete", "Failed"), 120)
    assert run["status"]["phase"] == "Complete", run["status"]
    assert next(x for x in run["status"]["conditions"] if x["type"] == "Suspended")["reason"] == "Resumed"
    assert c.job_creations().count("e2e-it0-convert") == 1
    reasons = wait_event(c, "e2e", "Resumed")
    assert "Suspended" in reasons


def test_deleting_the_spinrun_stops_its_work_cleanly(c: E2E) -> None:
    """The garbage collector (the real one) removes the run's Jobs, pods and ConfigMaps; the claim
    with the checkpoints stays (no deleteWithRun); the operator creates nothing after."""
    c.hold("it0-convert")
    c.start_operator()
    c.create_run(run_body())
    c.wait(lambda: "e2e-it0-convert" in c.jobs(), 60, "convert Job")
    c.delete_run("e2e")
    c.wait(lambda: not c.jobs() and not c.pods(), 60, "the garbage collector to remove the Jobs and their pods")
    before = len(c.job_creations())
    configmaps = c.core.list_namespaced_config_map(c.namespace, label_selector="spin.dev/run=e2e").items
    assert not configmaps, [m.metadata.name for m in configmaps]
    assert "e2e-data" in c.pvcs(), "the claim (checkpoints, results) outlives the run unless deleteWithRun"
    time.sleep(2.0)
    assert len(c.job_creations()) == before and not c.jobs(), "no children after deletion"
    assert c.operator is not None and c.operator.thread is not None and c.operator.thread.is_alive()


@pytest.fixture()
def kubeflow_trainer(kube: Kube) -> Iterator[None]:
    """Kubeflow Trainer v2 and JobSet on the session's cluster (`Kube.trainer_up`), started on first
    use and kept for the next TrainJob test; the tests without the CRD, and the module's end,
    remove them. Request it before `c` so that the test's namespace goes while they still run."""
    kube.trainer_up()
    yield


@pytest.fixture(scope="module", autouse=True)
def _trainer_leaves_with_the_module(kube: Kube) -> Iterator[None]:
    """Whatever started Trainer and JobSet, no other module's tests meet them."""
    yield
    kube.trainer_down()


@pytest.fixture()
def no_trainer(kube: Kube) -> None:
    """A cluster that serves no TrainJob API (Trainer started by an earlier test is removed first)."""
    kube.trainer_down()
    groups = kube.api.get("/apis")["groups"]
    assert not any(g["name"] == TRAINJOBS[0] for g in groups), groups


def _trainjob(c: E2E, name: str) -> dict[str, Any]:
    return c.custom.get_namespaced_custom_object(*TRAINJOBS[:2], c.namespace, TRAINJOBS[2], name)


def _jobset(c: E2E, name: str) -> dict[str, Any]:
    return c.custom.get_namespaced_custom_object(*JOBSETS[:2], c.namespace, JOBSETS[2], name)


def _true(obj: dict[str, Any]) -> set[str]:
    return {x["type"] for x in (obj.get("status") or {}).get("conditions") or [] if x.get("status") == "True"}


def _jobset_pods(c: E2E, name: str) -> dict[str, dict[str, Any]]:
    return {n: p for n, p in c.pods().items() if p["metadata"]["labels"].get(JOBSET_NAME_LABEL) == name}


def test_training_as_a_kubeflow_trainjob_run_by_trainer_and_jobset(
    kubeflow_trainer: None, c: E2E, monkeypatch: pytest.MonkeyPatch
) -> None:
    """launcher: trainjob against the real Kubeflow Trainer and JobSet controllers: the operator's
    TrainJob passes Trainer's webhooks; Trainer makes a JobSet, JobSet its Jobs and headless
    Service, the Job controller the node pod, which runs the training step in the process kubelet
    and writes its marker. Suspending the SpinRun suspends the TrainJob, Trainer suspends the
    JobSet, JobSet its Jobs, and the pod goes; resuming runs it again to Complete. TrainJobs are
    listed at each reconcile (no watch): the resync sets the pace, short here."""
    monkeypatch.setenv("SPIN_RESYNC_SECONDS", "0.3")  # read when the operator starts
    c.hold("it0-train")
    c.start_operator({"trainjob": {"enabled": True}})
    c.create_run(run_body(spec={"iterations": 1, "training": {"launcher": "trainjob"}}))
    c.wait(lambda: c.starts("e2e-it0-train"), 120, "the training step to start in a TrainJob pod")
    tj = _trainjob(c, "e2e-it0-train")
    assert tj["metadata"]["ownerReferences"][0]["uid"] == c.get_run("e2e")["metadata"]["uid"]
    js = _jobset(c, "e2e-it0-train")
    assert js["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
    running = _jobset_pods(c, "e2e-it0-train")
    assert [p["status"]["phase"] for p in running.values()] == ["Running"], running.keys()
    (pod,) = running.values()
    assert pod["metadata"]["labels"]["spin.dev/run"] == "e2e"
    assert pod["spec"]["subdomain"] == "e2e-it0-train", "JobSet's headless Service names the nodes"
    assert c.core.read_namespaced_service("e2e-it0-train", c.namespace).spec.cluster_ip == "None"
    assert {"PET_NNODES", "PET_NODE_RANK", "PET_MASTER_ADDR"} <= {e["name"] for e in pod["spec"]["containers"][0]["env"]}

    c.patch_spec("e2e", {"suspend": True})

    def suspended() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None:
        tj, js = _trainjob(c, "e2e-it0-train"), _jobset(c, "e2e-it0-train")
        jobs = {n: j for n, j in c.jobs().items() if n.startswith("e2e-it0-train-")}
        done = (tj["spec"].get("suspend") is True and "Suspended" in _true(tj) and js["spec"].get("suspend") is True and jobs
                and all(j["spec"].get("suspend") is True for j in jobs.values()) and not _jobset_pods(c, "e2e-it0-train"))
        return (tj, js, jobs) if done else None

    tj, js, jobs = c.wait(suspended, 60, "Trainer and JobSet to suspend the training and its pod to go")
    assert "Suspended" in _true(tj)
    assert all(j["metadata"]["ownerReferences"][0]["kind"] == "JobSet" for j in jobs.values())
    c.release()
    c.patch_spec("e2e", {"suspend": False})
    run = c.wait_phase("e2e", ("Complete", "Failed"), 120)
    assert run["status"]["phase"] == "Complete", run["status"]
    tj = c.wait(lambda: "Complete" in _true(t := _trainjob(c, "e2e-it0-train")) and t, 30, "the TrainJob Complete")
    assert tj["spec"]["suspend"] is False
    assert c.starts("e2e-it0-train") == [0, 0], "started, stopped by the suspension, started again"
    assert "e2e-it0-train" not in c.job_creations(), "training ran as a TrainJob, not an operator Job"
    marker = json.loads((c.run_dir() / stages.Step(0, "train").marker).read_text())
    assert marker["by"] == "instant", "the node pod wrote the training marker"
    assert (c.run_dir() / "iter-0" / "DONE").exists()


def test_a_bad_data_exit_in_a_trainjob_pod_fails_the_run_at_once(
    kubeflow_trainer: None, c: E2E, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found running the real Trainer: its torch-distributed runtime gives the node pods
    restartPolicy OnFailure and their Job backoffLimit 6, and a TrainJob's runtimePatches cannot
    set a podFailurePolicy. Before, a training step exiting 65 (bad data) was restarted in place
    with the kubelet's back-off (10 s doubling) for about ten minutes while the run said `train
    running`; then the TrainJob failed and the operator retried it backoffLimit times. Now the
    operator reads the exit code in the pod's container status: the run fails at once saying
    why, with no retry, and its TrainJob is deleted."""
    monkeypatch.setenv("SPIN_RESYNC_SECONDS", "0.3")
    c.kube.control(exit={"it0-train/0": 65})
    c.start_operator({"trainjob": {"enabled": True}})
    c.create_run(run_body(spec={"iterations": 1, "backoffLimit": 2, "training": {"launcher": "trainjob"}}))
    run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
    st = run["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "StepFailed"), st
    assert "an exit code a retry cannot fix" in st["message"] and "exited 65" in st["message"], st["message"]
    c.wait(lambda: not c.custom.list_namespaced_custom_object(*TRAINJOBS[:2], c.namespace, TRAINJOBS[2])["items"], 30,
           "the TrainJob deleted")
    assert c.kube.creations(c.namespace, "trainjobs") == ["e2e-it0-train"], "no retry"


def test_two_trainjob_nodes_rendezvous_through_the_master_address_trainer_sets(
    kubeflow_trainer: None, c: E2E, monkeypatch: pytest.MonkeyPatch
) -> None:
    """training.nodes 2 as a TrainJob, the training step for real (`spin torchrun`, real torchrun)
    on an iteration whose instant steps wrote no data: torchrun starts its workers only once both
    nodes met at the master address Trainer's torch plugin sets (`PET_MASTER_ADDR`
    <trainjob>-node-0-0.<trainjob>, JobSet's headless Service, resolved by the cluster DNS); the
    workers then exit 65 (bad data), which `spin torchrun` relays and the run reports at once."""
    monkeypatch.setenv("SPIN_RESYNC_SECONDS", "0.3")
    c.kube.control(real=["it0-train"])
    c.start_operator({"trainjob": {"enabled": True}})
    c.create_run(run_body(spec={"iterations": 1, "training": {"launcher": "trainjob", "nodes": 2},
                                "storage": {"newClaim": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}}}))
    run = c.wait_phase("e2e", ("Complete", "Failed"), 180)
    st = run["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "StepFailed"), st
    assert "exited 65" in st["message"], st["message"]
    ranks = sorted(e["value"] for p in _jobset_pods(c, "e2e-it0-train").values() for e in p["spec"]["containers"][0]["env"]
                   if e["name"] == "PET_MASTER_ADDR")
    assert ranks == ["e2e-it0-train-node-0-0.e2e-it0-train"] * 2, ranks


def test_trainjob_launcher_without_the_crd_says_what_to_install(no_trainer: None, c: E2E) -> None:
    """The chart enables TrainJobs (RBAC to list them), the cluster does not serve them: 404."""
    c.start_operator({"trainjob": {"enabled": True}})
    c.create_run(run_body(spec={"iterations": 1, "training": {"launcher": "trainjob"}}))
    st = c.wait_reason("e2e", "LauncherUnavailable")
    assert "install Kubeflow Trainer v2" in st["message"]


def test_trainjob_launcher_the_chart_does_not_enable_says_which_value(no_trainer: None, c: E2E) -> None:
    """The chart's defaults: no TrainJob RBAC, SPIN_TRAINJOB_ENABLED=false; the operator never
    lists TrainJobs (the apiserver would refuse it) and names the Helm value."""
    c.start_operator()
    c.create_run(run_body(spec={"iterations": 1, "training": {"launcher": "trainjob"}}))
    st = c.wait_reason("e2e", "LauncherDisabled")
    assert "Helm value trainjob.enabled=false" in st["message"]


@pytest.fixture(scope="module", autouse=True)
def _kueue_leaves_with_the_module(kube: Kube) -> Iterator[None]:
    """Whatever installed Kueue, no other module's tests meet it."""
    yield
    kube.kueue_down()


@pytest.fixture()
def kueue(kube: Kube) -> Iterator[None]:
    """The real Kueue (v0.17, built from its Go module, running on loopback beside the apiserver:
    spin_cluster.kueue), installed on first use and left for the next Kueue test (the test after
    them, without Kueue's API, removes it)."""
    kube.kueue_up()
    yield


@pytest.fixture()
def no_kueue(kube: Kube) -> None:
    """A cluster that serves no Kueue API (a Kueue an earlier test installed is removed first)."""
    kube.kueue_down()
    groups = kube.api.get("/apis")["groups"]
    assert not any(g["name"] == KUEUE[0] for g in groups), groups


@pytest.fixture()
def queues(c: E2E, kueue: None) -> Iterator[KueueQueues]:
    """The LocalQueue gpu-queue of the test's namespace, its ClusterQueue out of pod quota."""
    q = KueueQueues(c, "gpu-queue", pods=0, preemption={"withinClusterQueue": "LowerPriority"})
    yield q
    q.close()


def operator_patches(c: E2E, resource: str, name: str | None = None) -> list[str]:
    """The operator's PATCHes of `resource` (of the object `name`), as `apiVersion name` (the
    apiserver's audit log)."""
    return [f"{e['objectRef'].get('apiVersion')} {e['objectRef'].get('name')}" for e in c.kube.audit(c.namespace)
            if e["verb"] == "patch" and e["user"]["username"].startswith(OPERATOR_USERS)
            and e["objectRef"].get("resource") == resource and name in (None, e["objectRef"].get("name"))
            and not e["objectRef"].get("subresource")]


def kueue_unsuspends(c: E2E, job: str) -> int:
    """Updates of the Job `job` by Kueue (it starts an admitted Job by an update of the Job)."""
    return sum(1 for e in c.kube.audit(c.namespace) if e["verb"] in ("update", "patch")
               and e.get("userAgent", "").startswith("kueue") and e["objectRef"].get("resource") == "jobs"
               and e["objectRef"].get("name") == job and not e["objectRef"].get("subresource"))


def wait_for_quota_then_raise_it(c: E2E, queues: KueueQueues, job: str) -> None:
    """The run says WaitingForQuota while Kueue finds no quota for the Job's Workload (its
    QuotaReserved condition False, in Kueue's words); then the ClusterQueue gets 2 pods."""
    def waiting() -> dict[str, Any] | None:
        st = c.get_run("e2e").get("status") or {}
        wl = queues.workload(job)
        pending = next((x for x in (wl or {}).get("status", {}).get("conditions") or [] if x["type"] == "QuotaReserved"), None)
        if st.get("reason") == "WaitingForQuota" and pending and pending["status"] == "False":
            return {"status": st, "pending": pending}
        return None

    seen = c.wait(waiting, 60, "WaitingForQuota and Kueue's Workload pending")
    assert f"waiting for quota in queue {queues.name}" in seen["status"]["message"], seen
    assert f"Kueue admits job {job}" in seen["status"]["message"], seen
    assert "insufficient quota" in seen["pending"]["message"], seen
    queues.set_quota(2)


def wait_admitted(c: E2E, queues: KueueQueues, job: str) -> dict[str, Any]:
    """The Workload of `job` once Kueue admitted it and unsuspended the Job."""
    def admitted() -> dict[str, Any] | None:
        wl, j = queues.workload(job), c.jobs().get(job)
        return wl if true_condition(wl, "Admitted") and j and not j["spec"].get("suspend") else None

    return c.wait(admitted, 60, f"{job} admitted by Kueue and unsuspended")


def test_suspend_and_resume_under_kueue_deactivates_its_workload(c: E2E, queues: KueueQueues) -> None:
    """Real Kueue (its Job webhook stores the queued Job suspended; its scheduler admits it once
    the ClusterQueue has quota). The operator with the chart's kueue.enabled suspends the run by
    deactivating the Workload (spec.active false): Kueue evicts it and suspends the Job itself, and
    nobody fights over the flag; resuming reactivates it, and the run completes with its Job
    created once."""
    c.hold("it0-convert")
    c.start_operator({"kueue": {"enabled": True}})
    c.create_run(run_body(spec={"iterations": 1, "queueName": "gpu-queue"}))
    job = "e2e-it0-convert"
    first = c.wait(lambda: c.jobs().get("e2e-it0-gen"), 60, "the generation Job")
    assert first["spec"]["suspend"] is True, first["spec"]  # Kueue's webhook, at create
    wait_for_quota_then_raise_it(c, queues, "e2e-it0-gen")
    wait_admitted(c, queues, job)
    c.patch_spec("e2e", {"suspend": True})

    def evicted() -> dict[str, Any] | None:
        run, wl, j = c.get_run("e2e"), queues.workload(job), c.jobs().get(job)
        ev = true_condition(wl, "Evicted")
        # each deactivation is a Workload patch, then an annotation of the Job: as many of each
        # (a patch of the Job's suspend flag would be one Job patch more)
        workloads, jobs = operator_patches(c, "workloads"), operator_patches(c, "jobs", job)
        if (run.get("status") or {}).get("phase") == "Suspended" and wl and wl["spec"].get("active") is False \
                and ev and not true_condition(wl, "QuotaReserved") and j and j["spec"].get("suspend") \
                and workloads and len(jobs) == len(workloads):
            return {"evicted": ev, "workload_patches": workloads}
        return None

    seen = c.wait(evicted, 60, "the Workload deactivated, evicted and its Job suspended by Kueue, the Job's flag untouched")
    assert seen["evicted"]["reason"] == "Deactivated", seen["evicted"]
    # v1beta2: the version that stays when Kueue drops v1beta1
    assert {p.split()[0] for p in seen["workload_patches"]} == {"v1beta2"}, seen["workload_patches"]
    c.release()
    c.patch_spec("e2e", {"suspend": False})
    run = c.wait_phase("e2e", ("Complete", "Failed"), 120)
    assert run["status"]["phase"] == "Complete", run["status"]
    assert c.job_creations().count(job) == 1


def test_an_operator_without_kueue_support_fights_real_kueue_over_the_suspend_flag(c: E2E, queues: KueueQueues) -> None:
    """As before #13 (the chart's kueue.enabled off): suspending the run flips the admitted Job's
    suspend flag, and real Kueue flips it back (jobframework: an admitted Workload's suspended Job
    is started again): a patch loop, which kueue.enabled exists to avoid; the run says so with
    QueueUnmanaged."""
    c.hold("it0-convert")
    c.start_operator()
    c.create_run(run_body(spec={"iterations": 1, "queueName": "gpu-queue"}))
    job = "e2e-it0-convert"
    wait_for_quota_then_raise_it(c, queues, "e2e-it0-gen")
    wait_admitted(c, queues, job)
    before = kueue_unsuspends(c, job)
    c.patch_spec("e2e", {"suspend": True})

    def fighting() -> dict[str, Any] | None:
        ours, theirs = len(operator_patches(c, "jobs", job)), kueue_unsuspends(c, job) - before
        conds = {x["type"]: x for x in (c.get_run("e2e").get("status") or {}).get("conditions") or []}
        return conds if ours >= 3 and theirs >= 3 else None

    conds = c.wait(fighting, 60, "the operator and Kueue flipping the Job's suspend flag in turn")
    cond = conds["QueueUnmanaged"]
    assert (cond["status"], cond["reason"]) == ("True", "KueueDisabled"), cond


def test_a_higher_priority_workload_preempts_a_queued_run_which_waits_and_completes(c: E2E, queues: KueueQueues) -> None:
    """Kueue preempts the run's admitted Job for a higher-priority Job of the same ClusterQueue
    (withinClusterQueue: LowerPriority): the Workload is evicted (Preempted), Kueue suspends the
    Job, the run says WaitingForQuota (not a failure, nothing recreated); when the preemptor
    finishes, Kueue admits the Job again and the run completes with that Job created once."""
    c.kube.apply([{"apiVersion": "/".join(KUEUE), "kind": "WorkloadPriorityClass",
                   "metadata": {"name": "spin-tests-high"}, "value": 1000}])
    c.hold("it0-convert")
    c.start_operator({"kueue": {"enabled": True}})
    c.create_run(run_body(spec={"iterations": 1, "queueName": "gpu-queue"}))
    job = "e2e-it0-convert"
    wait_for_quota_then_raise_it(c, queues, "e2e-it0-gen")
    wait_admitted(c, queues, job)
    c.wait(lambda: c.starts(job), 60, "the convert step started")
    c.batch.create_namespaced_job(c.namespace, {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "urgent", "labels": {KUEUE_QUEUE_LABEL: "gpu-queue", KUEUE_PRIORITY_LABEL: "spin-tests-high"}},
        "spec": {"parallelism": 2, "completions": 2, "backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "main", "image": INSTANT_IMAGE,
                                                      "command": ["sh", "-c", "sleep 2"]}]}}}})

    def preempted() -> dict[str, Any] | None:
        st, wl, j = c.get_run("e2e").get("status") or {}, queues.workload(job), c.jobs().get(job)
        ev = true_condition(wl, "Evicted")
        if st.get("reason") == "WaitingForQuota" and ev and j and j["spec"].get("suspend"):
            return {"status": st, "evicted": ev}
        return None

    seen = c.wait(preempted, 60, "the run's Workload preempted, its Job suspended, the run waiting for quota")
    assert seen["evicted"]["reason"] == "Preempted", seen["evicted"]
    assert seen["status"]["phase"] == "Converting", seen["status"]
    c.wait(lambda: job_done(c.jobs().get("urgent")), 90, "the preemptor completed")
    c.release()
    run = c.wait_phase("e2e", ("Complete", "Failed"), 120)
    assert run["status"]["phase"] == "Complete", run["status"]
    assert c.job_creations().count(job) == 1
    convert = next(s for s in run["status"]["iterations"][0]["steps"] if s["step"] == "convert")
    assert convert["retries"] == 0, convert  # a preemption is not a failure of the step
    assert c.starts(job) == [0, 0]  # the step ran again from the start after its re-admission


def test_suspending_a_queued_run_without_kueues_workload_api_says_so(no_kueue: None, c: E2E) -> None:
    """The chart says Kueue runs (kueue.enabled) but the cluster serves no Workload API. Before,
    the Workload list at v1beta1 got a 404 that counted as done: the run said Suspended while its
    Job ran on. Now the missing API is a condition, the phase stays, and the request is retried."""
    c.hold("it0-gen")
    c.start_operator({"kueue": {"enabled": True}})
    c.create_run(run_body(spec={"iterations": 1, "queueName": "gpu-queue"}))
    c.wait(lambda: (c.jobs().get("e2e-it0-gen") or {}).get("metadata", {}).get("uid")
           and c.get_run("e2e").get("status", {}).get("phase") == "Generating", 60, "the generation Job")
    c.patch_spec("e2e", {"suspend": True})
    st = c.wait_reason("e2e", "RequestRetrying", 60)
    assert "Kueue's Workload API is not served" in st["message"] and "kueue.enabled=false" in st["message"], st
    assert st["phase"] == "Generating", st
    progressing = next(x for x in st["conditions"] if x["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "RequestRetrying")
    c.release()


class StatusRecorder(Player):
    """Reads a SpinRun's status every 0.1 s in a thread and keeps each distinct `progress`."""

    def __init__(self, c: E2E, name: str) -> None:
        super().__init__(c)
        self.name = name
        self.seen: list[dict[str, Any]] = []

    def step(self) -> None:
        run = self.e2e.get_run(self.name)
        progress = (run.get("status") or {}).get("progress")
        if progress and (not self.seen or self.seen[-1]["progress"] != progress):
            self.seen.append(run["status"] | {"wide": _wide_columns(run)})


def _wide_columns(run: dict[str, Any]) -> dict[str, Any]:
    """What `kubectl get spinruns -o wide` shows in the priority-1 columns."""
    from spin_runtime.api.crd import PRINTER_COLUMNS

    return {col["name"]: _jsonpath(run, col["jsonPath"]) for col in PRINTER_COLUMNS if col.get("priority") == 1}


def _jsonpath(obj: Any, path: str) -> Any:
    """The simple `.a.b` JSONPaths printer columns use (no filters)."""
    cur = obj
    for part in path.strip(".").split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


@pytest.mark.slow
def test_real_steps_on_the_tiny_model_complete_an_iteration_showing_live_progress(
    c: E2E, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real `spin` steps in pods with the operator's restricted security context (non-root,
    read-only root) on the claim; each serves its progress on its pod's own address (port
    `progress`); the operator polls it into status.progress (and the -o wide columns) while the
    step runs, and drops it after. With evaluation.sftBaseline the continued-SFT arm is one more
    training Job (`<run>-it0-sft`, its own progress) and the report shows both arms."""
    monkeypatch.setenv("SPIN_PROGRESS_SECONDS", "0.2")
    spec = {
        "iterations": 1,
        "generation": {"shards": 2, "maxNewTokens": 8, "batchSize": 8},
        "training": {"maxLength": 64, "maxPromptLength": 32, "maxSteps": 3, "perDeviceBatchSize": 2, "reportTo": []},
        "evaluation": {"maxSamples": 4, "sftBaseline": {"enabled": True}},
    }
    with StatusRecorder(c, "e2e") as seen:
        c.start_operator()
        c.create_run(run_body(spec=spec, instant=False))
        run = c.wait_phase("e2e", ("Complete", "Failed"), float(os.environ.get("SPIN_E2E_REAL_TIMEOUT", "400")))
        assert run["status"]["phase"] == "Complete", run["status"]
        assert "progress" not in run["status"]
        run_dir = c.run_dir()
        assert (run_dir / "spec.json").exists()
        assert (run_dir / "iter-0" / "model").is_dir()
        assert (run_dir / "iter-0" / "DONE").exists()
        # what the user fetches after the pods and the run are gone: the report and every step's log
        summary = (run_dir / "report" / "summary.md").read_text()
        assert "# SPIN run `e2e`" in summary and "| iter0 |" in summary, summary
        assert "| iter0 · SFT |" in summary and "After iteration 0, " in summary, summary
        assert (run_dir / "iter-0" / "sft-model").is_dir()
        logs = run_dir / "iter-0" / "logs"
        assert sorted(p.name for p in logs.glob("*.log")) == [
            "convert.log", "evaluate.log", "generate-0-of-2.log", "generate-1-of-2.log", "sft.log", "train.log"]
        for step, says in (("generate-1-of-2", "spin generate"), ("train", "spin train: iteration 0: saved"),
                           ("sft", "spin sft: iteration 0: saved"), ("evaluate", "spin evaluate: iteration 0: margin")):
            text = (logs / f"{step}.log").read_text()
            assert text.startswith("# ") and says in text, f"{step}.log:\n{text[-2000:]}"
        assert "spin evaluate: iteration 0: margin" in c.kube.kubectl("logs", "-n", c.namespace,
                                                                       "job/e2e-it0-eval").stdout, "and on stdout"
        # `spin fetch` while the run exists (the reader takes its Jobs' image; after the run is deleted:
        # tests/chart/test_install.py)
        fetch = ["fetch", "e2e", "-n", c.namespace, "--kubeconfig", str(c.kube.kubeconfig), "--to", str(tmp_path)]
        assert spin_cli(fetch) == 0
        assert (tmp_path / "report" / "summary.md").read_text() == summary
        assert (tmp_path / "iter-0" / "logs" / "train.log").read_text() == (logs / "train.log").read_text()
        assert (tmp_path / "iter-0" / "metrics.json").is_file() and not (tmp_path / "iter-0" / "model").exists()
        assert not [p for p in c.pods() if "-fetch-" in p], "the reader pod is gone"
    by_step: dict[str, list[dict[str, Any]]] = {}
    for st in seen.seen:
        by_step.setdefault(st["progress"]["step"], []).append(st)
    assert {"generate", "train", "sft"} <= set(by_step), [s["progress"] for s in seen.seen]
    gen = by_step["generate"]
    assert all(s["progress"]["shardsTotal"] == 2 and s["phase"] == "Generating" for s in gen)
    assert all(s["wide"]["Progress"].startswith("shards ") and s["wide"]["Step"] == "generate" for s in gen)
    train = [s["progress"] for s in by_step["train"]]
    assert all(p["iteration"] == 0 and p["summary"] for p in train), train
    counted = [p for p in train if p.get("total") is not None]
    assert counted and all(p["unit"] == "steps" and p["total"] == 3 for p in counted), train
    arm = [s["progress"] for s in by_step["sft"]]
    assert all(s["phase"] == "Training" for s in by_step["sft"]), arm
    assert [p for p in arm if p.get("total") == 3 and p["unit"] == "steps"], arm


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SPIN_E2E_KUBECONFIG"), reason="set SPIN_E2E_KUBECONFIG to run against another cluster")
def test_another_cluster_two_iterations(tmp_path: Path) -> None:  # pragma: no cover - opt-in
    """Against any cluster with the CRD installed (`spin crd | kubectl apply -f -`) and images that
    can run the tiny model; the operator runs here, the Jobs run there."""
    from kubernetes import client, config

    from tests.operator.operator_thread import OperatorThread

    kubeconfig = Path(os.environ["SPIN_E2E_KUBECONFIG"])
    namespace = os.environ.get("SPIN_E2E_NAMESPACE", "default")
    timeout = float(os.environ.get("SPIN_E2E_TIMEOUT", "1800"))
    op = OperatorThread(kubeconfig).start()
    api = client.CustomObjectsApi(config.new_client_from_config(str(kubeconfig)))
    body = run_body(name=f"e2e-{os.getpid()}", spec={"training": {"maxSteps": 1}}, instant=False)
    body["metadata"]["namespace"] = namespace
    try:
        api.create_namespaced_custom_object("spin.dev", "v1alpha1", namespace, "spinruns", body)
        deadline = time.monotonic() + timeout
        phase = None
        while time.monotonic() < deadline and phase not in ("Complete", "Failed"):
            time.sleep(5)
            obj = api.get_namespaced_custom_object("spin.dev", "v1alpha1", namespace, "spinruns", body["metadata"]["name"])
            phase = (obj.get("status") or {}).get("phase")
        assert phase == "Complete", obj.get("status")
    finally:
        api.delete_namespaced_custom_object("spin.dev", "v1alpha1", namespace, "spinruns", body["metadata"]["name"])
        op.stop()


@pytest.mark.slow
def test_two_node_training_finds_its_master_through_cluster_dns(c: E2E) -> None:
    """training.nodes 2 on CPU: an Indexed Job of two pods with a headless Service; each pod's
    torchrun reaches node 0 at `<job>-0.<service>` (the operator's own name for it, resolved by the
    cluster DNS from the EndpointSlices) and the two train together over gloo."""
    spec = {
        "iterations": 1,
        "generation": {"shards": 1, "maxNewTokens": 8, "batchSize": 8},
        "training": {"nodes": 2, "maxLength": 64, "maxPromptLength": 32, "maxSteps": 2, "perDeviceBatchSize": 2,
                     "reportTo": []},
        "evaluation": {"enabled": False},
        "storage": {"newClaim": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}},
    }
    c.start_operator()
    c.create_run(run_body(spec=spec, instant=False))
    run = c.wait_phase("e2e", ("Complete", "Failed"), float(os.environ.get("SPIN_E2E_REAL_TIMEOUT", "400")))
    logs = {n: c.kube.kubectl("logs", "-n", c.namespace, n).stdout for n, p in c.pods().items()
            if p["metadata"]["labels"].get("spin.dev/step") == "train"}
    assert run["status"]["phase"] == "Complete", (run["status"], {n: log[-2000:] for n, log in logs.items()})
    assert len(logs) == 2, sorted(logs)
    assert (c.run_dir() / "iter-0" / "model").is_dir()


def _refused_creates(c: E2E, job: str) -> list[dict[str, Any]]:
    """The audit events of the operator's creates of `job` that the apiserver refused."""
    return [e for e in c.kube.audit(c.namespace) if e["verb"] == "create" and e["objectRef"].get("resource") == "jobs"
            and e["objectRef"].get("name") == job and e["user"]["username"].startswith(OPERATOR_USERS)
            and (e.get("responseStatus") or {}).get("code") != 201]


@pytest.fixture()
def training_forbidden(c: E2E) -> Iterator[str]:
    """An admission policy (a real ValidatingAdmissionPolicy) that forbids this namespace's training
    Jobs, as a cluster's policy engine may; yields its message."""
    message = "training Jobs are not allowed in this namespace (cluster policy)"
    name = f"spin-tests-refuse-{c.namespace}"
    c.kube.apply([
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy", "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": [{"apiGroups": ["batch"], "apiVersions": ["v1"],
                                                          "operations": ["CREATE"], "resources": ["jobs"]}]},
                  "matchConditions": [{"name": "this-namespace", "expression": f"request.namespace == '{c.namespace}'"}],
                  "validations": [{"expression": "!object.metadata.name.endsWith('-train')", "message": message,
                                   "reason": "Forbidden"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": name}, "spec": {"policyName": name, "validationActions": ["Deny"]}},
    ])
    probe = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe-train"}, "spec": {"template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}

    def enforced() -> bool:
        try:
            c.batch.create_namespaced_job(c.namespace, probe, dry_run="All")
        except ApiException as e:
            return e.status == 403
        return False

    c.wait(enforced, 30, "the admission policy in force")
    yield message
    c.kube.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name, "--wait=true", check=False)


def test_a_create_the_apiserver_refuses_fails_the_run_once_with_its_message(c: E2E, training_forbidden: str) -> None:
    """Before: the refused create raised, the driver tried again every 5 s for ever, the phase said
    Training, StepStarted was posted on every pass, the run never failed. Now: one attempt, the run
    Failed with the API's own message in the phase, the Failed condition and one Event."""
    c.start_operator()
    c.create_run(run_body(spec={"iterations": 1}))
    run = c.wait_phase("e2e", ("Complete", "Failed"), 90)
    st = run["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "CreateRefused"), st
    assert "create Job e2e-it0-train (403" in st["message"] and training_forbidden in st["message"]
    failed = next(x for x in st["conditions"] if x["type"] == "Failed")
    assert failed["status"] == "True" and training_forbidden in failed["message"]
    assert len(_refused_creates(c, "e2e-it0-train")) == 1
    events = wait_event(c, "e2e", "CreateRefused")
    assert events.count("CreateRefused") == 1
    train_started = [m for _, r, m in c.events("e2e") if r == "StepStarted" and "e2e-it0-train" in m]
    assert train_started == []


def test_a_create_over_quota_waits_says_so_once_and_goes_on_when_quota_frees(c: E2E) -> None:
    """A ResourceQuota on the number of Jobs (real quota admission, counted by the real quota
    controller) refuses the training Job with a 403 that passes: the run waits, says why in
    Progressing and one Event, tries again, and completes once the quota is raised."""
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "jobs", "namespace": c.namespace},
             "spec": {"hard": {"count/jobs.batch": "2"}}}
    c.core.create_namespaced_resource_quota(c.namespace, quota)
    c.wait(lambda: (c.core.read_namespaced_resource_quota("jobs", c.namespace).status.hard or {}).get("count/jobs.batch"),
           30, "the quota counted")
    c.start_operator()
    c.create_run(run_body(spec={"iterations": 1}))
    st = c.wait_reason("e2e", "CreateRetrying", 90)
    assert "exceeded quota" in st["message"] and st["phase"] == "Training", st
    progressing = next(x for x in st["conditions"] if x["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "CreateRetrying")
    c.wait(lambda: len(_refused_creates(c, "e2e-it0-train")) >= 2, 30, "a second attempt")
    c.core.patch_namespaced_resource_quota("jobs", c.namespace, {"spec": {"hard": {"count/jobs.batch": "10"}}})
    run = c.wait_phase("e2e", ("Complete", "Failed"), 120)
    assert run["status"]["phase"] == "Complete", run["status"]
    reasons = wait_event(c, "e2e", "RunCompleted")
    assert reasons.count("CreateRetrying") == 1
    train_started = [m for _, r, m in c.events("e2e") if r == "StepStarted" and "e2e-it0-train" in m]
    assert len(train_started) == 1


def test_a_bad_data_exit_under_torchrun_fails_the_step_without_a_retry(c: E2E) -> None:
    """Two-node training (real `spin torchrun`, real torchrun, real `spin train` workers) on an
    iteration without training data: the workers exit 65 (bad data). Before, torchrun exited 1,
    the podFailurePolicy saw a retryable failure and the Job ran backoffLimit more times; now the
    pods exit 65, the Job fails at once (FailJob) and the run says why."""
    c.kube.control(real=["it0-train"])
    c.start_operator()
    c.create_run(run_body(spec={"iterations": 1, "backoffLimit": 2, "training": {"nodes": 2},
                                "storage": {"newClaim": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}}}))
    run = c.wait_phase("e2e", ("Complete", "Failed"), 180)
    st = run["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "StepFailed"), st
    assert "an exit code a retry cannot fix" in st["message"], st["message"]
    assert c.job_creations().count("e2e-it0-train") == 1
    codes = [cs["state"]["terminated"]["exitCode"] for p in c.pods().values()
             if p["metadata"]["labels"].get("spin.dev/step") == "train"
             for cs in p["status"].get("containerStatuses", []) if (cs.get("state") or {}).get("terminated")]
    assert 65 in codes, codes
