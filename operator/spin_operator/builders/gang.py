"""Gang scheduling of multi-node training with the scheduler-plugins Coscheduling plugin
(sigs.k8s.io/scheduler-plugins, apis/scheduling/v1alpha1): the PodGroup of a training Job and the
label that puts its pods in it, so a step gets all its nodes at once or none."""

from __future__ import annotations

from typing import Any

from spin_operator.builders.context import BuildContext
from spin_operator.builders.meta import job_name, metadata
from spin_runtime.api.status import StepName

PODGROUP_GROUP, PODGROUP_VERSION, PODGROUP_PLURAL = "scheduling.x-k8s.io", "v1alpha1", "podgroups"
PODGROUP_API_VERSION = f"{PODGROUP_GROUP}/{PODGROUP_VERSION}"
PODGROUP_KIND = "PodGroup"
#: The pod label Coscheduling groups pods by (v1alpha1.PodGroupLabel).
POD_GROUP_LABEL = f"{PODGROUP_GROUP}/pod-group"


def gang_enabled(ctx: BuildContext) -> bool:
    """Whether this training step is scheduled as a gang (asked for, and more than one node)."""
    return ctx.spec.training.gang_scheduling.enabled and ctx.spec.training.nodes > 1


def pod_group_name(ctx: BuildContext, step: StepName) -> str:
    """The training Job's PodGroup has the Job's name."""
    return job_name(ctx.run.name, ctx.iteration, step)


def pod_group(ctx: BuildContext, step: StepName) -> dict[str, Any]:
    """A PodGroup of `training.nodes` members: the scheduler binds none of them until all fit."""
    gang = ctx.spec.training.gang_scheduling
    return {
        "apiVersion": PODGROUP_API_VERSION,
        "kind": PODGROUP_KIND,
        "metadata": metadata(ctx.run, pod_group_name(ctx, step), iteration=ctx.iteration, step=step),
        "spec": {"minMember": ctx.spec.training.nodes, "scheduleTimeoutSeconds": gang.schedule_timeout_seconds},
    }
