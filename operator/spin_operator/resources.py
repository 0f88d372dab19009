"""Pure builders of the Kubernetes objects a SpinRun owns: names, labels, the shared pod
template, the run's PVC and per-iteration spec ConfigMap, and the generate/convert/evaluate
Jobs. Training lives in `resources_training.py` (one strategy per launcher).

Nothing here talks to a server or imports kopf; every function maps plain data to plain
dicts, so `spin render` and the golden-file tests see exactly what the operator creates.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spin_runtime.api.load import validate_data
from spin_runtime.api.spec import API_VERSION, KIND, SpinRun, SpinRunSpec
from spin_runtime.plan import stages

# --------------------------------------------------------------------------- constants

MANAGED_BY = "spinrun"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_RUN = "spin.dev/run"
LABEL_ITERATION = "spin.dev/iteration"
LABEL_STEP = "spin.dev/step"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_ATTEMPT = "spin.dev/attempt"
ANNOTATION_GENERATION = "spin.dev/generation"
#: Set on Jobs the operator suspended (or created suspended) because the SpinRun is
#: suspended; on resume only those are unsuspended (Kueue's own suspension is left alone).
ANNOTATION_SUSPENDED_BY = "spin.dev/suspended-by"

DATA_MOUNT = "/data"
SPEC_MOUNT = "/etc/spin"
SPEC_KEY = "spec.json"
MASTER_PORT = 29500
GPU_RESOURCE = "nvidia.com/gpu"
#: The uid/gid the spinrun images run as (non-root); the volume is group-writable through fsGroup.
POD_UID = 65532  # the uid the images create (images/*.Dockerfile)

#: Job-name suffix of each step.
STEP_SUFFIX: dict[str, str] = {"generate": "gen", "convert": "convert", "train": "train", "evaluate": "eval"}
#: status.phase while a step runs.
STEP_PHASE: dict[str, str] = {
    "generate": "Generating",
    "convert": "Converting",
    "train": "Training",
    "evaluate": "Evaluating",
}

DEFAULT_GENERATOR_IMAGE = "spinrun/spinrun-generator:0.1.0"
DEFAULT_TRAINER_IMAGE = "spinrun/spinrun-trainer:0.1.0"


@dataclass(frozen=True)
class OperatorDefaults:
    """Settings of the operator deployment (Helm values → env vars) used when the spec is silent."""

    generator_image: str = DEFAULT_GENERATOR_IMAGE
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    pull_policy: str = "IfNotPresent"
    #: Whether this deployment may create Kubeflow PyTorchJobs (Helm `pytorchjob.enabled`, which
    #: also grants the RBAC). None (env unset, e.g. run locally) = decide by whether the CRD is served.
    pytorchjob_enabled: bool | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorDefaults:
        """Read SPIN_GENERATOR_IMAGE, SPIN_TRAINER_IMAGE, SPIN_IMAGE_PULL_POLICY and
        SPIN_PYTORCHJOB_ENABLED (true/false; unset or empty = not configured)."""
        env = os.environ if env is None else env
        return cls(
            generator_image=env.get("SPIN_GENERATOR_IMAGE") or DEFAULT_GENERATOR_IMAGE,
            trainer_image=env.get("SPIN_TRAINER_IMAGE") or DEFAULT_TRAINER_IMAGE,
            pull_policy=env.get("SPIN_IMAGE_PULL_POLICY") or "IfNotPresent",
            pytorchjob_enabled=_env_flag(env.get("SPIN_PYTORCHJOB_ENABLED")),
        )


def _env_flag(value: str | None) -> bool | None:
    """"true"/"1"/"yes"/"on" → True, "false"/"0"/"no"/"off" → False, unset/empty → None."""
    v = (value or "").strip().lower()
    if not v:
        return None
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"SPIN_PYTORCHJOB_ENABLED must be true or false, not {value!r}")


@dataclass(frozen=True)
class RunRef:
    """The identity of the owning SpinRun (what ownerReferences and labels need)."""

    name: str
    namespace: str
    uid: str = ""
    generation: int = 1

    @classmethod
    def from_body(cls, body: Mapping[str, Any], namespace: str | None = None) -> RunRef:
        meta = body.get("metadata") or {}
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace") or namespace or "default"),
            uid=str(meta.get("uid") or ""),
            generation=int(meta.get("generation") or 1),
        )


@dataclass(frozen=True)
class BuildContext:
    """Everything a builder needs besides the spec: who owns the objects, which iteration,
    whether Jobs start suspended, the attempt number and the operator defaults."""

    run: RunRef
    spec: SpinRunSpec
    iteration: int
    attempt: int = 0
    suspend: bool = False
    defaults: OperatorDefaults = field(default_factory=OperatorDefaults)


# --------------------------------------------------------------------------- names & paths


def job_name(run: str, iteration: int, step: str) -> str:
    """Deterministic Job name of a step, e.g. `myrun-it0-gen`."""
    return f"{run}-it{iteration}-{STEP_SUFFIX[step]}"


def spec_configmap_name(run: str, iteration: int) -> str:
    """ConfigMap holding the spec iteration k runs with (pinned when the iteration starts)."""
    return f"{run}-it{iteration}-spec"


def pvc_name(run: str) -> str:
    """PVC the operator creates when the spec asks for a new claim."""
    return f"{run}-data"


def claim_name(run: str, spec: SpinRunSpec) -> str:
    """The claim every pod mounts at /data."""
    return spec.storage.existing_claim or pvc_name(run)


def run_dir(run: str, spec: SpinRunSpec) -> str:
    """The run directory inside pods: `/data/<storage.subPath>/<run-name>`."""
    return f"{DATA_MOUNT}/{spec.storage.sub_path}/{run}"


# --------------------------------------------------------------------------- metadata


def labels(run: str, iteration: int | None = None, step: str | None = None) -> dict[str, str]:
    """Labels of every child (and its pods)."""
    out = {LABEL_NAME: "spinrun", LABEL_MANAGED_BY: MANAGED_BY, LABEL_RUN: run}
    if iteration is not None:
        out[LABEL_ITERATION] = str(iteration)
    if step is not None:
        out[LABEL_STEP] = step
    return out


def owner_reference(run: RunRef) -> dict[str, Any]:
    """Controller ownerReference to the SpinRun: children are garbage-collected with it."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": run.name,
        "uid": run.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    run: RunRef,
    name: str,
    *,
    iteration: int | None = None,
    step: str | None = None,
    queue_name: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """ObjectMeta of a child: name, namespace, labels, owner, optional annotations."""
    lab = labels(run.name, iteration, step)
    if queue_name:
        lab[LABEL_QUEUE] = queue_name
    meta: dict[str, Any] = {"name": name, "namespace": run.namespace, "labels": lab}
    if run.uid:  # unknown when rendering offline (`spin render`): no reference then
        meta["ownerReferences"] = [owner_reference(run)]
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


