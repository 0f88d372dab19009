"""The Kubeflow training operator's PyTorchJob launcher (kubeflow.org/v1): one Master and
nodes−1 Workers; the training operator sets the rendezvous variables itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spin_operator.builders.context import BuildContext
from spin_operator.builders.meta import job_name, metadata, suspended_by_annotation, workload_annotations
from spin_operator.builders.pod import container_resources, pod_template, run_dir, step_images
from spin_operator.kube.objects import JobState, true_conditions
from spin_operator.launchers.base import Unavailable, custom_resource_availability
from spin_operator.settings import DeploymentSettings
from spin_runtime.launch import RDZV_CONF_ENV, procs_per_node, rendezvous_conf, torchrun_from_env_argv
from spin_runtime.plan.stages import Step

PYTORCHJOB_API_VERSION = "kubeflow.org/v1"
PYTORCHJOB_KIND = "PyTorchJob"
PYTORCHJOB_PLURAL = "pytorchjobs"
#: What a cluster admin installs to serve PyTorchJobs.
PROVIDER = "the Kubeflow training operator"


def pytorchjob(ctx: BuildContext) -> dict[str, Any]:
    """A PyTorchJob: one Master and nodes−1 Workers sharing one pod template, container `pytorch`
    (the name the training operator looks for)."""
    tr = ctx.spec.training
    _, image, pull = step_images(ctx)
    step_argv = Step(ctx.iteration, "train").argv(run_dir(ctx.run.name, ctx.spec))
    template = pod_template(
        ctx,
        "train",
        image=image,
        pull_policy=pull,
        command=torchrun_from_env_argv(step_argv),
        resources=container_resources(tr.resources.requests, tr.resources.limits, tr.gpus_per_node),
        gpus=tr.gpus_per_node,
        extra_env=[{"name": RDZV_CONF_ENV, "value": rendezvous_conf(tr.rendezvous_timeout_seconds)}] if tr.nodes > 1 else None,
    )
    template["spec"]["containers"][0]["name"] = "pytorch"
    replicas: dict[str, Any] = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if tr.nodes > 1:
        replicas["Worker"] = {"replicas": tr.nodes - 1, "restartPolicy": "Never", "template": template}
    return {
        "apiVersion": PYTORCHJOB_API_VERSION,
        "kind": PYTORCHJOB_KIND,
        "metadata": metadata(
            ctx.run,
            job_name(ctx.run.name, ctx.iteration, "train"),
            iteration=ctx.iteration,
            step="train",
            queue_name=ctx.spec.queue_name,
            annotations=workload_annotations(ctx.attempt, ctx.run.generation, ctx.suspend),
        ),
        "spec": {
            "nprocPerNode": str(procs_per_node(tr)),
            "runPolicy": {"backoffLimit": 0, "suspend": ctx.suspend},
            "pytorchReplicaSpecs": replicas,
        },
    }


class PyTorchJobLauncher:
    """`training.launcher: pytorchjob`."""

    name = "pytorchjob"
    kind = PYTORCHJOB_KIND
    api_version = PYTORCHJOB_API_VERSION
    plural = PYTORCHJOB_PLURAL
    custom_resource = True

    def objects(self, ctx: BuildContext) -> list[dict[str, Any]]:
        return [pytorchjob(ctx)]

    def companions(self, ctx: BuildContext) -> list[dict[str, Any]]:
        return []

    def read_state(self, obj: Mapping[str, Any]) -> JobState:
        """Conditions Succeeded/Failed and spec.runPolicy.suspend."""
        true = true_conditions(obj)
        suspended = bool(((obj.get("spec") or {}).get("runPolicy") or {}).get("suspend"))
        return JobState.from_workload(obj, complete="Succeeded" in true, failed="Failed" in true, suspended=suspended)

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        return {"metadata": {"annotations": suspended_by_annotation(suspend)}, "spec": {"runPolicy": {"suspend": suspend}}}

    def availability(self, settings: DeploymentSettings, served: bool | None) -> Unavailable | None:
        return custom_resource_availability(self, settings, served, provider=PROVIDER)
