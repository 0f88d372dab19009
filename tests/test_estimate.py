"""`spin plan`'s estimate: parameter counts, prompt and token counts, optimizer steps and GPU-hours
from the stated assumptions, and the assumptions printed beside the numbers. No download."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from spin_runtime.api.spec import SpinRunSpec
from spin_runtime.plan import estimate as est

SMOLLM2_135M = {
    "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
    "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True,
}  # fmt: skip
MISTRAL_7B = {
    "vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False,
}  # fmt: skip


def spec(**kw) -> SpinRunSpec:
    return SpinRunSpec.model_validate(kw)


def test_parameter_count_from_config_matches_the_published_sizes() -> None:
    assert est.params_from_config(SMOLLM2_135M) == 134_515_008
    assert est.params_from_config(MISTRAL_7B) == 7_241_732_096 == est.KNOWN_PARAMS["huggingfaceh4/zephyr-7b-sft-full"]
    assert est.params_from_config({"n_embd": 768}) is None, "not a Llama-style config"
    assert est.params_from_config({**MISTRAL_7B, "num_local_experts": 8}) is None, "mixtures of experts are not counted"


def test_hub_models_get_n_from_the_table_or_the_name_and_say_which() -> None:
    known = est.params_from_name("HuggingFaceH4/zephyr-7b-sft-full")
    assert known.n == 7_241_732_096 and "known-model table" in known.source
    guessed = est.params_from_name("someone/my-llama-13B-chat")
    assert guessed.n == 13_000_000_000 and "guessed from the name" in guessed.source and "--params" in guessed.source
    assert est.params_from_name("someone/SmolThing-360M").n == 360_000_000
    unknown = est.params_from_name("someone/mystery-model")
    assert unknown.n is None and "--params" in unknown.source


def test_prompt_counts_are_exact_for_builtin_tasks_and_bounds_for_hub_data() -> None:
    assert est.prompt_counts(spec(dataset={"builtin": {"trainSize": 64, "testSize": 32}})) == est.PromptCounts(64, 32, True)
    hub = est.prompt_counts(spec(dataset={"hub": "HuggingFaceH4/ultrachat_200k", "maxSamples": 50000, "testSize": 500}))
    assert hub == est.PromptCounts(50000, 500, False)


def test_optimizer_steps_count_as_the_hf_trainer_does() -> None:
    t = spec(training={"perDeviceBatchSize": 8, "gpusPerNode": 8, "gradientAccumulationSteps": 1}).training
    assert est.steps_per_epoch(50_000, t) == math.ceil(50_000 / 64) == 782
    assert est.optimizer_steps(50_000, t, 2) == 1564
    t2 = spec(training={"perDeviceBatchSize": 2, "gpusPerNode": 0, "gradientAccumulationSteps": 3}).training
    assert est.steps_per_epoch(13, t2) == math.ceil(math.ceil(13 / 2) / 3) == 3, "one CPU process; partial accumulation counts"
    assert est.optimizer_steps(13, t2, 1.5) == 5
    assert est.optimizer_steps(13, spec(training={"maxSteps": 7}).training, 2) == 7


def test_training_flops_are_6n_plus_2n_per_token_and_the_opponent_once_when_precomputed() -> None:
    assert est.training_flops(1000, 10, epochs=2, precompute_ref=False, lora=False) == 1000 * 10 * (6 * 2 + 2 * 2)
    assert est.training_flops(1000, 10, epochs=2, precompute_ref=True, lora=False) == 1000 * 10 * (6 * 2 + 2)
    assert est.training_flops(1000, 10, epochs=1, precompute_ref=False, lora=True) == 1000 * 10 * (4 + 2)
    assert est.training_gpu_hours(3600 * 1e12, peak_flops=2e12, mfu=0.5) == pytest.approx(1.0)


def test_generation_throughput_scales_with_model_size_within_a_bound() -> None:
    assert est.engine_tokens_per_s("A100", 7e9, "vllm") == pytest.approx(2500)
    assert est.engine_tokens_per_s("A100", 14e9, "vllm") == pytest.approx(1250)
    assert est.engine_tokens_per_s("A100", 1e8, "vllm") == pytest.approx(2500 * est.MAX_THROUGHPUT_SCALE)
    assert est.engine_tokens_per_s("A100", 7e9, "transformers") == pytest.approx(2500 * est.TRANSFORMERS_ENGINE_FACTOR)
    assert est.engine_tokens_per_s("A100", None, "vllm") is None
    assert est.engine_tokens_per_s("A100", None, "vllm", override=100) == 100
    assert est.generation_gpu_hours(3600 * 100, 100, gpus_per_engine=2) == pytest.approx(2.0)


def _paper() -> SpinRunSpec:
    return spec(
        model={"hub": "HuggingFaceH4/zephyr-7b-sft-full"},
        dataset={"hub": "HuggingFaceH4/ultrachat_200k", "maxSamples": 50000, "testSize": 500},
        generation={"shards": 8, "maxNewTokens": 256},
        training={"gpusPerNode": 8, "perDeviceBatchSize": 8, "maxLength": 1024, "maxPromptLength": 512},
    )


def test_paper_run_estimate_upper_bounds_and_gpu_hours() -> None:
    s = _paper()
    a = est.Assumptions("H100", est.params_from_name(s.model.hub or ""))
    run = est.estimate_run(s, a)
    it0, it1 = run.iterations[0], run.iterations[1]
    assert it0.prompts == 50_500 and it0.gen_tokens_bound == 50_500 * 256
    assert it0.pairs == 50_000 and it1.pairs == 100_000, "iteration 1 trains on syn(0) + syn(1)"
    assert est.pair_tokens_bound(s) == 1024 + (512 + 256 + est.TEMPLATE_TOKENS)
    assert it0.train_tokens_bound == 50_000 * est.pair_tokens_bound(s)
    assert it0.steps == 1564
    n = 7_241_732_096
    flops = it0.train_tokens_bound * n * (6 * 2 + 2 * 2)
    assert it0.train_gpu_hours == pytest.approx(flops / (989e12 * est.DEFAULT_MFU) / 3600)
    tps = 5000 * 7e9 / n
    assert it0.gen_gpu_hours == pytest.approx(it0.gen_tokens_bound / tps / 3600)
    assert run.total("train_gpu_hours") == pytest.approx(sum(i.train_gpu_hours for i in run.iterations))


def test_select_epoch_n_counts_the_steps_and_gpu_hours_of_n_epochs_only() -> None:
    """The paper's reading (epoch 2 of a 6-epoch schedule) trains 2 epochs, not 6."""
    six = [{"learningRate": 5e-7, "epochs": 6}]
    a = est.Assumptions("H100", est.params_from_name("HuggingFaceH4/zephyr-7b-sft-full"))
    base = _paper().dump()
    all6 = est.estimate_run(spec(**{**base, "schedule": six}), a).iterations[0]
    base["training"]["selectEpoch"] = 2
    two = est.estimate_run(spec(**{**base, "schedule": six}), a).iterations[0]
    per_epoch = est.steps_per_epoch(50_000, _paper().training)
    assert (all6.steps, two.steps) == (6 * per_epoch, 2 * per_epoch)
    assert two.train_gpu_hours == pytest.approx(all6.train_gpu_hours / 3)
    assert est.epochs_trained(spec(training={"selectEpoch": 2}, schedule=six).training, 6) == 2


