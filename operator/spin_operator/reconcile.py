"""The operator's one decision function: `reconcile(run, observed, now) -> Decision`.

Given a SpinRun (spec + last status) and what exists in the cluster (its Jobs, spec
ConfigMaps, Services, PVC), it decides which objects to create, delete or (un)suspend, the
new status and the events to post. It is pure: no clock, no API, no kopf — `handlers.py`
gathers the observation, calls it, and executes the decision.

Rules (each pinned by tests/operator/test_reconcile.py):
- Steps run in plan order; a step is done once its Job had condition Complete, which is
  recorded in status.iterations[].steps, so a Job removed later is not recreated.
- An iteration pins the spec it started under in `<run>-it<k>-spec`; spec changes apply from
  the next iteration on.
- A failed convert/train/evaluate Job is deleted and recreated (annotation spin.dev/attempt+1)
  until backoffLimit retries are spent; a failed generation Job (a shard over its per-index
  limit) fails the run naming the shard.
- Complete and Failed are sticky: a finished run never creates children again.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from spin_operator import resources as res
from spin_operator.resources_training import PYTORCHJOB_KIND
from spin_runtime.api.load import SpecError, validate_data
from spin_runtime.api.spec import API_VERSION, KIND, SpinRun, SpinRunSpec
from spin_runtime.plan import layout, stages

#: How many entries status.iterations keeps (the newest).
MAX_ITERATION_HISTORY = 20
TERMINAL_PHASES = ("Complete", "Failed")

# --------------------------------------------------------------------------- observation


@dataclass(frozen=True)
class JobState:
    """What the reconcile needs to know about one owned Job (or PyTorchJob)."""

    name: str
    iteration: int | None = None
    step: str | None = None
    kind: str = "Job"
    api_version: str = "batch/v1"
    attempt: int = 0
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False
    failed_condition: bool = False
    reason: str = ""
    message: str = ""
    suspended: bool = False
    suspended_by_us: bool = False
    completed_indexes: str = ""
    failed_indexes: str = ""
    start_time: str | None = None
    completion_time: str | None = None

    @property
    def finished(self) -> bool:
        return self.complete or self.failed_condition

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> JobState:
        """Read a batch/v1 Job or a kubeflow.org PyTorchJob."""
        meta = obj.get("metadata") or {}
        lab = meta.get("labels") or {}
        ann = meta.get("annotations") or {}
        status = obj.get("status") or {}
        spec = obj.get("spec") or {}
        true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        kind = obj.get("kind") or "Job"
        if kind == PYTORCHJOB_KIND:
            complete, failed = "Succeeded" in true, "Failed" in true
            suspended = bool((spec.get("runPolicy") or {}).get("suspend"))
        else:
            complete, failed = "Complete" in true, "Failed" in true
            suspended = bool(spec.get("suspend"))
        fcond = true.get("Failed") or {}
        iteration = lab.get(res.LABEL_ITERATION)
        try:
            attempt = int(ann.get(res.ANNOTATION_ATTEMPT, 0))
        except ValueError:
            attempt = 0
        return cls(
            name=str(meta.get("name")),
            iteration=int(iteration) if iteration not in (None, "") else None,
            step=lab.get(res.LABEL_STEP),
            kind=kind,
            api_version=obj.get("apiVersion") or "batch/v1",
            attempt=attempt,
            active=int(status.get("active") or 0),
            succeeded=int(status.get("succeeded") or 0),
            failed=int(status.get("failed") or 0),
            complete=complete,
            failed_condition=failed,
            reason=str(fcond.get("reason") or ""),
            message=str(fcond.get("message") or ""),
            suspended=suspended,
            suspended_by_us=ann.get(res.ANNOTATION_SUSPENDED_BY) == res.MANAGED_BY,
            completed_indexes=str(status.get("completedIndexes") or ""),
            failed_indexes=str(status.get("failedIndexes") or ""),
            start_time=status.get("startTime"),
            completion_time=status.get("completionTime"),
        )


@dataclass(frozen=True)
class Observed:
    """The owned children as seen in the cluster (or the operator's watch index)."""

    jobs: Mapping[str, JobState] = field(default_factory=dict)
    config_maps: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    services: frozenset[str] = frozenset()
    pvc_exists: bool = False
    #: Whether kubeflow.org PyTorchJobs are served; None = not checked (launcher unused).
    pytorchjob_crd: bool | None = None

    @classmethod
    def from_objects(
        cls,
        run: str,
        *,
        jobs: Iterable[Mapping[str, Any]] = (),
        config_maps: Iterable[Mapping[str, Any]] = (),
        services: Iterable[Mapping[str, Any]] = (),
        pvcs: Iterable[Mapping[str, Any]] = (),
        pytorchjob_crd: bool | None = None,
    ) -> Observed:
        """Build from raw objects, keeping only those labelled as this run's children."""

        def mine(o: Mapping[str, Any]) -> bool:
            meta = o.get("metadata") or {}
            lab = meta.get("labels") or {}
            return lab.get(res.LABEL_RUN) == run and lab.get(res.LABEL_MANAGED_BY) == res.MANAGED_BY and not meta.get(
                "deletionTimestamp"
            )

        js = {o["metadata"]["name"]: JobState.from_object(o) for o in jobs if mine(o)}
        cms = {o["metadata"]["name"]: o for o in config_maps if mine(o)}
        svcs = frozenset(o["metadata"]["name"] for o in services if mine(o))
        pvc = any(o["metadata"]["name"] == res.pvc_name(run) for o in pvcs if mine(o))
        return cls(jobs=js, config_maps=cms, services=svcs, pvc_exists=pvc, pytorchjob_crd=pytorchjob_crd)


# --------------------------------------------------------------------------- decision


@dataclass(frozen=True)
class Create:
    """Create this object (409 Already Exists counts as done)."""

    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind"))

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])


