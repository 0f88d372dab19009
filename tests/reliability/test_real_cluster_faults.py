"""The cluster faults of the old emulator suite (test_operator_cluster_faults.py, test_operator_kill.py, both gone;
issue #20) made by the real control plane of tests/kube.py: the real garbage collector takes a
deleted run's children (late where a test needs it: kube-controller-manager SIGKILLed meanwhile),
the real scheduler reports Unschedulable (both nodes cordoned) or an unbound claim (a StorageClass
that does not exist yet), the process kubelet reports CreateContainerConfigError (a Secret that
does not exist yet) and ErrImagePull/ImagePullBackOff (a tag its registry lacks), the instant image exits with the code a test asks for, the operator process
is SIGKILLed at every phase boundary, its status writes lost through the fault proxy. Each test waits
for a state and asserts on the object it waited for; each tallies what the user loses."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from spin_cluster import controlplane
from spin_cluster.api import path
from spin_runtime import errors
from tests.kube import OPERATOR_USERS, Kube
from tests.operator.e2e import E2E, job_done, run_body
from tests.reliability.conftest import Tally
from tests.reliability.fault_proxy import Fault, FaultProxy
from tests.reliability.real_cluster import (
    ONE_ITERATION,
    OperatorProcess,
    complete,
    duplicates,
    iso,
    pods_of,
    reran,
    retries,
    running,
    through,
)

pytestmark = pytest.mark.e2e



@pytest.fixture(autouse=True)
def _failed_pods_logs(c: E2E) -> Iterator[None]:
    """After the test, the logs of its failed pods (shown with a failing test's output)."""
    yield
    with contextlib.suppress(Exception):  # a diagnosis only: never an error of the test's
        for name, pod in list(c.pods().items())[:8]:
            if (pod.get("status") or {}).get("phase") == "Failed":
                out = c.kube.kubectl("logs", "-n", c.namespace, name, "--all-containers", check=False)
                print(f"--- failed pod {name}:\n{out.stdout[-1500:]}{out.stderr[-300:]}")


def cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((x for x in status.get("conditions") or [] if x["type"] == kind), {})


def event_reasons(c: E2E, reason: str, timeout: float = 30) -> list[str]:
    """The SpinRun's event reasons once `reason` is among them (kopf posts events async)."""

    def seen() -> list[str] | None:
        reasons = [r for _, r, _ in c.events("e2e")]
        return reasons if reason in reasons else None

    return c.wait(seen, timeout, f"event {reason}")


def finished_at_generation(c: E2E, generation: int, timeout: float = 180) -> dict[str, Any]:
    """The run once Complete or Failed for `generation` of its spec (an invalid spec's Failed phase
    stays until the operator has seen the fix)."""

    def done() -> dict[str, Any] | None:
        run = c.get_run("e2e")
        st = run.get("status") or {}
        return run if st.get("observedGeneration") == generation and st.get("phase") in ("Complete", "Failed") else None

    return c.wait(done, timeout, f"e2e finished at generation {generation}")


# --------------------------------------------------------------------------- deletion and re-creation


def test_deleting_a_run_says_its_claim_is_kept_and_the_collector_keeps_it(c: E2E, tally: Tally) -> None:
    """The ClaimCreated event tells the user the claim outlives the run; deleting the run, the real
    garbage collector takes its Jobs, pods and ConfigMaps and leaves the claim (no ownerReference)."""
    c.hold("it0-convert")
    c.start_operator()
    c.create_run(run_body())
    c.wait(lambda: running(c, "e2e-it0-convert"), 120, "convert running")
    event_reasons(c, "ClaimCreated")
    (created,) = [m for _, r, m in c.events("e2e") if r == "ClaimCreated"]
    assert "kept when the SpinRun is deleted" in created and "kubectl delete pvc" in created, created
    c.delete_run("e2e")
    claims = c.wait(lambda: not c.jobs() and not c.pods() and c.pvcs(), 120, "the collector to remove the Jobs and pods")
    assert list(claims) == ["e2e-data"], "the claim with every checkpoint outlives the run"
    assert not claims["e2e-data"]["metadata"].get("ownerReferences"), claims["e2e-data"]["metadata"]
    assert not c.core.list_namespaced_config_map(c.namespace, label_selector="spin.dev/run=e2e").items
    tally.add("faults.spinrun_deleted_gc", 1)
    tally.add("observed.claims_deleted_with_the_run", 0)


def test_delete_with_run_takes_the_claim_too(c: E2E, tally: Tally) -> None:
    """storage.newClaim.deleteWithRun: the claim is owned by the SpinRun; the real collector takes it
    with the run (its PersistentVolume's reclaim policy then applies)."""
    c.hold("it0-gen")
    c.start_operator()
    c.create_run(run_body(spec={**ONE_ITERATION, "storage": {"newClaim": {"deleteWithRun": True}}}))
    c.wait(lambda: running(c, "e2e-it0-gen"), 120, "generation running")
    (claim,) = c.pvcs().values()
    assert [r["kind"] for r in claim["metadata"].get("ownerReferences") or []] == ["SpinRun"], claim["metadata"]
    c.delete_run("e2e")
    c.wait(lambda: not c.pvcs() and not c.jobs(), 120, "the claim collected with its run")
    tally.add("observed.claims_deleted_with_delete_with_run", 1)


def test_a_run_recreated_under_the_same_name_adopts_nothing_of_the_old_one(c: E2E, tally: Tally) -> None:
    """The old run deleted while training runs, and created again at once with another spec, while
    the garbage collector lags (kube-controller-manager SIGKILLed: the old Jobs stay, not even
    marked deleted): the new run waits for them and says why, creating nothing. The
    controller-manager back, the collector takes them and the new run runs its own Jobs."""
    c.hold("it0-train")
    c.start_operator()
    c.create_run(run_body(spec=ONE_ITERATION))
    c.wait(lambda: running(c, "e2e-it0-train"), 120, "the old run's training running")
    old_uid = c.get_run("e2e")["metadata"]["uid"]
    old_jobs = {n: j["metadata"]["uid"] for n, j in c.jobs().items()}
    with controlplane.crashed(c.kube.state, "kube-controller-manager"):
        c.delete_run("e2e")
        new_uid = c.create_run(run_body(spec={**ONE_ITERATION, "generation": {"maxNewTokens": 16}}))["metadata"]["uid"]
        assert new_uid != old_uid
        st = c.wait_reason("e2e", "WaitingForOldObjects", 60)
        progressing = cond(st, "Progressing")
        assert progressing["status"] == "False" and "another SpinRun of this name" in progressing["message"], progressing
        waiting_creations = c.job_creations()
    assert sorted(waiting_creations) == sorted(old_jobs), waiting_creations  # nothing created while waiting
    c.wait(lambda: not set(old_jobs.values()) & {j["metadata"]["uid"] for j in c.jobs().values()}, 180,
           "the collector to take the old run's Jobs")
    c.release()
    run = complete(c)
    owners = {n: [r["uid"] for r in j["metadata"]["ownerReferences"]] for n, j in c.jobs().items()}
    assert all(o == [new_uid] for o in owners.values()), owners
    creations = c.job_creations()
    print(f"creations: {creations}; new run's steps: {run['status']['iterations']}")
    assert creations.count("e2e-it0-gen") == 2 and creations.count("e2e-it0-convert") == 2, creations
    assert creations.count("e2e-it0-train") == 2 and creations.count("e2e-it0-eval") == 1, creations
    assert retries(run) == 0
    tally.add("faults.run_recreated_same_name", 1)
    tally.add("observed.children_adopted_from_old_run", 0)


def test_a_recreated_run_blocked_by_its_namesakes_job_held_by_a_finalizer_says_so_and_starts_once_it_goes(
    c: E2E, tally: Tally
) -> None:
    """#20.6's 409 on the real control plane: the deleted run's generation Job is held by a
    finalizer (another controller's, a backup tool's) when the run is created again at once, so
    the new run's create of that name meets it. Before: any 409 counted as done, the run said
    "generate running" for the deleted run's Job (and once the finalizer went, the 300 s
    expectation would hide the missing Job). Now: the run says whose Job is in the way, what holds it and
    how to release it (the command is run as given), creates nothing meanwhile, and creates its
    own Job at its next look after the old one is gone."""
    hold = "example.com/backup-in-progress"
    c.hold("it0-gen")
    c.start_operator()
    c.create_run(run_body(spec=ONE_ITERATION))
    c.wait(lambda: running(c, "e2e-it0-gen"), 120, "the old run's generation running")
    c.kube.kubectl("patch", "job", "e2e-it0-gen", "-n", c.namespace, "--type=merge", "-p", json.dumps({"metadata": {"finalizers": [hold]}}))
    c.delete_run("e2e")
    c.wait(lambda: not c.run_exists("e2e") and c.jobs()["e2e-it0-gen"]["metadata"].get("deletionTimestamp"), 60,
           "the collector to mark the old run's Job deleted (its finalizer keeps it)")
    new_uid = c.create_run(run_body(spec=ONE_ITERATION))["metadata"]["uid"]

    def blocked_by_the_job() -> dict[str, Any] | None:  # not by the old ConfigMap the collector may not have taken yet
        st = c.get_run("e2e").get("status") or {}
        return st if st.get("reason") == "WaitingForOldObjects" and "Job e2e-it0-gen in the way" in st.get("message", "") else None

    st = c.wait(blocked_by_the_job, 60, "the run to say the old Job is in the way")
    message = st["message"]
    assert message.startswith("waiting: Job e2e-it0-gen in the way belongs to another SpinRun of this name"), message
    assert f"held by finalizer(s) {hold}" in message, message
    progressing = cond(st, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "WaitingForOldObjects"), progressing

    def warned() -> list[str] | None:
        said = [m for _, r, m in c.events("e2e") if r == "WaitingForOldObjects" and "Job e2e-it0-gen in the way" in m]
        return said or None

    c.wait(warned, 30, "the Warning")
    assert c.job_creations().count("e2e-it0-gen") == 1, "nothing created while the old Job is in the way"
    command = shlex.split(re.search(r"or: (kubectl patch [^)]*)\)", message).group(1))  # type: ignore[union-attr]
    c.kube.kubectl(*command[1:])
    released = time.monotonic()

    def own_job() -> dict[str, Any] | None:
        job = c.jobs().get("e2e-it0-gen")
        refs = (job or {}).get("metadata", {}).get("ownerReferences") or []
        return job if [r["uid"] for r in refs] == [new_uid] else None

    c.wait(own_job, 30, "the new run's own generation Job")
    waited = time.monotonic() - released
    c.release()
    run = complete(c)
    assert retries(run) == 0
    owners = {n: [r["uid"] for r in j["metadata"]["ownerReferences"]] for n, j in c.jobs().items()}
    assert all(o == [new_uid] for o in owners.values()), owners
    assert len(warned() or []) == 1, "warned once, though the create was refused at every look while blocked"
    print(f"the new run's generation Job created {waited:.1f}s after the old one's finalizer was removed")
    tally.add("faults.old_job_held_by_finalizer", 1)


def test_an_older_operators_finalizer_is_removed_at_start(c: E2E, tally: Tally) -> None:
    """A SpinRun with the finalizer of an operator version that had one: the operator removes it,
    and with the operator stopped `kubectl delete spinrun` returns."""
    body = run_body(spec=ONE_ITERATION)
    body["metadata"]["finalizers"] = ["spin.dev/finalizer"]
    c.create_run(body)
    c.start_operator()
    c.wait(lambda: not c.get_run("e2e")["metadata"].get("finalizers"), 60, "the old finalizer removed")
    c.stop_operator()
    deleted = c.kube.kubectl("delete", "spinrun", "e2e", "-n", c.namespace, "--wait=true", "--timeout=30s", check=False)
    assert deleted.returncode == 0, deleted.stderr
    assert not c.run_exists("e2e")
    tally.add("observed.old_finalizers_left", 0)


# --------------------------------------------------------------------------- image pulls

#: A tag of the instant image the process kubelet's registry lacks while a test says so.
UNPUSHED = "localhost/spin-instant:not-pushed-yet"


@pytest.fixture()
def unpushed(c: E2E) -> Iterator[str]:
    """UNPUSHED missing from the registry for the test; every tag pushed again afterwards."""
    c.kube.set_unpushed(UNPUSHED)
    yield UNPUSHED
    c.kube.set_unpushed()


def test_a_step_whose_image_is_not_pushed_yet_is_reported_and_runs_once_pushed(c: E2E, tally: Tally, unpushed: str) -> None:
    """The generation image's tag is not in the registry: the kubelet reports ErrImagePull, then
    ImagePullBackOff; the run says so (Progressing False, reason ImagePullBackOff, the pod named,
    one Warning) and waits. The tag pushed, the kubelet's next pull finds it and the run completes,
    with no retry spent and the Job created once."""
    c.start_operator()
    c.create_run(run_body(spec={**ONE_ITERATION, "images": {"generator": unpushed}}))
    st = c.wait_reason("e2e", "ImagePullBackOff", 60)
    progressing = cond(st, "Progressing")
    assert progressing["status"] == "False" and "e2e-it0-gen-" in progressing["message"], progressing
    # the kubelet's first word (ErrImagePull: "Failed to pull image") or its back-off, naming the image
    assert f'pull image "{unpushed}"' in progressing["message"] or f'pulling image "{unpushed}"' in progressing["message"], progressing
    assert event_reasons(c, "ImagePullBackOff").count("ImagePullBackOff") == 1
    c.kube.set_unpushed()  # the tag pushed
    pushed = time.monotonic()
    run = complete(c)
    print(f"Complete {time.monotonic() - pushed:.1f}s after the push; the kubelet pulls again after its back-off")
    assert retries(run) == 0 and c.job_creations().count("e2e-it0-gen") == 1, run["status"]
    tally.add("faults.pod_ImagePullBackOff", 1)
    tally.add("observed.step_retries_spent.image_pull", retries(run))


def test_a_step_whose_image_never_comes_fails_the_run_after_the_startup_timeout(c: E2E, tally: Tally, unpushed: str) -> None:
    """The tag never comes: the run fails with reason ImagePullBackOff once podStartupTimeoutSeconds
    passed, saying so, and its Job is deleted so the waiting pods hold no node."""
    c.start_operator()
    t0 = time.monotonic()
    c.create_run(run_body(spec={**ONE_ITERATION, "podStartupTimeoutSeconds": 5, "images": {"generator": unpushed}}))
    run = c.wait_phase("e2e", ("Complete", "Failed"), 90)
    waited = time.monotonic() - t0
    st = run["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "ImagePullBackOff"), st
    assert "podStartupTimeoutSeconds (5s)" in st["message"] and "e2e-it0-gen-" in st["message"], st["message"]
    c.wait(lambda: not pods_of(c, "e2e-it0-gen") and "e2e-it0-gen" not in c.jobs(), 60, "the stuck Job and its pods gone")
    print(f"failed {waited:.1f}s after the run was created")
    tally.add("observed.seconds_until_a_stuck_step_failed", int(waited))


# --------------------------------------------------------------------------- exit codes


def test_a_bad_spec_exit_code_fails_at_once(c: E2E, tally: Tally) -> None:
    """Conversion exits 78 (a spec that cannot run): the Job's podFailurePolicy fails the Job at once
    (the real Job controller), the run fails saying why, with backoffLimit 3 unspent."""
    c.kube.control(exit={"it0-convert/0": errors.EXIT_BAD_SPEC})
    c.start_operator()
    c.create_run(run_body(spec={**ONE_ITERATION, "backoffLimit": 3}))
    run = c.wait_phase("e2e", ("Complete", "Failed"), 120)
    st = run["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "StepFailed"), st
    assert "exit code a retry cannot fix" in st["message"], st["message"]
    assert c.job_creations().count("e2e-it0-convert") == 1
    assert c.starts("e2e-it0-convert") == [0]
    tally.add("observed.attempts_on_exit_78.policy", len(c.starts("e2e-it0-convert")))


# --------------------------------------------------------------------------- pods that cannot start


@pytest.fixture()
def cordoned(kube: Kube) -> Iterator[list[str]]:
    """Cordon every node for the test's body (uncordoned after, whatever happens)."""
    nodes = [n["metadata"]["name"] for n in kube.api.get(path("", "v1", "nodes"))["items"]]
    try:
        yield nodes
    finally:
        for node in nodes:
            kube.kubectl("uncordon", node, check=False)


LATE_CLASS = "spin-tests-late"


def _trouble_spec(trouble: str) -> dict[str, Any]:
    spec: dict[str, Any] = dict(ONE_ITERATION)
    if trouble == "CreateContainerConfigError":
        spec["hfTokenSecret"] = {"name": "hf-token", "key": "token"}
    if trouble == "ClaimPending":
        spec["storage"] = {"newClaim": {"storageClassName": LATE_CLASS}}
    return spec


def _make_trouble(c: E2E, trouble: str, nodes: list[str]) -> None:
    if trouble == "Unschedulable":
        for node in nodes:
            c.kube.kubectl("cordon", node)


def _fix_trouble(c: E2E, trouble: str, nodes: list[str]) -> None:
    """What the user does: uncordon (a node added), create the Secret, create the StorageClass."""
    if trouble == "Unschedulable":
        for node in nodes:
            c.kube.kubectl("uncordon", node)
    elif trouble == "CreateContainerConfigError":
        c.kube.apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token", "namespace": c.namespace},
                       "stringData": {"token": "hf_test"}}])
    elif trouble == "ClaimPending":
        c.kube.apply([{"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": LATE_CLASS},
                       "provisioner": controlplane.HOSTPATH_PROVISIONER, "reclaimPolicy": "Delete",
                       "volumeBindingMode": "Immediate"}])


