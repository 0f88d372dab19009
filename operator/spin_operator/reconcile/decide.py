"""The operator's one decision: `reconcile(run, observed, now) -> Decision`.

Given a SpinRun (spec + last status) and what exists in the cluster (its Jobs, spec ConfigMaps,
Services, PVC), it decides which objects to create, delete or (un)suspend, the new status and the
events to post. It is pure: no clock, no API, no kopf — the driver gathers the observation, calls
it, and executes the decision.

Rules (each pinned by tests/operator/test_reconcile.py):
- Stages run in plan order (spin_runtime.plan.stages); a stage is done once its Job had
  condition Complete, which is recorded in status.iterations[].steps, so a Job removed later is
  not recreated.
- An iteration pins the spec it started under in `<run>-it<k>-spec`; spec changes apply from
  the next iteration on.
- A failed convert/train/evaluate Job is deleted and recreated (annotation spin.dev/attempt+1)
  until backoffLimit retries are spent; a failed generation Job (a shard over its per-index
  limit) fails the run naming the shard.
- Complete and Failed are sticky: a finished run never creates children again. The exception
  is an invalid spec (condition Failed with reason ValidationFailed): its Jobs are suspended,
  and fixing the spec resumes them.
- Children are adopted only through their controller ownerReference to this run's uid; objects
  of a deleted run with the same name are waited for until the garbage collector removes them.
- A pod that cannot start (image, config, scheduling, claim) turns Progressing False with that
  reason; after podStartupTimeoutSeconds the run fails with it (waiting Unschedulable for capacity:
  after unschedulableTimeoutSeconds, by default never).
- activeDeadlineSeconds counts running time only: suspended time is excluded.
- A queued workload (Kueue) is Kueue's to suspend: the run stops and resumes it through its
  Workload's spec.active, and says "waiting for quota" while Kueue holds it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from spin_operator import launchers
from spin_operator.builders.context import BuildContext
from spin_operator.builders.gang import gang_enabled
from spin_operator.builders.meta import RunRef, job_name, spec_configmap_name
from spin_operator.builders.pod import run_dir
from spin_operator.builders.storage import persistent_volume_claim, spec_config_map, spec_from_config_map
from spin_operator.kube.objects import JobState, Observed, PodState
from spin_operator.kube.timestamps import parse_time, rfc3339
from spin_operator.launchers.base import Unavailable
from spin_operator.reconcile.actions import Action, Create, Delete, Event, PatchJob, SetWorkloadActive
from spin_operator.reconcile.conditions import (
    condition,
    is_terminal,
    is_true,
    read_status,
    set_condition,
    status_document,
)
from spin_operator.reconcile.step_progress import step_progress
from spin_operator.settings import DeploymentSettings
from spin_runtime.api.load import SpecError, validate_data
from spin_runtime.api.spec import API_VERSION, KIND, SpinRun, SpinRunSpec
from spin_runtime.api.status import (
    MODEL_STEP,
    STEP_PHASE,
    Checkpoint,
    ConditionType,
    EventType,
    IterationStatus,
    Phase,
    Reason,
    SpinRunStatus,
    StepName,
    StepStatus,
)
from spin_runtime.errors import EXIT_BAD_DATA, EXIT_BAD_MODEL, EXIT_BAD_SPEC
from spin_runtime.plan import layout, stages

#: How many entries status.iterations keeps (the newest).
MAX_ITERATION_HISTORY = 20
#: Status fields every status carries, even before anything happened.
ALWAYS_SET = ("phase", "completed_iterations", "conditions", "iterations")
#: How often a run waiting for something without an event (old objects to be collected) looks again.
WAIT_RECHECK_SECONDS = 5.0
#: How soon a retry looks again whether the failed attempt's Job and pods are gone.
RETRY_WAIT_SECONDS = 2.0
GANG_DISABLED = Unavailable(
    Reason.GANG_SCHEDULING_DISABLED,
    "training.gangScheduling.enabled is true but this operator may not create PodGroups (Helm value "
    "gangScheduling.enabled=false, env SPIN_GANG_SCHEDULING_ENABLED=false): ask the cluster admin to install the "
    "scheduler-plugins Coscheduling plugin and enable it, or set training.gangScheduling.enabled: false",
)
#: What to do about each reason a pod cannot start.
POD_TROUBLE_HINTS: dict[Reason, str] = {
    Reason.IMAGE_PULL_BACK_OFF: "check spec.images (or the operator's image settings) and spec.imagePullSecrets",
    Reason.CREATE_CONTAINER_CONFIG_ERROR: "a Secret or ConfigMap the pod needs is missing (spec.hfTokenSecret?): create it",
    Reason.CREATE_CONTAINER_ERROR: "the container runtime refused the container: see `kubectl describe pod`",
    Reason.UNSCHEDULABLE: "no node fits: check the step's resources, spec.nodeSelector, spec.tolerations and GPU quota",
    Reason.CLAIM_PENDING: "the run's PersistentVolumeClaim is not bound: check its StorageClass and capacity",
}


@dataclass
class Decision:
    """What to do: actions in order, the complete new status, events to post, and when a
    time-based rule (deadline, TTL) next needs a look."""

    actions: list[Action] = field(default_factory=list)
    status: SpinRunStatus = field(default_factory=SpinRunStatus)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None

    def creates(self) -> list[str]:
        return [a.name for a in self.actions if isinstance(a, Create)]

    def deletes(self) -> list[str]:
        return [a.name for a in self.actions if isinstance(a, Delete)]

    def status_document(self) -> dict[str, Any]:
        """The new status as written to the API server (camelCase)."""
        return status_document(self.status)


def spec_of(body: Mapping[str, Any]) -> SpinRunSpec:
    """The typed spec of a SpinRun object, through the one strict loader (SpecError if invalid)."""
    meta = body.get("metadata") or {}
    return validate_data(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
            "spec": body.get("spec") or {},
        }
    ).spec


#: A SpinRun's spec as its reconcile reads it: the typed spec, or why it is invalid.
ParsedSpec = SpinRunSpec | SpecError


def parse_spec(body: Mapping[str, Any]) -> ParsedSpec:
    """The spec of a SpinRun object parsed once per reconcile (spec_of), the SpecError in place of
    the spec when it is invalid: the driver and the decision read this one result."""
    try:
        return spec_of(body)
    except SpecError as e:
        return e


def validation_message(e: SpecError) -> str:
    """The condition message of an invalid spec: its first five problems."""
    shown = e.problems[:5]
    more = f" (+{len(e.problems) - 5} more)" if len(e.problems) > 5 else ""
    return "spec is invalid, fix and reapply: " + "; ".join(shown) + more


def _as_body(run: SpinRun | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(run, SpinRun):
        return run.model_dump(by_alias=True, exclude_none=True, mode="json")
    return copy.deepcopy(dict(run))


# --------------------------------------------------------------------------- one pass


class ReconcilePass:
    """One reconcile of one run: the working status plus the collected actions and events."""

    def __init__(self, body: dict[str, Any], observed: Observed, now: datetime, settings: DeploymentSettings):
        self.body = body
        self.ref = RunRef.from_body(body)
        self.generation = self.ref.generation
        self.observed = observed
        self.now = now
        self.now_s = rfc3339(now)
        self.settings = settings
        # live progress is recomputed each pass: it exists only while a step reports it
        self.status = read_status({k: v for k, v in (body.get("status") or {}).items() if k != "progress"})
        for name in ALWAYS_SET:  # an assignment marks the field as set, so the document carries it
            setattr(self.status, name, getattr(self.status, name))
        self.decision = Decision()

    # -- small helpers
    def event(self, etype: EventType, reason: Reason, message: str) -> None:
        self.decision.events.append((etype, reason, message))

    def act(self, action: Action) -> None:
        self.decision.actions.append(action)

    def cond(self, ctype: ConditionType, value: bool, reason: Reason, message: str) -> bool:
        return set_condition(self.status, ctype, value, reason, message, self.now_s, self.generation)

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 1.0)
        current = self.decision.requeue_after
        self.decision.requeue_after = seconds if current is None else min(current, seconds)

    def phase(self, phase: Phase, reason: Reason, message: str) -> None:
        self.status.phase, self.status.reason, self.status.message = phase, reason, message

    def delete_job(self, job: JobState) -> None:
        self.act(Delete(job.kind, job.name, job.api_version))

    def queued_by_kueue(self, job: JobState) -> bool:
        """Whether Kueue owns this workload's suspension (queued, and the deployment lets the
        operator patch Kueue's Workloads)."""
        return bool(job.queue_name) and self.settings.kueue

    def stop(self, job: JobState) -> None:
        """Suspend a workload: through its Kueue Workload when queued (Kueue unsuspends an admitted
        Job whose suspend flag someone else set), else its own suspend flag."""
        if self.queued_by_kueue(job):
            if job.uid:  # a Job created in this pass has no uid yet: next pass
                self.act(SetWorkloadActive(job.name, job.uid, False, job.kind))
        else:
            self.act(PatchJob(job.name, True, job.kind))

    def resume(self, job: JobState) -> None:
        if self.queued_by_kueue(job):
            if job.uid:
                self.act(SetWorkloadActive(job.name, job.uid, True, job.kind))
        else:
            self.act(PatchJob(job.name, False, job.kind))

    def delete_unfinished(self) -> None:
        for job in self.observed.jobs_sorted():
            if not job.finished:
                self.delete_job(job)

    def fail(self, reason: Reason, message: str) -> None:
        self.phase("Failed", reason, message)
        self.cond(ConditionType.FAILED, True, reason, message)
        self.cond(ConditionType.PROGRESSING, False, reason, message)
        self.status.completion_time = self.now_s
        self.event("Warning", reason, message)
        self.delete_unfinished()

    def finish(self) -> Decision:
        self.status.observed_generation = self.generation
        self.status.iterations = self.status.iterations[-MAX_ITERATION_HISTORY:]
        self.decision.status = self.status
        return self.decision


