"""The run directory on disk: the stored spec (with the run's identity), the steps' completion
markers and metrics.json.

A step's marker is written after its outputs and records which run (uid) and which
step-relevant spec (fingerprint) produced them. A step counts as done only when its marker
exists, was written by this run and matches the current spec's fingerprint: a marker left by
another run, or by this run under other settings, is never silently reused.
"""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spin_runtime.api.load import SpecError, validate_data
from spin_runtime.api.spec import SpinRun
from spin_runtime.errors import RunDirError
from spin_runtime.plan import layout, stages
from spin_runtime.plan.fingerprint import step_fingerprints
from spin_runtime.store.atomic import atomic_write_json, now_iso, read_json

# --------------------------------------------------------------------------- spec


def spec_path(run_dir: Path) -> Path:
    """Where the run's spec is stored."""
    return Path(run_dir) / layout.SPEC_FILE


def load_run(run_dir: Path) -> SpinRun:
    """The SpinRun stored in a run directory (written by `spin run` or `spin init-run`)."""
    p = spec_path(run_dir)
    if not p.exists():
        raise RunDirError(
            f"{p}: no spec here; start the run with `spin run FILE --run-dir {run_dir}` "
            "or check --run-dir"
        )
    try:
        return validate_data(read_json(p))
    except SpecError as e:
        raise SpecError(e.problems, str(p)) from None


def run_uid(run: SpinRun) -> str:
    """The run's uid ('' when it has none yet)."""
    return str(getattr(run.metadata, "uid", None) or "")


def with_uid(run: SpinRun, uid: str | None = None) -> SpinRun:
    """The run with `uid` (or, when it has none, a new random one) in its metadata."""
    uid = uid or run_uid(run) or str(uuid.uuid4())
    data = run.model_dump(by_alias=True, exclude_none=True, mode="json")
    data["metadata"]["uid"] = uid
    return SpinRun.model_validate(data)


def init_run(run_dir: Path, run: SpinRun) -> None:
    """Store the run's spec (and uid); never touches the outputs."""
    data = run.model_dump(by_alias=True, exclude_none=True, mode="json")
    data.pop("status", None)
    atomic_write_json(spec_path(run_dir), data)


# --------------------------------------------------------------------------- markers


@functools.lru_cache(maxsize=32)
def _fingerprints(spec_json: str) -> dict[str, str]:
    return step_fingerprints(validate_data(json.loads(spec_json)).spec)


def fingerprints(run: SpinRun) -> dict[str, str]:
    """Fingerprint of every step of the run's plan, by step key."""
    data = run.model_dump(by_alias=True, exclude_none=True, mode="json")
    data.pop("status", None)
    return _fingerprints(json.dumps(data, sort_keys=True))


@dataclass(frozen=True)
class MarkerState:
    """What a step's marker says: done, or why not (None = no marker at all)."""

    done: bool
    why_not: str | None = None


def marker_state(run_dir: Path, run: SpinRun, step: stages.Step) -> MarkerState:
    """Whether `step` is done for this run and spec, and if a marker exists but does not count,
    why (another run's, another spec's, unreadable)."""
    path = Path(run_dir) / step.marker
    if not path.exists():
        return MarkerState(False)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return MarkerState(False, f"its marker {step.marker} is unreadable")
    if not isinstance(record, dict):
        return MarkerState(False, f"its marker {step.marker} is not a marker")
    mine, theirs = run_uid(run), str(record.get("runUid") or "")
    if mine and theirs and mine != theirs:
        return MarkerState(False, f"it was done by another run (uid {theirs}), not this one ({mine})")
    expected = fingerprints(run).get(step.key)
    if record.get("fingerprint") != expected:
        if record.get("fingerprint") is None:
            return MarkerState(False, "its marker records no spec fingerprint (written by an older spinrun)")
        return MarkerState(False, "the spec fields it depends on changed since it ran")
    return MarkerState(True)


def is_done(run_dir: Path, step: stages.Step, run: SpinRun | None = None) -> bool:
    """True when the step's marker exists and was written by this run under this spec."""
    if not (Path(run_dir) / step.marker).exists():
        return False
    return marker_state(run_dir, run or load_run(run_dir), step).done


def mark_done(run_dir: Path, run: SpinRun, step: stages.Step, info: dict[str, Any] | None = None) -> None:
    """Write the step's marker (after its outputs) with the run's uid and the step's spec
    fingerprint; the iteration's last step also writes DONE."""
    record = {
        "step": step.key,
        "time": now_iso(),
        "run": run.metadata.name,
        "runUid": run_uid(run),
        "fingerprint": fingerprints(run)[step.key],
        **(info or {}),
    }
    atomic_write_json(Path(run_dir) / step.marker, record)
    if stages.last_step(run.spec, step.iteration) == step:
        atomic_write_json(Path(run_dir) / layout.done_path(step.iteration), record)


def clear_marker(run_dir: Path, step: stages.Step) -> None:
    """Forget that a step (and therefore its iteration) is done, e.g. before a rerun."""
    for rel in (step.marker, layout.done_path(step.iteration)):
        with contextlib.suppress(FileNotFoundError):
            (Path(run_dir) / rel).unlink()


def update_metrics(run_dir: Path, iteration: int, section: str, values: dict[str, Any]) -> None:
    """Set one section ("train", "eval", ...) of iteration k's metrics.json atomically."""
    path = Path(run_dir) / layout.metrics_path(iteration)
    current = read_json(path) if path.exists() else {}
    current[section] = values
    atomic_write_json(path, current)
