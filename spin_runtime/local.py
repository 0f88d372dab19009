"""The local driver: `spin run FILE` executes the plan's steps as processes on this machine,
in order, skipping steps whose markers exist, so a crashed or interrupted run resumes.

It runs exactly the command lines the operator puts into Kubernetes Jobs. Each step's full
output goes to its log file in the run directory (`iter-<k>/logs/<step>.log`); the console
shows one live line per running step, drawn from the progress file the step writes, and one
summary line per finished step (`--verbose` streams the steps' output too). On a machine with
G GPUs, generation shards run side by side, one per group of `tensorParallelSize` GPUs, and
training runs under torchrun across the GPUs the spec asks for; on CPU every step runs alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from spin_runtime import launch
from spin_runtime.api.spec import SpinRun, SpinRunSpec
from spin_runtime.api.status import TRAINING_STEPS
from spin_runtime.errors import SpinError
from spin_runtime.plan import layout, stages
from spin_runtime.plan.fingerprint import changed_fields
from spin_runtime.steps import step_progress
from spin_runtime.store import atomic, rundir

#: Seconds between two redraws of the live line on a terminal.
TTY_REFRESH = 0.5
#: Seconds between two plain progress lines when stdout is not a terminal (a pod log, a file).
PLAIN_INTERVAL = 60.0
#: Lines of a failed step's log shown on the console.
FAILURE_TAIL = 15

# --------------------------------------------------------------------------- scheduling (pure)


@dataclass(frozen=True)
class Launch:
    """One process to start: a step, the environment it adds (CUDA_VISIBLE_DEVICES) and the
    number of torchrun workers (0 = the step itself, no torchrun)."""

    step: stages.Step
    env: tuple[tuple[str, str], ...] = ()
    nproc: int = 0


def visible_gpu_ids(device_count: int, env: dict[str, str] | os._Environ[str] | None = None) -> list[str]:
    """The ids to put into CUDA_VISIBLE_DEVICES: the ones already visible (the user's own
    CUDA_VISIBLE_DEVICES, in order) or 0..G−1."""
    env = os.environ if env is None else env
    given = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    ids = given if given else [str(i) for i in range(device_count)]
    return ids[:device_count]


def generation_slots(spec: SpinRunSpec, gpu_ids: Sequence[str]) -> list[tuple[tuple[str, str], ...]]:
    """The environments generation shards run in at the same time: one per group of
    `tensorParallelSize` GPUs (at most `generation.parallelism` of them); a single slot with
    nothing added on CPU or when there are fewer GPUs than one group needs."""
    tp = spec.generation.tensor_parallel_size
    groups = len(gpu_ids) // tp
    if groups < 1:
        return [()]
    if spec.generation.parallelism is not None:
        groups = min(groups, spec.generation.parallelism)
    return [(("CUDA_VISIBLE_DEVICES", ",".join(gpu_ids[g * tp : (g + 1) * tp])),) for g in range(groups)]


def training_procs(spec: SpinRunSpec, device_count: int) -> int:
    """torchrun workers for local training: one per GPU the spec asks for (`gpusPerNode`, at most
    the GPUs present) when that is more than one, else 0 (the step runs on its own)."""
    wanted = spec.training.gpus_per_node
    n = min(wanted, device_count)
    return n if n > 1 else 0


class Proc(Protocol):
    """What the scheduler needs of a started process."""

    def poll(self) -> int | None: ...


def run_pool(
    items: Sequence[stages.Step],
    slots: Sequence[tuple[tuple[str, str], ...]],
    start: Callable[[Launch], Proc],
    tick: Callable[[], None] = lambda: None,
    finished: Callable[[Launch, int], None] = lambda launch, code: None,
    sleep: Callable[[float], None] = time.sleep,
    interval: float = TTY_REFRESH,
) -> int:
    """Run `items` with at most one process per slot at a time, a freed slot taking the next
    item; returns 0, or the first non-zero exit code (then no new item starts, the running
    ones finish). `tick` is called while waiting (progress display)."""
    pending = list(items)
    free = list(range(len(slots)))
    running: list[tuple[Launch, Proc, int]] = []
    failure = 0
    while pending or running:
        while pending and free and not failure:
            slot = free.pop(0)
            launch_ = Launch(pending.pop(0), slots[slot])
            running.append((launch_, start(launch_), slot))
        still: list[tuple[Launch, Proc, int]] = []
        for launch_, proc, slot in running:
            code = proc.poll()
            if code is None:
                still.append((launch_, proc, slot))
                continue
            free.append(slot)
            free.sort()
            finished(launch_, code)
            if code != 0 and not failure:
                failure = code
        freed = len(still) < len(running)
        running = still
        if failure and not running:
            break
        if running and not (freed and pending and not failure):
            tick()
            sleep(interval)
    return failure


def step_command(launch_: Launch, run_dir: Path) -> list[str]:
    """The process to start for a step: `spin <step> ...` through this Python, wrapped in
    `spin torchrun --standalone` when training runs on several local GPUs."""
    argv = launch_.step.argv(str(run_dir))
    if launch_.nproc > 1:
        argv = launch.standalone_argv(launch_.nproc, argv)
    return [sys.executable, *launch.module_args(argv)]


def _device_count() -> int:
    """CUDA devices visible here (0 without torch or a GPU)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install must not stop a CPU run
        return 0