# --------------------------------------------------------------------------- reconcile


def reconcile(
    run: SpinRun | Mapping[str, Any],
    observed: Observed,
    now: datetime,
    settings: DeploymentSettings | None = None,
    *,
    spec: ParsedSpec | None = None,
) -> Decision:
    """Decide the next actions and the new status of one SpinRun. Pure. `spec`: the run's spec as
    the caller already parsed it (parse_spec); parsed here when not given."""
    run_pass = ReconcilePass(_as_body(run), observed, now, settings or DeploymentSettings())
    if is_terminal(run_pass.status):
        _terminal(run_pass)
        return run_pass.finish()

    if spec is None:
        spec = parse_spec(run_pass.body)
    if isinstance(spec, SpecError):
        _invalid_spec(run_pass, validation_message(spec))
        return run_pass.finish()
    if condition(run_pass.status, ConditionType.VALIDATION_FAILED) is not None:
        run_pass.cond(ConditionType.VALIDATION_FAILED, False, Reason.VALID, "spec is valid")
        if is_true(run_pass.status, ConditionType.FAILED):
            run_pass.cond(ConditionType.FAILED, False, Reason.VALID, "spec is valid again")

    if not run_pass.status.start_time:
        run_pass.status.start_time = run_pass.now_s
        run_pass.event("Normal", Reason.STARTED, f"run started: iterations {spec.start_iteration}..{spec.iterations - 1}")

    if _deadline(run_pass, spec):
        return run_pass.finish()

    _suspension(run_pass, spec)
    _queue_management(run_pass, spec)
    if observed.foreign:
        _wait_for_foreign(run_pass)
        return run_pass.finish()
    _claim(run_pass, spec)

    _walk_plan(run_pass, spec)
    return run_pass.finish()


