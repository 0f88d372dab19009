"""evaluation.sftBaseline: the continued-SFT arm beside each iteration — its place in the plan and
the fingerprints, its TRL arguments and rows, the report's side-by-side table, panels and
one-sentence verdict, and a two-iteration run on the tiny model where the arm chains, takes as
many optimizer steps as SPIN and is scored by the evaluate step."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from spin_runtime import report
from spin_runtime.api.spec import SpinRun, SpinRunSpec
from spin_runtime.local import status_text
from spin_runtime.modeling import models
from spin_runtime.plan import hparams, layout, stages
from spin_runtime.plan.fingerprint import step_fingerprints
from spin_runtime.steps import trl_args
from spin_runtime.steps.sft import sft_rows
from spin_runtime.store import atomic, rundir
from tests.runtime.test_local import SPEC


def _spec(**evaluation: Any) -> SpinRunSpec:
    return SpinRunSpec.model_validate({"model": {"builtin": "tiny-random-llama"}, "iterations": 3,
                                       "storage": {"newClaim": {}}, "evaluation": evaluation})  # fmt: skip


# --------------------------------------------------------------------------- plan


def test_the_arm_is_a_step_between_train_and_evaluate_only_when_asked() -> None:
    names = [s.name for s in stages.steps_for_iteration(_spec(sftBaseline={"enabled": True}), 1)]
    assert names[-3:] == ["train", "sft", "evaluate"]
    assert "sft" not in [s.name for s in stages.all_steps(_spec())]


def test_the_arm_chains_from_its_own_previous_model_and_starts_where_spin_starts() -> None:
    spec = _spec(sftBaseline={"enabled": True, "learningRate": 2e-6})
    assert hparams.sft_start_model(spec, 0) == hparams.start_model(spec, 0)
    assert hparams.sft_start_model(spec, 2).run_path == layout.sft_model_dir(1)
    assert hparams.sft_learning_rate(spec, 1) == 2e-6
    assert hparams.sft_learning_rate(_spec(sftBaseline={"enabled": True}), 1) == hparams.hparams(spec, 1).learning_rate


def test_turning_the_arm_on_reruns_no_spin_step_and_its_learning_rate_reruns_only_the_arm_and_evaluation() -> None:
    off, on = step_fingerprints(_spec()), step_fingerprints(_spec(sftBaseline={"enabled": True}))
    for key, value in off.items():
        if not key.endswith("/evaluate"):
            assert on[key] == value, key
    slower = step_fingerprints(_spec(sftBaseline={"enabled": True, "learningRate": 1e-7}))
    changed = sorted(k for k in on if on[k] != slower[k])
    assert changed == sorted(f"it{k}/{s}" for k in range(3) for s in ("sft", "evaluate"))


# --------------------------------------------------------------------------- TRL


def test_the_arm_takes_the_iterations_training_arguments_with_its_own_learning_rate_and_no_preference_loss() -> None:
    from trl import SFTConfig

    spec = _spec(sftBaseline={"enabled": True, "learningRate": 3e-6})
    dpo = trl_args.dpo_config_kwargs(spec, hparams.hparams(spec, 0), on_gpu=False, output_dir="/tmp/x",
                                     attn_implementation="eager")  # fmt: skip
    kwargs = trl_args.sft_config_kwargs(dpo, hparams.sft_learning_rate(spec, 0))
    assert kwargs["learning_rate"] == 3e-6 and kwargs["completion_only_loss"] is True and kwargs["packing"] is False
    for key in ("beta", "loss_type", "precompute_ref_log_probs"):
        assert key not in kwargs
    for key in ("num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_type",
                "warmup_steps", "optim", "seed", "max_length", "max_steps"):  # fmt: skip
        assert kwargs[key] == dpo[key], key
    config = SFTConfig(**{k: v for k, v in kwargs.items() if k != "gradient_checkpointing"})
    assert config.learning_rate == 3e-6


def test_arm_rows_are_the_spin_rows_prompt_and_real_answer(tiny_model_dir: Path) -> None:
    tok = models.load_tokenizer(str(tiny_model_dir))
    spec = _spec(sftBaseline={"enabled": True})
    rows = [{"prompt": "What is 2+2?", "real": "4", "generated": "5"}, {"prompt": "Name a colour.", "real": "Red.",
                                                                         "generated": "Blue."}]  # fmt: skip
    out = sft_rows(rows, tok, spec)
    assert [r["completion"] for r in out] == [[{"role": "assistant", "content": "4"}],
                                              [{"role": "assistant", "content": "Red."}]]  # fmt: skip
    assert out[0]["prompt"][-1] == {"role": "user", "content": "What is 2+2?"}


# --------------------------------------------------------------------------- report


def _metrics(spin_em: float, sft_em: float, spin_logp: float = -5.0, sft_logp: float = -6.0) -> dict[int, dict[str, Any]]:
    return {0: {
        "train": {"steps": 12, "history": []},
        "eval": {"exact_match": spin_em, "logp_real": spin_logp, "opponent_logp_real": -8.0, "baseline_exact_match": 0.1,
                 "sft_exact_match": sft_em, "sft_logp_real": sft_logp, "sft_logp_generated": -9.0},
        "sft": {"summary": {"steps": 12, "samples": 40, "learning_rate": 1e-6, "final_loss": 1.5}},
    }}  # fmt: skip


def test_the_verdict_names_the_arm_ahead_and_by_how_much() -> None:
    assert report.arm_verdict(_metrics(0.61, 0.58)) == (
        "After iteration 0, SPIN is ahead of continued SFT at equal compute (12 optimizer steps in iteration 0) "
        "by 0.030 held-out exact match (0.610 vs 0.580)."
    )
    assert "continued SFT is ahead of SPIN" in report.arm_verdict(_metrics(0.5, 0.6))


def test_a_level_verdict_says_so_and_lets_the_next_metric_speak() -> None:
    verdict = report.arm_verdict(_metrics(0.5, 0.5, spin_logp=-5.0, sft_logp=-4.0))
    assert "are level on held-out exact match (0.500)" in verdict
    assert verdict.endswith("continued SFT is ahead of SPIN by 1.00 held-out log p(real answer) (-4.00 vs -5.00).")


def test_no_verdict_without_the_arm() -> None:
    metrics = _metrics(0.5, 0.5)
    del metrics[0]["sft"]
    metrics[0]["eval"] = {k: v for k, v in metrics[0]["eval"].items() if not k.startswith("sft_")}
    assert report.arm_verdict(metrics) is None and report.sft_arm(metrics) == {}


def test_each_heldout_panel_has_the_arm_beside_spin_from_the_same_start() -> None:
    metrics = _metrics(0.61, 0.58)
    assert report.arm_series(metrics, "exact_match") == (["start", "iter0"], [0.1, 0.58])
    assert report.arm_series(metrics, "logp_real") == (["start", "iter0"], [-8.0, -6.0])
    assert report.arm_series(metrics, "reward_margin") == ([], [])


# --------------------------------------------------------------------------- a run


@pytest.mark.slow
def test_a_run_with_the_arm_trains_it_beside_each_iteration_at_equal_steps_and_reports_both(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    doc = copy.deepcopy(SPEC)
    doc["spec"]["iterations"] = 2
    doc["spec"]["evaluation"] = {"sftBaseline": {"enabled": True, "learningRate": 2e-4}}
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "spin_runtime.cli", "run", str(spec_file), "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "iteration 1 · sft: done" in done.stdout

    run = rundir.load_run(run_dir)
    for k in (0, 1):
        assert rundir.is_done(run_dir, stages.Step(k, "sft"))
        assert (run_dir / layout.sft_model_dir(k) / "model.safetensors").exists()
        metrics = atomic.read_json(run_dir / layout.metrics_path(k))
        arm = metrics["sft"]["summary"]
        assert arm["steps"] == arm["spin_steps"] == metrics["train"]["summary"]["steps"] > 0
        assert arm["samples"] == metrics["train"]["summary"]["samples"]
        assert arm["learning_rate"] == 2e-4
        assert arm["start_model"] == ("builtin:tiny-random-llama" if k == 0 else f"<run>/{layout.sft_model_dir(0)}")
        assert metrics["eval"]["sft_logp_real"] is not None and "sft_exact_match" in metrics["eval"]
    # the arm's weights differ from SPIN's: it is its own chain
    assert (run_dir / layout.sft_model_dir(1) / "model.safetensors").read_bytes() != (
        run_dir / layout.model_dir(1) / "model.safetensors").read_bytes()

    summary = (run_dir / "report" / "summary.md").read_text()
    assert "| iter0 · SFT |" in summary and "| iter1 · SFT |" in summary
    verdict = report.arm_verdict(report.load_metrics(run_dir))
    assert verdict and verdict.startswith("After iteration 1, ") and verdict in summary
    assert verdict in status_text(run_dir)
    assert SpinRun.model_validate(run.model_dump()).spec.evaluation.sft_baseline.enabled