# --------------------------------------------------------------------------- pod template


def step_images(ctx: BuildContext) -> tuple[str, str, str]:
    """(generator image, trainer image, pull policy): the spec's, else the operator's defaults."""
    img = ctx.spec.images
    return (
        img.generator or ctx.defaults.generator_image,
        img.trainer or ctx.defaults.trainer_image,
        img.pull_policy or ctx.defaults.pull_policy,
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


def pod_security_context() -> dict[str, Any]:
    """Pod security context: non-root, RuntimeDefault seccomp, the volume group-writable."""
    return {
        "runAsNonRoot": True,
        "runAsUser": POD_UID,
        "runAsGroup": POD_UID,
        "fsGroup": POD_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def env_vars(ctx: BuildContext) -> list[dict[str, Any]]:
    """Environment of every step: caches on writable paths, the user's env, HF_TOKEN by secretKeyRef."""
    spec = ctx.spec
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
        {"name": "HF_HOME", "value": f"{DATA_MOUNT}/{spec.storage.sub_path}/.cache/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "SPIN_RUN_NAME", "value": ctx.run.name},
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
        "volumeMounts": _mounts(),
    }


def _mounts(shm: bool = False) -> list[dict[str, Any]]:
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
        "volumeMounts": _mounts(shm=gpus > 0),
    }
    if ports:
        container["ports"] = ports
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": pod_security_context(),
        "initContainers": [init_container(ctx, image, pull_policy)],
        "containers": [container],
        "volumes": volumes(ctx, shm=gpus > 0),
        "enableServiceLinks": False,
    }
    if subdomain:
        pod["subdomain"] = subdomain
    if spec.service_account_name:
        pod["serviceAccountName"] = spec.service_account_name
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [t.dump() for t in spec.tolerations]
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return {"metadata": {"labels": labels(ctx.run.name, ctx.iteration, step)}, "spec": pod}