def _invalid_spec(run_pass: ReconcilePass, msg: str) -> None:
    """ValidationFailed: Failed (not sticky: fixing the spec resumes the run), Jobs suspended so
    they hold no GPUs while nobody can say what the run should do."""
    if run_pass.cond(ConditionType.VALIDATION_FAILED, True, Reason.VALIDATION_FAILED, msg):
        run_pass.event("Warning", Reason.VALIDATION_FAILED, msg)
    run_pass.phase("Failed", Reason.VALIDATION_FAILED, msg)
    run_pass.cond(ConditionType.FAILED, True, Reason.VALIDATION_FAILED, msg)
    run_pass.cond(ConditionType.PROGRESSING, False, Reason.VALIDATION_FAILED, msg)
    for job in run_pass.observed.jobs_sorted():
        if not job.finished and not job.suspended_by_us and not (job.suspended and not run_pass.queued_by_kueue(job)):
            run_pass.stop(job)


def _wait_for_foreign(run_pass: ReconcilePass) -> None:
    """Objects with this run's names belong to another (deleted) SpinRun: create nothing until
    the garbage collector has removed them, and say which ones when they stay (orphans)."""
    shown = ", ".join(f"{f.kind} {f.name}" for f in run_pass.observed.foreign[:5])
    more = f" (+{len(run_pass.observed.foreign) - 5} more)" if len(run_pass.observed.foreign) > 5 else ""
    owners = {f.owner_uid for f in run_pass.observed.foreign}
    whose = "no owner (orphaned)" if owners == {None} else "another SpinRun of this name (a deleted one)"
    msg = (
        f"waiting for {shown}{more} to go: they belong to {whose}, and this run adopts only its own children; "
        f"the garbage collector removes a deleted run's objects, or delete them: kubectl delete -n {run_pass.ref.namespace} "
        + " ".join(f"{f.kind.lower()}/{f.name}" for f in run_pass.observed.foreign[:5])
    )
    run_pass.status.reason, run_pass.status.message = Reason.WAITING_FOR_OLD_OBJECTS, msg
    if run_pass.cond(ConditionType.PROGRESSING, False, Reason.WAITING_FOR_OLD_OBJECTS, msg):
        run_pass.event("Warning", Reason.WAITING_FOR_OLD_OBJECTS, msg)
    run_pass.requeue(WAIT_RECHECK_SECONDS)


