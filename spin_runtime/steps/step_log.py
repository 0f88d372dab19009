"""A step's output kept on the run volume as well as on stdout: in a cluster the operator sets
SPIN_STEP_LOGS=1, and every `spin <step>` process then copies what it and its children (torchrun
workers, lm_eval) write to fds 1 and 2 into `iter-<k>/logs/<step>.log` (`.rank<r>.log` for the
other training ranks), so a step's log outlives its pod and `kubectl delete spinrun`. The local
driver writes that file itself and does not set the variable."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from pathlib import Path

from spin_runtime.launch import STEP_LOGS_ENV
from spin_runtime.plan.stages import Step
from spin_runtime.steps import step_progress
from spin_runtime.store import atomic

#: Set once a process copies its output, so that its children (which inherit the copied fds)
#: do not copy it a second time.
ACTIVE_ENV = "SPIN_STEP_LOG_ACTIVE"
#: How long the copy may still drain, at exit, what children left in the pipe.
DRAIN_SECONDS = 10.0


def log_path(run_dir: Path, step: Step, rank: int) -> Path:
    """Where a step's process keeps its output: the local driver's file for rank 0,
    `<step>.rank<r>.log` beside it for the other ranks."""
    path = step_progress.log_file(run_dir, step)
    return path if rank == 0 else path.with_name(f"{path.stem}.rank{rank}.log")


def wanted(env: os._Environ[str] | dict[str, str] | None = None) -> bool:
    """Whether this process should copy its output (asked for, and no parent does it already)."""
    env = os.environ if env is None else env
    return env.get(STEP_LOGS_ENV) == "1" and not env.get(ACTIVE_ENV)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def tee_output(path: Path) -> None:
    """From now until the process exits, fds 1 and 2 go to the original stdout and are appended
    to `path` (a header line first); at exit the copy drains before the process ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    original = os.dup(1)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    log = open(path, "ab")  # noqa: SIM115 - closed by the pump when the pipe ends
    log.write(f"# {atomic.now_iso()} pid {os.getpid()}: {' '.join(sys.argv)}\n".encode())
    log.flush()

    def pump() -> None:
        with log:
            while chunk := os.read(read_end, 65536):
                _write_all(original, chunk)
                log.write(chunk)
                log.flush()
        os.close(read_end)

    thread = threading.Thread(target=pump, name="step-log", daemon=True)
    thread.start()

    def drain() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(original, 1)  # our ends of the pipe close: the pump sees its end once children exit
        os.dup2(original, 2)
        thread.join(DRAIN_SECONDS)

    atexit.register(drain)
    os.environ[ACTIVE_ENV] = "1"


def keep_step_log(run_dir: Path, step: Step, rank: int) -> Path | None:
    """Start copying this process's output to its log on the run volume when the operator asked
    for it (SPIN_STEP_LOGS=1); the log's path, or None."""
    if not wanted():
        return None
    path = log_path(run_dir, step, rank)
    tee_output(path)
    return path
