"""`spin init-run`: copy the spec a cluster pod was given (a mounted ConfigMap) into the run
directory, so every step reads the same `spec.json` as with the local runner.

The operator runs it as the init container of every step's pod; it is idempotent (the spec
is replaced atomically, outputs are never touched).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from spin_runtime.api.load import load_spinrun
from spin_runtime.api.spec import SpinRun
from spin_runtime.errors import SpinError
from spin_runtime.launch import RUN_UID_ENV
from spin_runtime.store import rundir
from spin_runtime.store.atomic import write_error


def init_from_file(spec_file: Path, run_dir: Path) -> SpinRun:
    """Validate the SpinRun stored in `spec_file` (JSON or YAML) strictly, as `spin validate`
    does, and store it as `<run_dir>/spec.json` with the run's uid ($SPIN_RUN_UID, set by the
    operator, else the uid already stored); returns the run."""
    path = Path(spec_file)
    if not path.is_file():
        raise SpinError(f"{path}: spec file not found; mount the run's ConfigMap there or fix --spec")
    run = load_spinrun(path)  # a SpecError (exit 2) names the file and every problem
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(Path(run_dir), e) from e
    uid = os.environ.get(RUN_UID_ENV) or _stored_uid(Path(run_dir))
    if uid:
        run = rundir.with_uid(run, uid)
    rundir.init_run(Path(run_dir), run)
    return run


def _stored_uid(run_dir: Path) -> str:
    """The uid of the spec already stored in the run directory, if any."""
    if not rundir.spec_path(run_dir).is_file():
        return ""
    try:
        return rundir.run_uid(rundir.load_run(run_dir))
    except SpinError:
        return ""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Register `spin init-run` on the `spin` CLI's subparsers."""
    p = sub.add_parser("init-run", help="store a SpinRun spec file as <run-dir>/spec.json (cluster init step)")
    p.add_argument("--spec", required=True, help="SpinRun file (JSON or YAML), e.g. /etc/spin/spec.json")
    p.add_argument("--run-dir", required=True, help="run directory to initialise")
    p.set_defaults(func=_cmd)
    return p


def _cmd(args: argparse.Namespace) -> int:
    run = init_from_file(Path(args.spec), Path(args.run_dir))
    print(f"{args.run_dir}: spec of {run.metadata.name} stored")
    return 0