def _claim(run_pass: ReconcilePass, spec: SpinRunSpec) -> None:
    """Create the new claim (once), saying what happens to its data when the run is deleted."""
    claim = spec.storage.new_claim
    if claim is None:
        return
    pvc = persistent_volume_claim(run_pass.ref, spec)
    assert pvc is not None
    name, ns = pvc["metadata"]["name"], run_pass.ref.namespace
    if run_pass.observed.pvc_exists:
        created_by = run_pass.observed.pvc_created_by
        if created_by and created_by != run_pass.ref.uid and not run_pass.status.iterations:
            run_pass.event(
                "Normal",
                Reason.CLAIM_REUSED,
                f"PVC {name} exists from an earlier SpinRun of this name (uid {created_by}): this run uses it "
                "and the results already on it",
            )
        return
    run_pass.act(Create(pvc))
    if claim.delete_with_run:
        fate = "it is deleted with the SpinRun, checkpoints and results included (storage.newClaim.deleteWithRun: true)"
    else:
        fate = (
            "it is kept when the SpinRun is deleted, with every checkpoint and result "
            f"(storage.newClaim.deleteWithRun: false); remove it with `kubectl delete pvc -n {ns} {name}`"
        )
    run_pass.event("Normal", Reason.CLAIM_CREATED, f"created PVC {name} ({claim.size}): {fate}")


def _terminal(run_pass: ReconcilePass) -> None:
    """Finished runs: never create; clean up leftovers; apply ttlSecondsAfterFinished."""
    if is_true(run_pass.status, ConditionType.FAILED):
        run_pass.delete_unfinished()
    ttl = (run_pass.body.get("spec") or {}).get("ttlSecondsAfterFinished")
    done_at = parse_time(run_pass.status.completion_time)
    if ttl is None or done_at is None:
        return
    due = done_at + timedelta(seconds=int(ttl))
    if run_pass.now < due:
        run_pass.requeue((due - run_pass.now).total_seconds())
        return
    deletions = [Delete(job.kind, job.name, job.api_version) for job in run_pass.observed.jobs_sorted()]
    deletions += [Delete("Service", s, "v1") for s in sorted(run_pass.observed.services)]
    if deletions:
        for deletion in deletions:
            run_pass.act(deletion)
        run_pass.event(
            "Normal",
            Reason.TTL_EXPIRED,
            f"ttlSecondsAfterFinished ({ttl}s) passed: deleting {len(deletions)} Job(s)/Service(s); results stay on the volume",
        )


def _deadline(run_pass: ReconcilePass, spec: SpinRunSpec) -> bool:
    """activeDeadlineSeconds: fail the run and stop its Jobs once it passed. Suspended time does
    not count (the clock stops while spec.suspend is true). True if failed."""
    deadline_seconds = spec.active_deadline_seconds
    started = parse_time(run_pass.status.start_time)
    if deadline_seconds is None or started is None or spec.suspend:
        return False
    due = started + timedelta(seconds=deadline_seconds + _suspended_seconds(run_pass))
    if run_pass.now >= due:
        run_pass.fail(Reason.DEADLINE_EXCEEDED, f"run exceeded activeDeadlineSeconds ({deadline_seconds}s){_where(run_pass.status)}; its Jobs were stopped")
        return True
    run_pass.requeue((due - run_pass.now).total_seconds())
    return False


def _suspended_seconds(run_pass: ReconcilePass) -> int:
    """Seconds spent suspended so far: the finished suspensions plus the current one."""
    total = run_pass.status.suspended_seconds
    c = condition(run_pass.status, ConditionType.SUSPENDED)
    since = parse_time(c.last_transition_time) if c is not None and c.status == "True" else None
    if since is not None:
        total += max(int((run_pass.now - since).total_seconds()), 0)
    return total


def _where(status: SpinRunStatus) -> str:
    """`, in iteration k, step s` of the newest unfinished step, for messages."""
    if not status.iterations:
        return ""
    it = status.iterations[-1]
    unfinished = [s for s in it.steps if not s.completion_time]
    step = f", step {unfinished[-1].step}" if unfinished else ""
    return f" in iteration {it.iteration}{step}"


def _suspension(run_pass: ReconcilePass, spec: SpinRunSpec) -> None:
    """spec.suspend: suspend unfinished Jobs; on resume unsuspend the ones we suspended."""
    for job in run_pass.observed.jobs_sorted():
        if job.finished:
            continue
        if run_pass.queued_by_kueue(job):  # Kueue sets the flag; we (de)activate its Workload
            if spec.suspend and not job.suspended_by_us:
                run_pass.stop(job)
            elif not spec.suspend and job.suspended_by_us:
                run_pass.resume(job)
        elif spec.suspend and not job.suspended:
            run_pass.stop(job)
        elif not spec.suspend and job.suspended and job.suspended_by_us:
            run_pass.resume(job)
    if spec.suspend:
        if run_pass.cond(ConditionType.SUSPENDED, True, Reason.SUSPENDED, "spec.suspend is true: Jobs are suspended; set it to false to resume"):
            run_pass.event("Normal", Reason.SUSPENDED, "run suspended: active Jobs suspended")
    elif is_true(run_pass.status, ConditionType.SUSPENDED):
        run_pass.status.suspended_seconds = _suspended_seconds(run_pass)
        run_pass.cond(ConditionType.SUSPENDED, False, Reason.RESUMED, "spec.suspend is false")
        run_pass.event("Normal", Reason.RESUMED, "run resumed: suspended Jobs continue")