@pytest.mark.parametrize("trouble", ["Unschedulable", "CreateContainerConfigError", "ClaimPending"])
def test_a_pod_that_cannot_start_is_reported_and_the_run_continues_once_fixed(
    trouble: str, c: E2E, cordoned: list[str], tally: Tally
) -> None:
    """Unschedulable: both nodes cordoned (the scheduler's PodScheduled False). CreateContainerConfigError:
    hfTokenSecret names a Secret not created yet (the kubelet cannot make the container's env).
    ClaimPending: the new claim's StorageClass does not exist yet (the scheduler: unbound immediate
    PersistentVolumeClaims). ImagePullBackOff has its own tests (the registry lacks a tag) below."""
    _make_trouble(c, trouble, cordoned)
    try:
        c.start_operator()
        c.create_run(run_body(spec=_trouble_spec(trouble)))
        st = c.wait_reason("e2e", trouble, 120)
        progressing = cond(st, "Progressing")
        assert progressing["status"] == "False" and "e2e-it0-gen-" in progressing["message"], progressing
        assert st["phase"] == "Generating", st
        reasons = event_reasons(c, trouble)
        assert reasons.count(trouble) == 1, reasons
        t0 = time.monotonic()
        _fix_trouble(c, trouble, cordoned)
        run = complete(c, 240)
        fixed = time.monotonic() - t0
        assert retries(run) == 0
        assert c.job_creations().count("e2e-it0-gen") == 1
    finally:
        if trouble == "ClaimPending":
            c.kube.kubectl("delete", "storageclass", LATE_CLASS, "--ignore-not-found", check=False)
    tally.add(f"faults.pod_{trouble}", 1)
    tally.add(f"observed.seconds_fix_to_complete.{trouble}", round(fixed))
    print(f"{trouble}: Complete {fixed:.1f}s after the fix")


