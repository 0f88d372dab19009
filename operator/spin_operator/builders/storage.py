"""The run's storage objects: the PersistentVolumeClaim of a new claim and the per-iteration
ConfigMap that pins the spec an iteration runs with (and reading it back)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from spin_operator.builders.meta import (
    ANNOTATION_CREATED_BY_RUN,
    ANNOTATION_GENERATION,
    RunRef,
    metadata,
    pvc_name,
    spec_configmap_name,
)
from spin_operator.builders.pod import SPEC_KEY
from spin_runtime.api.load import validate_data
from spin_runtime.api.spec import SpinRun, SpinRunSpec


def persistent_volume_claim(run: RunRef, spec: SpinRunSpec) -> dict[str, Any] | None:
    """The run's PVC when the spec asks for a new claim (None for an existing claim). It has no
    ownerReference unless `deleteWithRun`: deleting the SpinRun then leaves the checkpoints."""
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
        "metadata": metadata(
            run,
            pvc_name(run.name),
            owned=claim.delete_with_run,
            annotations=None if claim.delete_with_run or not run.uid else {ANNOTATION_CREATED_BY_RUN: run.uid},
        ),
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
    """Read back the pinned spec of an iteration from its ConfigMap (the strict loader)."""
    return validate_data(json.loads((cm.get("data") or {})[SPEC_KEY])).spec
