"""The Kubeflow Trainer v2 launcher (trainer.kubeflow.org/v1alpha1 TrainJob, fields as in Trainer
v2.3.0's pkg/apis/trainer/v1alpha1/trainjob_types.go): the training step as a TrainJob over a torch
(Cluster)TrainingRuntime, its `node` pods patched with our volumes, labels and restricted
security contexts through `runtimePatches`; the runtime's torch plugin sets the rendezvous."""

from __future__ import annotations

from typing import Any

from spin_operator.builders.context import BuildContext
from spin_operator.builders.meta import (
    labels,
)
from spin_operator.builders.pod import (
    container_resources,
    container_security_context,
    env_vars,
    pod_security_context,
    rendezvous_env,
    run_dir,
    scheduling_fields,
    step_images,
    volume_mounts,
    volumes,
)
from spin_operator.launchers.base import CustomResourceLauncher
from spin_runtime.api.status import StepName
from spin_runtime.launch import procs_per_node, torchrun_from_env_argv
from spin_runtime.plan.stages import Step

TRAINJOB_API_VERSION = "trainer.kubeflow.org/v1alpha1"
TRAINJOB_KIND = "TrainJob"
TRAINJOB_PLURAL = "trainjobs"
RUNTIME_API_GROUP = "trainer.kubeflow.org"
#: The replicated Job and container of the trainer in Kubeflow's torch runtimes.
TRAINER_NODE = "node"
#: Who owns our entry of spec.runtimePatches (patches are keyed by manager).
PATCH_MANAGER = "spin.dev/spin-operator"
#: What a cluster admin installs to serve TrainJobs.
PROVIDER = "Kubeflow Trainer v2 (with a torch ClusterTrainingRuntime such as torch-distributed)"


def node_pod_patch(ctx: BuildContext, step: StepName) -> dict[str, Any]:
    """The runtime's trainer pod template patched with what every spinrun pod has: the run's
    labels (the operator watches its pods by them), the run volume and spec ConfigMap, the
    restricted security contexts and the scheduling fields of the spec."""
    spec, training = ctx.spec, ctx.spec.training
    shm = training.gpus_per_node > 0
    pod: dict[str, Any] = {
        "securityContext": pod_security_context(ctx.spec.pod_security),
        "volumes": volumes(ctx, shm=shm),
        "containers": [
            {"name": TRAINER_NODE, "volumeMounts": volume_mounts(shm=shm), "securityContext": container_security_context()}
        ],
    }
    pod.update(scheduling_fields(spec, priority_class=False))  # the runtime's priority class applies
    return {"metadata": {"labels": labels(ctx.run.name, ctx.iteration, step)}, "spec": pod}


def trainjob(ctx: BuildContext, step: StepName) -> dict[str, Any]:
    """The TrainJob of iteration k: numNodes pods running `torchrun -m spin_runtime.cli train`
    (rendezvous from the PET_* variables the torch plugin sets), owned by the SpinRun."""
    training = ctx.spec.training
    _, image, _ = step_images(ctx)
    step_argv = Step(ctx.iteration, step).argv(run_dir(ctx.run.name, ctx.spec))
    env = env_vars(ctx) + rendezvous_env(training)
    return {
        "apiVersion": TRAINJOB_API_VERSION,
        "kind": TRAINJOB_KIND,
        "metadata": ctx.workload_metadata(step),
        "spec": {
            "runtimeRef": {"name": training.training_runtime.name, "apiGroup": RUNTIME_API_GROUP, "kind": training.training_runtime.kind},
            "trainer": {
                "image": image,
                "command": torchrun_from_env_argv(step_argv),
                "env": env,
                "numNodes": training.nodes,
                "numProcPerNode": procs_per_node(training),
                "resourcesPerNode": container_resources(training.resources.requests, training.resources.limits, training.gpus_per_node),
            },
            "runtimePatches": [
                {
                    "manager": PATCH_MANAGER,
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [
                                    {"name": TRAINER_NODE, "template": {"spec": {"template": node_pod_patch(ctx, step)}}}
                                ]
                            }
                        }
                    },
                }
            ],
            "suspend": ctx.suspend,
        },
    }


class TrainJobLauncher(CustomResourceLauncher):
    """`training.launcher: trainjob`: conditions Complete/Failed and spec.suspend, as the TrainJob
    controller writes them."""

    name = "trainjob"
    kind = TRAINJOB_KIND
    api_version = TRAINJOB_API_VERSION
    plural = TRAINJOB_PLURAL
    provider = PROVIDER

    def build(self, ctx: BuildContext, step: StepName) -> dict[str, Any]:
        return trainjob(ctx, step)