def test_a_pod_that_never_starts_fails_the_run_after_the_grace_period(c: E2E, tally: Tally) -> None:
    """The Secret never comes: after podStartupTimeoutSeconds the run fails with the pod's reason and
    its Job stops (the image that never comes is the next test's)."""
    c.start_operator()
    t0 = time.monotonic()
    c.create_run(run_body(spec={**_trouble_spec("CreateContainerConfigError"), "podStartupTimeoutSeconds": 3}))
    run = c.wait_phase("e2e", ("Complete", "Failed"), 120)
    waited = time.monotonic() - t0
    st = run["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "CreateContainerConfigError"), st
    assert "podStartupTimeoutSeconds (3s)" in st["message"], st["message"]
    c.wait(lambda: not (job := c.jobs().get("e2e-it0-gen")) or job["spec"].get("suspend") or job_done(job)
           or not job["status"].get("active"), 60, "the stuck Job stopped")
    tally.add("observed.seconds_until_a_stuck_step_failed", round(waited))


def test_multi_node_training_reports_how_many_pods_it_waits_for(c: E2E, tally: Tally) -> None:
    """Two-node training with the scheduler down: the test binds one of the two pods to a node
    itself (the binding subresource, as the scheduler does); the run says it waits for the other."""
    c.hold("it0-convert", "it0-train")
    c.start_operator()
    c.create_run(run_body(spec={**ONE_ITERATION, "training": {"nodes": 2},
                                "storage": {"newClaim": {"accessModes": ["ReadWriteMany"]}}}))
    c.wait(lambda: running(c, "e2e-it0-convert"), 120, "convert running")
    kube = c.kube
    node = next(n["metadata"]["name"] for n in kube.api.get(path("", "v1", "nodes"))["items"])
    with controlplane.crashed(kube.state, "kube-scheduler"):
        c.release("it0-convert")
        pods = c.wait(lambda: len(ps := pods_of(c, "e2e-it0-train")) == 2 and ps, 120, "the two training pods")
        name = sorted(p["metadata"]["name"] for p in pods)[0]
        kube.api.create(path("", "v1", "pods", c.namespace, name, "binding"),
                        {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": c.namespace},
                         "target": {"apiVersion": "v1", "kind": "Node", "name": node}})
        st = c.wait(lambda: "waiting for 1 of 2 pods" in (s := c.get_run("e2e").get("status") or {}).get("message", "")
                    and s, 120, "the run waiting for one pod")
        assert (st["phase"], st["reason"]) == ("Training", "WaitingForPods"), st
    c.release()
    run = complete(c)
    assert retries(run) == 0
    tally.add("observed.waiting_for_pods_reported", 1)


# --------------------------------------------------------------------------- spec changes mid-run


def test_lowering_iterations_mid_run_stops_the_running_job_then_completes(c: E2E, tally: Tally) -> None:
    c.hold("it1-gen")
    c.start_operator()
    c.create_run(run_body(spec={"iterations": 3}))
    c.wait(lambda: running(c, "e2e-it1-gen"), 120, "iteration 1 generating")
    c.patch_spec("e2e", {"iterations": 1})
    run = c.wait_phase("e2e", ("Complete", "Failed"), 120)
    assert (run["status"]["phase"], run["status"]["completedIterations"]) == ("Complete", 1), run["status"]
    left = c.wait(lambda: not running(c, "e2e-it1-gen") and (c.jobs().get("e2e-it1-gen"),), 60,
                  "the dropped iteration's pods stopped")
    job = left[0]
    assert job is None or job["spec"].get("suspend") or not job["status"].get("active"), job["status"]
    assert "StoppingIterations" in event_reasons(c, "StoppingIterations")
    assert not [n for n in c.job_creations() if n.startswith("e2e-it2-")]
    tally.add("observed.jobs_left_running_after_iterations_lowered", 0)


def test_an_invalid_spec_mid_run_suspends_its_jobs_until_fixed(c: E2E, tally: Tally) -> None:
    """An invalid change the CRD's own rules catch is refused by the apiserver (422) and never reaches
    the operator (the emulator stored it); one only the operator's validation catches
    (saveEpochs with maxSteps) fails the run's Failed condition and suspends its running Job, and
    the run completes once the spec is fixed."""
    c.hold("it0-convert")
    c.start_operator()
    c.create_run(run_body(spec={**ONE_ITERATION, "training": {"maxSteps": 1}}))
    c.wait(lambda: running(c, "e2e-it0-convert"), 120, "convert running")
    with pytest.raises(ApiException) as refused:
        c.patch_spec("e2e", {"training": {"maxLength": 16, "maxPromptLength": 32}})
    assert refused.value.status == 422 and "maxPromptLength must be smaller than maxLength" in str(refused.value.body)
    c.patch_spec("e2e", {"training": {"saveEpochs": True}})
    st = c.wait(lambda: cond(s := c.get_run("e2e").get("status") or {}, "Failed").get("status") == "True" and s, 60,
                "the Failed condition")
    assert cond(st, "Failed")["reason"] == "ValidationFailed", st
    job = c.wait(lambda: (j := c.jobs()["e2e-it0-convert"])["spec"].get("suspend") is True and j, 60, "the Job suspended")
    c.wait(lambda: not running(c, "e2e-it0-convert"), 120, "the Job controller to stop its pod")
    assert job["spec"]["suspend"] is True
    c.release()
    c.patch_spec("e2e", {"training": {"saveEpochs": False}})
    run = finished_at_generation(c, c.get_run("e2e")["metadata"]["generation"])
    assert run["status"]["phase"] == "Complete", json.dumps(run["status"], indent=1)
    assert cond(run["status"], "Failed")["status"] == "False", run["status"]
    assert c.job_creations().count("e2e-it0-convert") == 1
    tally.add("observed.jobs_running_while_spec_invalid", 0)


# --------------------------------------------------------------------------- the operator killed at each boundary

PHASES = {"Generating": "gen", "Converting": "convert", "Training": "train", "Evaluating": "eval"}
NEXT_JOB = {"gen": "e2e-it0-convert", "convert": "e2e-it0-train", "train": "e2e-it0-eval", "eval": "e2e-it1-gen"}
JOBS_OF_TWO_ITERATIONS = sorted(f"e2e-it{k}-{s}" for k in range(2) for s in PHASES.values())


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mtime_ns)} of every file under `root` (writes in flight left out)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp"))}


