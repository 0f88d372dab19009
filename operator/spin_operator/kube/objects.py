"""Observed state of a run's children: `JobState` (what the decision reads of one Job or launched
training object) and `Observed` (all children of one run, as the watch index shows them)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spin_operator.builders.meta import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_SUSPENDED_BY,
    LABEL_ITERATION,
    LABEL_MANAGED_BY,
    LABEL_RUN,
    LABEL_STEP,
    MANAGED_BY,
    pvc_name,
)


@dataclass(frozen=True)
class JobState:
    """What the decision needs to know about one owned Job (or a launcher's training object)."""

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
        )


def true_conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The object's status conditions whose status is "True", by type."""
    conds = (obj.get("status") or {}).get("conditions") or []
    return {c.get("type"): c for c in conds if c.get("status") == "True"}


#: Reads one workload object into a JobState (JobState.from_job, or a launcher's reader).
StateReader = Callable[[Mapping[str, Any]], JobState]


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

    @classmethod
    def from_objects(
        cls,
        run: str,
        *,
        jobs: Iterable[Mapping[str, Any]] = (),
        config_maps: Iterable[Mapping[str, Any]] = (),
        services: Iterable[Mapping[str, Any]] = (),
        pvcs: Iterable[Mapping[str, Any]] = (),
        launcher_served: bool | None = None,
        read_state: StateReader = JobState.from_job,
    ) -> Observed:
        """Build from raw objects, keeping only those labelled as this run's children;
        `read_state` reads each workload (Jobs and launched training objects)."""

        def mine(o: Mapping[str, Any]) -> bool:
            meta = o.get("metadata") or {}
            lab = meta.get("labels") or {}
            return lab.get(LABEL_RUN) == run and lab.get(LABEL_MANAGED_BY) == MANAGED_BY and not meta.get(
                "deletionTimestamp"
            )

        states = {o["metadata"]["name"]: read_state(o) for o in jobs if mine(o)}
        cms = {o["metadata"]["name"]: o for o in config_maps if mine(o)}
        svcs = frozenset(o["metadata"]["name"] for o in services if mine(o))
        pvc = any(o["metadata"]["name"] == pvc_name(run) for o in pvcs if mine(o))
        return cls(jobs=states, config_maps=cms, services=svcs, pvc_exists=pvc, launcher_served=launcher_served)