@dataclass(frozen=True)
class Delete:
    """Delete a child with background propagation (404 counts as done)."""

    kind: str
    name: str
    api_version: str = "batch/v1"


@dataclass(frozen=True)
class PatchJob:
    """Suspend or resume a Job (or a PyTorchJob's runPolicy)."""

    name: str
    suspend: bool
    kind: str = "Job"

    def patch(self) -> dict[str, Any]:
        """The merge patch: the suspend flag plus the annotation saying who suspended it."""
        ann = {res.ANNOTATION_SUSPENDED_BY: res.MANAGED_BY if self.suspend else None}
        if self.kind == PYTORCHJOB_KIND:
            return {"metadata": {"annotations": ann}, "spec": {"runPolicy": {"suspend": self.suspend}}}
        return {"metadata": {"annotations": ann}, "spec": {"suspend": self.suspend}}


Action = Create | Delete | PatchJob
Event = tuple[str, str, str]  # (Normal|Warning, Reason, message)


@dataclass
class Decision:
    """What to do: actions in order, the complete new status, events to post, and when a
    time-based rule (deadline, TTL) next needs a look."""

    actions: list[Action] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None

    def creates(self) -> list[str]:
        return [a.name for a in self.actions if isinstance(a, Create)]

    def deletes(self) -> list[str]:
        return [a.name for a in self.actions if isinstance(a, Delete)]


# --------------------------------------------------------------------------- helpers


