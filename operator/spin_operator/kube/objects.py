"""Observed state of a run's children: `JobState` (what the decision reads of one Job or launched
training object), `PodState` (why a step's pod cannot start, if it cannot) and `Observed` (all
children of one run, as the watch indexes show them, adopted only through the run's uid)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spin_operator.builders.meta import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_CREATED_BY_RUN,
    ANNOTATION_SUSPENDED_BY,
    LABEL_ITERATION,
    LABEL_MANAGED_BY,
    LABEL_QUEUE,
    LABEL_RUN,
    LABEL_STEP,
    MANAGED_BY,
    controller_uid,
    pvc_name,
)
from spin_runtime.api.status import Reason
from spin_runtime.errors import DETERMINISTIC_EXIT_CODES
from spin_runtime.launch import PROGRESS_PORT_ENV, PROGRESS_PORT_NAME, RUN_UID_ENV

#: Container waiting reasons that mean the pod cannot start until someone fixes something.
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_REASONS = frozenset({Reason.CREATE_CONTAINER_CONFIG_ERROR, Reason.CREATE_CONTAINER_ERROR})


@dataclass(frozen=True)
class JobState:
    """What the decision needs to know about one owned Job (or a launcher's training object)."""

    name: str
    iteration: int | None = None
    step: str | None = None
    uid: str = ""
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
    #: the Kueue LocalQueue of the workload (its queue-name label), "" when not queued
    queue_name: str = ""

    @property
    def finished(self) -> bool:
        return self.complete or self.failed_condition

    @classmethod
    def from_job(cls, obj: Mapping[str, Any]) -> JobState:
        """Read a batch/v1 Job: conditions Complete/Failed, spec.suspend, counts and indexes."""
        spec = obj.get("spec") or {}
        true = true_conditions(obj)
        return cls.from_workload(obj, complete="Complete" in true, failed="Failed" in true, suspended=bool(spec.get("suspend")))

    @classmethod
    def from_workload(cls, obj: Mapping[str, Any], *, complete: bool, failed: bool, suspended: bool) -> JobState:
        """The common part of every workload: name, labels, attempt and suspension annotations,
        status counts and times; the caller says how its kind spells complete/failed/suspended."""
        meta = obj.get("metadata") or {}
        lab = meta.get("labels") or {}
        ann = meta.get("annotations") or {}
        status = obj.get("status") or {}
        fcond = true_conditions(obj).get("Failed") or {}
        iteration = lab.get(LABEL_ITERATION)
        try:
            attempt = int(ann.get(ANNOTATION_ATTEMPT, 0))
        except ValueError:
            attempt = 0
        return cls(
            name=str(meta.get("name")),
            iteration=int(iteration) if iteration not in (None, "") else None,
            step=lab.get(LABEL_STEP),
            uid=str(meta.get("uid") or ""),
            kind=obj.get("kind") or "Job",
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
            suspended_by_us=ann.get(ANNOTATION_SUSPENDED_BY) == MANAGED_BY,
            completed_indexes=str(status.get("completedIndexes") or ""),
            failed_indexes=str(status.get("failedIndexes") or ""),
            start_time=status.get("startTime"),
            completion_time=status.get("completionTime"),
            queue_name=str(lab.get(LABEL_QUEUE) or ""),
        )


def true_conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The object's status conditions whose status is "True", by type."""
    conds = (obj.get("status") or {}).get("conditions") or []
    return {c.get("type"): c for c in conds if c.get("status") == "True"}


#: Reads one workload object into a JobState (JobState.from_job, or a launcher's reader).
StateReader = Callable[[Mapping[str, Any]], JobState]


def progress_port(containers: Iterable[Mapping[str, Any]]) -> int | None:
    """The port a pod's step serves progress on: its container port named `progress`, else the
    SPIN_PROGRESS_PORT of its env (launchers whose API has no ports field); None if neither."""
    for c in containers:
        for port in c.get("ports") or []:
            if port.get("name") == PROGRESS_PORT_NAME and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    for c in containers:
        for e in c.get("env") or []:
            if e.get("name") == PROGRESS_PORT_ENV and str(e.get("value") or "").isdigit():
                return int(e["value"])
    return None


@dataclass(frozen=True)
class PodState:
    """One pod of a step's workload: its phase, and why it cannot start (if it cannot)."""

    name: str
    iteration: int | None = None
    step: str | None = None
    #: uid of the workload (Job, launcher object) that controls the pod
    owner_uid: str | None = None
    #: uid of the SpinRun the pod runs for (its SPIN_RUN_UID), None on pods without it
    run_uid: str | None = None
    phase: str = "Pending"
    #: Why the pod cannot start: ImagePullBackOff, CreateContainerConfigError, CreateContainerError,
    #: Unschedulable, ClaimPending (None: it can start)
    trouble: Reason | None = None
    trouble_message: str = ""
    #: since when the trouble lasts (RFC 3339)
    trouble_since: str | None = None
    #: evicted or preempted (condition DisruptionTarget True)
    disrupted: bool = False
    #: an exit code a retry cannot fix (spin_runtime.errors) that a container of the pod ended
    #: with, now or before a restart in place (restartPolicy OnFailure: the pod keeps Running)
    deterministic_exit: int | None = None
    #: status.podIP, once the pod has one
    ip: str | None = None
    #: the port the step serves its progress on (the container port named `progress`, else
    #: SPIN_PROGRESS_PORT of its env), None on pods that do not serve it
    progress_port: int | None = None
    #: the pod's own uid (the index audit compares it with what the API lists)
    uid: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def serves_progress(self) -> bool:
        """Running with an address and a progress port: worth polling."""
        return self.phase == "Running" and bool(self.ip) and self.progress_port is not None

    @classmethod
    def from_pod(cls, obj: Mapping[str, Any]) -> PodState:
        meta = obj.get("metadata") or {}
        lab = meta.get("labels") or {}
        status = obj.get("status") or {}
        conds = {c.get("type"): c for c in status.get("conditions") or []}
        iteration = lab.get(LABEL_ITERATION)
        trouble: Reason | None = None
        message, since = "", None
        sched = conds.get("PodScheduled") or {}
        if sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
            message = str(sched.get("message") or "")
            trouble = Reason.CLAIM_PENDING if "persistentvolumeclaim" in message.lower() else Reason.UNSCHEDULABLE
            since = sched.get("lastTransitionTime") or meta.get("creationTimestamp")
        else:
            for c in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
                waiting = (c.get("state") or {}).get("waiting") or {}
                reason = str(waiting.get("reason") or "")
                if reason in IMAGE_PULL_REASONS or reason in CONFIG_REASONS:
                    trouble = Reason.IMAGE_PULL_BACK_OFF if reason in IMAGE_PULL_REASONS else Reason(reason)
                    message = f"container {c.get('name')}: {reason}: {waiting.get('message') or ''}".rstrip(": ")
                    since = meta.get("creationTimestamp") or status.get("startTime")
                    break
        disrupted = (conds.get("DisruptionTarget") or {}).get("status") == "True"
        deterministic_exit = next(
            (code for c in status.get("containerStatuses") or [] for st in (c.get("state"), c.get("lastState"))
             if (code := ((st or {}).get("terminated") or {}).get("exitCode")) in DETERMINISTIC_EXIT_CODES), None)
        containers = (obj.get("spec") or {}).get("containers") or []
        run_uid = next((e.get("value") for c in containers for e in c.get("env") or [] if e.get("name") == RUN_UID_ENV), None)
        return cls(
            name=str(meta.get("name")),
            iteration=int(iteration) if iteration not in (None, "") else None,
            step=lab.get(LABEL_STEP),
            owner_uid=controller_uid(obj),
            run_uid=run_uid,
            phase=str(status.get("phase") or "Pending"),
            trouble=trouble,
            trouble_message=message,
            trouble_since=since,
            disrupted=disrupted,
            deterministic_exit=deterministic_exit,
            ip=status.get("podIP") or None,
            progress_port=progress_port(containers),
            uid=meta.get("uid"),
        )


@dataclass(frozen=True)
class Foreign:
    """An object named and labelled as this run's child but controlled by another owner (a
    deleted SpinRun of the same name, not yet garbage-collected) or by none (orphaned)."""

    kind: str
    name: str
    owner_uid: str | None


@dataclass(frozen=True)
class Observed:
    """The owned children as seen in the cluster (or the operator's watch index)."""

    jobs: Mapping[str, JobState] = field(default_factory=dict)
    config_maps: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    services: frozenset[str] = frozenset()
    pvc_exists: bool = False
    #: Whether the training launcher's resource is served; None = not checked (a launcher
    #: that needs no CRD, or one this deployment does not allow).
    launcher_served: bool | None = None
    #: Pods of this run (only when the operator watches pods), those of deleted Jobs included.
    pods: tuple[PodState, ...] = ()
    #: Progress records the running pods serve, by pod name (polled by the driver; see
    #: kube/progress_poller.py), empty when none was polled.
    progress: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Same-named objects this run must not adopt (they belong to another SpinRun's uid).
    foreign: tuple[Foreign, ...] = ()
    #: The uid of the run that created the claim, when it outlives its run (annotation).
    pvc_created_by: str | None = None
    #: The claim's status.phase (Pending, Bound, Lost), when known.
    pvc_phase: str | None = None

    @classmethod
    def from_objects(
        cls,
        run: str,
        *,
        uid: str | None = None,
        jobs: Iterable[Mapping[str, Any]] = (),
        config_maps: Iterable[Mapping[str, Any]] = (),
        services: Iterable[Mapping[str, Any]] = (),
        pvcs: Iterable[Mapping[str, Any]] = (),
        pods: Iterable[PodState] = (),
        launcher_served: bool | None = None,
        read_state: StateReader = JobState.from_job,
    ) -> Observed:
        """Build from raw objects labelled as this run's children. With the run's `uid`, an object
        is adopted only through its controller ownerReference to that uid (a claim that outlives
        its run also when it has none); the others are `foreign`. `read_state` reads each
        workload (Jobs and launched training objects); a pod is this run's when its SPIN_RUN_UID says so."""
        foreign: list[Foreign] = []

        def labelled(o: Mapping[str, Any]) -> bool:
            meta = o.get("metadata") or {}
            lab = meta.get("labels") or {}
            return lab.get(LABEL_RUN) == run and lab.get(LABEL_MANAGED_BY) == MANAGED_BY and not meta.get("deletionTimestamp")

        def mine(o: Mapping[str, Any], kind: str, unowned_ok: bool = False) -> bool:
            if not labelled(o):
                return False
            owner = controller_uid(o)
            if uid is None or owner == uid or (unowned_ok and owner is None):
                return True
            foreign.append(Foreign(kind, str(o["metadata"]["name"]), owner))
            return False

        states = {o["metadata"]["name"]: read_state(o) for o in jobs if mine(o, str(o.get("kind") or "Job"))}
        cms = {o["metadata"]["name"]: o for o in config_maps if mine(o, "ConfigMap")}
        svcs = frozenset(o["metadata"]["name"] for o in services if mine(o, "Service"))
        claim = next((o for o in pvcs if o["metadata"]["name"] == pvc_name(run) and mine(o, "PersistentVolumeClaim", True)), None)
        workload_uids = {state.uid for state in states.values() if state.uid}

        def my_pod(p: PodState) -> bool:  # the run's uid in its env, else a workload of ours owns it
            if uid is None:
                return True
            return p.run_uid == uid if p.run_uid is not None else p.owner_uid in workload_uids

        mine_pods = tuple(sorted((p for p in pods if my_pod(p)), key=lambda p: p.name))
        claim_meta = (claim or {}).get("metadata") or {}
        return cls(
            jobs=states,
            config_maps=cms,
            services=svcs,
            pvc_exists=claim is not None,
            launcher_served=launcher_served,
            pods=mine_pods,
            foreign=tuple(sorted(foreign, key=lambda f: (f.kind, f.name))),
            pvc_created_by=(claim_meta.get("annotations") or {}).get(ANNOTATION_CREATED_BY_RUN),
            pvc_phase=((claim or {}).get("status") or {}).get("phase"),
        )

    def jobs_sorted(self) -> list[JobState]:
        """The workloads by name: the order every decision that walks all of them acts in."""
        return sorted(self.jobs.values(), key=lambda job: job.name)

    def pods_of(self, iteration: int, step: str) -> list[PodState]:
        """The unfinished pods of one stage's workload."""
        return [p for p in self.pods if p.iteration == iteration and p.step == step and not p.finished]