# --------------------------------------------------------------------------- console


def _bar(frac: float | None, width: int = 20) -> str:
    if frac is None:
        return ""
    full = int(round(frac * width))
    return "▕" + "█" * full + "░" * (width - full) + "▏ "


class Console:
    """Writes the run's lines: on a terminal, one live line redrawn in place (cleared before
    every permanent line); elsewhere, plain lines at most every `PLAIN_INTERVAL` seconds."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None, tty: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self.lock = threading.Lock()
        self._live = ""
        self._last_plain = 0.0

    def _width(self) -> int:
        return max(40, shutil.get_terminal_size((100, 24)).columns - 1)

    def line(self, text: str, *, error: bool = False) -> None:
        """A permanent line (on stderr when `error`)."""
        with self.lock:
            if self.tty and self._live:
                self.out.write("\r\033[K")
                self.out.flush()
                self._live = ""  # the next tick draws the live line again, below this one
            stream = self.err if error else self.out
            stream.write(text + "\n")
            stream.flush()

    def live(self, text: str) -> None:
        """The running steps' progress: redrawn on a terminal, printed now and then elsewhere."""
        with self.lock:
            if self.tty:
                self._live = text
                self.out.write("\r\033[K" + text[: self._width()])
                self.out.flush()
                return
            now = time.monotonic()
            if text and now - self._last_plain >= PLAIN_INTERVAL:
                self._last_plain = now
                self.out.write(text + "\n")
                self.out.flush()

    def start_step(self) -> None:
        """A step begins: its first plain progress line waits a full interval."""
        self._last_plain = time.monotonic()

    def clear(self) -> None:
        with self.lock:
            if self.tty and self._live:
                self.out.write("\r\033[K")
                self.out.flush()
            self._live = ""


def live_text(
    labels: Sequence[str], records: Sequence[dict[str, Any] | None], now: float | None = None, bar: bool = True
) -> str:
    """The live line for the running steps: one step's label, bar (on a terminal) and progress,
    or for several shards their counts and rates added up (ETA = the slowest)."""
    now = time.time() if now is None else now
    draw = _bar if bar else (lambda frac: "")
    if not labels:
        return ""
    if len(labels) == 1:
        rec = records[0]
        if rec is None:
            return f"{labels[0]} … starting"
        return f"{labels[0]} {draw(step_progress.fraction(rec))}{step_progress.describe(rec, now)}"
    known = [r for r in records if r is not None]
    done = sum(r.get("done") or 0 for r in known)
    total = sum(r.get("total") or 0 for r in known)
    rate = sum((r.get("metrics") or {}).get("tok/s") or 0 for r in known)
    etas = [step_progress.eta_seconds(r) for r in known]
    parts = [f"{done}/{total} {known[0].get('unit') or ''}".rstrip()] if total else ["starting"]
    if rate:
        parts.append(f"{rate:.0f} tok/s")
    if etas and all(e is not None for e in etas):
        parts.append(f"ETA {step_progress.fmt_duration(max(e for e in etas if e is not None))}")
    frac = done / total if total else None
    return f"{len(labels)} shards running ({', '.join(labels)}) {draw(frac)}" + " · ".join(parts)


