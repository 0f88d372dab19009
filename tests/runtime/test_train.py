"""`spin train`: checkpoint, metrics and marker written in that order; interrupted runs leave
nothing behind and rerun cleanly; broken inputs are refused naming the file; the pure
builders (DPOConfig arguments, DeepSpeed, LoRA, metrics history)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from spin_runtime.api.spec import DeepSpeed, Lora, SpinRunSpec
from spin_runtime.errors import DataError, ModelError
from spin_runtime.modeling import chat
from spin_runtime.plan import hparams, layout, stages
from spin_runtime.steps import train_metrics
from spin_runtime.steps import trl_args as tc
from spin_runtime.steps.train import identical_pairs, run_train
from tests.runtime.train_helpers import (
    addition_rows,
    make_run,
    one_thread,  # noqa: F401 - fixture
    weights,
    write_pairs,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _iteration1(run_dir: Path, model_dir: Path, **training: Any) -> None:
    make_run(run_dir, model_dir, training=training, schedule=[{"learningRate": 1e-4, "beta": 0.1}])
    shutil.copytree(model_dir, run_dir / layout.model_dir(0))
    write_pairs(run_dir, 0, "train", addition_rows(2, 0))
    write_pairs(run_dir, 1, "train", addition_rows(2, 1))


# --------------------------------------------------------------------------- end to end


def test_train_writes_checkpoint_then_metrics_then_marker(tmp_path: Path, tiny_model_dir: Path) -> None:
    run_dir = tmp_path / "run"
    make_run(run_dir, tiny_model_dir, training={"reportTo": ["tensorboard"]})
    write_pairs(run_dir, 0, "train", addition_rows(4, 0))
    metrics = run_train(run_dir, 0)

    marker = run_dir / stages.Step(0, "train").marker
    model = run_dir / layout.model_dir(0)
    assert marker.exists()
    assert json.loads(marker.read_text())["model"] == "iter-0/model"
    names = set(_files(model))
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= names
    assert "training_args.bin" not in names
    assert json.loads((model / "config.json").read_text())["use_cache"] is True
    assert not (run_dir / layout.iter_dir(0) / ".train-scratch").exists()
    assert list((run_dir / layout.logs_dir(0)).glob("events.out.tfevents.*")), "TensorBoard logs in iter-0/logs"

    stored = json.loads((run_dir / layout.metrics_path(0)).read_text())["train"]
    assert stored == json.loads(json.dumps(metrics))
    history, summary = stored["history"], stored["summary"]
    assert [h["step"] for h in history] == [1, 2]
    for h in history:
        for key in ("loss", "learning_rate", "epoch", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                    "rewards/margins", "logps/chosen", "logps/rejected"):  # fmt: skip
            assert isinstance(h[key], float), key
        assert h["rewards/real"] == h["rewards/chosen"] and h["logps/generated"] == h["logps/rejected"]
    assert summary["steps"] == 2 and summary["samples"] == 4 and summary["window"] == [0]
    assert summary["identical_pairs"] == identical_pairs(addition_rows(4, 0))
    assert summary["tokens"] > 0 and summary["tokens_per_second"] > 0 and summary["train_runtime"] > 0
    assert (summary["learning_rate"], summary["beta"], summary["loss_type"]) == (5e-7, 0.1, "sigmoid")
    assert summary["precision"] == "fp32" and summary["device"] == "cpu" and summary["world_size"] == 1

    before = _files(model)
    assert run_train(run_dir, 0) is None, "a finished step is skipped"
    assert _files(model) == before


class _Crash(TrainerCallback):
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 1:
            raise RuntimeError("killed after step 1")


def test_interrupted_training_leaves_no_marker_and_rerun_starts_clean(tmp_path: Path, tiny_model_dir: Path) -> None:
    run_dir = tmp_path / "run"
    _iteration1(run_dir, tiny_model_dir)
    start = run_dir / layout.model_dir(0)
    start_files = _files(start)

    with pytest.raises(RuntimeError, match="killed after step 1"):
        run_train(run_dir, 1, callbacks=[_Crash()])
    assert not (run_dir / stages.Step(1, "train").marker).exists()
    assert not (run_dir / layout.model_dir(1)).exists()
    assert not (run_dir / layout.metrics_path(1)).exists()
    assert _files(start) == start_files, "the previous iteration's checkpoint is untouched"

    metrics = run_train(run_dir, 1)
    assert metrics is not None and metrics["summary"]["steps"] == 2
    assert (run_dir / stages.Step(1, "train").marker).exists()
    trained = weights(run_dir / layout.model_dir(1))
    assert any(not torch.equal(trained[k], v) for k, v in weights(start).items())
    assert _files(start) == start_files


def test_start_checkpoint_without_weights_is_refused_with_the_file_name(tmp_path: Path, tiny_model_dir: Path) -> None:
    run_dir = tmp_path / "run"
    _iteration1(run_dir, tiny_model_dir)
    (run_dir / layout.model_dir(0) / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"iter-0/model: checkpoint has no weights \(expected one of model\.safetensors"):
        run_train(run_dir, 1)
    assert not (run_dir / stages.Step(1, "train").marker).exists()


def test_missing_window_data_names_the_file_and_the_step_to_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    run_dir = tmp_path / "run"
    _iteration1(run_dir, tiny_model_dir)
    (run_dir / layout.data_path(0, "train")).unlink()
    with pytest.raises(DataError, match=r"iter-0/data/train\.parquet: training data of iteration 0 not found.*spin convert"):
        run_train(run_dir, 1)


def test_corrupt_parquet_is_refused_with_the_file_name(tmp_path: Path, tiny_model_dir: Path) -> None:
    run_dir = tmp_path / "run"
    make_run(run_dir, tiny_model_dir)
    path = run_dir / layout.data_path(0, "train")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"iter-0/data/train\.parquet"):
        run_train(run_dir, 0)


def test_lora_with_bf16_autocast_on_cpu_saves_a_merged_plain_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    run_dir = tmp_path / "run"
    _iteration1(
        run_dir,
        tiny_model_dir,
        precision="bf16",
        lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]},
        lrScheduler="constant",
        warmupRatio=0.0,
    )
    metrics = run_train(run_dir, 1)
    assert metrics is not None
    assert metrics["summary"]["precision"] == "bf16" and metrics["summary"]["lora"] is True
    model = run_dir / layout.model_dir(1)
    merged = weights(model)
    assert not any("lora" in k for k in merged), "the next iteration needs a plain checkpoint"
    assert (model / "adapter" / "adapter_config.json").exists()
    start = weights(run_dir / layout.model_dir(0))
    assert set(merged) == set(start)
    changed = {k for k in start if not torch.equal(merged[k], start[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)
    assert merged[next(iter(changed))].dtype == torch.float32


# --------------------------------------------------------------------------- builders


def test_cpu_defaults_are_fp32_with_use_cpu_and_gpu_defaults_bf16() -> None:
    assert tc.precision_kwargs("auto", on_gpu=False) == {"bf16": False, "fp16": False, "use_cpu": True}
    assert tc.precision_kwargs("auto", on_gpu=True) == {"bf16": True, "fp16": False}
    assert tc.precision_kwargs("bf16", on_gpu=False) == {"bf16": True, "fp16": False, "use_cpu": True}
    assert tc.precision_kwargs("fp32", on_gpu=True) == {"bf16": False, "fp16": False}
    with pytest.raises(tc.TrainConfigError, match="training.precision fp16 needs a GPU"):
        tc.precision_kwargs("fp16", on_gpu=False)


def test_deepspeed_zero3_config_uses_auto_values_and_gathers_16bit_weights_on_save() -> None:
    cfg = tc.deepspeed_config(DeepSpeed())
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert "offload_param" not in zero and "offload_optimizer" not in zero
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps", "gradient_clipping"):
        assert cfg[key] == "auto"
    assert cfg["bf16"] == {"enabled": "auto"}
    off = tc.deepspeed_config(DeepSpeed(offload_params=True, offload_optimizer=True))
    assert off["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert off["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert off["zero_force_ds_cpu_optimizer"] is False
    two = tc.deepspeed_config(DeepSpeed(stage=2))["zero_optimization"]
    assert two["stage"] == 2 and not any(k.startswith("stage3") for k in two)
    # the spec refuses it; the builder refuses it too when handed an unvalidated object
    with pytest.raises(ValueError, match="stage 3"):
        DeepSpeed(stage=2, offload_params=True)
    with pytest.raises(tc.TrainConfigError, match="offloadParams needs ZeRO stage 3"):
        tc.deepspeed_config(DeepSpeed.model_construct(stage=2, offload_params=True, offload_optimizer=False))


def test_deepspeed_only_on_gpu_and_multi_process_cpu_uses_gloo() -> None:
    spec = SpinRunSpec()
    assert tc.uses_deepspeed(spec.training, on_gpu=True)
    assert not tc.uses_deepspeed(spec.training, on_gpu=False)
    kw = tc.dpo_config_kwargs(spec, hparams.hparams(spec, 0), on_gpu=True, output_dir="o", attn_implementation="sdpa", deepspeed_path="ds.json")
    assert kw["deepspeed"] == "ds.json" and "use_cpu" not in kw
    with pytest.raises(tc.TrainConfigError, match="DeepSpeed runs only on GPUs"):
        tc.dpo_config_kwargs(spec, hparams.hparams(spec, 0), on_gpu=False, output_dir="o", attn_implementation="sdpa", deepspeed_path="ds.json")
    cpu2 = tc.dpo_config_kwargs(spec, hparams.hparams(spec, 0), on_gpu=False, output_dir="o", attn_implementation="sdpa", world_size=2)
    assert cpu2["ddp_backend"] == "gloo" and cpu2["use_cpu"] is True
    # resumable checkpoints every 30 minutes by default (training.saveMinutes), the newest 2 kept
    assert cpu2["save_strategy"] == "steps" and cpu2["save_total_limit"] == 2 and cpu2["report_to"] == "none"
    never = SpinRunSpec.model_validate({"training": {"saveMinutes": 0}})
    assert tc.dpo_config_kwargs(never, hparams.hparams(never, 0), on_gpu=False, output_dir="o",
                                attn_implementation="sdpa")["save_strategy"] == "no"
    assert cpu2["model_init_kwargs"] == {"dtype": "float32", "attn_implementation": "sdpa"}
    steps = SpinRunSpec.model_validate({"training": {"maxSteps": 7, "warmupRatio": 1.0}})
    kw = tc.dpo_config_kwargs(steps, hparams.hparams(steps, 0), on_gpu=False, output_dir="o", attn_implementation="eager")
    assert kw["max_steps"] == 7 and 0.99 < kw["warmup_steps"] < 1


def test_lora_arguments_and_lm_head_refused() -> None:
    kw = tc.lora_kwargs(Lora(enabled=True, r=8, alpha=16, dropout=0.1, target_modules=["q_proj"]))
    assert kw == {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM", "bias": "none"}
    with pytest.raises(ValueError, match="lm_head"):
        Lora(enabled=True, target_modules=["q_proj", "lm_head"])
    unvalidated = Lora.model_construct(enabled=True, r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "lm_head"])
    with pytest.raises(tc.TrainConfigError, match="lm_head"):
        tc.lora_kwargs(unvalidated)


def test_history_keeps_logged_steps_with_spin_names_and_the_summary_the_totals() -> None:
    log = [
        {"loss": 0.69, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "logps/chosen": -5.0, "num_tokens": 100.0, "step": 1, "epoch": 0.5},
        {"loss": 0.5, "rewards/chosen": 0.2, "rewards/rejected": -0.1, "rewards/margins": 0.3, "step": 2, "epoch": 1.0, "num_tokens": 200.0},
        {"train_runtime": 4.0, "train_loss": 0.6, "train_samples_per_second": 2.0, "step": 2, "epoch": 1.0},
    ]  # fmt: skip
    history = train_metrics.history_from_log(log)
    assert [h["step"] for h in history] == [1, 2]
    assert history[0]["rewards/real"] == 0.0 and history[0]["logps/real"] == -5.0
    assert history[1]["rewards/generated"] == -0.1
    summary = train_metrics.train_summary(log, history)
    assert summary["steps"] == 2 and summary["tokens"] == 200 and summary["tokens_per_second"] == 50.0
    assert summary["final_loss"] == 0.5 and summary["final_margin"] == 0.3 and summary["mean_train_loss"] == 0.6


def test_rows_map_real_to_chosen_and_generated_to_rejected() -> None:
    row = chat.conversational_row("q?", "real answer", "generated answer")
    assert row == {
        "prompt": [{"role": "user", "content": "q?"}],
        "chosen": [{"role": "assistant", "content": "real answer"}],
        "rejected": [{"role": "assistant", "content": "generated answer"}],
    }
    rows = [{"id": str(i)} for i in range(20)]
    assert tc.shuffled(rows, 42) == tc.shuffled(rows, 42) != rows
    assert sorted(r["id"] for r in tc.shuffled(rows, 42)) == sorted(r["id"] for r in rows)


def test_native_bf16_is_recognised_from_cpu_flags() -> None:
    assert not tc.cpu_has_native_bf16({"avx2", "fma", "avx512f"})
    assert tc.cpu_has_native_bf16({"avx512f", "avx512_bf16"})
    assert tc.cpu_has_native_bf16({"amx_tile", "amx_bf16"})


def test_length_grouped_batches_when_enabled(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`training.groupByLength` reaches the Trainer's length-grouped sampler."""
    from spin_runtime.steps.train import build_trainer

    run_dir = tmp_path / "run"
    make_run(run_dir, tiny_model_dir, training={"maxLength": 256, "maxPromptLength": 96, "groupByLength": True})
    rows = addition_rows(8, 0)
    for i, r in enumerate(rows):
        r["real"] += " because" * ((i * 7) % 30)
    write_pairs(run_dir, 0, "train", rows)
    trainer, _ = build_trainer(run_dir, 0)
    lengths = trainer.train_dataset[chat.LENGTH_COLUMN]
    order = list(trainer._get_train_sampler(trainer.train_dataset))
    assert sorted(order) == list(range(8))
    # HF's LengthGroupedSampler: shuffled mega-batches (here one batch of 2 pairs each, the data
    # being small) sorted by length, the longest batch first
    got = [lengths[i] for i in order]
    assert got[0] == max(lengths)
    assert all(got[i] >= got[i + 1] for i in range(0, 8, 2))
    assert trainer.args.remove_unused_columns is False