#: What a queued run on an operator installed without Kueue support is told.
QUEUE_UNMANAGED = (
    "spec.queueName is set, but the operator was installed with kueue.enabled=false: Kueue suspends and "
    "admits the run's Jobs by its own rules while spec.suspend sets the same flag, and the two fight "
    "(docs/cluster.md). Install the operator with --set kueue.enabled=true, or remove spec.queueName"
)


def _queue_management(run_pass: ReconcilePass, spec: SpinRunSpec) -> None:
    """A queueName on an operator that does not manage Kueue's Workloads: a condition that says so
    and one Warning event, instead of a silent fight over the Jobs' suspend flag."""
    if spec.queue_name and not run_pass.settings.kueue:
        if run_pass.cond(ConditionType.QUEUE_UNMANAGED, True, Reason.KUEUE_DISABLED, QUEUE_UNMANAGED):
            run_pass.event("Warning", Reason.KUEUE_DISABLED, QUEUE_UNMANAGED)
    elif condition(run_pass.status, ConditionType.QUEUE_UNMANAGED) is not None:
        why = "the operator manages Kueue's Workloads" if spec.queue_name else "spec.queueName is not set"
        run_pass.cond(ConditionType.QUEUE_UNMANAGED, False, Reason.KUEUE_ENABLED if spec.queue_name else Reason.NOT_QUEUED, why)


def _iteration_entry(status: SpinRunStatus, k: int) -> IterationStatus | None:
    return next((it for it in status.iterations if it.iteration == k), None)


def _step_entry(it: IterationStatus, step: StepName) -> StepStatus | None:
    return next((s for s in it.steps if s.step == step), None)


def _pinned_spec(run_pass: ReconcilePass, spec: SpinRunSpec, k: int, it: IterationStatus) -> SpinRunSpec:
    """The spec iteration k started under (its ConfigMap); recreated from the current spec
    if someone deleted it."""
    name = spec_configmap_name(run_pass.ref.name, k)
    cm = run_pass.observed.config_maps.get(name)
    if cm is not None:
        try:
            return spec_from_config_map(cm)
        except (KeyError, ValueError, SpecError):
            run_pass.event("Warning", Reason.SPEC_CONFIG_MAP_INVALID, f"ConfigMap {name} is unreadable: using the current spec")
    ref = RunRef(run_pass.ref.name, run_pass.ref.namespace, run_pass.ref.uid, int(it.generation or run_pass.generation))
    run_pass.act(Create(spec_config_map(ref, spec, k)))
    return spec


def _walk_plan(run_pass: ReconcilePass, spec: SpinRunSpec) -> None:
    """Find the earliest unfinished stage and drive it; finish the run when none is left."""
    current = run_pass.status.current_iteration
    for k in stages.iterations(spec):
        if current is not None and k < current:
            continue
        it = _iteration_entry(run_pass.status, k)
        if it is None:
            it = IterationStatus(iteration=k, generation=run_pass.generation, steps=[])
            run_pass.status.iterations.append(it)
            run_pass.status.current_iteration = k
            run_pass.event("Normal", Reason.ITERATION_STARTED, f"iteration {k} started with spec generation {run_pass.generation}")
            run_pass.act(Create(spec_config_map(run_pass.ref, spec, k)))
            pinned_spec = spec
        else:
            run_pass.status.current_iteration = k
            pinned_spec = _pinned_spec(run_pass, spec, k, it)
        if not _drive_iteration(run_pass, spec, pinned_spec, k, it):
            return  # a stage is in flight (or the run failed)
        done = k - spec.start_iteration + 1
        if run_pass.status.completed_iterations < done:
            run_pass.status.completed_iterations = done
            run_pass.event("Normal", Reason.ITERATION_COMPLETED, f"iteration {k} completed")
            run_pass.cond(ConditionType.PROGRESSING, True, Reason.ITERATION_COMPLETED, f"iteration {k} completed")
    if _stop_iterations_beyond(run_pass, spec):
        return
    _complete(run_pass, spec)


def _stop_iterations_beyond(run_pass: ReconcilePass, spec: SpinRunSpec) -> bool:
    """spec.iterations lowered below an iteration that already started: delete its unfinished
    Jobs and complete only once none of them (nor their pods) holds resources. True while stopping."""
    stale = [job for job in run_pass.observed.jobs_sorted()
             if job.iteration is not None and job.iteration >= spec.iterations and not job.finished]
    pods = [p for p in run_pass.observed.pods if p.iteration is not None and p.iteration >= spec.iterations and not p.finished]
    if not stale and not pods:
        return False
    for job in stale:
        run_pass.delete_job(job)
    what = ", ".join(f"job {job.name}" for job in stale) or "their Jobs are deleted"
    msg = (
        f"spec.iterations lowered to {spec.iterations}: stopping iteration(s) {spec.iterations} and later ({what}; "
        f"{len(pods)} pod(s) still running); the run completes once they are gone"
    )
    before = _progressing(run_pass)
    run_pass.status.reason, run_pass.status.message = Reason.STOPPING_ITERATIONS, msg
    run_pass.cond(ConditionType.PROGRESSING, True, Reason.STOPPING_ITERATIONS, msg)
    if before != ("True", Reason.STOPPING_ITERATIONS):
        run_pass.event("Normal", Reason.STOPPING_ITERATIONS, msg)
    return True