# --------------------------------------------------------------------------- running steps


@dataclass
class _Running:
    launch: Launch
    label: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float
    pump: threading.Thread | None = None

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None and self.pump is not None:
            self.pump.join()
        return code


def _tail(path: Path, n: int) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    lines = [ln.rsplit("\r", 1)[-1] for ln in text.splitlines()]
    return [ln for ln in lines if ln.strip()][-n:]


class StageRunner:
    """Starts the steps of one run as processes with their logs, and reports them."""

    def __init__(self, run: SpinRun, run_dir: Path, console: Console, verbose: bool, total: int) -> None:
        self.run = run
        self.run_dir = run_dir
        self.console = console
        self.verbose = verbose
        self.total = total
        self.labels: dict[str, str] = {}
        self.running: dict[str, _Running] = {}

    def label(self, step: stages.Step, n: int) -> str:
        text = f"[{n}/{self.total}] iteration {step.iteration} · {step_progress.step_stem(step)}"
        self.labels[step.key] = text
        return text

    def start(self, launch_: Launch) -> _Running:
        step = launch_.step
        log = step_progress.log_file(self.run_dir, step)
        log.parent.mkdir(parents=True, exist_ok=True)
        prog_file = step_progress.progress_file(self.run_dir, step)
        prog_file.unlink(missing_ok=True)
        argv = step_command(launch_, self.run_dir)
        env = {**os.environ, **dict(launch_.env), "PYTHONUNBUFFERED": "1"}
        handle = log.open("wb")
        extra = " ".join(f"{k}={v}" for k, v in launch_.env)
        handle.write(f"# {atomic.now_iso()} {extra + ' ' if extra else ''}{' '.join(argv)}\n".encode())
        handle.flush()
        self.console.start_step()
        if self.verbose:
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            prefix = f"[{step.key}] " if len(self.running) or step.name == "generate" else ""
            pump = threading.Thread(target=self._pump, args=(proc, handle, prefix), daemon=True)
            pump.start()
        else:
            proc = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            handle.close()
            pump = None
        running = _Running(launch_, self.labels[step.key], proc, log, time.monotonic(), pump)
        self.running[step.key] = running
        return running

    def _pump(self, proc: subprocess.Popen[bytes], handle: IO[bytes], prefix: str) -> None:
        assert proc.stdout is not None
        with handle:
            for raw in iter(proc.stdout.readline, b""):
                handle.write(raw)
                handle.flush()
                self.console.line(prefix + raw.decode("utf-8", errors="replace").rstrip("\n"))

    def tick(self) -> None:
        runs = list(self.running.values())
        records = [step_progress.read_progress(step_progress.progress_file(self.run_dir, r.launch.step)) for r in runs]
        if len(runs) == 1:
            self.console.live(live_text([runs[0].label], records, bar=self.console.tty))
        else:
            names = [step_progress.step_stem(r.launch.step).replace("generate-", "") for r in runs]
            self.console.live(live_text(names, records, bar=self.console.tty))

    def finished(self, launch_: Launch, code: int) -> None:
        step = launch_.step
        r = self.running.pop(step.key)
        seconds = time.monotonic() - r.started
        record = step_progress.read_progress(step_progress.progress_file(self.run_dir, step)) or {}
        if code == 0:
            summary = record.get("summary")
            self.console.line(
                f"{r.label}: done in {step_progress.fmt_duration(seconds)}" + (f" · {summary}" if summary else "")
            )
            return
        self._mark_failed(step, record, code, r.log)
        self.console.clear()
        if code < 0 or code == 130:
            return
        self.console.line(
            f"{r.label}: failed (exit {code}) after {step_progress.fmt_duration(seconds)}; log: {r.log}", error=True
        )
        if not self.verbose:
            for ln in _tail(r.log, FAILURE_TAIL):
                self.console.line(f"    {ln}", error=True)
        self.console.line("fix the problem and rerun `spin run` with the same --run-dir to resume from this step", error=True)

    def _mark_failed(self, step: stages.Step, record: dict[str, Any], code: int, log: Path) -> None:
        record = {**record, "step": step.key, "state": "failed", "exit_code": code, "updated": time.time(),
                  "log": str(log.relative_to(self.run_dir))}  # fmt: skip
        with contextlib.suppress(OSError, SpinError):
            atomic.atomic_write_json(step_progress.progress_file(self.run_dir, step), record)


