"""`spin sft`: iteration k's continued-SFT arm (evaluation.sftBaseline), the paper's comparison
"did SPIN beat simply training longer on the same SFT data?".

TRL's `SFTTrainer` trains on the real answers of iteration k's data window — one example per
SPIN pair, the prompt built and truncated as for SPIN, the loss on the answer only — with the
iteration's training settings (scheduler, warmup, batch, epochs, precision, seed), so the arm
takes as many optimizer steps over as many examples as the iteration's SPIN training. It starts
from the arm's previous model (the run's start model at startIteration) and saves to
`iter-<k>/sft-model`; metrics.json gets an "sft" section, then the step's marker. Under torchrun
every rank trains and only global rank 0 writes, as in `spin train`.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_runtime.api.spec import SpinRunSpec
from spin_runtime.modeling import models
from spin_runtime.modeling.chat import LENGTH_COLUMN, prepare_rows
from spin_runtime.plan import hparams, layout
from spin_runtime.plan.stages import Step
from spin_runtime.steps import resume, train, trl_args
from spin_runtime.steps.context import StepContext
from spin_runtime.steps.train_metrics import history_from_log, train_summary
from spin_runtime.store import rundir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, TrainerCallback

SCRATCH = ".sft-scratch"


def sft_rows(
    rows: Sequence[Mapping[str, Any]], tok: PreTrainedTokenizerBase, spec: SpinRunSpec
) -> list[dict[str, Any]]:
    """TRL prompt-completion rows of the window's real answers: the SPIN rows' prompt and chosen
    answer, truncated by the same rule (`training.truncation`), with their approximate length."""
    training = spec.training
    pairs = prepare_rows(
        [dict(r) for r in rows], tok, training.max_prompt_length, system=spec.system_prompt,
        truncation=training.truncation, max_length=training.max_length,
    )  # fmt: skip
    return [{"prompt": p["prompt"], "completion": p["chosen"], LENGTH_COLUMN: p[LENGTH_COLUMN]} for p in pairs]


def spin_steps(run_dir: Path, k: int) -> int | None:
    """The optimizer steps of iteration k's SPIN training, as its metrics record them."""
    path = run_dir / layout.metrics_path(k)
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["train"]["summary"]["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _callbacks(ctx: StepContext, fingerprint: str, extra: Sequence[TrainerCallback]) -> list[Any]:
    """Timed checkpoints (a retried attempt resumes), the epoch stop SPIN's training has, then
    the caller's callbacks."""
    from spin_runtime.steps import epochs

    out: list[Any] = [resume.timed_checkpoints(ctx.spec.training.save_minutes, fingerprint)]
    stop = ctx.spec.training.stop_epoch
    if stop is not None:
        out.append(epochs.stop_after_epoch_callback(stop))
    return [*out, *extra]


def build_sft_trainer(
    ctx: StepContext, callbacks: Sequence[TrainerCallback] = ()
) -> tuple[Any, train.TrainSetup, float]:
    """A ready `SFTTrainer` for iteration k's arm, what it resolved, and its learning rate."""
    from trl import SFTConfig, SFTTrainer

    t0 = time.perf_counter()
    spec, k = ctx.spec, ctx.iteration
    on_gpu = train.training_on_gpu(spec)
    start_path = models.resolve(hparams.sft_start_model(spec, k), ctx.run_dir)
    tok = models.load_tokenizer(start_path, padding_side="right")
    train.check_chat_template(tok, start_path)
    rows = trl_args.shuffled(train.window_rows(ctx.run_dir, spec, k), spec.training.seed)
    prepared = sft_rows(rows, tok, spec)
    lr = hparams.sft_learning_rate(spec, k)
    kwargs = trl_args.sft_config_kwargs(train.config_kwargs(ctx, on_gpu), lr)
    args = train.make_config(SFTConfig, kwargs)
    scratch = ctx.path(layout.iter_dir(k)) / SCRATCH
    fingerprint = rundir.fingerprints(ctx.run)[ctx.step.key]
    dataset, resume_from = train.stage_window(ctx, prepared, scratch, fingerprint)
    trainer = SFTTrainer(
        model=start_path,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        peft_config=train.lora_config(spec),
        callbacks=_callbacks(ctx, fingerprint, callbacks),
    )
    setup = train.TrainSetup(
        ctx=ctx, start_path=start_path, on_gpu=on_gpu, scratch=scratch, samples=len(prepared),
        setup_seconds=time.perf_counter() - t0, resume_from=resume_from,
    )  # fmt: skip
    return trainer, setup, lr


def sft_metrics(trainer: Any, setup: train.TrainSetup, lr: float) -> dict[str, Any]:
    """metrics.json "sft" section: the arm's per-logging-step history and its totals beside
    SPIN's optimizer steps (equal by construction; recorded so the report can show it)."""
    ctx = setup.ctx
    history = history_from_log(trainer.state.log_history)
    summary = train_summary(trainer.state.log_history, history)
    summary.update(
        {
            "samples": setup.samples,
            "learning_rate": lr,
            "epochs": ctx.hparams.epochs,
            "window": list(ctx.hparams.window),
            "start_model": hparams.sft_start_model(ctx.spec, ctx.iteration).describe(),
            "spin_steps": spin_steps(ctx.run_dir, ctx.iteration),
            "device": "gpu" if setup.on_gpu else "cpu",
            "world_size": ctx.world_size,
            "setup_seconds": setup.setup_seconds,
            "resumed_from_step": resume.checkpoint_step(setup.resume_from) if setup.resume_from else None,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        }
    )
    return {"history": history, "summary": summary}


def run_sft(
    run_dir: Path, iteration: int, force: bool = False, callbacks: Sequence[TrainerCallback] = ()
) -> dict[str, Any] | None:
    """Train iteration k's continued-SFT arm unless it is done (or `force`); returns the "sft"
    metrics on rank 0 (None when skipped)."""
    ctx = StepContext.open(run_dir, Step(iteration, "sft"))
    if not ctx.should_run(force):
        return None
    if force and ctx.is_main:  # a forced rerun starts from the arm's start, not a checkpoint
        shutil.rmtree(ctx.path(layout.checkpoints_dir(iteration, "sft")), ignore_errors=True)
    trainer, setup, lr = build_sft_trainer(ctx, callbacks)
    if ctx.is_main:
        if setup.resume_from is not None:
            ctx.log(f"iteration {iteration}: resuming from {setup.resume_from} (a previous attempt was interrupted)")
        ctx.log(
            f"iteration {iteration}: continued SFT on the real answers of {setup.samples} pairs from iterations "
            f"{list(ctx.hparams.window)}, lr {lr:g}, from {hparams.sft_start_model(ctx.spec, iteration).describe()}"
        )
    trainer.train(resume_from_checkpoint=str(setup.resume_from) if setup.resume_from else None)
    final = train.save_checkpoint(trainer, setup, layout.sft_model_dir(iteration))
    metrics: dict[str, Any] | None = None
    if trainer.accelerator.is_main_process:
        metrics = sft_metrics(trainer, setup, lr)
        ctx.update_metrics("sft", metrics)
        shutil.rmtree(setup.scratch, ignore_errors=True)
        summary = metrics["summary"]
        ctx.mark_done({"model": layout.sft_model_dir(iteration), "steps": summary["steps"]})
        shutil.rmtree(setup.checkpoints, ignore_errors=True)
        against = f", SPIN {summary['spin_steps']}" if summary["spin_steps"] is not None else ""
        ctx.log(f"iteration {iteration}: saved {final} ({summary['steps']} steps{against})")
    trainer.accelerator.wait_for_everyone()
    return metrics
