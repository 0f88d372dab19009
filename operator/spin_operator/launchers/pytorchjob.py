"""The Kubeflow training operator's PyTorchJob launcher (kubeflow.org/v1): one Master and
nodes−1 Workers; the training operator sets the rendezvous variables itself."""

from __future__ import annotations

from typing import Any

from spin_operator.builders.context import BuildContext
from spin_operator.builders.pod import container_resources, pod_template, rendezvous_env, run_dir, step_images
from spin_operator.launchers.base import CustomResourceLauncher
from spin_runtime.api.status import StepName
from spin_runtime.launch import procs_per_node, torchrun_from_env_argv
from spin_runtime.plan.stages import Step

PYTORCHJOB_API_VERSION = "kubeflow.org/v1"
PYTORCHJOB_KIND = "PyTorchJob"
PYTORCHJOB_PLURAL = "pytorchjobs"
#: What a cluster admin installs to serve PyTorchJobs.
PROVIDER = "the Kubeflow training operator"


def pytorchjob(ctx: BuildContext, step: StepName) -> dict[str, Any]:
    """A PyTorchJob: one Master and nodes−1 Workers sharing one pod template, container `pytorch`
    (the name the training operator looks for)."""
    training = ctx.spec.training
    _, image, pull = step_images(ctx)
    step_argv = Step(ctx.iteration, step).argv(run_dir(ctx.run.name, ctx.spec))
    template = pod_template(
        ctx,
        step,
        image=image,
        pull_policy=pull,
        command=torchrun_from_env_argv(step_argv),
        resources=container_resources(training.resources.requests, training.resources.limits, training.gpus_per_node),
        gpus=training.gpus_per_node,
        extra_env=rendezvous_env(training),
    )
    template["spec"]["containers"][0]["name"] = "pytorch"
    replicas: dict[str, Any] = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if training.nodes > 1:
        replicas["Worker"] = {"replicas": training.nodes - 1, "restartPolicy": "Never", "template": template}
    return {
        "apiVersion": PYTORCHJOB_API_VERSION,
        "kind": PYTORCHJOB_KIND,
        "metadata": ctx.workload_metadata(step),
        "spec": {
            "nprocPerNode": str(procs_per_node(training)),
            "runPolicy": {"backoffLimit": 0, "suspend": ctx.suspend},
            "pytorchReplicaSpecs": replicas,
        },
    }


class PyTorchJobLauncher(CustomResourceLauncher):
    """`training.launcher: pytorchjob`: conditions Succeeded/Failed, spec.runPolicy.suspend."""

    name = "pytorchjob"
    kind = PYTORCHJOB_KIND
    api_version = PYTORCHJOB_API_VERSION
    plural = PYTORCHJOB_PLURAL
    complete_condition = "Succeeded"
    suspend_path = ("runPolicy", "suspend")
    provider = PROVIDER

    def build(self, ctx: BuildContext, step: StepName) -> dict[str, Any]:
        return pytorchjob(ctx, step)
