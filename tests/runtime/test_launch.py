"""Launcher command lines (torchrun / accelerate) and the multi-node wiring of `spin train`:
two torchrun launchers posing as two nodes train with the same per-step losses as one
process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from spin_runtime import launch
from spin_runtime.api.spec import Training
from spin_runtime.plan import layout, stages
from tests.runtime.train_helpers import (
    addition_rows,
    make_run,
    one_thread,  # noqa: F401 - fixture
    write_pairs,
)

STEP = ["spin", "train", "--run-dir", "/runs/r1", "--iteration", "2"]


def test_torchrun_argv_runs_the_cli_module_and_takes_node_rank_from_the_environment() -> None:
    argv = launch.torchrun_argv(4, 8, "r1-it2-train-0.r1-train", 29500, STEP)
    assert argv == [
        "spin", "torchrun",
        "--nnodes", "4",
        "--nproc_per_node", "8",
        "--master_addr", "r1-it2-train-0.r1-train",
        "--master_port", "29500",
        "--max_restarts", "0",
        "-m", "spin_runtime.cli", "train", "--run-dir", "/runs/r1", "--iteration", "2",
    ]  # fmt: skip
    assert not any("node_rank" in a or "node-rank" in a for a in argv)
    assert launch.NODE_RANK_ENV == "PET_NODE_RANK"



def test_training_argv_uses_torchrun_only_for_several_processes() -> None:
    single = Training(nodes=1, gpus_per_node=1)
    assert launch.training_argv(single, "head", STEP) == STEP
    cpu_nodes = Training(nodes=3, gpus_per_node=0)
    argv = launch.training_argv(cpu_nodes, "head", STEP)
    assert argv[argv.index("--nproc_per_node") + 1] == "1"
    assert argv[argv.index("--nnodes") + 1] == "3"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1, "h", 29500, STEP), "nnodes"),
        ((1, 0, "h", 29500, STEP), "nproc_per_node"),
        ((1, 1, "", 29500, STEP), "master address"),
        ((1, 1, "h", 70000, STEP), "master port"),
        ((1, 1, "h", 29500, ["python", "train.py"]), "must start with 'spin'"),
    ],
)
def test_bad_topology_is_refused_with_the_reason(args: tuple, message: str) -> None:
    with pytest.raises(launch.LaunchError, match=message):
        launch.torchrun_argv(*args)


# --------------------------------------------------------------------------- multi-node


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare(run_dir: Path, model_dir: Path, per_device: int) -> None:
    make_run(
        run_dir,
        model_dir,
        training={
            "perDeviceBatchSize": per_device,
            "maxSteps": 3,
            "lrScheduler": "constant",
            "warmupRatio": 0.0,
        },
        schedule=[{"learningRate": 1e-4, "beta": 0.5}],
    )
    write_pairs(run_dir, 0, "train", addition_rows(12, 0))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_two_nodes_over_torchrun_match_one_process_with_the_same_global_batch(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from spin_runtime.steps.train import run_train

    multi, single = tmp_path / "two-nodes", tmp_path / "one-process"
    _prepare(multi, tiny_model_dir, per_device=2)
    _prepare(single, tiny_model_dir, per_device=4)

    step = stages.Step(0, "train").argv(str(multi))
    argv = launch.torchrun_argv(2, 1, "127.0.0.1", _free_port(), step)
    assert argv[:2] == ["spin", "torchrun"]
    argv = [sys.executable, "-m", "spin_runtime.cli", *argv[1:]]  # through `spin torchrun`, as in pods
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    logs = [(tmp_path / f"node{r}.log").open("w") for r in (0, 1)]
    nodes = [
        subprocess.Popen(argv, env={**env, launch.NODE_RANK_ENV: str(r)}, stdout=logs[r], stderr=subprocess.STDOUT)
        for r in (0, 1)
    ]
    expected = run_train(single, 0)  # meanwhile, one process with the same global batch (4 pairs)
    codes = [p.wait(timeout=180) for p in nodes]
    for f in logs:
        f.close()
    assert codes == [0, 0], "\n".join((tmp_path / f"node{r}.log").read_text()[-3000:] for r in (0, 1))

    assert (multi / stages.Step(0, "train").marker).exists()
    assert (multi / layout.model_dir(0) / "model.safetensors").exists()
    got = json.loads((multi / layout.metrics_path(0)).read_text())["train"]
    assert got["summary"]["world_size"] == 2
    assert expected is not None
    losses = [h["loss"] for h in got["history"]]
    want = [h["loss"] for h in expected["history"]]
    assert len(losses) == 3
    assert losses == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert losses[-1] < losses[0], "the step-2/3 losses depend on the gradients averaged over both nodes"
    margins = [h["rewards/margins"] for h in got["history"]]
    assert margins == pytest.approx([h["rewards/margins"] for h in expected["history"]], rel=1e-3, abs=1e-5)