def _complete(run_pass: ReconcilePass, spec: SpinRunSpec) -> None:
    ckpt = run_pass.status.last_checkpoint.path if run_pass.status.last_checkpoint else ""
    n = run_pass.status.completed_iterations
    msg = f"{n} iteration(s) completed; last checkpoint {ckpt}" if ckpt else f"{n} iteration(s) completed"
    run_pass.phase("Complete", Reason.RUN_COMPLETED, msg)
    run_pass.cond(ConditionType.COMPLETE, True, Reason.RUN_COMPLETED, msg)
    run_pass.cond(ConditionType.PROGRESSING, False, Reason.RUN_COMPLETED, msg)
    run_pass.status.completion_time = run_pass.now_s
    run_pass.event("Normal", Reason.RUN_COMPLETED, msg)
    if spec.ttl_seconds_after_finished is not None:
        run_pass.requeue(spec.ttl_seconds_after_finished)


def _drive_iteration(
    run_pass: ReconcilePass, spec: SpinRunSpec, pinned_spec: SpinRunSpec, k: int, it: IterationStatus
) -> bool:
    """Advance iteration k's stages; True when all of them are done. `pinned_spec`: the spec the
    iteration started under (what its objects are built from); `spec`: the run's current spec
    (suspension, timeouts)."""
    generation = int(it.generation or run_pass.generation)
    for stage in stages.stages_for_iteration(pinned_spec, k):
        step = stage.name
        entry = _step_entry(it, step)
        if entry is not None and entry.completion_time:
            continue
        name = job_name(run_pass.ref.name, k, step)
        if entry is None:
            entry = StepStatus(step=step, job_name=name, retries=0)
            it.steps.append(entry)
        job = run_pass.observed.jobs.get(name)
        ctx = BuildContext(
            run=RunRef(run_pass.ref.name, run_pass.ref.namespace, run_pass.ref.uid, generation),
            spec=pinned_spec,
            iteration=k,
            attempt=entry.retries,
            suspend=spec.suspend,
            settings=run_pass.settings,
        )
        if job is not None and job.attempt > entry.retries:
            entry.retries = job.attempt  # status lagged behind the Job we created
        if job is not None and job.attempt < entry.retries:
            # A previous attempt's Job still exists: remove it; the attempt starts once it is gone.
            run_pass.delete_job(job)
            _wait_for_previous_attempt(run_pass, k, step, entry, f"job {job.name} of attempt {job.attempt + 1} is being deleted")
            return False
        if job is not None and job.complete:
            _step_done(run_pass, pinned_spec, k, step, entry, job)
            continue
        if job is not None and job.failed_condition:
            _step_failed(run_pass, ctx, stage, entry, job)
            return False
        if job is not None:
            _running(run_pass, spec, pinned_spec, k, step, job)
            _ensure_companions(run_pass, ctx, step)
            return False
        leftover = run_pass.observed.pods_of(k, step)
        if leftover:  # the previous attempt's pods still run (Terminating): same hostnames, same Service
            names = sorted(p.name for p in leftover)
            _wait_for_previous_attempt(run_pass, k, step, entry, f"{len(names)} pod(s) of the previous attempt still stopping; "
                                       f"a pod on a lost node stops only when deleted: kubectl delete pod -n {run_pass.ref.namespace} "
                                       f"--force {' '.join(names[:3])}")
            return False
        _start(run_pass, ctx, stage, entry, restart=entry.retries > 0 and entry.start_time is not None)
        return False
    return True


def _wait_for_previous_attempt(run_pass: ReconcilePass, k: int, step: StepName, entry: StepStatus, why: str) -> None:
    """A retry starts only once the failed attempt's Job and pods are gone: a new pod with the same
    hostname beside a dying one would share its Service name (the master address of multi-node
    training could resolve to the dying pod), and a create would meet the old Job's name."""
    msg = f"iteration {k}: {step} attempt {entry.retries + 1} waits: {why}"
    run_pass.phase(STEP_PHASE[step], Reason.WAITING_FOR_PREVIOUS_ATTEMPT, msg)
    run_pass.cond(ConditionType.PROGRESSING, True, Reason.WAITING_FOR_PREVIOUS_ATTEMPT, msg)
    run_pass.requeue(RETRY_WAIT_SECONDS)