def job(
    ctx: BuildContext,
    step: str,
    template: dict[str, Any],
    *,
    completions: int = 1,
    parallelism: int | None = None,
    indexed: bool = False,
    backoff_limit: int | None = 0,
    backoff_limit_per_index: int | None = None,
    max_failed_indexes: int | None = None,
) -> dict[str, Any]:
    """A batch/v1 Job around a pod template, with the run's labels, owner and annotations."""
    annotations = {ANNOTATION_ATTEMPT: str(ctx.attempt), ANNOTATION_GENERATION: str(ctx.run.generation)}
    if ctx.suspend:
        annotations[ANNOTATION_SUSPENDED_BY] = MANAGED_BY
    spec: dict[str, Any] = {
        "completions": completions,
        "parallelism": parallelism if parallelism is not None else completions,
    }
    if indexed:
        spec["completionMode"] = "Indexed"
    if backoff_limit is not None:
        spec["backoffLimit"] = backoff_limit
    if backoff_limit_per_index is not None:
        spec["backoffLimitPerIndex"] = backoff_limit_per_index
    if max_failed_indexes is not None:
        spec["maxFailedIndexes"] = max_failed_indexes
    spec["podReplacementPolicy"] = "Failed"
    spec["suspend"] = ctx.suspend
    spec["template"] = template
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(
            ctx.run,
            job_name(ctx.run.name, ctx.iteration, step),
            iteration=ctx.iteration,
            step=step,
            queue_name=ctx.spec.queue_name,
            annotations=annotations,
        ),
        "spec": spec,
    }


# --------------------------------------------------------------------------- storage & spec


def persistent_volume_claim(run: RunRef, spec: SpinRunSpec) -> dict[str, Any] | None:
    """The run's PVC when the spec asks for a new claim (None for an existing claim)."""
    claim = spec.storage.new_claim
    if claim is None:
        return None
    pvc_spec: dict[str, Any] = {
        "accessModes": list(claim.access_modes),
        "resources": {"requests": {"storage": claim.size}},
    }
    if claim.storage_class_name:
        pvc_spec["storageClassName"] = claim.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(run, pvc_name(run.name)),
        "spec": pvc_spec,
    }


def spec_document(run: RunRef, spec: SpinRunSpec) -> dict[str, Any]:
    """The resolved SpinRun (defaults filled in) as stored in the run directory's spec.json."""
    obj = SpinRun.model_validate({"metadata": {"name": run.name, "namespace": run.namespace}, "spec": spec.dump()})
    data = obj.model_dump(by_alias=True, exclude_none=True, mode="json")
    data.pop("status", None)
    return data


