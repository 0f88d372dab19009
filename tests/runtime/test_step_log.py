"""A step's output on the run volume as well as on stdout (SPIN_STEP_LOGS=1 in a cluster): what the
process and its children write, through to a traceback at exit, lands in its log file, copied
once however deep the processes nest, and the exit code is the step's own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from spin_runtime.launch import STEP_LOGS_ENV
from spin_runtime.plan.stages import Step
from spin_runtime.steps import step_log

REPO = Path(__file__).resolve().parents[2]

STEP = """
import subprocess, sys
from pathlib import Path
from spin_runtime.steps.step_log import keep_step_log
from spin_runtime.plan.stages import Step
path = keep_step_log(Path(sys.argv[1]), Step(0, "train"), int(sys.argv[2]))
print("to stdout", path)
print("to stderr", file=sys.stderr)
subprocess.run([sys.executable, "-c", "import os; print('child', os.environ.get('SPIN_STEP_LOG_ACTIVE'))"], check=True)
if sys.argv[3] == "raise":
    raise RuntimeError("the step broke")
sys.exit(int(sys.argv[3]))
"""


def _step(run_dir: Path, rank: int, how: str, logs: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop(step_log.ACTIVE_ENV, None)
    env.pop(STEP_LOGS_ENV, None)
    if logs:
        env[STEP_LOGS_ENV] = "1"
    return subprocess.run([sys.executable, "-c", STEP, str(run_dir), str(rank), how], env=env, capture_output=True,
                          text=True, timeout=60)


def test_a_step_keeps_its_and_its_childrens_output_on_the_volume_and_on_stdout(tmp_path: Path) -> None:
    done = _step(tmp_path, 0, "3")
    assert done.returncode == 3, "the exit code is the step's"
    log = (tmp_path / "iter-0" / "logs" / "train.log").read_text()
    assert log.startswith("# ") and "pid" in log.splitlines()[0]
    for line in ("to stdout", "to stderr", "child 1"):
        assert line in log, log
        assert line in done.stdout, "the pod's stdout still has it (kubectl logs)"
    assert log.count("child 1") == 1, "the child inherits the copy and does not make a second one"


def test_a_traceback_at_exit_reaches_the_log(tmp_path: Path) -> None:
    done = _step(tmp_path, 0, "raise")
    assert done.returncode == 1
    log = (tmp_path / "iter-0" / "logs" / "train.log").read_text()
    assert "RuntimeError: the step broke" in log and "Traceback" in log


def test_other_ranks_write_beside_rank_0_and_a_rerun_appends(tmp_path: Path) -> None:
    assert _step(tmp_path, 1, "0").returncode == 0
    assert _step(tmp_path, 1, "0").returncode == 0
    logs = tmp_path / "iter-0" / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["train.rank1.log"]
    assert (logs / "train.rank1.log").read_text().count("to stdout") == 2, "an attempt's log is kept by the next"
    assert step_log.log_path(tmp_path, Step(0, "generate", shard=1, shards=2), 0).name == "generate-1-of-2.log"


def test_without_the_operators_variable_nothing_is_copied(tmp_path: Path) -> None:
    done = _step(tmp_path, 0, "0", logs=False)
    assert done.returncode == 0 and "to stdout None" in done.stdout
    assert not (tmp_path / "iter-0").exists()
    assert step_log.wanted({STEP_LOGS_ENV: "1"}) and not step_log.wanted({})
    assert not step_log.wanted({STEP_LOGS_ENV: "1", step_log.ACTIVE_ENV: "1"})
