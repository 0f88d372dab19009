"""The default training launcher: an Indexed Job with one pod per node plus, for several nodes, a
headless Service so pod 0 is reachable as `<job>-0.<service>` (and a PodGroup when gang-scheduled);
each pod runs the torchrun line of spin_runtime.launch with its node rank from the completion index."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spin_operator.builders.context import BuildContext
from spin_operator.builders.gang import POD_GROUP_LABEL, gang_enabled, pod_group, pod_group_name
from spin_operator.builders.job import JOB_API_VERSION, JOB_KIND, job, suspend_patch
from spin_operator.builders.meta import job_name, labels, metadata
from spin_operator.builders.pod import container_resources, pod_template, rendezvous_env, run_dir, step_images
from spin_operator.kube.objects import JobState
from spin_operator.launchers.base import Unavailable
from spin_operator.settings import DeploymentSettings
from spin_runtime.api.status import StepName
from spin_runtime.launch import DEFAULT_MASTER_PORT, NODE_RANK_ENV, training_argv
from spin_runtime.plan.stages import Step

#: Pod annotation holding an Indexed Job pod's index (the node rank of a training pod).
COMPLETION_INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def service_name(ctx: BuildContext, step: StepName) -> str:
    """The headless Service of a training Job has the Job's name."""
    return job_name(ctx.run.name, ctx.iteration, step)


def master_address(ctx: BuildContext, step: StepName) -> str:
    """DNS name of node 0: `<job>-0.<service>` (Indexed Job hostname + subdomain)."""
    return f"{job_name(ctx.run.name, ctx.iteration, step)}-0.{service_name(ctx, step)}"


def train_command(ctx: BuildContext, step: StepName) -> list[str]:
    """The container argv from spin_runtime.launch: plain `spin <step>` for one process in
    total, torchrun otherwise."""
    step_argv = Step(ctx.iteration, step).argv(run_dir(ctx.run.name, ctx.spec))
    return training_argv(ctx.spec.training, master_address(ctx, step), step_argv, master_port=DEFAULT_MASTER_PORT)


def headless_service(ctx: BuildContext, step: StepName) -> dict[str, Any]:
    """Headless Service giving training pods stable DNS names, ready or not."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ctx.run, service_name(ctx, step), iteration=ctx.iteration, step=step),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels(ctx.run.name, ctx.iteration, step),
            "ports": [{"name": "rendezvous", "port": DEFAULT_MASTER_PORT, "targetPort": DEFAULT_MASTER_PORT}],
        },
    }


def training_job(ctx: BuildContext, step: StepName) -> dict[str, Any]:
    """The Indexed Job: completions = parallelism = nodes; any pod failure fails the attempt,
    which the operator retries whole (backoffLimit 0)."""
    training = ctx.spec.training
    _, image, pull = step_images(ctx)
    multi = training.nodes > 1
    extra_env: list[dict[str, Any]] = []
    if multi:
        extra_env.append({"name": NODE_RANK_ENV, "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX_FIELD}}})
        extra_env += rendezvous_env(training)
    template = pod_template(
        ctx,
        step,
        image=image,
        pull_policy=pull,
        command=train_command(ctx, step),
        resources=container_resources(training.resources.requests, training.resources.limits, training.gpus_per_node),
        gpus=training.gpus_per_node,
        extra_env=extra_env,
        subdomain=service_name(ctx, step) if multi else None,
        ports=[{"name": "rendezvous", "containerPort": DEFAULT_MASTER_PORT}] if multi else None,
        scheduler_name=training.gang_scheduling.scheduler_name if gang_enabled(ctx) else None,
        extra_labels={POD_GROUP_LABEL: pod_group_name(ctx, step)} if gang_enabled(ctx) else None,
    )
    return job(ctx, step, template, completions=training.nodes, indexed=True, backoff_limit=0)


class IndexedJobLauncher:
    """`training.launcher: indexedjob`."""

    name = "indexedjob"
    kind = JOB_KIND
    api_version = JOB_API_VERSION
    plural = "jobs"
    custom_resource = False

    def objects(self, ctx: BuildContext, step: StepName) -> list[dict[str, Any]]:
        return [*self.companions(ctx, step), training_job(ctx, step)]

    def companions(self, ctx: BuildContext, step: StepName) -> list[dict[str, Any]]:
        """The headless Service of several nodes, and their PodGroup when scheduled as a gang."""
        if ctx.spec.training.nodes == 1:
            return []
        return [headless_service(ctx, step), *([pod_group(ctx, step)] if gang_enabled(ctx) else [])]

    def read_state(self, obj: Mapping[str, Any]) -> JobState:
        return JobState.from_job(obj)

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        return suspend_patch(suspend)

    def availability(self, settings: DeploymentSettings, served: bool | None) -> Unavailable | None:
        return None  # batch/v1 Jobs are always served