def spec_config_map(run: RunRef, spec: SpinRunSpec, iteration: int) -> dict[str, Any]:
    """The spec iteration k runs with, mounted read-only at /etc/spin/spec.json in its pods."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            run,
            spec_configmap_name(run.name, iteration),
            iteration=iteration,
            annotations={ANNOTATION_GENERATION: str(run.generation)},
        ),
        "data": {SPEC_KEY: json.dumps(spec_document(run, spec), indent=2, sort_keys=True) + "\n"},
    }


def spec_from_config_map(cm: Mapping[str, Any]) -> SpinRunSpec:
    """Read back the pinned spec of an iteration from its ConfigMap."""
    return validate_data(json.loads((cm.get("data") or {})[SPEC_KEY])).spec


# --------------------------------------------------------------------------- step Jobs


def generation_gpus(spec: SpinRunSpec) -> int:
    """GPUs per generation pod: tensorParallelSize, none for the transformers (CPU) engine."""
    return 0 if spec.generation.engine == "transformers" else spec.generation.tensor_parallel_size


def generate_job(ctx: BuildContext) -> dict[str, Any]:
    """One Indexed Job per iteration, one index per shard (`spin generate` reads
    JOB_COMPLETION_INDEX). A failed shard re-runs alone up to backoffLimit times
    (backoffLimitPerIndex); one shard over its limit fails the Job (maxFailedIndexes 0)."""
    gen = ctx.spec.generation
    k = ctx.iteration
    step = stages.Step(k, "generate", 0, gen.shards)
    image, _, pull = step_images(ctx)
    gpus = generation_gpus(ctx.spec)
    template = pod_template(
        ctx,
        "generate",
        image=image,
        pull_policy=pull,
        command=step.argv(run_dir(ctx.run.name, ctx.spec), shard_from_env=True),
        resources=container_resources(gen.resources.requests, gen.resources.limits, gpus),
        gpus=gpus,
    )
    return job(
        ctx,
        "generate",
        template,
        completions=gen.shards,
        parallelism=min(gen.parallelism or gen.shards, gen.shards),
        indexed=True,
        backoff_limit=None,
        backoff_limit_per_index=ctx.spec.backoff_limit,
        max_failed_indexes=0,
    )


CONVERT_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}


def convert_job(ctx: BuildContext) -> dict[str, Any]:
    """A small CPU Job gathering the shards into parquet. Retries are the operator's
    (the Job is recreated, attempt annotation + 1), so backoffLimit is 0."""
    _, image, pull = step_images(ctx)
    template = pod_template(
        ctx,
        "convert",
        image=image,
        pull_policy=pull,
        command=stages.Step(ctx.iteration, "convert").argv(run_dir(ctx.run.name, ctx.spec)),
        resources=json.loads(json.dumps(CONVERT_RESOURCES)),
        gpus=0,
    )
    return job(ctx, "convert", template)


def evaluate_job(ctx: BuildContext) -> dict[str, Any]:
    """Held-out metrics of the iteration's checkpoint on one training-sized pod."""
    tr = ctx.spec.training
    _, image, pull = step_images(ctx)
    gpus = tr.gpus_per_node
    template = pod_template(
        ctx,
        "evaluate",
        image=image,
        pull_policy=pull,
        command=stages.Step(ctx.iteration, "evaluate").argv(run_dir(ctx.run.name, ctx.spec)),
        resources=container_resources(tr.resources.requests, tr.resources.limits, gpus),
        gpus=gpus,
    )
    return job(ctx, "evaluate", template)


def step_objects(ctx: BuildContext, step: str) -> list[dict[str, Any]]:
    """Every object one step of one iteration needs (the Job, plus a Service for
    multi-node training, or a PyTorchJob)."""
    if step == "generate":
        return [generate_job(ctx)]
    if step == "convert":
        return [convert_job(ctx)]
    if step == "evaluate":
        return [evaluate_job(ctx)]
    if step == "train":
        from spin_operator.resources_training import training_objects

        return training_objects(ctx)
    raise ValueError(f"unknown step {step!r}: expected one of {', '.join(STEP_SUFFIX)}")


def step_names(spec: SpinRunSpec, iteration: int) -> list[str]:
    """The stages of iteration k in order (generate only when the run generates its data)."""
    seen: list[str] = []
    for s in stages.steps_for_iteration(spec, iteration):
        if s.name not in seen:
            seen.append(s.name)
    return seen