def _running(
    run_pass: ReconcilePass, spec: SpinRunSpec, pinned_spec: SpinRunSpec, k: int, step: StepName, job: JobState
) -> None:
    """The stage's workload exists and is unfinished: say what it is doing (running, waiting for
    its pods, or unable to start)."""
    if spec.suspend:
        run_pass.phase("Suspended", Reason.SUSPENDED, f"suspended during iteration {k}, step {step}")
        return
    if job.suspended and not job.suspended_by_us and job.queue_name:  # Kueue holds it until admitted
        msg = f"iteration {k}: {step} waiting for quota in queue {job.queue_name} (Kueue admits job {job.name})"
        run_pass.phase(STEP_PHASE[step], Reason.WAITING_FOR_QUOTA, msg)
        run_pass.cond(ConditionType.PROGRESSING, True, Reason.WAITING_FOR_QUOTA, msg)
        return
    # a Job's own pods only (a pod of an earlier attempt is not this attempt's progress or trouble)
    pods = [p for p in run_pass.observed.pods_of(k, step) if job.kind != "Job" or not job.uid or p.owner_uid in (None, job.uid)]
    # A launcher object of another project (TrainJob, PyTorchJob) runs its pods under that
    # project's runtime: no podFailurePolicy of ours, and a restartPolicy (OnFailure) that
    # restarts a container in place up to its Job's backoffLimit. Its pod's exit code says it.
    ended = next((p for p in pods if p.deterministic_exit is not None), None)
    if ended is not None and job.kind != "Job":
        _deterministic_failure(run_pass, k, step, job, f"pod {ended.name} exited {ended.deterministic_exit}")
        return
    troubled = next((p for p in pods if p.trouble is not None), None)
    if troubled is not None and troubled.trouble is not None:
        _pod_trouble(run_pass, spec, k, step, troubled, troubled.trouble)
        return
    msg = f"iteration {k}: {step} running (job {job.name})"
    reason = Reason.STEP_RUNNING
    expected = pinned_spec.training.nodes
    running = sum(p.phase == "Running" for p in pods)
    training = launchers.runs_as_training(step)
    if training and pods and running < expected:  # all nodes must run before training starts
        msg = f"iteration {k}: {step} waiting for {expected - running} of {expected} pods to run (job {job.name})"
        reason = Reason.WAITING_FOR_PODS
    run_pass.phase(STEP_PHASE[step], reason, msg)
    run_pass.cond(ConditionType.PROGRESSING, True, reason, msg)
    progress = step_progress(k, step, job, pods, run_pass.observed.progress, shards=pinned_spec.generation.shards, now=run_pass.now)
    if progress is not None:  # an unset field stays out of the status document
        run_pass.status.progress = progress


def _pod_trouble(
    run_pass: ReconcilePass, spec: SpinRunSpec, k: int, step: StepName, pod: PodState, trouble: Reason
) -> None:
    """A pod of the running step cannot start (`trouble`: why): Progressing False with the pod's
    reason, an Event when the reason appears, and the run failed once podStartupTimeoutSeconds passed."""
    hint = POD_TROUBLE_HINTS.get(trouble, "see `kubectl describe pod`")
    msg = f"iteration {k}: {step} cannot start: pod {pod.name}: {pod.trouble_message or trouble}; {hint}"
    capacity = trouble == Reason.UNSCHEDULABLE  # waiting for room heals by itself; the other reasons do not
    timeout, field_name = ((spec.unschedulable_timeout_seconds, "unschedulableTimeoutSeconds") if capacity
                           else (spec.pod_startup_timeout_seconds, "podStartupTimeoutSeconds"))
    if capacity:
        msg += ("; the run waits for capacity" + (f" up to unschedulableTimeoutSeconds ({timeout}s)" if timeout
                                                  else " (spec.unschedulableTimeoutSeconds sets a limit)"))
    since = parse_time(pod.trouble_since)
    if timeout and since is not None and run_pass.now >= since + timedelta(seconds=timeout):
        run_pass.fail(trouble, f"{msg}; it could not start for more than {field_name} ({timeout}s)")
        return
    if timeout and since is not None:
        run_pass.requeue((since + timedelta(seconds=timeout) - run_pass.now).total_seconds())
    before = _progressing(run_pass)
    run_pass.phase(STEP_PHASE[step], trouble, msg)
    run_pass.cond(ConditionType.PROGRESSING, False, trouble, msg)
    if before != ("False", trouble):
        run_pass.event("Warning", trouble, msg)


def _progressing(run_pass: ReconcilePass) -> tuple[str, str] | None:
    """(status, reason) of the Progressing condition before this pass changes it."""
    c = condition(run_pass.status, ConditionType.PROGRESSING)
    return (c.status, c.reason) if c is not None else None


def _ensure_companions(run_pass: ReconcilePass, ctx: BuildContext, step: StepName) -> None:
    """Recreate what the launcher of a training step needs beside its workload (a deleted Service)."""
    launcher = launchers.for_step(ctx.spec, step)
    if launcher is None:
        return
    for obj in launcher.companions(ctx, step):
        if obj["kind"] == "Service" and obj["metadata"]["name"] not in run_pass.observed.services:
            run_pass.act(Create(obj))