def rfc3339(t: datetime) -> str:
    """UTC timestamp as Kubernetes writes it."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> datetime | None:
    """Parse an RFC 3339 timestamp (None when absent or malformed)."""
    if not s:
        return None
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def condition(status: Mapping[str, Any], ctype: str) -> dict[str, Any] | None:
    """The condition of that type, if any."""
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def is_true(status: Mapping[str, Any], ctype: str) -> bool:
    c = condition(status, ctype)
    return bool(c and c.get("status") == "True")


def is_terminal(status: Mapping[str, Any]) -> bool:
    """Complete or Failed (sticky: the run never creates children again)."""
    return is_true(status, "Complete") or is_true(status, "Failed")


def set_condition(
    status: dict[str, Any], ctype: str, value: bool, reason: str, message: str, now: str, generation: int
) -> bool:
    """Set a condition; lastTransitionTime moves only when the status flips. True if it flipped."""
    conds: list[dict[str, Any]] = status.setdefault("conditions", [])
    sval = "True" if value else "False"
    for c in conds:
        if c.get("type") == ctype:
            flipped = c.get("status") != sval
            if flipped:
                c["lastTransitionTime"] = now
            c.update(status=sval, reason=reason, message=message, observedGeneration=generation)
            return flipped
    conds.append(
        {
            "type": ctype,
            "status": sval,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
            "observedGeneration": generation,
        }
    )
    return True


def _validation_message(e: SpecError) -> str:
    shown = e.problems[:5]
    more = f" (+{len(e.problems) - 5} more)" if len(e.problems) > 5 else ""
    return "spec is invalid, fix and reapply: " + "; ".join(shown) + more


def _as_body(run: SpinRun | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(run, SpinRun):
        return run.model_dump(by_alias=True, exclude_none=True, mode="json")
    return copy.deepcopy(dict(run))


# --------------------------------------------------------------------------- reconcile


class _Pass:
    """One reconcile pass: the working status plus the collected actions and events."""

    def __init__(self, body: dict[str, Any], observed: Observed, now: datetime, defaults: res.OperatorDefaults):
        self.body = body
        self.ref = res.RunRef.from_body(body)
        self.gen = self.ref.generation
        self.observed = observed
        self.now = now
        self.now_s = rfc3339(now)
        self.defaults = defaults
        self.status: dict[str, Any] = copy.deepcopy(body.get("status") or {})
        for key in list(self.status):  # keep only our fields; kopf's bookkeeping is not ours
            if key not in _STATUS_KEYS:
                del self.status[key]
        self.status.setdefault("phase", "Pending")
        self.status.setdefault("completedIterations", 0)
        self.status.setdefault("conditions", [])
        self.status.setdefault("iterations", [])
        self.decision = Decision()

    # -- small helpers
    def event(self, etype: str, reason: str, message: str) -> None:
        self.decision.events.append((etype, reason, message))

    def act(self, action: Action) -> None:
        self.decision.actions.append(action)

    def cond(self, ctype: str, value: bool, reason: str, message: str) -> bool:
        return set_condition(self.status, ctype, value, reason, message, self.now_s, self.gen)

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 1.0)
        cur = self.decision.requeue_after
        self.decision.requeue_after = seconds if cur is None else min(cur, seconds)

    def phase(self, phase: str, reason: str, message: str) -> None:
        self.status.update(phase=phase, reason=reason, message=message)

    def delete_job(self, js: JobState) -> None:
        self.act(Delete(js.kind, js.name, js.api_version))

    def delete_unfinished(self) -> None:
        for js in sorted(self.observed.jobs.values(), key=lambda j: j.name):
            if not js.finished:
                self.delete_job(js)

    def fail(self, reason: str, message: str) -> None:
        self.phase("Failed", reason, message)
        self.cond("Failed", True, reason, message)
        self.cond("Progressing", False, reason, message)
        self.status["completionTime"] = self.now_s
        self.event("Warning", reason, message)
        self.delete_unfinished()

    def finish(self) -> Decision:
        self.status["observedGeneration"] = self.gen
        its = self.status.get("iterations") or []
        self.status["iterations"] = its[-MAX_ITERATION_HISTORY:]
        self.decision.status = self.status
        return self.decision


_STATUS_KEYS = {
    "observedGeneration",
    "phase",
    "reason",
    "message",
    "currentIteration",
    "completedIterations",
    "lastCheckpoint",
    "iterations",
    "conditions",
    "startTime",
    "completionTime",
}


def reconcile(
    run: SpinRun | Mapping[str, Any],
    observed: Observed,
    now: datetime,
    defaults: res.OperatorDefaults | None = None,
) -> Decision:
    """Decide the next actions and the new status of one SpinRun. Pure."""
    p = _Pass(_as_body(run), observed, now, defaults or res.OperatorDefaults())
    if is_terminal(p.status):
        _terminal(p)
        return p.finish()

    raw_spec = p.body.get("spec") or {}
    try:
        spec = validate_data(
            {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": p.ref.name, "namespace": p.ref.namespace}, "spec": raw_spec}
        ).spec
    except SpecError as e:
        msg = _validation_message(e)
        if p.cond("ValidationFailed", True, "ValidationFailed", msg):
            p.event("Warning", "ValidationFailed", msg)
        p.phase("Failed", "ValidationFailed", msg)
        p.cond("Progressing", False, "ValidationFailed", msg)
        return p.finish()
    if condition(p.status, "ValidationFailed") is not None:
        p.cond("ValidationFailed", False, "Valid", "spec is valid")

    if not p.status.get("startTime"):
        p.status["startTime"] = p.now_s
        p.event("Normal", "Started", f"run started: iterations {spec.start_iteration}..{spec.iterations - 1}")

    if _deadline(p, spec):
        return p.finish()

    _suspension(p, spec)
    if spec.storage.new_claim is not None and not observed.pvc_exists:
        pvc = res.persistent_volume_claim(p.ref, spec)
        assert pvc is not None
        p.act(Create(pvc))

    _walk_plan(p, spec)
    return p.finish()


def _terminal(p: _Pass) -> None:
    """Finished runs: never create; clean up leftovers; apply ttlSecondsAfterFinished."""
    if is_true(p.status, "Failed"):
        p.delete_unfinished()
    ttl = (p.body.get("spec") or {}).get("ttlSecondsAfterFinished")
    done_at = parse_time(p.status.get("completionTime"))
    if ttl is None or done_at is None:
        return
    due = done_at + timedelta(seconds=int(ttl))
    if p.now < due:
        p.requeue((due - p.now).total_seconds())
        return
    doomed = [Delete(js.kind, js.name, js.api_version) for js in sorted(p.observed.jobs.values(), key=lambda j: j.name)]
    doomed += [Delete("Service", s, "v1") for s in sorted(p.observed.services)]
    if doomed:
        for d in doomed:
            p.act(d)
        p.event(
            "Normal",
            "TTLExpired",
            f"ttlSecondsAfterFinished ({ttl}s) passed: deleting {len(doomed)} Job(s)/Service(s); results stay on the volume",
        )


def _deadline(p: _Pass, spec: SpinRunSpec) -> bool:
    """activeDeadlineSeconds: fail the run and stop its Jobs once it passed. True if failed."""
    ads = spec.active_deadline_seconds
    started = parse_time(p.status.get("startTime"))
    if ads is None or started is None:
        return False
    due = started + timedelta(seconds=ads)
    if p.now >= due:
        where = _where(p.status)
        p.fail("DeadlineExceeded", f"run exceeded activeDeadlineSeconds ({ads}s){where}; its Jobs were stopped")
        return True
    p.requeue((due - p.now).total_seconds())
    return False


def _where(status: Mapping[str, Any]) -> str:
    its = status.get("iterations") or []
    if not its:
        return ""
    it = its[-1]
    steps = [s for s in it.get("steps") or [] if not s.get("completionTime")]
    step = f", step {steps[-1]['step']}" if steps else ""
    return f" in iteration {it['iteration']}{step}"


def _suspension(p: _Pass, spec: SpinRunSpec) -> None:
    """spec.suspend: suspend unfinished Jobs; on resume unsuspend the ones we suspended."""
    for js in sorted(p.observed.jobs.values(), key=lambda j: j.name):
        if js.finished:
            continue
        if spec.suspend and not js.suspended:
            p.act(PatchJob(js.name, True, js.kind))
        elif not spec.suspend and js.suspended and js.suspended_by_us:
            p.act(PatchJob(js.name, False, js.kind))
    if spec.suspend:
        if p.cond("Suspended", True, "Suspended", "spec.suspend is true: Jobs are suspended; set it to false to resume"):
            p.event("Normal", "Suspended", "run suspended: active Jobs suspended")
    elif is_true(p.status, "Suspended"):
        p.cond("Suspended", False, "Resumed", "spec.suspend is false")
        p.event("Normal", "Resumed", "run resumed: suspended Jobs continue")


def _iteration_entry(p: _Pass, k: int) -> dict[str, Any] | None:
    for it in p.status["iterations"]:
        if it.get("iteration") == k:
            return it
    return None


def _step_entry(it: dict[str, Any], step: str) -> dict[str, Any] | None:
    for s in it.setdefault("steps", []):
        if s.get("step") == step:
            return s
    return None


def _pinned_spec(p: _Pass, spec: SpinRunSpec, k: int, it: dict[str, Any]) -> SpinRunSpec:
    """The spec iteration k started under (its ConfigMap); recreated from the current spec
    if someone deleted it."""
    cm = p.observed.config_maps.get(res.spec_configmap_name(p.ref.name, k))
    if cm is not None:
        try:
            return res.spec_from_config_map(cm)
        except (KeyError, ValueError, SpecError):
            p.event("Warning", "SpecConfigMapInvalid", f"ConfigMap {res.spec_configmap_name(p.ref.name, k)} is unreadable: using the current spec")
    ref = res.RunRef(p.ref.name, p.ref.namespace, p.ref.uid, int(it.get("generation") or p.gen))
    p.act(Create(res.spec_config_map(ref, spec, k)))
    return spec


def _walk_plan(p: _Pass, spec: SpinRunSpec) -> None:
    """Find the earliest unfinished step and drive it; finish the run when none is left."""
    current = p.status.get("currentIteration")
    for k in stages.iterations(spec):
        if current is not None and k < current:
            continue
        it = _iteration_entry(p, k)
        if it is None:
            it = {"iteration": k, "generation": p.gen, "steps": []}
            p.status["iterations"].append(it)
            p.status["currentIteration"] = k
            p.event("Normal", "IterationStarted", f"iteration {k} started with spec generation {p.gen}")
            p.act(Create(res.spec_config_map(p.ref, spec, k)))
            spec_k = spec
        else:
            p.status["currentIteration"] = k
            spec_k = _pinned_spec(p, spec, k, it)
        if not _drive_iteration(p, spec, spec_k, k, it):
            return  # a step is in flight (or the run failed)
        done = k - spec.start_iteration + 1
        if p.status.get("completedIterations", 0) < done:
            p.status["completedIterations"] = done
            p.event("Normal", "IterationCompleted", f"iteration {k} completed")
            p.cond("Progressing", True, "IterationCompleted", f"iteration {k} completed")
    _complete(p, spec)


def _complete(p: _Pass, spec: SpinRunSpec) -> None:
    ckpt = (p.status.get("lastCheckpoint") or {}).get("path", "")
    n = p.status.get("completedIterations", 0)
    msg = f"{n} iteration(s) completed; last checkpoint {ckpt}" if ckpt else f"{n} iteration(s) completed"
    p.phase("Complete", "RunCompleted", msg)
    p.cond("Complete", True, "RunCompleted", msg)
    p.cond("Progressing", False, "RunCompleted", msg)
    p.status["completionTime"] = p.now_s
    p.event("Normal", "RunCompleted", msg)
    if spec.ttl_seconds_after_finished is not None:
        p.requeue(spec.ttl_seconds_after_finished)


def _drive_iteration(p: _Pass, spec: SpinRunSpec, spec_k: SpinRunSpec, k: int, it: dict[str, Any]) -> bool:
    """Advance iteration k's steps; True when all of them are done."""
    generation = int(it.get("generation") or p.gen)
    for step in res.step_names(spec_k, k):
        entry = _step_entry(it, step)
        if entry is not None and entry.get("completionTime"):
            continue
        name = res.job_name(p.ref.name, k, step)
        if entry is None:
            entry = {"step": step, "jobName": name, "retries": 0}
            it["steps"].append(entry)
        js = p.observed.jobs.get(name)
        ctx = res.BuildContext(
            run=res.RunRef(p.ref.name, p.ref.namespace, p.ref.uid, generation),
            spec=spec_k,
            iteration=k,
            attempt=int(entry.get("retries", 0)),
            suspend=spec.suspend,
            defaults=p.defaults,
        )
        if js is not None and js.attempt > entry.get("retries", 0):
            entry["retries"] = js.attempt  # status lagged behind the Job we created
        if js is not None and js.attempt < entry.get("retries", 0):
            # A previous attempt's Job still exists: remove it, then start the current attempt.
            p.delete_job(js)
            _start(p, spec_k, ctx, step, entry, restart=True)
            return False
        if js is not None and js.complete:
            _step_done(p, spec_k, k, step, entry, js)
            continue
        if js is not None and js.failed_condition:
            _step_failed(p, spec_k, ctx, step, entry, js)
            return False
        if js is not None:
            _running(p, spec, k, step, js)
            if step == "train" and spec_k.training.nodes > 1 and spec_k.training.launcher == "indexedjob":
                _ensure_service(p, ctx)
            return False
        _start(p, spec_k, ctx, step, entry, restart=False)
        return False
    return True


