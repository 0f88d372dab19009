"""The pod template every step shares: images, restricted security contexts, environment,
resources, the init container that pins the spec, and the volumes and their mounts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spin_operator.builders.context import BuildContext
from spin_operator.builders.meta import claim_name, labels, spec_configmap_name
from spin_runtime.api.resources import GPU_RESOURCE
from spin_runtime.api.spec import PodSecurity, SpinRunSpec, Training
from spin_runtime.launch import (
    PROGRESS_PORT,
    PROGRESS_PORT_ENV,
    PROGRESS_PORT_NAME,
    RDZV_CONF_ENV,
    RUN_UID_ENV,
    STEP_LOGS_ENV,
    rendezvous_conf,
)

DATA_MOUNT = "/data"
SPEC_MOUNT = "/etc/spin"
SPEC_KEY = "spec.json"

def run_dir(run: str, spec: SpinRunSpec) -> str:
    """The run directory inside pods: `/data/<storage.subPath>/<run-name>`."""
    return run_dir_at(spec.storage.sub_path, run)


def run_dir_at(sub_path: str, run: str) -> str:
    """The run directory inside pods for a claim's subPath (also once the SpinRun is gone)."""
    return f"{DATA_MOUNT}/{sub_path}/{run}"


def step_images(ctx: BuildContext) -> tuple[str, str, str]:
    """(generator image, trainer image, pull policy): the spec's, else the deployment's."""
    img = ctx.spec.images
    return (
        img.generator or ctx.settings.generator_image,
        img.trainer or ctx.settings.trainer_image,
        img.pull_policy or ctx.settings.pull_policy,
    )


def container_security_context() -> dict[str, Any]:
    """Restricted-profile container security context."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context(sec: PodSecurity) -> dict[str, Any]:
    """Pod security context: non-root as spec.podSecurity says (the images' 65532 by default),
    RuntimeDefault seccomp, the volume group-writable through fsGroup."""
    return {
        "runAsNonRoot": True,
        "runAsUser": sec.run_as_user,
        "runAsGroup": sec.run_as_group,
        "fsGroup": sec.fs_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def env_vars(ctx: BuildContext) -> list[dict[str, Any]]:
    """Environment of every step: caches on writable paths, the run's name and uid, the port its
    progress is served on, the user's env, HF_TOKEN by secretKeyRef."""
    spec = ctx.spec
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
        {"name": "HF_HOME", "value": f"{DATA_MOUNT}/{spec.storage.sub_path}/.cache/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "SPIN_RUN_NAME", "value": ctx.run.name},
        {"name": RUN_UID_ENV, "value": ctx.run.uid},
        {"name": PROGRESS_PORT_ENV, "value": str(PROGRESS_PORT)},
        {"name": STEP_LOGS_ENV, "value": "1"},
    ]
    env += [{"name": e.name, "value": e.value} for e in spec.env]
    if spec.hf_token_secret is not None:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": spec.hf_token_secret.name, "key": spec.hf_token_secret.key}
                },
            }
        )
    return env


def rendezvous_env(training: Training) -> list[dict[str, Any]]:
    """The env making every training node wait `rendezvousTimeoutSeconds` for the others
    (Pending pods included) instead of torchrun's 600 s; none on a single node."""
    if training.nodes <= 1:
        return []
    return [{"name": RDZV_CONF_ENV, "value": rendezvous_conf(training.rendezvous_timeout_seconds)}]


def progress_port() -> dict[str, Any]:
    """The named container port the step serves its live progress on (the operator polls it)."""
    return {"name": PROGRESS_PORT_NAME, "containerPort": PROGRESS_PORT, "protocol": "TCP"}


def container_resources(requests: Mapping[str, str], limits: Mapping[str, str], gpus: int) -> dict[str, Any]:
    """Requests/limits with `gpus` added as nvidia.com/gpu (unless the user set it)."""
    req = dict(requests)
    lim = dict(limits)
    if gpus > 0 and GPU_RESOURCE not in lim:
        lim[GPU_RESOURCE] = str(gpus)
    if GPU_RESOURCE in lim and GPU_RESOURCE not in req:
        req[GPU_RESOURCE] = lim[GPU_RESOURCE]
    out: dict[str, Any] = {}
    if req:
        out["requests"] = req
    if lim:
        out["limits"] = lim
    return out


