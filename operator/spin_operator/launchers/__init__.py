"""The training launchers by `spec.training.launcher`, and the lookups by kind the rest of the
operator uses instead of naming a launcher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spin_operator.builders.job import JOB_KIND
from spin_operator.builders.job import suspend_patch as job_suspend_patch
from spin_operator.kube.objects import JobState
from spin_operator.launchers.base import Launcher, Unavailable, may_list
from spin_operator.launchers.indexedjob import IndexedJobLauncher
from spin_operator.launchers.pytorchjob import PyTorchJobLauncher
from spin_operator.launchers.trainjob import TrainJobLauncher
from spin_runtime.api.spec import SpinRunSpec

LAUNCHERS: dict[str, Launcher] = {
    launcher.name: launcher for launcher in (IndexedJobLauncher(), PyTorchJobLauncher(), TrainJobLauncher())
}

__all__ = ["LAUNCHERS", "Launcher", "Unavailable", "by_kind", "for_spec", "may_list", "read_state", "suspend_patch"]


def for_spec(spec: SpinRunSpec) -> Launcher:
    """The launcher of a spec's training step."""
    return LAUNCHERS[spec.training.launcher]


def by_kind(kind: str) -> Launcher | None:
    """The launcher whose custom resource has this kind (None for batch Jobs and other kinds)."""
    return next((lau for lau in LAUNCHERS.values() if lau.custom_resource and lau.kind == kind), None)


def read_state(obj: Mapping[str, Any]) -> JobState:
    """Read any workload of a run: a batch Job, or a launcher's custom resource."""
    launcher = by_kind(str(obj.get("kind") or JOB_KIND))
    return launcher.read_state(obj) if launcher is not None else JobState.from_job(obj)


def suspend_patch(kind: str, suspend: bool) -> dict[str, Any]:
    """Merge patch suspending or resuming a workload of that kind."""
    launcher = by_kind(kind)
    return launcher.suspend_patch(suspend) if launcher is not None else job_suspend_patch(suspend)
