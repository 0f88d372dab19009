"""benchmarks/gpu_check.py --dry-run: every section runs on CPU with tiny shapes, against its baseline, and records figures or a stated reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ("matmul", "train", "generate", "zero3", "memory")

pytestmark = pytest.mark.slow


def _run(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--work", str(out / "work"), *args],
                          capture_output=True, text=True, timeout=400, env=env, cwd=REPO)  # fmt: skip


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One whole dry run (all sections in this process's child, tiny random Llama, CPU)."""
    out = tmp_path_factory.mktemp("gpu-check")
    done = _run(out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_every_section_finished_and_the_run_names_its_machine(dry_run: tuple[dict[str, Any], str]) -> None:
    results, _ = dry_run
    assert results["dry_run"] is True
    assert {n: s["status"] for n, s in results["sections"].items()} == dict.fromkeys(SECTIONS, "ok")
    env = results["environment"]
    assert env["device"] == "cpu" and env["torch"] and env["transformers"] and env["trl"]
    assert "deepspeed" in env and "cuda" in env
    assert results["sections"]["matmul"]["tflops_mean"] > 0


def test_training_compares_trl_defaults_with_spin_train_fast_head_off_and_on(dry_run: tuple[dict[str, Any], str]) -> None:
    train = dry_run[0]["sections"]["train"]
    plan = dry_run[0]["plan"]
    assert len(train["cases"]) == len(plan["train_cases"])
    for case in train["cases"]:
        runs = case["runs"]
        assert set(runs) == {"trl-default", "spin-fast-off", "spin-fast-on"}
        for r in runs.values():
            assert r["status"] == "ok", r
            assert r["tokens_per_second"] > 0 and r["model_tflops"] > 0 and r["mfu_measured"] > 0
            assert len(r["losses"]) == len(r["step_seconds"]) == plan["train_steps"]
        assert runs["trl-default"]["live_reference"] and runs["trl-default"]["gradient_checkpointing"]
        assert not runs["spin-fast-off"]["fast_head"] and runs["spin-fast-on"]["fast_head"]
        assert runs["spin-fast-off"]["fast_head_as_shipped"] is True, "on CPU spin train ships with the fast head on"
        # fp32 on CPU: the three configurations train identically (TRL's and spinrun's heads agree to 1e-5)
        assert case["losses"]["tolerance"] == 1e-5 and case["losses"]["losses_equal"] is True, case["losses"]
    verdict = train["fast_path"]
    assert verdict["device"] == "cpu" and verdict["verdict"] in ("on", "off", "mixed")
    assert len(verdict["cases"]) == len(train["cases"]) and all(c["losses_equal"] for c in verdict["cases"])


def test_generation_engine_matches_hf_generate_greedy_texts(dry_run: tuple[dict[str, Any], str]) -> None:
    gen = dry_run[0]["sections"]["generate"]
    assert gen["baseline"]["batch"] == 8 and gen["baseline"]["tokens_per_second"] > 0
    assert [e["batch"] for e in gen["engine"]] == dry_run[0]["plan"]["gen_batches"]
    for e in gen["engine"]:
        assert e["status"] == "ok" and e["tokens_per_second"] > 0 and e["x_baseline"] > 0
        assert e["identical_texts"] == e["compared"] == gen["baseline_prompts"], "fp32 greedy texts are the same"


def test_zero3_section_kills_resumes_with_equal_losses_and_reloads_the_model(dry_run: tuple[dict[str, Any], str]) -> None:
    z = dry_run[0]["sections"]["zero3"]
    assert all(z["config"]["checks"].values()), z["config"]["checks"]
    assert z["config"]["deepspeed_json"]["zero_optimization"]["stage"] == 3
    assert z["attempts"]["whole"]["returncode"] == 0 and z["attempts"]["resume"]["returncode"] == 0
    assert z["attempts"]["cut"]["killed"] is True and z["attempts"]["cut"]["returncode"] == -9
    assert any(c["complete"] for c in z["checkpoints_at_kill"])
    rv = z["resume"]
    assert rv["killed"] and rv["paused_at_step"] == z["kill_after_step"]
    # killed at the end of a step, before that step's own save: the newest complete checkpoint is the one before
    assert rv["resumed_from_step"] == (z["kill_after_step"] - 1) // z["save_steps"] * z["save_steps"]
    assert rv["losses_equal"] is True and len(rv["losses_resumed"]) == z["steps"]
    assert z["saved_model"]["reloaded"] and z["saved_model"]["logits_finite"]
    assert z["saved_model"]["max_weight_diff_vs_whole"] <= 1e-6
    ex = z["exercised"]
    assert "SIGKILL of the training process mid-iteration" in ex["exercised"]
    if not z["deepspeed"]["used"]:  # said plainly what the CPU run could not do
        assert any("DeepSpeed ZeRO-3 training" in m and "not run" in m for m in ex["not_exercised"])


def test_memory_switches_train_identically(dry_run: tuple[dict[str, Any], str]) -> None:
    mem = dry_run[0]["sections"]["memory"]
    assert set(mem["runs"]) == {"ckpt-on/live-ref", "ckpt-off/live-ref", "ckpt-on/precomputed-ref", "ckpt-off/precomputed-ref"}
    for name, r in mem["runs"].items():
        assert r["status"] == "ok" and r["tokens_per_second"] > 0, (name, r)
        assert r["gradient_checkpointing"] is name.startswith("ckpt-on")
        assert r["live_reference"] is name.endswith("live-ref")
    assert mem["losses"]["losses_equal"] is True, mem["losses"]


def test_markdown_reports_every_section(dry_run: tuple[dict[str, Any], str]) -> None:
    md = dry_run[1]
    assert "DRY RUN" in md and "torch" in md and "transformers" in md
    for heading in ("## Measured matmul", "## 1. Training step", "## 2. Generation", "## 3. `spin train` under DeepSpeed ZeRO-3",
                    "## 4. Gradient checkpointing"):  # fmt: skip
        assert heading in md
    assert "Losses equal to TRL's step by step" in md and "**True**" in md
    assert "**Fast path (SpinDPOTrainer's compact head) on cpu:" in md
    assert "identical greedy texts" in md and "Resume: killed True" in md


def test_an_isolated_section_runs_in_its_own_process(tmp_path: Path) -> None:
    done = _run(tmp_path, "--sections", "matmul", "--isolate", "yes")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["sections"]) == ["matmul"]
    assert results["sections"]["matmul"]["status"] == "ok" and results["sections"]["matmul"]["seconds"] > 0
