"""Pure builders of what TRL, DeepSpeed and PEFT are given for one SPIN iteration: the `DPOConfig`
arguments (precision, checkpoints, the iteration's lr/β/epochs), the DeepSpeed ZeRO config and
the LoRA arguments. SPIN maps onto TRL's `DPOTrainer` exactly: prompt = user turn, chosen = real
answer, rejected = generated answer, `ref_model=None` (the iteration's start model is the frozen
opponent). Nothing here imports torch or TRL; `train.py` does the I/O."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from spin_runtime.api.spec import DeepSpeed, Lora, SpinRunSpec, Training
from spin_runtime.errors import SpecConfigError
from spin_runtime.modeling.chat import LENGTH_COLUMN
from spin_runtime.plan import hparams
from spin_runtime.steps import resume


class TrainConfigError(SpecConfigError):
    """The spec asks for a training set-up that cannot run here (the message names the field)."""


# --------------------------------------------------------------------------- precision


def precision_kwargs(precision: str, on_gpu: bool) -> dict[str, Any]:
    """`DPOConfig` precision flags: bf16 mixed precision on GPU by default, fp32 on CPU.

    `training.precision: bf16` on CPU runs the forward and backward under bf16 autocast with
    fp32 master weights (the tiny SPIN learning rates would vanish in bf16 weights)."""
    resolved = precision if precision != "auto" else ("bf16" if on_gpu else "fp32")
    if resolved == "fp16" and not on_gpu:
        raise TrainConfigError("training.precision fp16 needs a GPU: use bf16 or fp32 on CPU")
    flags: dict[str, Any] = {"bf16": resolved == "bf16", "fp16": resolved == "fp16"}
    if not on_gpu:
        flags["use_cpu"] = True
    return flags


#: CPU flags (as /proc/cpuinfo spells them) with native bf16 matrix instructions.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(flags: Iterable[str]) -> bool:
    """True when the CPU multiplies bf16 natively; without it torch's bf16 matmul falls back to
    a path ~100× slower than fp32 (measured on an AVX2-only EPYC: 0.7 vs 46 GFLOP/s)."""
    return any(f in NATIVE_BF16_CPU_FLAGS for f in flags)


def resolved_precision(precision: str, on_gpu: bool) -> str:
    """The precision actually used: bf16/fp16/fp32 (auto = bf16 on GPU, fp32 on CPU)."""
    return precision if precision != "auto" else ("bf16" if on_gpu else "fp32")


# --------------------------------------------------------------------------- deepspeed


def uses_deepspeed(training: Training, on_gpu: bool) -> bool:
    """DeepSpeed runs only on GPUs and when `training.deepspeed.enabled`."""
    return on_gpu and training.deepspeed.enabled


def deepspeed_config(ds: DeepSpeed) -> dict[str, Any]:
    """A DeepSpeed ZeRO config for the HF Trainer: "auto" values are filled from the
    `DPOConfig` (batch sizes, accumulation, clipping, precision), and ZeRO-3 gathers 16-bit
    weights on save so the checkpoint is one consolidated safetensors model."""
    if ds.offload_params and ds.stage != 3:
        raise TrainConfigError(
            f"training.deepspeed.offloadParams needs ZeRO stage 3 (got stage {ds.stage}): set stage: 3 or offloadParams: false"
        )
    zero: dict[str, Any] = {
        "stage": ds.stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if ds.stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                "stage3_max_live_parameters": 1_000_000_000,
                "stage3_max_reuse_distance": 1_000_000_000,
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer:
        # The optimizer is the Trainer's (RMSProp by default), not DeepSpeed's CPU Adam.
        config["zero_force_ds_cpu_optimizer"] = False
    return config


# --------------------------------------------------------------------------- DPOConfig


def dpo_config_kwargs(
    spec: SpinRunSpec,
    iter_hparams: hparams.IterationHparams,
    *,
    on_gpu: bool,
    output_dir: str,
    attn_implementation: str,
    deepspeed_path: str | None = None,
    world_size: int = 1,
) -> dict[str, Any]:
    """Keyword arguments of TRL's `DPOConfig` for one iteration (its resolved lr, β, epochs and
    loss; the rest from `spec.training`). TensorBoard is attached by `train.py`."""
    training = spec.training
    if deepspeed_path is not None and not on_gpu:
        raise TrainConfigError("DeepSpeed runs only on GPUs here: set training.deepspeed.enabled: false on CPU")
    kwargs: dict[str, Any] = {
        "output_dir": output_dir,
        "learning_rate": iter_hparams.learning_rate,
        "beta": iter_hparams.beta,
        "loss_type": [iter_hparams.loss_type],
        "num_train_epochs": iter_hparams.epochs,
        "max_steps": training.max_steps if training.max_steps is not None else -1,
        "optim": training.optimizer,
        "lr_scheduler_type": training.lr_scheduler,
        # transformers 5 reads a float below 1 as a ratio of the total steps (1.0 would mean one step).
        "warmup_steps": min(training.warmup_ratio, 0.999999),
        "per_device_train_batch_size": training.per_device_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "gradient_checkpointing": training.gradient_checkpointing,
        "max_length": training.max_length,
        "truncation_mode": "keep_start",
        "precompute_ref_log_probs": training.precompute_ref_log_probs,
        "max_grad_norm": training.max_grad_norm,  # 0: no clipping (transformers and DeepSpeed's "auto" alike)
        "seed": training.seed,
        "data_seed": training.seed,
        "logging_strategy": "steps",
        "logging_steps": training.logging_steps,
        "logging_first_step": True,
        "report_to": [r for r in training.report_to if r != "tensorboard"] or "none",
        **resume.save_strategy_kwargs(
            training.save_steps,
            training.save_minutes,
            training.keep_checkpoints,
            epochs=training.save_epochs or training.select_epoch == "best"
        ),
        "eval_strategy": "no",
        "disable_dropout": True,
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,
        "model_init_kwargs": {"dtype": "float32", "attn_implementation": attn_implementation},
        **precision_kwargs(training.precision, on_gpu),
    }
    if not on_gpu and world_size > 1:
        kwargs["ddp_backend"] = "gloo"
    if deepspeed_path is not None:
        kwargs["deepspeed"] = deepspeed_path
    if training.group_by_length:
        kwargs.update(
            {
                "train_sampling_strategy": "group_by_length",
                "length_column_name": LENGTH_COLUMN,
                # keep the length column until the sampler has read it; the collator ignores it
                "remove_unused_columns": False,
            }
        )
    return kwargs


#: DPOConfig arguments SFTConfig does not take: the preference loss and its frozen opponent.
_PREFERENCE_ONLY = ("beta", "loss_type", "precompute_ref_log_probs", "disable_dropout")


def sft_config_kwargs(dpo_kwargs: dict[str, Any], learning_rate: float) -> dict[str, Any]:
    """Keyword arguments of TRL's `SFTConfig` for the continued-SFT arm: the iteration's
    `DPOConfig` arguments (scheduler, warmup, batch, epochs, precision, checkpoints, seed, so
    the arm takes the same optimizer steps over the same examples) with the arm's learning rate,
    the loss on the answer tokens only and no packing (one example per SPIN pair)."""
    kwargs = {k: v for k, v in dpo_kwargs.items() if k not in _PREFERENCE_ONLY}
    kwargs.update({"learning_rate": learning_rate, "completion_only_loss": True, "packing": False})
    return kwargs


def lora_kwargs(lora: Lora) -> dict[str, Any]:
    """Keyword arguments of `peft.LoraConfig` (causal LM adapters on `lora.targetModules`)."""
    if "lm_head" in lora.target_modules:
        raise TrainConfigError(
            "training.lora.targetModules must not include lm_head: TRL computes log-probs from lm_head.weight directly"
        )
    return {
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": list(lora.target_modules),
        "task_type": "CAUSAL_LM",
        "bias": "none",
    }


# --------------------------------------------------------------------------- data


def shuffled(rows: Sequence[Mapping[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The window's rows shuffled with `training.seed` (the paper shuffled syn(k−1) ∪ syn(k) with 42)."""
    out = [dict(r) for r in rows]
    random.Random(seed).shuffle(out)
    return out


# --------------------------------------------------------------------------- metrics