def _start(run_pass: ReconcilePass, ctx: BuildContext, stage: stages.Stage, entry: StepStatus, *, restart: bool) -> None:
    """Create the stage's objects (the Job; for a training step whatever the launcher makes)."""
    k, step = ctx.iteration, stage.name
    launcher = launchers.for_step(ctx.spec, step)
    if launcher is not None:
        blocked = launcher.availability(run_pass.settings, run_pass.observed.launcher_served)
        if blocked is None and gang_enabled(ctx) and not run_pass.settings.gang_scheduling:
            blocked = GANG_DISABLED
        if blocked is not None:
            run_pass.phase(STEP_PHASE[step], blocked.reason, blocked.message)
            if run_pass.cond(ConditionType.PROGRESSING, False, blocked.reason, blocked.message):
                run_pass.event("Warning", blocked.reason, blocked.message)
            return
    if ctx.suspend and ctx.spec.queue_name and run_pass.settings.kueue:
        # Kueue would admit and unsuspend a Job created suspended: queue nothing until resumed
        run_pass.phase("Suspended", Reason.SUSPENDED, f"suspended before iteration {k}, step {step} (queue {ctx.spec.queue_name})")
        return
    for obj in launchers.step_objects(ctx, stage):
        if obj["kind"] == "Service" and obj["metadata"]["name"] in run_pass.observed.services:
            continue
        run_pass.act(Create(obj))
    name = job_name(run_pass.ref.name, k, step)
    if not entry.start_time or restart:
        entry.start_time = run_pass.now_s
    entry.job_name = name
    if not restart:
        run_pass.event("Normal", Reason.STEP_STARTED, f"iteration {k}: {step} started (job {name})")
    if ctx.suspend:
        run_pass.phase("Suspended", Reason.SUSPENDED, f"suspended during iteration {k}, step {step}")
    else:
        msg = f"iteration {k}: {step} running (job {name})"
        run_pass.phase(STEP_PHASE[step], Reason.STEP_RUNNING, msg)
        run_pass.cond(ConditionType.PROGRESSING, True, Reason.STEP_RUNNING, msg)


def _step_done(
    run_pass: ReconcilePass, pinned_spec: SpinRunSpec, k: int, step: StepName, entry: StepStatus, job: JobState
) -> None:
    entry.completion_time = job.completion_time or run_pass.now_s
    entry.retries = max(entry.retries, job.attempt)
    if not entry.start_time:
        entry.start_time = job.start_time or run_pass.now_s
    run_pass.event("Normal", Reason.STEP_SUCCEEDED, f"iteration {k}: {step} succeeded (job {job.name})")
    if step == MODEL_STEP:
        path = f"{run_dir(run_pass.ref.name, pinned_spec)}/{layout.model_dir(k)}"
        run_pass.status.last_checkpoint = Checkpoint(iteration=k, path=path, time=entry.completion_time)


def _deterministic_failure(run_pass: ReconcilePass, k: int, step: StepName, job: JobState, why: str) -> None:
    """The step ended with an exit code a retry cannot fix: the run fails at once, saying so."""
    run_pass.fail(
        Reason.STEP_FAILED,
        f"{step} of iteration {k} failed with an exit code a retry cannot fix ({EXIT_BAD_DATA}: bad data, "
        f"{EXIT_BAD_MODEL}: bad model, {EXIT_BAD_SPEC}: bad spec) (job {job.name}: {why}); see `kubectl logs job/{job.name}`, fix the cause and "
        "create a new SpinRun (finished steps are kept on the volume)",
    )


def _step_failed(run_pass: ReconcilePass, ctx: BuildContext, stage: stages.Stage, entry: StepStatus, job: JobState) -> None:
    k, step = ctx.iteration, stage.name
    limit = ctx.spec.backoff_limit
    why = ": ".join(x for x in (job.reason, job.message) if x) or "Job failed"
    if step == "generate":
        shards = job.failed_indexes or "?"
        run_pass.fail(
            Reason.STEP_FAILED,
            f"generate of iteration {k} failed: shard {shards} failed more than backoffLimit ({limit}) "
            f"times (job {job.name}: {why}); see `kubectl logs job/{job.name}`",
        )
        return
    if job.reason == "PodFailurePolicy":
        _deterministic_failure(run_pass, k, step, job, why)
        return
    attempt = job.attempt
    if attempt < limit:
        entry.retries = attempt + 1
        run_pass.event(
            "Warning",
            Reason.STEP_RETRYING,
            f"iteration {k}: {step} failed (attempt {attempt + 1} of {limit + 1}, job {job.name}: {why}); retrying",
        )
        run_pass.delete_job(job)
        _wait_for_previous_attempt(run_pass, k, step, entry, f"job {job.name} of attempt {attempt + 1} is being deleted")
        return
    entry.retries = attempt
    run_pass.fail(
        Reason.STEP_FAILED,
        f"{step} of iteration {k} failed {attempt + 1} time(s), more than backoffLimit ({limit}) allows "
        f"(job {job.name}: {why}); fix the cause and create a new SpinRun (finished steps are kept on the volume)",
    )
