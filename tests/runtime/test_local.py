"""The local driver: one full iteration (2 generation shards → convert → train → evaluate) on
the tiny model through `spin run`, resume from markers, status and report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spin_runtime.local import status_text
from spin_runtime.plan import layout, stages
from spin_runtime.store import atomic, rundir

SPEC = {
    "apiVersion": "spin.dev/v1alpha1",
    "kind": "SpinRun",
    "metadata": {"name": "local-e2e"},
    "spec": {
        "model": {"builtin": "tiny-random-llama"},
        "dataset": {"builtin": {"name": "addition-3digit", "trainSize": 8, "testSize": 4}},
        "iterations": 1,
        "schedule": [{"learningRate": 1.0e-4, "beta": 0.1, "epochs": 1}],
        "generation": {"engine": "transformers", "maxNewTokens": 6, "shards": 2},
        "training": {
            "gpusPerNode": 0, "perDeviceBatchSize": 4, "maxLength": 64, "maxPromptLength": 48,
            "precision": "fp32", "gradientCheckpointing": False, "loggingSteps": 1,
        },
        "storage": {"newClaim": {}},
    },
}  # fmt: skip


def spin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spin_runtime.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_spin_run_does_one_full_iteration_then_resumes_without_redoing_work(tmp_path: Path, tiny_model_dir: Path):
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    run_dir = tmp_path / "run"

    first = spin("run", str(spec_file), "--run-dir", str(run_dir))
    assert first.returncode == 0, first.stderr[-3000:]
    run = rundir.load_run(run_dir)
    for step in stages.all_steps(run.spec):
        assert rundir.is_done(run_dir, step), step.key
    assert (run_dir / layout.done_path(0)).exists()
    assert (run_dir / layout.model_dir(0) / "model.safetensors").exists()
    metrics = atomic.read_json(run_dir / layout.metrics_path(0))
    assert metrics["train"]["history"] and "reward_margin" in metrics["eval"]
    assert (run_dir / "report" / "summary.md").exists() and (run_dir / "report" / "training.png").exists()
    assert "| iter0 |" in first.stdout

    weights = (run_dir / layout.model_dir(0) / "model.safetensors").read_bytes()
    again = spin("run", str(spec_file), "--run-dir", str(run_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done earlier, skipped") == len(stages.all_steps(run.spec))
    assert (run_dir / layout.model_dir(0) / "model.safetensors").read_bytes() == weights

    text = status_text(run_dir)
    assert "iteration 0: done" in text and "iter-0/model" in text

    # A changed learning rate is refused (naming the field and the way out); nothing is touched.
    changed = {**SPEC, "spec": {**SPEC["spec"], "schedule": [{"learningRate": 5.0e-5, "beta": 0.1, "epochs": 1}]}}
    spec_file.write_text(yaml.safe_dump(changed))
    refused = spin("run", str(spec_file), "--run-dir", str(run_dir))
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "spec.schedule[0].learningRate" in refused.stderr and "--rerun-changed" in refused.stderr
    assert "it0/train" in refused.stderr and "it0/convert" not in refused.stderr
    assert rundir.load_run(run_dir).spec.schedule[0].learning_rate == 1.0e-4
    assert (run_dir / layout.model_dir(0) / "model.safetensors").read_bytes() == weights

    # With --rerun-changed exactly train and what follows run again, and the report says so.
    rerun = spin("run", str(spec_file), "--run-dir", str(run_dir), "--rerun-changed")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stdout.count("done earlier, skipped") == 3  # two shards and convert
    assert atomic.read_json(run_dir / layout.metrics_path(0))["train"]["summary"]["learning_rate"] == 5.0e-5
    assert rundir.load_run(run_dir).spec.schedule[0].learning_rate == 5.0e-5


def test_status_of_a_fresh_run_lists_pending_steps(tmp_path: Path):
    from spin_runtime.api.spec import SpinRun

    rundir.init_run(tmp_path, SpinRun.model_validate(SPEC))
    text = status_text(tmp_path)
    assert "iteration 0: pending" in text and "generate-1-of-2" in text and "last checkpoint: none yet" in text


def test_failed_step_stops_the_run_with_its_exit_code_and_names_the_step(tmp_path: Path):
    bad = {**SPEC, "spec": {**SPEC["spec"], "model": {"path": str(tmp_path / "missing-model")}}}
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(yaml.safe_dump(bad))
    out = spin("run", str(spec_file), "--run-dir", str(tmp_path / "run"))
    assert out.returncode != 0
    assert "missing-model" in out.stderr and "generate-0-of-2: failed" in out.stderr
    assert not any((tmp_path / "run").rglob("*.done"))