def _running(p: _Pass, spec: SpinRunSpec, k: int, step: str, js: JobState) -> None:
    if spec.suspend:
        p.phase("Suspended", "Suspended", f"suspended during iteration {k}, step {step}")
        return
    msg = f"iteration {k}: {step} running (job {js.name})"
    p.phase(res.STEP_PHASE[step], "StepRunning", msg)
    p.cond("Progressing", True, "StepRunning", msg)


def _ensure_service(p: _Pass, ctx: res.BuildContext) -> None:
    from spin_operator.resources_training import headless_service, service_name

    if service_name(ctx) not in p.observed.services:
        p.act(Create(headless_service(ctx)))


def _start(p: _Pass, spec_k: SpinRunSpec, ctx: res.BuildContext, step: str, entry: dict[str, Any], *, restart: bool) -> None:
    """Create the step's objects (Job, plus Service/PyTorchJob for training)."""
    k = ctx.iteration
    if step == "train" and spec_k.training.launcher == "pytorchjob" and p.defaults.pytorchjob_enabled is False:
        msg = (
            "training.launcher is pytorchjob but this operator was installed without PyTorchJob support "
            "(Helm value pytorchjob.enabled=false, env SPIN_PYTORCHJOB_ENABLED=false): ask the cluster admin to "
            "enable it (needs the Kubeflow training operator) or set training.launcher: indexedjob"
        )
        p.phase("Training", "LauncherDisabled", msg)
        if p.cond("Progressing", False, "LauncherDisabled", msg):
            p.event("Warning", "LauncherDisabled", msg)
        return
    if step == "train" and spec_k.training.launcher == "pytorchjob" and p.observed.pytorchjob_crd is False:
        msg = (
            "training.launcher is pytorchjob but kubeflow.org/v1 PyTorchJob is not served by this cluster: "
            "install the Kubeflow training operator or set training.launcher: indexedjob"
        )
        p.phase("Training", "LauncherUnavailable", msg)
        if p.cond("Progressing", False, "LauncherUnavailable", msg):
            p.event("Warning", "LauncherUnavailable", msg)
        return
    for obj in res.step_objects(ctx, step):
        if obj["kind"] == "Service" and obj["metadata"]["name"] in p.observed.services:
            continue
        p.act(Create(obj))
    name = res.job_name(p.ref.name, k, step)
    if not entry.get("startTime") or restart:
        entry["startTime"] = p.now_s
    entry["jobName"] = name
    if not restart:
        p.event("Normal", "StepStarted", f"iteration {k}: {step} started (job {name})")
    if ctx.suspend:
        p.phase("Suspended", "Suspended", f"suspended during iteration {k}, step {step}")
    else:
        msg = f"iteration {k}: {step} running (job {name})"
        p.phase(res.STEP_PHASE[step], "StepRunning", msg)
        p.cond("Progressing", True, "StepRunning", msg)