# --------------------------------------------------------------------------- the run


def adopt_run_dir(run: SpinRun, run_dir: Path, rerun_changed: bool = False, say: Callable[[str], None] = print) -> SpinRun:
    """The run as it will be stored in `run_dir`, with the uid of the run already there (or a
    new one). A run directory of another run is refused; so is a spec whose changes would
    invalidate finished steps, unless `rerun_changed` (then those steps and the ones after
    them run again). Cluster-only or cosmetic changes are taken as they are."""
    if not rundir.spec_path(run_dir).exists():
        return rundir.with_uid(run)
    old = rundir.load_run(run_dir)
    if old.metadata.name != run.metadata.name:
        raise SpinError(
            f"{run_dir} holds run {old.metadata.name!r}, not {run.metadata.name!r}: "
            "give this run its own --run-dir"
        )
    new = rundir.with_uid(run, rundir.run_uid(old) or None)
    stale = [
        s for s in stages.all_steps(new.spec)
        if (run_dir / s.marker).exists() and not rundir.marker_state(run_dir, new, s).done
        and rundir.is_done(run_dir, s, old)
    ]
    if not stale:
        return new
    fields = changed_fields(old.spec.dump(), new.spec.dump())
    shown = ", ".join(fields[:8]) + (f" (+{len(fields) - 8} more)" if len(fields) > 8 else "")
    steps = ", ".join(s.key for s in stale[:6]) + (f" (+{len(stale) - 6} more)" if len(stale) > 6 else "")
    if not rerun_changed:
        raise SpinError(
            f"the spec changed since this run directory's steps ran ({shown}); {len(stale)} finished step(s) "
            f"depend on it: {steps}. Nothing was changed. Use a new --run-dir to keep both runs, or pass "
            "--rerun-changed to run those steps again here (their outputs will be replaced)"
        )
    say(f"spec changed ({shown}): running {len(stale)} finished step(s) again: {steps}")
    return new