def init_container(ctx: BuildContext, image: str, pull_policy: str) -> dict[str, Any]:
    """Copies the iteration's spec (ConfigMap) into the run directory before the step runs."""
    return {
        "name": "init-run",
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": [
            "spin",
            "init-run",
            "--spec",
            f"{SPEC_MOUNT}/{SPEC_KEY}",
            "--run-dir",
            run_dir(ctx.run.name, ctx.spec),
        ],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": container_security_context(),
        "volumeMounts": volume_mounts(),
    }


def volume_mounts(shm: bool = False) -> list[dict[str, Any]]:
    """Mounts of every container: the run volume, the spec (read-only), /tmp and (GPU pods) /dev/shm."""
    mounts = [
        {"name": "data", "mountPath": DATA_MOUNT},
        {"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if shm:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return mounts


def volumes(ctx: BuildContext, shm: bool = False) -> list[dict[str, Any]]:
    """The run volume, the iteration's spec ConfigMap, a scratch /tmp and (GPU pods) /dev/shm."""
    vols: list[dict[str, Any]] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": claim_name(ctx.run.name, ctx.spec)}},
        {
            "name": "spec",
            "configMap": {"name": spec_configmap_name(ctx.run.name, ctx.iteration), "defaultMode": 0o444},
        },
        {"name": "tmp", "emptyDir": {}},
    ]
    if shm:
        vols.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    return vols


def single_node_volume(spec: SpinRunSpec) -> bool:
    """Whether the run volume mounts on one node at a time: a new claim without ReadWriteMany (an
    existing claim's access modes are its owner's to know)."""
    claim = spec.storage.new_claim
    return claim is not None and "ReadWriteMany" not in claim.access_modes


def same_node_affinity(ctx: BuildContext, step: str) -> dict[str, Any]:
    """Required pod affinity that puts every pod of the step on one node (the first goes where
    it fits; the scheduler lets a pod that matches its own term lead): a ReadWriteOnce volume is
    mounted by the pods of one node only."""
    return {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": labels(ctx.run.name, ctx.iteration, step)},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    }


def scheduling_fields(spec: SpinRunSpec, *, priority_class: bool = True) -> dict[str, Any]:
    """The pod fields the spec sets for every step pod: service account, node selector,
    tolerations, priority class (unless `priority_class` is False: a TrainJob's runtime patch
    has no such field) and image pull secrets; only those set."""
    out: dict[str, Any] = {}
    if spec.service_account_name:
        out["serviceAccountName"] = spec.service_account_name
    if spec.node_selector:
        out["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        out["tolerations"] = [t.dump() for t in spec.tolerations]
    if spec.priority_class_name and priority_class:
        out["priorityClassName"] = spec.priority_class_name
    if spec.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return out


def pod_template(
    ctx: BuildContext,
    step: str,
    *,
    image: str,
    pull_policy: str,
    command: list[str],
    resources: dict[str, Any],
    gpus: int,
    extra_env: list[dict[str, Any]] | None = None,
    subdomain: str | None = None,
    ports: list[dict[str, Any]] | None = None,
    scheduler_name: str | None = None,
    extra_labels: dict[str, str] | None = None,
    affinity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The pod template shared by every step: init container, security, scheduling fields."""
    spec = ctx.spec
    container: dict[str, Any] = {
        "name": step,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": command,
        "env": env_vars(ctx) + list(extra_env or []),
        "resources": resources,
        "securityContext": container_security_context(),
        "volumeMounts": volume_mounts(shm=gpus > 0),
    }
    container["ports"] = [progress_port(), *(ports or [])]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": pod_security_context(spec.pod_security),
        "initContainers": [init_container(ctx, image, pull_policy)],
        "containers": [container],
        "volumes": volumes(ctx, shm=gpus > 0),
        "enableServiceLinks": False,
    }
    if subdomain:
        pod["subdomain"] = subdomain
    if scheduler_name:
        pod["schedulerName"] = scheduler_name
    if affinity:
        pod["affinity"] = affinity
    pod.update(scheduling_fields(spec))
    return {"metadata": {"labels": {**labels(ctx.run.name, ctx.iteration, step), **(extra_labels or {})}}, "spec": pod}
