"""Names, labels, annotations and owner references of a SpinRun's children: the one module that
owns each label and annotation key and each child's name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spin_runtime.api.spec import API_VERSION, KIND, SpinRunSpec
from spin_runtime.api.status import StepName

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
#: On a claim that outlives its run: the uid of the SpinRun that created it.
ANNOTATION_CREATED_BY_RUN = "spin.dev/created-by-run-uid"
#: Shown by `spin render` where the SpinRun's uid goes (the API server assigns it on creation).
PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"

#: Job-name suffix of each step.
STEP_SUFFIX: dict[StepName, str] = {
    "generate": "gen", "convert": "convert", "train": "train", "sft": "sft", "evaluate": "eval",
}


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


# --------------------------------------------------------------------------- names


def job_name(run: str, iteration: int, step: StepName) -> str:
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


# --------------------------------------------------------------------------- metadata


def labels(run: str, iteration: int | None = None, step: str | None = None) -> dict[str, str]:
    """Labels of every child (and its pods)."""
    out = {LABEL_NAME: "spinrun", LABEL_MANAGED_BY: MANAGED_BY, LABEL_RUN: run}
    if iteration is not None:
        out[LABEL_ITERATION] = str(iteration)
    if step is not None:
        out[LABEL_STEP] = step
    return out


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of an object's controller ownerReference (None when it has none)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid") or "")
    return None


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
    owned: bool = True,
) -> dict[str, Any]:
    """ObjectMeta of a child: name, namespace, labels, optional annotations and (unless `owned`
    is False: the object outlives the run) the controller reference to the run."""
    lab = labels(run.name, iteration, step)
    if queue_name:
        lab[LABEL_QUEUE] = queue_name
    meta: dict[str, Any] = {"name": name, "namespace": run.namespace, "labels": lab}
    if owned and run.uid:
        meta["ownerReferences"] = [owner_reference(run)]
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def workload_annotations(attempt: int, generation: int, suspended: bool) -> dict[str, str]:
    """Annotations of a step's workload (a Job, or a launcher's training object): its attempt,
    the spec generation it was built from, and whether the operator created it suspended."""
    out = {ANNOTATION_ATTEMPT: str(attempt), ANNOTATION_GENERATION: str(generation)}
    if suspended:
        out[ANNOTATION_SUSPENDED_BY] = MANAGED_BY
    return out


def suspended_by_annotation(suspend: bool) -> dict[str, str | None]:
    """The annotation part of a suspend/resume merge patch (None removes it)."""
    return {ANNOTATION_SUSPENDED_BY: MANAGED_BY if suspend else None}
