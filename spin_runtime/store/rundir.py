"""The run directory on disk: the stored spec, the steps' completion markers and metrics.json.

A step's marker is written after its outputs, so a step without its marker is not done.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from spin_runtime.api.load import SpecError, validate_data
from spin_runtime.api.spec import SpinRun
from spin_runtime.errors import RunDirError
from spin_runtime.plan import layout, stages
from spin_runtime.store.atomic import atomic_write_json, now_iso, read_json

# --------------------------------------------------------------------------- spec


def spec_path(run_dir: Path) -> Path:
    return Path(run_dir) / layout.SPEC_FILE


def load_run(run_dir: Path) -> SpinRun:
    """The SpinRun stored in a run directory (written by `spin run` or the operator)."""
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


def init_run(run_dir: Path, run: SpinRun) -> None:
    """Store the run's spec; an existing spec is replaced (a changed spec takes effect
    for steps not yet done), never the outputs."""
    data = run.model_dump(by_alias=True, exclude_none=True, mode="json")
    data.pop("status", None)
    atomic_write_json(spec_path(run_dir), data)


# --------------------------------------------------------------------------- markers


def is_done(run_dir: Path, step: stages.Step) -> bool:
    """True when the step's completion marker exists."""
    return (Path(run_dir) / step.marker).exists()


def done_keys(run_dir: Path, run: SpinRun) -> set[str]:
    """Keys of all finished steps of the run's plan."""
    return {s.key for s in stages.all_steps(run.spec) if is_done(run_dir, s)}


def mark_done(run_dir: Path, run: SpinRun, step: stages.Step, info: dict[str, Any] | None = None) -> None:
    """Write the step's marker (after its outputs); the iteration's last step also writes DONE."""
    record = {"step": step.key, "time": now_iso(), **(info or {})}
    atomic_write_json(Path(run_dir) / step.marker, record)
    if stages.last_step(run.spec, step.iteration) == step:
        atomic_write_json(Path(run_dir) / layout.done_path(step.iteration), record)


def clear_marker(run_dir: Path, run: SpinRun, step: stages.Step) -> None:
    """Forget that a step (and therefore its iteration) is done, e.g. before a forced rerun."""
    for rel in (step.marker, layout.done_path(step.iteration)):
        with contextlib.suppress(FileNotFoundError):
            (Path(run_dir) / rel).unlink()


def update_metrics(run_dir: Path, iteration: int, section: str, values: dict[str, Any]) -> None:
    """Set one section ("train", "eval", ...) of iteration k's metrics.json atomically."""
    path = Path(run_dir) / layout.metrics_path(iteration)
    current = read_json(path) if path.exists() else {}
    current[section] = values
    atomic_write_json(path, current)
