"""`spin torchrun` (exit_relay.py): torchrun exits 1 whatever its workers exited with; through the
wrapper, a worker's deterministic code (bad data 65 here) reaches the pod, so the Job's
podFailurePolicy fails the step at once instead of retrying it (#20.5). Real torchrun, two workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spin_runtime import launch
from spin_runtime.errors import EXIT_BAD_DATA, EXIT_BAD_MODEL, EXIT_BAD_SPEC, EXIT_USAGE
from spin_runtime.exit_relay import EXIT_CODE_DIR_ENV, record_exit, relayed_code
from spin_runtime.plan import stages

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("torchrun", "workers", "expected"), [
    (0, [], 0),
    (1, [EXIT_BAD_DATA, EXIT_BAD_DATA], EXIT_BAD_DATA),
    (1, [1, EXIT_BAD_SPEC], EXIT_BAD_SPEC),
    (1, [EXIT_BAD_DATA, EXIT_BAD_SPEC, EXIT_BAD_MODEL], EXIT_BAD_SPEC),
    (1, [EXIT_USAGE, EXIT_BAD_MODEL], EXIT_BAD_MODEL),
    (1, [1, 137], 1),  # a crash, an OOM kill: retried as before
    (1, [], 1),
    (-15, [], 128 + 15),  # torchrun itself killed by SIGTERM
])
def test_relayed_code(torchrun: int, workers: list[int], expected: int) -> None:
    assert relayed_code(torchrun, workers) == expected


def test_a_worker_records_its_code_only_under_the_wrapper(tmp_path: Path) -> None:
    record_exit(EXIT_BAD_DATA, {})
    record_exit(0, {EXIT_CODE_DIR_ENV: str(tmp_path)})
    assert list(tmp_path.iterdir()) == []
    record_exit(EXIT_BAD_DATA, {EXIT_CODE_DIR_ENV: str(tmp_path)})
    assert [p.read_text() for p in tmp_path.iterdir()] == [str(EXIT_BAD_DATA)]


@pytest.fixture(scope="module")
def run_without_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory whose iteration 0 has no training data: `spin train` exits 65 (bad data)."""
    run_dir = tmp_path_factory.mktemp("run")
    subprocess.run([sys.executable, "-m", "spin_runtime.cli", "init-run", "--spec", str(REPO / "examples" / "spinrun-local.yaml"),
                    "--run-dir", str(run_dir)], check=True, capture_output=True)
    return run_dir


def _two_workers(run_dir: Path, through_spin: bool) -> subprocess.CompletedProcess[str]:
    argv = launch.standalone_argv(2, stages.Step(0, "train").argv(str(run_dir)))
    assert argv[:2] == ["spin", "torchrun"]
    cmd = ([sys.executable, "-m", "spin_runtime.cli", *argv[1:]] if through_spin
           else [sys.executable, "-m", "torch.distributed.run", *argv[2:]])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_alone_hides_the_workers_code(run_without_data: Path) -> None:
    """What the pods exited with before: 1, which the podFailurePolicy counts as a retry."""
    proc = _two_workers(run_without_data, through_spin=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "training data of iteration 0 not found" in proc.stderr


def test_spin_torchrun_exits_with_the_workers_bad_data_code(run_without_data: Path) -> None:
    proc = _two_workers(run_without_data, through_spin=True)
    assert proc.returncode == EXIT_BAD_DATA, proc.stderr[-2000:]
    assert f"a worker exited with {EXIT_BAD_DATA} (torchrun: 1)" in proc.stderr