def run_local(
    run: SpinRun, run_dir: Path, rerun_changed: bool = False, verbose: bool = False, console: Console | None = None
) -> int:
    """Run (or resume) a SpinRun in `run_dir`; returns the process exit code."""
    console = console or Console()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = adopt_run_dir(run, run_dir, rerun_changed, say=console.line)
    rundir.init_run(run_dir, run)
    steps = stages.all_steps(run.spec)
    devices = _device_count()
    gpu_ids = visible_gpu_ids(devices)
    started = time.monotonic()
    done_before = sum(rundir.is_done(run_dir, s, run) for s in steps)
    where = f"{devices} GPU{'s' if devices != 1 else ''}" if devices else "CPU"
    console.line(
        f"spin run {run.metadata.name}: {len(steps)} steps in {run_dir} on {where}"
        + (f" ({done_before} already done, resuming)" if done_before else "")
        + ("" if verbose else f"; each step's output goes to {run_dir}/iter-<k>/logs/<step>.log")
    )
    runner = StageRunner(run, run_dir, console, verbose, len(steps))
    n = 0
    try:
        for stage in stages.run_stages(run.spec):
            todo: list[stages.Step] = []
            for step in stage.steps:
                n += 1
                label = runner.label(step, n)
                if rundir.is_done(run_dir, step, run):
                    console.line(f"{label}: done earlier, skipped")
                else:
                    todo.append(step)
            if not todo:
                continue
            if stage.name == "generate":
                slots = generation_slots(run.spec, gpu_ids)
                code = run_pool(todo, slots, runner.start, runner.tick, runner.finished)
            else:
                nproc = training_procs(run.spec, devices) if stage.name in TRAINING_STEPS else 0
                code = run_pool(todo, [()], lambda la, nproc=nproc: runner.start(Launch(la.step, la.env, nproc)),
                                runner.tick, runner.finished)  # fmt: skip
            if code != 0:
                return code
    except KeyboardInterrupt:
        for r in list(runner.running.values()):
            r.proc.wait()
        console.clear()
        console.line(
            "\ninterrupted: finished steps keep their markers; rerun `spin run` with the same --run-dir to resume",
            error=True,
        )
        return 130

    from spin_runtime.report import summary_table, write_report

    report = write_report(run_dir)
    console.line(f"run complete in {step_progress.fmt_duration(time.monotonic() - started)}; report: {report.parent / 'index.html'}")
    console.line(summary_table(run_dir))
    return 0


# --------------------------------------------------------------------------- status


def _alive(record: dict[str, Any]) -> bool | None:
    """Whether the process that wrote a progress record still runs (None: not on this machine)."""
    import socket

    if record.get("host") != socket.gethostname() or not record.get("pid"):
        return None
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, ValueError):
        return True
    return True


def progress_lines(run_dir: Path, steps: Sequence[stages.Step], now: float | None = None) -> list[str]:
    """What the unfinished steps' progress files say: running (with their progress), failed
    (with the exit code and log), or stopped without a word (the process is gone)."""
    now = time.time() if now is None else now
    out: list[str] = []
    for step in steps:
        if rundir.is_done(run_dir, step):
            continue
        rec = step_progress.read_progress(step_progress.progress_file(run_dir, step))
        if rec is None:
            continue
        age = step_progress.fmt_duration(now - float(rec.get("updated") or now))
        if rec.get("state") == "failed":
            out.append(f"  failed: {step.key} (exit {rec.get('exit_code')}), log: {rec.get('log') or '?'}")
        elif rec.get("state") == "running":
            alive = _alive(rec)
            note = "; its process is gone (interrupted?)" if alive is False else ""
            out.append(f"  running: {step.key} — {step_progress.describe(rec, now)} (updated {age} ago{note})")
    return out


def status_text(run_dir: Path) -> str:
    """Where a run directory stands: per iteration, which steps are done; the running step's
    progress."""
    run_dir = Path(run_dir)
    run = rundir.load_run(run_dir)
    lines = [f"run {run.metadata.name} in {run_dir}"]
    last_ckpt = None
    for k in stages.iterations(run.spec):
        steps = stages.steps_for_iteration(run.spec, k)
        done = [s for s in steps if rundir.is_done(run_dir, s)]
        state = "done" if len(done) == len(steps) else ("in progress" if done else "pending")
        names = ", ".join(
            f"{s.key.split('/', 1)[1]}{' ✓' if rundir.is_done(run_dir, s) else ''}" for s in steps
        )
        lines.append(f"  iteration {k}: {state:<11} {names}")
        if any(s.name == "train" for s in done):
            last_ckpt = run_dir / layout.model_dir(k)
    lines += progress_lines(run_dir, stages.all_steps(run.spec))
    lines.append(f"  last checkpoint: {last_ckpt or 'none yet'}")
    if run.spec.evaluation.sft_baseline.enabled:
        from spin_runtime.report import arm_verdict, load_metrics

        lines.append(f"  {arm_verdict(load_metrics(run_dir)) or 'SPIN vs continued SFT: no iteration has scored both yet'}")
    return "\n".join(lines)
