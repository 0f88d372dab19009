"""What a decision asks the cluster to do: create an object, delete a child, suspend or resume a
workload. Plain values; kube/client.py executes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spin_operator import launchers


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


Action = Create | Delete | PatchJob
#: (Normal|Warning, CamelCase reason, message)
Event = tuple[str, str, str]
