"""Resumable checkpoints inside one training step: save every `training.saveSteps` optimizer
steps and every `training.saveMinutes` minutes (keeping the newest `keepCheckpoints`), and on
a retry resume from the newest checkpoint that was completely written by this run under the
same step-relevant spec. A checkpoint counts only once `spin-complete.json` is in it, written
after the Trainer finished saving weights, optimizer, scheduler and RNG state."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from spin_runtime.store import atomic

#: Written into a checkpoint folder after the Trainer saved it completely.
COMPLETE_FILE = "spin-complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(folder: Path) -> int | None:
    """The optimizer step of a `checkpoint-<step>` folder (None for other names)."""
    m = _CHECKPOINT.match(folder.name)
    return int(m.group(1)) if m else None


def usable_checkpoints(root: Path, fingerprint: str) -> tuple[list[Path], list[Path]]:
    """(checkpoints to resume from, newest first; the rest: incomplete or of another spec)."""
    good: list[tuple[int, Path]] = []
    bad: list[Path] = []
    if not root.is_dir():
        return [], []
    for folder in root.iterdir():
        step = checkpoint_step(folder)
        if step is None or not folder.is_dir():
            continue
        try:
            record = json.loads((folder / COMPLETE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            bad.append(folder)
            continue
        if isinstance(record, dict) and record.get("fingerprint") == fingerprint:
            good.append((step, folder))
        else:
            bad.append(folder)
    return [f for _, f in sorted(good, reverse=True)], sorted(bad)


def prepare_resume(root: Path, fingerprint: str, log: Any) -> Path | None:
    """On rank 0: drop incomplete or foreign checkpoints and return the newest usable one."""
    good, bad = usable_checkpoints(root, fingerprint)
    for folder in bad:
        log(f"removing {folder}: incomplete (killed while saving) or written under other settings")
        shutil.rmtree(folder, ignore_errors=True)
    return good[0] if good else None


def newest(root: Path, fingerprint: str) -> Path | None:
    """The newest usable checkpoint (any rank; read-only)."""
    good, _ = usable_checkpoints(root, fingerprint)
    return good[0] if good else None


def save_strategy_kwargs(save_steps: int | None, save_minutes: float, keep: int, epochs: bool = False) -> dict[str, Any]:
    """TrainingArguments for periodic checkpoints: step-based through the Trainer; time- and
    epoch-based through callbacks that set `should_save` (steps are a huge interval then)."""
    if save_steps is None and not save_minutes and not epochs:
        return {"save_strategy": "no"}
    return {
        "save_strategy": "steps",
        "save_steps": save_steps if save_steps is not None else 10**9,
        "save_total_limit": keep,
        "save_only_model": False,
    }


def timed_checkpoints(save_minutes: float, fingerprint: str, clock: Any = time.monotonic) -> Any:
    """A TrainerCallback that asks for a save every `save_minutes` and marks each finished save
    complete (rank 0) with the step's fingerprint."""
    from transformers import TrainerCallback

    class TimedCheckpoints(TrainerCallback):
        """Time-based saves and completion records of checkpoints."""

        def __init__(self) -> None:
            self.last = clock()

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
            if save_minutes and clock() - self.last >= save_minutes * 60:
                control.should_save = True
            return control

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
            self.last = clock()
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    atomic.atomic_write_json(
                        folder / COMPLETE_FILE,
                        {"fingerprint": fingerprint, "step": state.global_step, "time": atomic.now_iso()},
                    )
            return control

    return TimedCheckpoints()
