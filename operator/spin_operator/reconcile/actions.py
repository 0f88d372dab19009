"""What a decision asks the cluster to do: create an object, delete a child, suspend or resume a
workload (directly, or through its Kueue Workload). Plain values; executor.py carries them out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spin_operator import launchers
from spin_operator.builders.meta import suspended_by_annotation
from spin_runtime.api.status import EventType, Reason


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
    """Suspend or resume a workload: a Job, or a launcher's training object of `kind`."""

    name: str
    suspend: bool
    kind: str = "Job"

    def patch(self) -> dict[str, Any]:
        """The merge patch: the kind's suspend field plus the annotation saying who suspended it."""
        return launchers.suspend_patch(self.kind, self.suspend)


@dataclass(frozen=True)
class SetWorkloadActive:
    """Stop (active false) or resume a queued workload the way Kueue documents it: the `spec.active`
    of the Kueue Workload of `job_uid`; Kueue then suspends the Job (evicted, not requeued) or
    requeues it and unsuspends it once admitted. The workload is annotated as suspended by us."""

    name: str
    job_uid: str
    active: bool
    kind: str = "Job"

    def annotation_patch(self) -> dict[str, Any]:
        """The merge patch of the workload object's annotation saying who stopped it."""
        return {"metadata": {"annotations": suspended_by_annotation(not self.active)}}


Action = Create | Delete | PatchJob | SetWorkloadActive
#: (Normal|Warning, reason, message)
Event = tuple[EventType, Reason, str]
