"""Live progress of a step: a small JSON file in the run directory (`layout.progress_path`),
rewritten atomically at most once a second while the step runs, plus a plain line on stderr
every 30 s for logs that have no terminal (a pod's log, the step's log file).

The local driver polls the file to draw one live line per step; `spin status` shows it; in a
pod the same record is served over HTTP for the operator (`progress_server`). Only global rank 0
writes. Reading and formatting (`read_progress`, `describe`) import nothing heavy.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from spin_runtime.errors import SpinError
from spin_runtime.plan import layout
from spin_runtime.plan.stages import Step
from spin_runtime.steps import progress_server
from spin_runtime.steps.progress_server import ProgressServer
from spin_runtime.store import atomic

#: Seconds between two writes of the progress file (the last state is always written).
WRITE_INTERVAL = 1.0
#: Seconds between two plain progress lines on stderr.
ECHO_INTERVAL = 30.0


def step_stem(step: Step) -> str:
    """The step's name inside its iteration: `generate-1-of-2`, `train`, ..."""
    return step.key.split("/", 1)[1]


def progress_file(run_dir: Path, step: Step) -> Path:
    """Where a step's progress is written."""
    return Path(run_dir) / layout.progress_path(step.iteration, step_stem(step))


def log_file(run_dir: Path, step: Step) -> Path:
    """Where the local driver writes a step's full output."""
    return Path(run_dir) / layout.step_log_path(step.iteration, step_stem(step))


# --------------------------------------------------------------------------- formatting (pure)


def fmt_duration(seconds: float | None) -> str:
    """`42s`, `3m05s`, `1h02m`."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _fmt_metric(name: str, value: Any) -> str:
    """`loss 0.412`, `231 tok/s`, `12.0 s/step`: rates after the number, other metrics before it."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return f"{name} {value}"
    if "/" in name:
        return f"{value:.0f} {name}" if value >= 100 else f"{value:.1f} {name}"
    if value != 0 and abs(value) < 5e-4:  # rounding noise of a margin at the first steps: no e-notation
        return f"{name} 0.000"
    return f"{name} {value:.3g}"


def eta_seconds(record: dict[str, Any]) -> float | None:
    """Seconds left at the record's rate (None before the rate is known)."""
    done, total, rate = record.get("done"), record.get("total"), record.get("rate")
    if not total or done is None or not rate:
        return None
    return max(0.0, (total - done) / rate)


def describe(record: dict[str, Any], now: float | None = None) -> str:
    """One line of what a step is doing: its phase while it sets up, then counts, metrics and ETA;
    e.g. `40/64 prompts · 231 tok/s · ETA 12s` or `step 5/8 · loss 0.412 · margin 0.93 · ETA 36s`."""
    now = time.time() if now is None else now
    if record.get("state") in ("done", "failed"):
        return record.get("summary") or str(record["state"])
    parts: list[str] = []
    done, total, unit = record.get("done"), record.get("total"), record.get("unit") or ""
    if record.get("phase"):
        started = next((t for t in (record.get("phase_started"), record.get("started")) if t is not None), now)
        parts.append(f"{record['phase']} ({fmt_duration(now - started)})")
    if done is not None and total:
        parts.append(f"step {done}/{total}" if unit == "steps" else f"{done}/{total} {unit}".rstrip())
    for name, value in (record.get("metrics") or {}).items():
        if value is not None:
            parts.append(_fmt_metric(name, value))
    eta = eta_seconds(record)
    if eta is not None and not record.get("phase") and record.get("state") == "running":
        parts.append(f"ETA {fmt_duration(eta)}")
    return " · ".join(parts) if parts else "starting"


def fraction(record: dict[str, Any]) -> float | None:
    """Share of the work done (None while unknown)."""
    done, total = record.get("done"), record.get("total")
    if done is None or not total:
        return None
    return max(0.0, min(1.0, done / total))