def test_measured_tokens_replace_the_bounds_in_gpu_hours() -> None:
    s = _paper()
    a = est.Assumptions("A100", est.ParamCount(7_000_000_000, "given"))
    measured = {0: est.Measured(generated_rows=100, generated_tokens=12_345, pairs=90, train_tokens=40_000)}
    it0 = est.estimate_run(s, a, measured=measured).iterations[0]
    assert it0.prompts == 100 and it0.gen_tokens_measured == 12_345 and it0.gen_basis == "measured"
    assert it0.gen_gpu_hours == pytest.approx(12_345 / 2500 / 3600)
    assert it0.pairs == 90 and it0.train_basis == "measured"
    assert it0.train_gpu_hours == pytest.approx(40_000 * 7e9 * 16 / (312e12 * est.DEFAULT_MFU) / 3600)


def test_iterations_with_given_data_generate_nothing() -> None:
    s = spec(syntheticData=[{"iteration": 0, "path": "/data/SPIN_iter0"}], dataset={"builtin": {"trainSize": 10}})
    run = est.estimate_run(s, est.Assumptions("H100", est.ParamCount(1_000_000, "given")))
    assert not run.iterations[0].generates and run.iterations[0].gen_gpu_hours == 0.0
    assert run.iterations[1].generates
    assert any("syntheticData" in note for note in run.notes)


def test_format_prints_the_assumptions_beside_the_numbers() -> None:
    s = _paper()
    a = est.Assumptions("H100", est.params_from_name("HuggingFaceH4/zephyr-7b-sft-full"))
    text = est.format_estimate(s, est.estimate_run(s, a))
    for expected in ("7,241,732,096 parameters: known-model table", "6N per token", "2N per token for the opponent",
                     "989 TFLOP/s", "model-FLOPs utilisation 0.35", "vLLM 5,000 output tokens/s", "maxNewTokens (256)",
                     "12,928,000", "GPU-hours", "upper bounds"):  # fmt: skip
        assert expected in text, expected


