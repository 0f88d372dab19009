"""The training launchers by `spec.training.launcher`, the lookups by kind and by step the rest of
the operator uses instead of naming a launcher or a training step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spin_operator.builders.context import BuildContext
from spin_operator.builders.job import JOB_KIND
from spin_operator.builders.job import suspend_patch as job_suspend_patch
from spin_operator.builders.steps import step_job
from spin_operator.kube.objects import JobState
from spin_operator.launchers.base import TRAINING_STEPS, Launcher, Unavailable, may_list
from spin_operator.launchers.indexedjob import IndexedJobLauncher
from spin_operator.launchers.pytorchjob import PyTorchJobLauncher
from spin_operator.launchers.trainjob import TrainJobLauncher
from spin_runtime.api.spec import SpinRunSpec
from spin_runtime.api.status import StepName
from spin_runtime.plan.stages import Stage

LAUNCHERS: dict[str, Launcher] = {
    launcher.name: launcher for launcher in (IndexedJobLauncher(), PyTorchJobLauncher(), TrainJobLauncher())
}

__all__ = [
    "LAUNCHERS",
    "TRAINING_STEPS",
    "Launcher",
    "Unavailable",
    "by_kind",
    "for_spec",
    "for_step",
    "may_list",
    "read_state",
    "runs_as_training",
    "step_objects",
    "suspend_patch",
]


def for_spec(spec: SpinRunSpec) -> Launcher:
    """The launcher of a spec's training step."""
    return LAUNCHERS[spec.training.launcher]


def runs_as_training(step: StepName) -> bool:
    """Whether the spec's launcher runs this step (a multi-node training object), not a plain Job."""
    return step in TRAINING_STEPS


def for_step(spec: SpinRunSpec, step: StepName) -> Launcher | None:
    """The launcher that runs `step` of this spec; None for a step that runs as one batch Job."""
    return for_spec(spec) if runs_as_training(step) else None


def step_objects(ctx: BuildContext, stage: Stage) -> list[dict[str, Any]]:
    """Every object one stage of one iteration needs, in creation order: for a training step
    whatever the spec's launcher makes (e.g. a Job plus its headless Service), else its one Job."""
    launcher = for_step(ctx.spec, stage.name)
    return launcher.objects(ctx, stage.name) if launcher is not None else [step_job(ctx, stage)]


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