def read_progress(path: Path) -> dict[str, Any] | None:
    """A progress file's record, or None when it is absent or unreadable (never raises)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- writing


class Progress:
    """What one step reports while it runs. `enabled=False` (other ranks) makes every call a no-op."""

    def __init__(
        self,
        path: Path,
        step_key: str,
        *,
        unit: str = "",
        total: int | None = None,
        enabled: bool = True,
        echo: TextIO | None = None,
        clock: Callable[[], float] = time.time,
        write_interval: float = WRITE_INTERVAL,
        echo_interval: float = ECHO_INTERVAL,
        server: ProgressServer | None = None,
    ) -> None:
        self.path = Path(path)
        self.server = server
        self.enabled = enabled
        self.clock = clock
        self.write_interval = write_interval
        self.echo_interval = echo_interval
        self.echo = echo if echo is not None else sys.stderr
        now = clock()
        self._counting_since: float | None = None
        self._last_write = -1e18
        self._last_echo = now
        self.record: dict[str, Any] = {
            "step": step_key,
            "state": "running",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": now,
            "updated": now,
            "phase": None,
            "unit": unit,
            "done": None,
            "total": total,
            "rate": None,
            "metrics": {},
            "summary": None,
        }
        self._write(force=True)

    def phase(self, text: str | None) -> None:
        """Say what the step is doing before (or between) the counted work: `loading the model`."""
        self.record["phase"] = text
        self.record["phase_started"] = self.clock()
        self._write(force=True)

    def update(self, done: int, total: int | None = None, **metrics: Any) -> None:
        """Work done so far (and metrics to show: loss, tok/s, ...); written at most once a second."""
        now = self.clock()
        first = self._counting_since is None
        if first:
            self._counting_since = now
            self._done_at_start = done
            self.record["phase"] = None
        if total is not None:
            self.record["total"] = total
        self.record["done"] = done
        elapsed = now - self._counting_since
        counted = done - self._done_at_start
        self.record["rate"] = counted / elapsed if elapsed > 0 and counted > 0 else None
        self.record["metrics"].update(metrics)
        self._write(force=first)  # the end of the set-up shows at once
        if self.enabled and now - self._last_echo >= self.echo_interval:
            self._last_echo = now
            self._say(describe(self.record, now))

    def finish(self, summary: str, **metrics: Any) -> None:
        """The step's result in one line (the driver prints it); state becomes done."""
        self.record.update(state="done", phase=None, summary=summary)
        self.record["metrics"].update(metrics)
        if self.record.get("total") is not None and self.record.get("done") is not None:
            self.record["done"] = self.record["total"]
        self._write(force=True)

    def _say(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(f"progress {self.record['step']}: {text}", file=self.echo, flush=True)

    def _write(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self.server is not None:  # served fresh on every call: no file I/O behind it
            self.record["updated"] = now
            self.server.publish(self.record)
        if not force and now - self._last_write < self.write_interval:
            return
        self._last_write = now
        self.record["updated"] = now
        # progress is a courtesy: never fail a step over it (a full or read-only volume)
        with contextlib.suppress(OSError, SpinError):
            atomic.atomic_write_json(self.path, self.record)


def for_step(run_dir: Path, step: Step, *, unit: str = "", total: int | None = None, rank: int = 0) -> Progress:
    """The progress reporter of a step: a no-op on ranks other than 0 and outside a run
    directory (no spec.json there: the step itself says what is wrong). In a pod (where
    SPIN_PROGRESS_PORT is set) rank 0 also serves the record for the operator."""
    enabled = rank == 0 and (Path(run_dir) / layout.SPEC_FILE).exists()
    server = progress_server.shared_server() if enabled else None
    return Progress(progress_file(run_dir, step), step.key, unit=unit, total=total, enabled=enabled, server=server)


def train_callback(progress: Progress) -> Any:
    """A transformers `TrainerCallback` that reports steps done, loss and reward margin (rank 0),
    and the set-up phases `SpinDPOTrainer` announces through `on_phase`."""
    from transformers import TrainerCallback

    class TrainProgress(TrainerCallback):
        last: dict[str, Any] = {}
        t_start = 0.0

        def on_phase(self, text: str) -> None:
            progress.phase(text)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                self.t_start = time.perf_counter()
                progress.update(state.global_step, total=state.max_steps)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs and state.is_world_process_zero:
                self.last = {"loss": logs.get("loss"), "margin": logs.get("rewards/margins")}
                progress.update(state.global_step, total=state.max_steps, **self.last)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                per_step = (time.perf_counter() - self.t_start) / max(state.global_step, 1)
                progress.update(state.global_step, total=state.max_steps, **self.last, **{"s/step": per_step})

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                progress.phase("saving the checkpoint")

    return TrainProgress()
