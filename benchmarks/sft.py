"""The replication's initial SFT, trained to convergence with TRL's `SFTTrainer` (no SFT loop of
our own): epoch by epoch, the held-out loss on a validation split after each epoch, stopped by
transformers' `EarlyStoppingCallback` at the first epoch that does not improve, and the best
epoch's model kept (`load_best_model_at_end`).

Rows and arguments come from the runtime's continued-SFT arm (`spin_runtime.steps.sft.sft_rows`,
`trl_args.sft_config_kwargs` over the spec's DPOConfig arguments), so the start model is trained on
the same chat-formatted text, with the loss on the answer only, as the arm that continues it.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spin_runtime.api.spec import SpinRunSpec
from spin_runtime.modeling import models
from spin_runtime.plan import hparams
from spin_runtime.steps import trl_args as tc
from spin_runtime.steps.sft import sft_rows
from spin_runtime.store.atomic import atomic_dir


def chosen_epoch(eval_losses: Sequence[float], patience: int = 1) -> tuple[int, int]:
    """(best epoch, epochs run) under the stopping rule: stop after `patience` epochs in a row
    that do not improve on the best held-out loss; epochs count from 1. Mirrors
    EarlyStoppingCallback (which does the stopping); used to check and report it."""
    best, best_at, worse = math.inf, 0, 0
    for epoch, loss in enumerate(eval_losses, start=1):
        if loss < best:
            best, best_at, worse = loss, epoch, 0
        else:
            worse += 1
            if worse >= patience:
                return best_at, epoch
    return best_at, len(eval_losses)


def sft_config_kwargs(spec: SpinRunSpec, work: Path, lr: float, max_epochs: int, optimizer: str) -> dict[str, Any]:
    """SFTConfig arguments: the arm's (the spec's training settings through `trl_args`), with the
    initial SFT's lr, optimizer and constant schedule, evaluated, saved and judged every epoch."""
    dpo = tc.dpo_config_kwargs(
        spec, hparams.hparams(spec, 0), on_gpu=False, output_dir=str(work), attn_implementation="eager"
    )
    kwargs = tc.sft_config_kwargs(dpo, lr)
    kwargs.update(
        {
            "optim": optimizer,
            "lr_scheduler_type": "constant",
            "warmup_steps": 0,
            "num_train_epochs": max_epochs,
            "max_steps": -1,
            "eval_strategy": "epoch",
            "save_strategy": "epoch",
            "save_only_model": True,
            "save_total_limit": 2,  # the best and the latest
            "load_best_model_at_end": True,
            "metric_for_best_model": "eval_loss",
            "greater_is_better": False,
            "per_device_eval_batch_size": 16,
            "logging_steps": 1,
        }
    )
    return kwargs


def converge(
    spec: SpinRunSpec,
    start: str,
    train: Sequence[Mapping[str, Any]],
    val: Sequence[Mapping[str, Any]],
    out_dir: Path,
    *,
    lr: float = 1e-4,
    max_epochs: int = 8,
    patience: int = 1,
    optimizer: str = "adamw_torch",
) -> dict[str, Any]:
    """SFT `start` on `train` rows ({prompt, real}) until the held-out loss on `val` stops
    improving; saves the best epoch's model to `out_dir` and returns the epoch-by-epoch record."""
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from trl import SFTConfig, SFTTrainer

    t0 = time.time()
    work = out_dir.with_name(out_dir.name + ".work")
    tok = models.load_tokenizer(start, padding_side="right")
    prepared = [{k: r[k] for k in ("prompt", "completion")} for r in sft_rows(train, tok, spec)]
    held = [{k: r[k] for k in ("prompt", "completion")} for r in sft_rows(val, tok, spec)]
    args = SFTConfig(**sft_config_kwargs(spec, work, lr, max_epochs, optimizer))
    trainer = SFTTrainer(
        model=start, args=args, train_dataset=Dataset.from_list(prepared), eval_dataset=Dataset.from_list(held),
        processing_class=tok, callbacks=[EarlyStoppingCallback(early_stopping_patience=patience)],
    )  # fmt: skip
    trainer.train()
    logs = trainer.state.log_history
    eval_losses = [e["eval_loss"] for e in logs if "eval_loss" in e]
    train_losses = [e["loss"] for e in logs if "loss" in e]
    best, ran = chosen_epoch(eval_losses, patience)
    steps_per_epoch = trainer.state.global_step // max(1, ran)
    with atomic_dir(out_dir) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "epoch": best,
        "epochs_run": ran,
        "max_epochs": max_epochs,
        "patience": patience,
        "eval_loss_by_epoch": eval_losses,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "steps_per_epoch": steps_per_epoch,
        "steps": trainer.state.global_step,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "learning_rate": lr,
        "optimizer": optimizer,
        "examples": len(prepared),
        "validation_examples": len(held),
        "seconds": time.time() - t0,
    }
