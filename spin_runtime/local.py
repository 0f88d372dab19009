"""The local driver: `spin run FILE` executes the plan's steps as processes on this machine,
in order, skipping steps whose markers exist, so a crashed or interrupted run resumes.

It runs exactly the command lines the operator puts into Kubernetes Jobs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from spin_runtime import launch
from spin_runtime.api.spec import SpinRun
from spin_runtime.errors import SpinError
from spin_runtime.plan import layout, stages
from spin_runtime.plan.fingerprint import changed_fields
from spin_runtime.store import rundir


def step_command(step: stages.Step, run_dir: Path, spec_gpus: int = 0) -> list[str]:
    """The process to start for a step: `spin <step> ...` through this Python, wrapped in
    `torchrun --standalone` when training should use several local GPUs."""
    argv = step.argv(str(run_dir))
    if step.name == "train" and spec_gpus > 1:
        launcher = launch.standalone_argv(spec_gpus, argv)
        return [sys.executable, "-m", "torch.distributed.run", *launcher[1:]]
    return [sys.executable, *launch.module_args(argv)]


def _local_gpus(run: SpinRun) -> int:
    wanted = run.spec.training.gpus_per_node
    if wanted <= 1:
        return 0
    try:
        import torch

        return min(wanted, torch.cuda.device_count())
    except ImportError:
        return 0


def _fmt_seconds(s: float) -> str:
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def _run_step(step: stages.Step, run_dir: Path, gpus: int, label: str) -> int:
    """Run one step as a process; its exit code (130 when interrupted)."""
    print(f"{label} ...", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(step_command(step, run_dir, gpus), env=os.environ.copy())
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.wait()
        print(f"\ninterrupted during {step.key}: finished steps keep their markers; "
              f"rerun `spin run` with the same --run-dir to resume", file=sys.stderr)
        return 130
    if code != 0:
        print(f"{label}: failed (exit {code}); fix the problem and rerun to resume from this step", file=sys.stderr)
        return code
    print(f"{label}: done in {_fmt_seconds(time.monotonic() - t0)}", flush=True)
    return 0


def adopt_run_dir(run: SpinRun, run_dir: Path, rerun_changed: bool = False) -> SpinRun:
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
    print(f"spec changed ({shown}): running {len(stale)} finished step(s) again: {steps}", flush=True)
    return new


def run_local(run: SpinRun, run_dir: Path, rerun_changed: bool = False) -> int:
    """Run (or resume) a SpinRun in `run_dir`; returns the process exit code."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = adopt_run_dir(run, run_dir, rerun_changed)
    rundir.init_run(run_dir, run)
    steps = stages.all_steps(run.spec)
    gpus = _local_gpus(run)
    started = time.monotonic()
    done_before = sum(rundir.is_done(run_dir, s, run) for s in steps)
    print(f"spin run {run.metadata.name}: {len(steps)} steps in {run_dir}"
          + (f" ({done_before} already done, resuming)" if done_before else ""), flush=True)
    n = 0
    for stage in stages.run_stages(run.spec):
        for step in stage.steps:
            n += 1
            label = f"[{n}/{len(steps)}] iteration {step.iteration} · {step.key.split('/', 1)[1]}"
            if rundir.is_done(run_dir, step, run):
                print(f"{label}: done earlier, skipped", flush=True)
                continue
            code = _run_step(step, run_dir, gpus, label)
            if code != 0:
                return code

    from spin_runtime.report import summary_table, write_report

    report = write_report(run_dir)
    print(f"\nrun complete in {_fmt_seconds(time.monotonic() - started)}; report: {report}")
    print(summary_table(run_dir))
    return 0


def status_text(run_dir: Path) -> str:
    """Where a run directory stands: per iteration, which steps are done."""
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
    lines.append(f"  last checkpoint: {last_ckpt or 'none yet'}")
    return "\n".join(lines)
