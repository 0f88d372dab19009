"""The Jobs of the stages that run as one batch Job (generate, convert, evaluate); a training
step's objects come from its launcher (launchers.step_objects builds any stage's)."""

from __future__ import annotations

import copy
from typing import Any

from spin_operator.builders.context import BuildContext
from spin_operator.builders.job import job
from spin_operator.builders.pod import (
    container_resources,
    pod_template,
    run_dir,
    same_node_affinity,
    single_node_volume,
    step_images,
)
from spin_runtime.api.spec import SpinRunSpec
from spin_runtime.plan.stages import Stage, Step

CONVERT_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}


def generation_gpus(spec: SpinRunSpec) -> int:
    """GPUs per generation pod: tensorParallelSize, none for the transformers (CPU) engine."""
    return spec.generation.gpus_per_pod


def generate_job(ctx: BuildContext, stage: Stage) -> dict[str, Any]:
    """One Indexed Job per iteration, one index per shard (`spin generate` reads
    JOB_COMPLETION_INDEX). A failed shard re-runs alone up to backoffLimit times
    (backoffLimitPerIndex); one shard over its limit fails the Job (maxFailedIndexes 0). On a
    ReadWriteOnce run volume the shards share one node."""
    gen = ctx.spec.generation
    image, _, pull = step_images(ctx)
    gpus = generation_gpus(ctx.spec)
    template = pod_template(
        ctx,
        "generate",
        image=image,
        pull_policy=pull,
        command=stage.steps[0].argv(run_dir(ctx.run.name, ctx.spec), shard_from_env=True),
        resources=container_resources(gen.resources.requests, gen.resources.limits, gpus),
        gpus=gpus,
        # shards run at once: on a ReadWriteOnce volume, all on the node that mounts it
        affinity=same_node_affinity(ctx, "generate") if stage.shards > 1 and single_node_volume(ctx.spec) else None,
    )
    return job(
        ctx,
        "generate",
        template,
        completions=stage.shards,
        parallelism=min(gen.parallelism or stage.shards, stage.shards),
        indexed=True,
        backoff_limit=None,
        backoff_limit_per_index=ctx.spec.backoff_limit,
        max_failed_indexes=0,
    )


def convert_job(ctx: BuildContext) -> dict[str, Any]:
    """A small CPU Job gathering the shards into parquet. Retries are the operator's
    (the Job is recreated, attempt annotation + 1), so backoffLimit is 0."""
    _, image, pull = step_images(ctx)
    template = pod_template(
        ctx,
        "convert",
        image=image,
        pull_policy=pull,
        command=Step(ctx.iteration, "convert").argv(run_dir(ctx.run.name, ctx.spec)),
        resources=copy.deepcopy(CONVERT_RESOURCES),
        gpus=0,
    )
    return job(ctx, "convert", template)


def evaluate_job(ctx: BuildContext) -> dict[str, Any]:
    """Held-out metrics of the iteration's checkpoint on one training-sized pod."""
    training = ctx.spec.training
    _, image, pull = step_images(ctx)
    gpus = training.gpus_per_node
    template = pod_template(
        ctx,
        "evaluate",
        image=image,
        pull_policy=pull,
        command=Step(ctx.iteration, "evaluate").argv(run_dir(ctx.run.name, ctx.spec)),
        resources=container_resources(training.resources.requests, training.resources.limits, gpus),
        gpus=gpus,
    )
    return job(ctx, "evaluate", template)


def step_job(ctx: BuildContext, stage: Stage) -> dict[str, Any]:
    """The one batch Job of a stage that is not a training step."""
    if stage.name == "generate":
        return generate_job(ctx, stage)
    if stage.name == "convert":
        return convert_job(ctx)
    if stage.name == "evaluate":
        return evaluate_job(ctx)
    raise ValueError(f"step {stage.name} runs through the training launcher (launchers.step_objects), not as a step Job")