def test_unknown_model_size_leaves_gpu_hours_open_and_says_how_to_set_it() -> None:
    s = spec(model={"hub": "someone/mystery-model"}, dataset={"builtin": {}})
    run = est.estimate_run(s, est.Assumptions("H100", est.params_from_name("someone/mystery-model")))
    assert run.iterations[0].train_gpu_hours is None and run.iterations[0].gen_tokens_bound is not None
    assert "pass --params" in est.format_estimate(s, run)


# --------------------------------------------------------------------------- spin plan


def test_spin_plan_of_the_zephyr_example_prints_tokens_and_gpu_hours_without_downloading(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spin_runtime.cli import main

    assert main(["plan", str(repo / "examples" / "spinrun-zephyr-7b.yaml"), "--gpu", "a100"]) == 0
    out = capsys.readouterr().out
    assert "Estimate on A100 GPUs" in out and "12,928,000" in out and "known-model table" in out
    assert "train GPU-h" in out and "wall-clock" in out


def test_spin_plan_refuses_a_bad_mfu_naming_the_option(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spin_runtime.cli import main

    with pytest.raises(SystemExit):
        main(["plan", str(repo / "examples" / "spinrun-local.yaml"), "--mfu", "35"])
    assert "--mfu must be a fraction" in capsys.readouterr().err


def test_spin_plan_measures_the_tokens_of_a_run_directory(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spin_runtime import sizing
    from spin_runtime.cli import main
    from spin_runtime.plan import layout
    from spin_runtime.store import rundir
    from tests.runtime.train_helpers import addition_rows, write_pairs

    spec_dict = {
        "model": {"path": str(tiny_model_dir)},
        "dataset": {"builtin": {"trainSize": 6, "testSize": 2}},
        "iterations": 2,
        "generation": {"shards": 1, "maxNewTokens": 16},
        "training": {"gpusPerNode": 0, "maxLength": 128, "maxPromptLength": 64},
    }
    from spin_runtime.api.spec import SpinRun

    run = SpinRun.model_validate({"metadata": {"name": "m"}, "spec": spec_dict})
    run_dir = tmp_path / "run"
    rundir.init_run(run_dir, run)
    rows = addition_rows(6, 0)
    write_pairs(run_dir, 0, "train", rows)
    shard = run_dir / layout.shard_path(0, 0, 1)
    shard.parent.mkdir(parents=True, exist_ok=True)
    shard.write_text("".join(json.dumps({**r, "split": "train"}) + "\n" for r in rows))

    measured, note = sizing.measure_run(run.spec, run_dir)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected_gen = sum(len(tok(r["generated"], add_special_tokens=False)["input_ids"]) for r in rows)
    assert measured[0].generated_rows == 6 and measured[0].generated_tokens == expected_gen
    assert measured[0].pairs == 6 and measured[0].train_tokens > 6 * 2 * 10
    assert 1 not in measured, "iteration 1 has no data yet"
    assert "iterations 0" in note

    assert main(["plan", str(run_dir / "spec.json"), "--run-dir", str(run_dir), "--params", "7B"]) == 0
    out = capsys.readouterr().out
    assert f"{expected_gen:,}" in out and "given with --params" in out and "measured in" in out


def test_the_continued_sft_arm_costs_6n_per_real_token_per_epoch_and_gets_its_own_column() -> None:
    """evaluation.sftBaseline: the arm trains on every pair's real sequence (≤ maxLength) for as
    many epochs as SPIN, without an opponent; `spin plan` shows its GPU-hours and counts them in
    the wall-clock, and says nothing of it for a spec without the arm."""
    a = est.Assumptions("H100", est.params_from_name("HuggingFaceH4/zephyr-7b-sft-full"))
    base = _paper().dump()
    without = est.estimate_run(spec(**base), a)
    base["evaluation"] = {"sftBaseline": {"enabled": True}}
    arm_spec = spec(**base)
    with_arm = est.estimate_run(arm_spec, a)
    it = with_arm.iterations[0]
    flops = it.pairs * arm_spec.training.max_length * a.params.n * 6 * arm_spec.schedule[0].epochs
    assert it.sft_gpu_hours == pytest.approx(flops / (a.peak_flops * a.mfu) / 3600)
    assert it.train_gpu_hours == without.iterations[0].train_gpu_hours, "SPIN's own cost unchanged"
    text = est.format_estimate(arm_spec, with_arm)
    assert "SFT arm GPU-h" in text and "training and the SFT arm" in text and "continued-SFT arm" in text
    assert "SFT arm" not in est.format_estimate(spec(**_paper().dump()), without)