def changed(before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]) -> list[str]:
    """Files of `before` changed or gone in `after` (spec.json may be rewritten with the same content)."""
    return [f"{rel}: {'removed' if now is None else 'content changed' if now[0] != digest else 'rewritten'}"
            for rel, (digest, mtime) in before.items()
            if (now := after.get(rel)) is None or now[0] != digest or (now[1] != mtime and rel != "spec.json")]


def spinrun_gets(c: E2E, since: str) -> int:
    """The operator's GETs of the SpinRun (its reconcile reads it first) since `since` (audit log)."""
    return sum(1 for e in c.kube.audit(c.namespace) if e["user"]["username"].startswith(OPERATOR_USERS)
               and e["verb"] == "get" and e["objectRef"].get("resource") == "spinruns"
               and not e["objectRef"].get("subresource") and e["stageTimestamp"] >= since)


def restart_and_settle(c: E2E, op: OperatorProcess) -> None:
    """Start the operator and wait until it has read the run (a reconcile), and a moment for its writes."""
    since = iso()
    op.start()
    c.wait(lambda: spinrun_gets(c, since) > 0, 60, "the restarted operator to reconcile")
    time.sleep(1.0)


@pytest.mark.parametrize("phase", list(PHASES))
def test_the_operator_killed_mid_step_and_at_the_boundary_of_every_phase(
    phase: str, c: E2E, proxy: FaultProxy, tmp_path: Path, tally: Tally
) -> None:
    """A two-iteration run; in each iteration the `spin-operator` process is SIGKILLed while the
    phase's Job runs and started again. Iteration 0: the step is released with every status write of
    the operator's answered 503 by the proxy (never forwarded); once it has created the next Job and
    lost the write after it, it is SIGKILLed; the new process finds a Job its status does not know
    of. (A `hang` of the status patch would block the first write after the release, which for
    most steps comes before the step's Job is Complete: the next Job was then never created.) Iteration 1: the step completes while the
    operator is down. The run completes; each Job created once (audit log), no step ran twice, no
    retry spent, every file on the claim written before a kill is unchanged at the end."""
    suffix = PHASES[phase]
    op = through(OperatorProcess(c.kube, c.namespace, tmp_path / "operator.log"), proxy, tmp_path)
    snapshots: list[dict[str, tuple[str, int]]] = []
    lost_writes = 0
    c.hold(f"it0-{suffix}", f"it1-{suffix}")
    try:
        op.start()
        c.create_run(run_body())
        for k in (0, 1):
            job = f"e2e-it{k}-{suffix}"
            c.wait(lambda job=job: running(c, job) and c.get_run("e2e")["status"].get("phase") == phase, 120,
                   f"{job} running, phase {phase}")
            op.kill()  # mid-step
            snapshots.append(snapshot(c.run_dir()))
            restart_and_settle(c, op)
            if k == 0:
                # every status write of the operator's answered 503, never forwarded: the pass that
                # creates the next Job loses its write (and each later one), then the process dies
                dropped = proxy.add(Fault("error", verbs=("patch",), resource="spinruns", subresource="status",
                                       agent="spin-operator", status=503, times=None))
                c.release(f"it{k}-{suffix}")
                c.wait(lambda: NEXT_JOB[suffix] in c.jobs(), 120, f"{NEXT_JOB[suffix]} created")
                seen = dropped.fired
                c.wait(lambda dropped=dropped, seen=seen: dropped.fired > seen, 60, "a status write lost after it")
                op.kill()
                proxy.remove(dropped)
                lost_writes += dropped.fired
                status = c.get_run("e2e")["status"]
                known = [s["jobName"] for it in status.get("iterations") or [] for s in it["steps"]]
                assert NEXT_JOB[suffix] not in known, known  # the new process finds a Job its status does not know
            else:
                op.kill()
                c.release(f"it{k}-{suffix}")
                c.wait(lambda job=job: job_done(c.jobs().get(job)), 120, f"{job} done while the operator is down")
            snapshots.append(snapshot(c.run_dir()))
            restart_and_settle(c, op)
        run = complete(c, 240)
        assert run["status"]["completedIterations"] == 2, run["status"]
        final = snapshot(c.run_dir())
        assert not op.tracebacks(), op.tail()
    finally:
        op.kill()
    creations = c.job_creations()
    assert sorted(creations) == JOBS_OF_TWO_ITERATIONS, duplicates(creations) or creations
    assert not reran(c.kube), reran(c.kube)
    assert retries(run) == 0, run["status"]["iterations"]
    lost = [f"after kill {i}: {d}" for i, snap in enumerate(snapshots) for d in changed(snap, final)]
    assert not lost, lost
    assert len([p for p in final if p.endswith(".done")]) == 2 * (2 + 3), sorted(final)  # 2 shards + convert/train/eval
    tally.add("faults.operator_sigkill", 4)
    tally.add("faults.status_write_lost", 1)
    tally.add("observed.status_writes_lost", lost_writes)
    tally.add("observed.duplicate_job_creations", len(creations) - len(set(creations)))
    tally.add("observed.steps_recomputed", sum(n - 1 for n in reran(c.kube).values()))
    tally.add("observed.files_changed_after_kill", len(lost))
    tally.add("observed.files_checked", sum(len(s) for s in snapshots))
