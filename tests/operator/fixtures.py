"""Shared helpers of the operator tests: SpinRun bodies as the API server holds them."""

from __future__ import annotations

import copy
from typing import Any

UID = "0b5c7d2e-0000-4000-8000-000000000001"


def make_body(name: str = "demo", spec: dict[str, Any] | None = None, *, generation: int = 1, **meta: Any) -> dict[str, Any]:
    """A SpinRun object as the API server returns it (uid, generation, resourceVersion)."""
    base: dict[str, Any] = {
        "model": {"builtin": "tiny-random-llama"},
        "dataset": {"builtin": {"name": "addition-3digit", "trainSize": 8, "testSize": 4}},
        "iterations": 2,
        "generation": {"shards": 2, "maxNewTokens": 8, "engine": "transformers"},
        "training": {"nodes": 1, "gpusPerNode": 0, "maxLength": 64, "maxPromptLength": 32},
        "storage": {"newClaim": {"size": "1Gi", "accessModes": ["ReadWriteOnce"]}},
    }
    if spec:
        base = deep_merge(base, spec)
    return {
        "apiVersion": "spin.dev/v1alpha1",
        "kind": "SpinRun",
        "metadata": {
            "name": name,
            "namespace": "ns1",
            "uid": UID,
            "generation": generation,
            "resourceVersion": "1",
            **meta,
        },
        "spec": base,
    }


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