def _step_done(p: _Pass, spec_k: SpinRunSpec, k: int, step: str, entry: dict[str, Any], js: JobState) -> None:
    entry["completionTime"] = js.completion_time or p.now_s
    entry["retries"] = max(int(entry.get("retries", 0)), js.attempt)
    entry.setdefault("startTime", js.start_time or p.now_s)
    p.event("Normal", "StepSucceeded", f"iteration {k}: {step} succeeded (job {js.name})")
    if step == "train":
        path = f"{res.run_dir(p.ref.name, spec_k)}/{layout.model_dir(k)}"
        p.status["lastCheckpoint"] = {"iteration": k, "path": path, "time": entry["completionTime"]}


def _step_failed(
    p: _Pass, spec_k: SpinRunSpec, ctx: res.BuildContext, step: str, entry: dict[str, Any], js: JobState
) -> None:
    k = ctx.iteration
    limit = spec_k.backoff_limit
    why = ": ".join(x for x in (js.reason, js.message) if x) or "Job failed"
    if step == "generate":
        shards = js.failed_indexes or "?"
        p.fail(
            "StepFailed",
            f"generate of iteration {k} failed: shard {shards} failed more than backoffLimit ({limit}) "
            f"times (job {js.name}: {why}); see `kubectl logs job/{js.name}`",
        )
        return
    attempt = js.attempt
    if attempt < limit:
        entry["retries"] = attempt + 1
        p.event(
            "Warning",
            "StepRetrying",
            f"iteration {k}: {step} failed (attempt {attempt + 1} of {limit + 1}, job {js.name}: {why}); retrying",
        )
        p.delete_job(js)
        retry = res.BuildContext(ctx.run, ctx.spec, k, attempt + 1, ctx.suspend, ctx.defaults)
        _start(p, spec_k, retry, step, entry, restart=True)
        return
    entry["retries"] = attempt
    p.fail(
        "StepFailed",
        f"{step} of iteration {k} failed {attempt + 1} time(s), more than backoffLimit ({limit}) allows "
        f"(job {js.name}: {why}); fix the cause and create a new SpinRun (finished steps are kept on the volume)",
    )