def test_pairs_the_model_already_reproduces_are_counted_as_carrying_no_gradient() -> None:
    rows = [{"real": "1 + 1 = 2.", "generated": "1 + 1 = 2. "}, {"real": "2 + 2 = 4.", "generated": "2 + 2 = 5."}]
    assert identical_pairs(rows) == 1


# --------------------------------------------------------------------------- resumable checkpoints


class _KillAfter(TrainerCallback):
    """Stands in for a preempted node: the process dies after `step` optimizer steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
        if state.global_step >= self.step:
            raise KeyboardInterrupt("node preempted")
        return control


def _losses(run_dir: Path) -> list[float]:
    history = json.loads((run_dir / layout.metrics_path(0)).read_text())["train"]["history"]
    return [h["loss"] for h in history]


def test_an_interrupted_train_step_resumes_from_its_newest_checkpoint_with_the_same_losses(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    training = {"maxSteps": 6, "perDeviceBatchSize": 1, "saveSteps": 2, "keepCheckpoints": 2}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for run_dir in (whole, cut):
        make_run(run_dir, tiny_model_dir, training=training, schedule=[{"learningRate": 1e-4, "beta": 0.1}])
        write_pairs(run_dir, 0, "train", addition_rows(6, 0))
    run_train(whole, 0)

    with pytest.raises(KeyboardInterrupt):
        run_train(cut, 0, callbacks=[_KillAfter(5)])
    checkpoints = cut / layout.checkpoints_dir(0)
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]  # keep 2
    assert not (cut / stages.Step(0, "train").marker).exists()

    metrics = run_train(cut, 0)
    assert metrics is not None and metrics["summary"]["resumed_from_step"] == 4
    assert metrics["summary"]["steps"] == 6
    assert _losses(cut) == pytest.approx(_losses(whole), abs=1e-5)
    assert torch.allclose(weights(cut / layout.model_dir(0))["lm_head.weight"], weights(whole / layout.model_dir(0))["lm_head.weight"], atol=1e-6)
    assert not checkpoints.exists(), "checkpoints are removed once the iteration's model is saved"


def test_a_checkpoint_cut_off_while_saving_or_from_other_settings_is_never_resumed(tmp_path: Path) -> None:
    from spin_runtime.steps import resume

    root = tmp_path / "checkpoints"
    for step, fp in ((2, "same"), (4, "other"), (6, None)):
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if fp is not None:
            (folder / resume.COMPLETE_FILE).write_text(json.dumps({"fingerprint": fp, "step": step}))
    logged: list[str] = []
    assert resume.prepare_resume(root, "same", logged.append) == root / "checkpoint-2"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2"]
    assert len(logged) == 2


def test_time_based_saving_needs_no_step_interval() -> None:
    from spin_runtime.steps import resume

    assert resume.save_strategy_kwargs(None, 0, 2) == {"save_strategy": "no"}
    kw = resume.save_strategy_kwargs(None, 30.0, 3)
    assert kw["save_strategy"] == "steps" and kw["save_steps"] >= 10**9 and kw["save_total_limit"] == 3
    assert resume.save_strategy_kwargs(50, 0, 2)["save_steps"] == 50


# --------------------------------------------------------------------------- epochs


def test_every_epoch_is_kept_scored_and_the_best_becomes_the_model_and_a_kill_resumes_at_an_epoch(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """training.selectEpoch: best (the authors: 'set 6 epochs and stop as needed')."""
    training = {"maxSteps": None, "perDeviceBatchSize": 2, "selectEpoch": "best", "selectMetric": "reward_margin",
                "saveMinutes": 0}
    run_dir = tmp_path / "run"
    make_run(run_dir, tiny_model_dir, training=training, schedule=[{"learningRate": 1e-3, "beta": 0.1, "epochs": 3}])
    write_pairs(run_dir, 0, "train", addition_rows(4, 0))
    write_pairs(run_dir, 0, "test", addition_rows(4, 9))

    with pytest.raises(KeyboardInterrupt):  # killed during epoch 3 (steps 5-6)
        run_train(run_dir, 0, callbacks=[_KillAfter(5)])
    assert [p.name for p in sorted((run_dir / "iter-0" / "epochs").iterdir())] == ["epoch-1", "epoch-2"]

    metrics = run_train(run_dir, 0)
    assert metrics is not None and metrics["summary"]["resumed_from_step"] == 4  # the end of epoch 2
    scores = metrics["epoch_selection"]["scores"]
    assert [s["epoch"] for s in scores] == [1, 2, 3]
    best = max(scores, key=lambda s: s["reward_margin"])
    assert metrics["epoch_selection"]["selected"] == best["epoch"]
    chosen = weights(run_dir / layout.epoch_dir(0, best["epoch"]))
    model = weights(run_dir / layout.model_dir(0))
    assert all(torch.equal(chosen[name], model[name]) for name in model)
    saved = json.loads((run_dir / layout.metrics_path(0)).read_text())["train"]["epoch_selection"]
    assert saved["selected"] == best["epoch"] and len(saved["scores"]) == 3


def test_select_epoch_n_is_epoch_n_of_the_full_learning_rate_schedule_and_training_stops_there(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """training.selectEpoch: 2 of a 3-epoch schedule: what the paper reports (epoch 2 of 6) without
    training the epochs after it."""
    schedule = [{"learningRate": 1e-3, "beta": 0.1, "epochs": 3}]
    base = {"maxSteps": None, "perDeviceBatchSize": 2, "saveMinutes": 0}
    full, two = tmp_path / "full", tmp_path / "two"
    make_run(full, tiny_model_dir, training={**base, "saveEpochs": True}, schedule=schedule)
    make_run(two, tiny_model_dir, training={**base, "selectEpoch": 2}, schedule=schedule)
    for run_dir in (full, two):
        write_pairs(run_dir, 0, "train", addition_rows(4, 0))
        write_pairs(run_dir, 0, "test", addition_rows(4, 9))

    whole, part = run_train(full, 0), run_train(two, 0)
    assert whole is not None and part is not None
    assert (whole["summary"]["steps"], part["summary"]["steps"]) == (6, 4)  # 2 optimizer steps per epoch
    rates = [[h["learning_rate"] for h in m["history"]] for m in (whole, part)]
    assert rates[1] == rates[0][:4] and rates[1][-1] > 0, "the schedule spans all 3 epochs, not the 2 trained"
    epoch2, model = weights(full / layout.epoch_dir(0, 2)), weights(two / layout.model_dir(0))
    assert all(torch.allclose(epoch2[name], model[name], rtol=0, atol=1e-6) for name in model)
    assert not (two / "iter-0" / "epochs").exists() and "epoch_selection" not in part


def test_max_grad_norm_zero_leaves_the_gradient_unclipped(tmp_path: Path, tiny_model_dir: Path) -> None:
    """training.maxGradNorm: 0 (the original SPIN code never clipped): one plain SGD step moves the
    weights by lr × the whole gradient; clipped at 0.5 they move by lr × 0.5."""
    lr, clip = 1e-2, 0.5
    steps = {}
    for name, norm in (("free", 0), ("clipped", clip)):
        run_dir = tmp_path / name
        training = {"maxSteps": 1, "optimizer": "sgd", "lrScheduler": "constant", "warmupRatio": 0.0, "maxGradNorm": norm}
        make_run(run_dir, tiny_model_dir, training=training, schedule=[{"learningRate": lr, "beta": 0.1}])
        write_pairs(run_dir, 0, "train", addition_rows(4, 0))
        metrics = run_train(run_dir, 0)
        assert metrics is not None
        after = weights(run_dir / layout.model_dir(0))
        before = weights(tiny_model_dir)
        moved = torch.sqrt(sum(((after[k].float() - before[k].float()) ** 2).sum() for k in after))
        steps[name] = (float(moved), metrics["history"][0].get("grad_norm"))
    grad_norm = steps["clipped"][1]  # the norm before clipping (not measured when clipping is off)
    assert grad_norm is not None and grad_norm > 5 * clip
    assert steps["free"][0] == pytest.approx(lr * grad_norm, rel=1e-3)
    assert steps["clipped"][0] == pytest.approx(lr * clip, rel=1e-3)


def test_select_epoch_last_or_best_by_the_named_metric() -> None:
    from spin_runtime.steps.epochs import choose

    scores = [{"epoch": 1, "reward_margin": 0.2, "exact_match": None}, {"epoch": 2, "reward_margin": 0.5, "exact_match": None},
              {"epoch": 3, "reward_margin": 0.5, "exact_match": None}]
    assert choose(scores, "last", "reward_margin")["epoch"] == 3
    assert choose(scores, "best", "reward_margin")["epoch"] == 2  # the earliest among equals
    with pytest.raises(ValueError, match="exact_match was not measured"):
        choose(scores, "best", "exact_match")
    assert choose(scores, 2, "reward_margin")["epoch"] == 2  # a number: that epoch, whatever its metric
    with pytest.raises(ValueError, match="epoch 4 .* was not saved"):
        choose(scores, 4, "reward_margin")
