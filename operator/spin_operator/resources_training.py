"""Training launchers: a small strategy chosen by `spec.training.launcher`.

- `indexedjob` (default): an Indexed Job with one pod per node plus a headless Service, so
  pod 0 is reachable as `<job>-0.<service>`; each pod runs torchrun with its node rank from
  `PET_NODE_RANK` (a fieldRef to the pod's completion index).
- `pytorchjob`: a Kubeflow PyTorchJob (Master + Workers); the training operator sets the
  rendezvous variables itself.
Pure builders; no kopf, no API calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spin_operator.resources import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_GENERATION,
    ANNOTATION_SUSPENDED_BY,
    MANAGED_BY,
    MASTER_PORT,
    BuildContext,
    container_resources,
    job,
    job_name,
    labels,
    metadata,
    pod_template,
    run_dir,
    step_images,
)
from spin_runtime.launch import training_argv
from spin_runtime.plan.stages import Step

PYTORCHJOB_API_VERSION = "kubeflow.org/v1"
PYTORCHJOB_KIND = "PyTorchJob"
PYTORCHJOB_GROUP = "kubeflow.org"
PYTORCHJOB_PLURAL = "pytorchjobs"


def train_module_args(ctx: BuildContext) -> list[str]:
    """`-m spin_runtime.cli train --run-dir … --iteration k` (what torchrun launches)."""
    return [
        "-m",
        "spin_runtime.cli",
        "train",
        "--run-dir",
        run_dir(ctx.run.name, ctx.spec),
        "--iteration",
        str(ctx.iteration),
    ]


def service_name(ctx: BuildContext) -> str:
    """The headless Service of a training Job has the Job's name."""
    return job_name(ctx.run.name, ctx.iteration, "train")


def master_address(ctx: BuildContext) -> str:
    """DNS name of node 0: `<job>-0.<service>` (Indexed Job hostname + subdomain)."""
    name = job_name(ctx.run.name, ctx.iteration, "train")
    return f"{name}-0.{service_name(ctx)}"


def train_command(ctx: BuildContext) -> list[str]:
    """The container argv: plain `spin train` for one process in total, torchrun otherwise
    (built by spin_runtime.launch, the one place launcher command lines are made)."""
    step_argv = Step(ctx.iteration, "train").argv(run_dir(ctx.run.name, ctx.spec))
    return training_argv(ctx.spec.training, master_address(ctx), step_argv, master_port=MASTER_PORT)


def headless_service(ctx: BuildContext) -> dict[str, Any]:
    """Headless Service giving training pods stable DNS names, ready or not."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ctx.run, service_name(ctx), iteration=ctx.iteration, step="train"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels(ctx.run.name, ctx.iteration, "train"),
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        },
    }


def indexed_job_objects(ctx: BuildContext) -> list[dict[str, Any]]:
    """Indexed Job (completions = parallelism = nodes; any pod failure fails the attempt,
    which the operator retries whole) + its headless Service when nodes > 1."""
    tr = ctx.spec.training
    _, image, pull = step_images(ctx)
    multi = tr.nodes > 1
    extra_env: list[dict[str, Any]] = []
    if multi:
        extra_env.append(
            {
                "name": "PET_NODE_RANK",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
                },
            }
        )
    template = pod_template(
        ctx,
        "train",
        image=image,
        pull_policy=pull,
        command=train_command(ctx),
        resources=container_resources(tr.resources.requests, tr.resources.limits, tr.gpus_per_node),
        gpus=tr.gpus_per_node,
        extra_env=extra_env,
        subdomain=service_name(ctx) if multi else None,
        ports=[{"name": "rendezvous", "containerPort": MASTER_PORT}] if multi else None,
    )
    objs = [job(ctx, "train", template, completions=tr.nodes, indexed=True, backoff_limit=0)]
    if multi:
        objs.insert(0, headless_service(ctx))
    return objs


def pytorchjob_objects(ctx: BuildContext) -> list[dict[str, Any]]:
    """A Kubeflow PyTorchJob: one Master and nodes−1 Workers, container named `pytorch`."""
    tr = ctx.spec.training
    _, image, pull = step_images(ctx)
    template = pod_template(
        ctx,
        "train",
        image=image,
        pull_policy=pull,
        command=["torchrun", *train_module_args(ctx)],
        resources=container_resources(tr.resources.requests, tr.resources.limits, tr.gpus_per_node),
        gpus=tr.gpus_per_node,
    )
    template["spec"]["containers"][0]["name"] = "pytorch"
    template["spec"]["restartPolicy"] = "Never"
    replicas: dict[str, Any] = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if tr.nodes > 1:
        replicas["Worker"] = {"replicas": tr.nodes - 1, "restartPolicy": "Never", "template": template}
    annotations = {ANNOTATION_ATTEMPT: str(ctx.attempt), ANNOTATION_GENERATION: str(ctx.run.generation)}
    if ctx.suspend:
        annotations[ANNOTATION_SUSPENDED_BY] = MANAGED_BY
    return [
        {
            "apiVersion": PYTORCHJOB_API_VERSION,
            "kind": PYTORCHJOB_KIND,
            "metadata": metadata(
                ctx.run,
                job_name(ctx.run.name, ctx.iteration, "train"),
                iteration=ctx.iteration,
                step="train",
                queue_name=ctx.spec.queue_name,
                annotations=annotations,
            ),
            "spec": {
                "nprocPerNode": str(max(tr.gpus_per_node, 1)),
                "runPolicy": {"backoffLimit": 0, "suspend": ctx.suspend},
                "pytorchReplicaSpecs": replicas,
            },
        }
    ]


LAUNCHERS: dict[str, Callable[[BuildContext], list[dict[str, Any]]]] = {
    "indexedjob": indexed_job_objects,
    "pytorchjob": pytorchjob_objects,
}


def training_objects(ctx: BuildContext) -> list[dict[str, Any]]:
    """The objects of iteration k's training step for the spec's launcher."""
    return LAUNCHERS[ctx.spec.training.launcher](ctx)
