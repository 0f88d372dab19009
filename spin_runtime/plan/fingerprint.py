"""Fingerprints of the steps of a run: a hash of exactly the spec fields that change a step's
output, chained through the steps it reads from (its start model, its data window), so that a
changed field invalidates the steps it affects and every step after them — and nothing else.
Pure: no I/O.

Cluster-only and cosmetic fields (images, resources, launcher, parallelism, logging, report
targets, iterations beyond this one) are not part of any fingerprint: changing them never
reruns finished work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from spin_runtime.api.spec import SpinRunSpec, schedule_for
from spin_runtime.plan import hparams
from spin_runtime.plan.stages import Step, iterations, stages_for_iteration

#: Fields that never change what a step computes (where it runs, how it logs).
_GENERATION_IGNORED = ("parallelism", "resources", "gpuMemoryUtilization")
_TRAINING_IGNORED = ("resources", "launcher", "loggingSteps", "reportTo")


def _digest(parts: Mapping[str, Any]) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _without(section: Mapping[str, Any], ignored: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k not in ignored}


def _window_prints(spec: SpinRunSpec, k: int, data_prints: Mapping[int, str]) -> list[Any]:
    """What iteration k's data window is made of: the fingerprints of the converted data, or the
    data given in the spec (before startIteration)."""
    out: list[Any] = []
    for j in hparams.data_window(spec, k):
        if j in data_prints:
            out.append(data_prints[j])
        else:
            given = hparams.synthetic_data_for(spec, j)
            out.append(given.dump() if given is not None else None)
    return out


def step_fingerprints(spec: SpinRunSpec) -> dict[str, str]:
    """Fingerprint of every step of the run, by step key (`it0/train`, `it1/generate-0-of-2`)."""
    dump = spec.dump()
    generation = _without(dump.get("generation", {}), _GENERATION_IGNORED)
    training = _without(dump.get("training", {}), _TRAINING_IGNORED)
    # the arm's settings reach the evaluate step through the arm's fingerprint (a run without the
    # arm keeps the fingerprints it had before the field existed)
    evaluation = {k: v for k, v in dump.get("evaluation", {}).items() if k != "sftBaseline"}
    sft_baseline = dump.get("evaluation", {}).get("sftBaseline", {})
    prints: dict[str, str] = {}
    data_prints: dict[int, str] = {}  # iteration → fingerprint of its converted data
    for k in iterations(spec):
        if k == spec.start_iteration:
            start = _digest({"model": dump.get("model"), "startCheckpoint": dump.get("startCheckpoint"), "k": k})
        else:
            start = prints[Step(k - 1, "train").key]
        for stage in stages_for_iteration(spec, k):
            for step in stage.steps:
                if step.name == "generate":
                    parts: dict[str, Any] = {"start": start, "dataset": dump.get("dataset"), "generation": generation}
                elif step.name == "convert":
                    given = hparams.synthetic_data_for(spec, k)
                    if given is not None:
                        source: Any = given.dump()
                    else:
                        source = [prints[s.key] for s in stages_for_iteration(spec, k)[0].steps]
                    parts = {"source": source, "dataset": dump.get("dataset")}
                elif step.name == "train":
                    parts = {"start": start, "window": _window_prints(spec, k, data_prints), "training": training,
                             "schedule": schedule_for(spec, k).dump()}
                elif step.name == "sft":
                    arm_start = start if k == spec.start_iteration else prints[Step(k - 1, "sft").key]
                    parts = {"start": arm_start, "window": _window_prints(spec, k, data_prints), "training": training,
                             "schedule": schedule_for(spec, k).dump(), "sft": sft_baseline}
                else:
                    parts = {"model": prints[Step(k, "train").key], "start": start, "evaluation": evaluation,
                             "lengths": [spec.training.max_prompt_length, spec.training.max_length]}
                    if spec.evaluation.sft_baseline.enabled:
                        parts["sft"] = prints[Step(k, "sft").key]
                prints[step.key] = _digest({"step": step.key, **parts})
                if step.name == "convert":
                    data_prints[k] = prints[step.key]
    return prints


def changed_fields(old: Any, new: Any, path: str = "spec") -> list[str]:
    """Dotted paths (`spec.schedule[0].learningRate`) where two spec dumps differ."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += changed_fields(old.get(key), new.get(key), f"{path}.{key}")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += changed_fields(a, b, f"{path}[{i}]")
        return out
    return [] if old == new else [path]
