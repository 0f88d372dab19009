"""`spin train`: one SPIN iteration with TRL's `DPOTrainer` (chosen = real, rejected = generated,
`ref_model=None` so TRL reloads the iteration's saved start model as the frozen opponent).

Reads the data window of iteration k, trains, saves the checkpoint atomically to
`iter-<k>/model`, writes metrics.json's "train" section and then the step's marker. Under
torchrun (WORLD_SIZE > 1) every rank trains; only global rank 0 writes the checkpoint, the
metrics and the marker. A killed run leaves no marker and no model folder; a rerun starts clean.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import resource
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_runtime.api.spec import SpinRunSpec
from spin_runtime.data.pairs import read_pairs
from spin_runtime.data.synthetic import load_synthetic
from spin_runtime.errors import DataError, ModelError
from spin_runtime.modeling import models
from spin_runtime.modeling.chat import LENGTH_COLUMN, chat_messages, prepare_rows
from spin_runtime.modeling.original_collator import original_collator, original_tokens
from spin_runtime.plan import hparams, layout
from spin_runtime.plan.stages import Step
from spin_runtime.steps import epochs, resume, trl_args
from spin_runtime.steps.context import StepContext
from spin_runtime.steps.train_metrics import history_from_log, train_summary
from spin_runtime.store import atomic, rundir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, TrainerCallback
    from trl import DPOTrainer

    from spin_runtime.steps.spin_trainer import SpinDPOTrainer

SCRATCH = ".train-scratch"
DEEPSPEED_FILE = "deepspeed.json"
#: Files the Trainer writes next to the weights that a checkpoint must not carry (pickles).
_DROP_FROM_CHECKPOINT = ("training_args.bin",)


def _log(msg: str) -> None:
    print(f"spin train: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def _synthetic_train_rows(spec: SpinRunSpec, j: int) -> list[dict[str, Any]] | None:
    source = hparams.synthetic_data_for(spec, j)
    if source is None:
        return None
    train_rows, _ = load_synthetic(source)
    return [r.to_dict() for r in train_rows]


def window_rows(run_dir: Path, spec: SpinRunSpec, k: int) -> list[dict[str, Any]]:
    """The training rows of iteration k's data window (SPIN: syn(k−1) ∪ syn(k)), each tagged
    with the iteration it comes from, in file order (shuffle with `train_config.shuffled`)."""
    window = hparams.data_window(spec, k)
    if not window:
        raise DataError(f"iteration {k} has no data window: check dataWindow, startIteration and syntheticData")
    rows: list[dict[str, Any]] = []
    for j in window:
        path = Path(run_dir) / layout.data_path(j, "train")
        part: list[dict[str, Any]] | None
        if path.exists():
            part = read_pairs(path)
        elif j < spec.start_iteration:
            part = _synthetic_train_rows(spec, j)
        else:
            part = None
        if part is None:
            raise DataError(
                f"{path}: training data of iteration {j} not found (iteration {k} trains on iterations "
                f"{', '.join(map(str, window))}); run `spin convert --run-dir {run_dir} --iteration {j}` first"
            )
        rows += [{**r, "iteration": j} for r in part]
    if not rows:
        raise DataError(f"iteration {k}: the data window {window} holds no rows")
    return rows


def identical_pairs(rows: Sequence[Mapping[str, Any]]) -> int:
    """Pairs whose generated answer is the real one: SPIN's loss gives them zero gradient
    (both log-ratios are the same), as in the original, which keeps them."""
    return sum(1 for r in rows if str(r.get("generated", "")).strip() == str(r.get("real", "")).strip())


def training_rows(rows: Sequence[dict[str, Any]], tok: PreTrainedTokenizerBase, spec: SpinRunSpec) -> list[dict[str, Any]]:
    """The rows TRL trains on: conversational rows TRL tokenises (collator trl), or token ids
    built as the original code built them (collator original)."""
    training = spec.training
    if training.collator == "trl":
        return prepare_rows(rows, tok, training.max_prompt_length, system=spec.system_prompt,
                            truncation=training.truncation, max_length=training.max_length)
    out = []
    for i, r in enumerate(rows):
        ids = original_tokens(tok, chat_messages(r["prompt"], spec.system_prompt), r["real"], r["generated"],
                              training.max_length, training.max_prompt_length)
        length = len(ids["prompt_ids"]) + max(len(ids["chosen_ids"]), len(ids["rejected_ids"]))
        out.append({**ids, "id": str(r.get("id", i)), LENGTH_COLUMN: length})
    return out


def _trainer_class() -> Any:
    """TRL's DPOTrainer as spinrun uses it (`spin_trainer`, the one module that touches TRL's
    private parts): cheaper log-probs on CPU, rows that are token ids already taken as they are."""
    from spin_runtime.steps.spin_trainer import SpinDPOTrainer

    return SpinDPOTrainer


# --------------------------------------------------------------------------- set-up


def training_on_gpu(spec: SpinRunSpec) -> bool:
    """Train on GPUs when CUDA is usable and the spec asks for GPUs."""
    return spec.training.gpus_per_node > 0 and models.gpu_available()


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (empty when /proc/cpuinfo is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _warn_slow_bf16(spec: SpinRunSpec, on_gpu: bool) -> None:
    if on_gpu or trl_args.resolved_precision(spec.training.precision, on_gpu) != "bf16":
        return
    flags = cpu_flags()
    if flags and not trl_args.cpu_has_native_bf16(flags):
        _log(
            "warning: training.precision bf16 on a CPU without AVX512-BF16/AMX: bf16 matmuls run far slower "
            "than fp32 here; set training.precision: fp32 (or auto)"
        )


@dataclass
class TrainSetup:
    """What `build_trainer` resolved for iteration k."""

    ctx: StepContext
    start_path: str
    on_gpu: bool
    scratch: Path
    samples: int
    identical_pairs: int = 0
    setup_seconds: float = 0.0
    #: The checkpoint a retried attempt resumes from (None: from the start model).
    resume_from: Path | None = None

    @property
    def checkpoints(self) -> Path:
        return self.ctx.path(layout.checkpoints_dir(self.ctx.iteration, self.ctx.step.name))


def check_chat_template(tok: PreTrainedTokenizerBase, path: str) -> None:
    if not getattr(tok, "chat_template", None):
        raise ModelError(
            f"{path}: the tokenizer has no chat template; SPIN trains on the chat format: add a "
            "chat_template.jinja to the model folder (or use a chat/instruct model)"
        )


def config_kwargs(ctx: StepContext, on_gpu: bool) -> dict[str, Any]:
    """The iteration's `DPOConfig` arguments for the step's checkpoints folder, writing the
    DeepSpeed config first when it is used (the training steps share them)."""
    spec, k = ctx.spec, ctx.iteration
    ds_path: str | None = None
    if trl_args.uses_deepspeed(spec.training, on_gpu):
        ds_file = ctx.path(layout.iter_dir(k)) / DEEPSPEED_FILE
        # every rank writes the same content atomically: the config must exist before DPOConfig
        atomic.atomic_write_json(ds_file, trl_args.deepspeed_config(spec.training.deepspeed))
        ds_path = str(ds_file)
    return trl_args.dpo_config_kwargs(
        spec,
        ctx.hparams,
        on_gpu=on_gpu,
        output_dir=str(ctx.path(layout.checkpoints_dir(k, ctx.step.name))),
        attn_implementation=models.resolve_attn_implementation(spec.training.attn_implementation, on_gpu),
        deepspeed_path=ds_path,
        world_size=ctx.world_size,
    )


def make_config(config_class: Any, kwargs: dict[str, Any]) -> Any:
    """A TRL config from its arguments (under torchrun this sets up torch.distributed)."""
    if "activation_checkpointing" in {f.name for f in dataclasses.fields(config_class)}:
        # transformers 5 renamed it; passing the old name only warns
        kwargs = {("activation_checkpointing" if k == "gradient_checkpointing" else k): v for k, v in kwargs.items()}
    return config_class(**kwargs)


def _dpo_args(ctx: StepContext, on_gpu: bool) -> Any:
    """TRL's DPOConfig for the iteration."""
    from trl import DPOConfig

    return make_config(DPOConfig, config_kwargs(ctx, on_gpu))


def stage_window(ctx: StepContext, prepared: list[dict[str, Any]], scratch: Path, fingerprint: str) -> tuple[Any, Path | None]:
    """(the window as a dataset every rank reads, the checkpoint to resume from). Rank 0 clears what
    a killed attempt left (but its complete checkpoints) and stores the window on the run volume,
    so every rank shares one dataset cache (TRL's reference log-probs are cached beside it)."""
    from accelerate import PartialState
    from datasets import Dataset, load_from_disk

    state = PartialState()
    window_dir = scratch / "window"
    checkpoints = ctx.path(layout.checkpoints_dir(ctx.iteration, ctx.step.name))
    with state.main_process_first():
        if state.is_main_process:
            resume_from = resume.prepare_resume(checkpoints, fingerprint, ctx.log)
            shutil.rmtree(scratch, ignore_errors=True)
            if resume_from is None and ctx.step.name == "train":  # its TensorBoard folder
                shutil.rmtree(ctx.path(layout.logs_dir(ctx.iteration)), ignore_errors=True)
            Dataset.from_list(prepared).save_to_disk(str(window_dir))
    return load_from_disk(str(window_dir)), resume.newest(checkpoints, fingerprint)


def _callbacks(ctx: StepContext, fingerprint: str, extra: Sequence[TrainerCallback]) -> list[Any]:
    """TensorBoard (when asked), timed and per-epoch checkpoints, then the caller's callbacks."""
    spec, k = ctx.spec, ctx.iteration
    out: list[Any] = [resume.timed_checkpoints(spec.training.save_minutes, fingerprint), *extra]
    if epochs.wants_epochs(spec):
        out.insert(1, epochs.epoch_callback(ctx.run_dir, k))
    stop = spec.training.stop_epoch
    if stop is not None:  # after the epoch-model export, which reads the same epoch's end
        out.insert(2 if epochs.wants_epochs(spec) else 1, epochs.stop_after_epoch_callback(stop))
    if "tensorboard" in spec.training.report_to:
        from transformers.integrations import TensorBoardCallback

        tb = TensorBoardCallback()
        tb.logging_dir = str(ctx.path(layout.logs_dir(k)))
        out.insert(0, tb)
    return out


def build_trainer(
    run_dir: Path, iteration: int, callbacks: Sequence[TrainerCallback] = (), ctx: StepContext | None = None
) -> tuple[DPOTrainer, TrainSetup]:
    """A ready `DPOTrainer` for iteration k of the run in `run_dir`, and what it resolved.

    The policy is loaded from the start model's saved folder by path and `ref_model=None`,
    so TRL reloads that same folder as the frozen opponent (or precomputes its log-probs)."""
    t0 = time.perf_counter()
    ctx = ctx or StepContext.open(run_dir, Step(iteration, "train"))
    spec, training = ctx.spec, ctx.spec.training
    on_gpu = training_on_gpu(spec)
    if ctx.is_main:
        _warn_slow_bf16(spec, on_gpu)
    start_path = models.resolve(ctx.start_model, ctx.run_dir)
    tok = models.load_tokenizer(start_path, padding_side="right")
    check_chat_template(tok, start_path)
    rows = trl_args.shuffled(window_rows(ctx.run_dir, spec, ctx.iteration), training.seed)
    prepared = training_rows(rows, tok, spec)

    args = _dpo_args(ctx, on_gpu)
    scratch = ctx.path(layout.iter_dir(ctx.iteration)) / SCRATCH
    fingerprint = rundir.fingerprints(ctx.run)[ctx.step.key]
    dataset, resume_from = stage_window(ctx, prepared, scratch, fingerprint)
    collator = None
    if training.collator == "original":
        collator = original_collator(tok.pad_token_id, tok.eos_token_id, training.max_length)
    trainer = _trainer_class()(
        model=start_path,
        ref_model=None,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        data_collator=collator,
        peft_config=lora_config(spec),
        callbacks=_callbacks(ctx, fingerprint, callbacks),
    )
    setup = TrainSetup(
        ctx=ctx,
        start_path=start_path,
        on_gpu=on_gpu,
        scratch=scratch,
        samples=len(prepared),
        identical_pairs=identical_pairs(rows),
        setup_seconds=time.perf_counter() - t0,
        resume_from=resume_from,
    )
    return trainer, setup


# --------------------------------------------------------------------------- saving


def lora_config(spec: SpinRunSpec) -> Any:
    """PEFT's LoraConfig when training.lora asks for adapters, else None."""
    if not spec.training.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(**trl_args.lora_kwargs(spec.training.lora))


def _tidy_checkpoint(folder: Path) -> None:
    """Drop pickles the Trainer writes beside the weights and re-enable the KV cache that
    gradient checkpointing turned off (the next iteration generates with this model)."""
    for name in _DROP_FROM_CHECKPOINT:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    config = folder / "config.json"
    if config.exists():
        data = json.loads(config.read_text(encoding="utf-8"))
        if data.get("use_cache") is False:
            data["use_cache"] = True
            atomic.atomic_write_json(config, data)


def _merge_lora(setup: TrainSetup, adapter_dir: Path, out: Path, tok: Any) -> None:
    """Fold the trained adapters into the start model, so the next iteration starts from (and
    plays against) a plain checkpoint; the adapters are kept in `adapter/`."""
    import torch
    from peft import PeftModel

    base = models.load_model(setup.start_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    shutil.copytree(adapter_dir, out / "adapter")


def save_checkpoint(trainer: Any, setup: TrainSetup, folder: str | None = None) -> Path:
    """Save the trained model (safetensors + tokenizer with its chat template) atomically to
    `folder` (default `iter-<k>/model`). All ranks take part (ZeRO-3 gathers weights); only rank 0
    writes."""
    final = setup.ctx.path(folder or layout.model_dir(setup.ctx.iteration))
    lora = setup.ctx.spec.training.lora.enabled
    main = trainer.accelerator.is_main_process
    if not main:
        trainer.save_model(str(setup.scratch / f"save-rank{setup.ctx.rank}"))
    else:
        with atomic.atomic_dir(final) as tmp:
            if lora:
                adapter_dir = setup.scratch / "adapter"
                trainer.save_model(str(adapter_dir))
                _merge_lora(setup, adapter_dir, tmp, trainer.processing_class)
            else:
                trainer.save_model(str(tmp))
            trainer.processing_class.save_pretrained(str(tmp))
            _tidy_checkpoint(tmp)
            models.check_checkpoint(tmp)
    trainer.accelerator.wait_for_everyone()
    return final


def select_epoch(setup: TrainSetup, final: Path) -> dict[str, Any]:
    """Score every epoch's model on the held-out split and make the selected one the iteration's
    model (rank 0; `final` holds the last epoch's). Returns what metrics.json records."""
    ctx, training = setup.ctx, setup.ctx.spec.training
    saved = epochs.saved_epochs(ctx.run_dir, ctx.iteration)
    if not saved:
        raise ModelError(f"{ctx.path(layout.iter_dir(ctx.iteration))}/epochs: no epoch model was saved")
    scores = epochs.score_epoch_models(ctx.run_dir, ctx.spec, ctx.iteration, setup.start_path, ctx.hparams.beta, saved)
    chosen = epochs.choose(scores, training.select_epoch, training.select_metric)
    if chosen["epoch"] != saved[-1][0]:
        with atomic.atomic_dir(final) as tmp:
            shutil.copytree(ctx.path(chosen["path"]), tmp, dirs_exist_ok=True)
            (tmp / epochs.EPOCH_FILE).unlink(missing_ok=True)
            _tidy_checkpoint(tmp)
            models.check_checkpoint(tmp)
    metric = training.select_metric
    by_metric = f", {metric} {chosen.get(metric)}" if training.select_epoch == "best" else ""
    ctx.log(
        f"iteration {ctx.iteration}: epoch {chosen['epoch']} of {saved[-1][0]} becomes the model "
        f"(selectEpoch {training.select_epoch}{by_metric})"
    )
    return {
        "scores": scores, "selected": chosen["epoch"], "select": training.select_epoch, "metric": training.select_metric
    }


# --------------------------------------------------------------------------- metrics


def train_metrics(trainer: SpinDPOTrainer, setup: TrainSetup) -> dict[str, Any]:
    """metrics.json "train" section: per-logging-step history and the run summary."""
    spec = setup.ctx.spec
    iter_hparams = setup.ctx.hparams
    history = history_from_log(trainer.state.log_history)
    summary = train_summary(trainer.state.log_history, history, tokens=trainer.trained_tokens)
    summary.update(
        {
            "samples": setup.samples,
            "train_samples": setup.samples,
            "identical_pairs": setup.identical_pairs,
            "window": list(iter_hparams.window),
            "learning_rate": iter_hparams.learning_rate,
            "beta": iter_hparams.beta,
            "epochs": iter_hparams.epochs,
            "loss_type": iter_hparams.loss_type,
            "start_model": iter_hparams.start_model,
            "precision": trl_args.resolved_precision(spec.training.precision, setup.on_gpu),
            "device": "gpu" if setup.on_gpu else "cpu",
            "world_size": setup.ctx.world_size,
            "precompute_ref_log_probs": spec.training.precompute_ref_log_probs,
            "gradient_checkpointing": spec.training.gradient_checkpointing,
            "group_by_length": spec.training.group_by_length,
            "lora": spec.training.lora.enabled,
            "deepspeed": trl_args.uses_deepspeed(spec.training, setup.on_gpu),
            "setup_seconds": setup.setup_seconds,
            "resumed_from_step": resume.checkpoint_step(setup.resume_from) if setup.resume_from else None,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        }
    )
    return {"history": history, "summary": summary}


# --------------------------------------------------------------------------- entry point


def run_train(
    run_dir: Path,
    iteration: int,
    force: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any] | None:
    """Train iteration k unless it is done (or `force`); returns the "train" metrics on rank 0
    (None when skipped). `callbacks` are extra Trainer callbacks (tests, tools)."""
    ctx = StepContext.open(run_dir, Step(iteration, "train"))
    if not ctx.should_run(force):
        return None
    if force and ctx.is_main:  # a forced rerun starts from the start model, not a checkpoint
        shutil.rmtree(ctx.path(layout.checkpoints_dir(iteration)), ignore_errors=True)
    trainer, setup = build_trainer(ctx.run_dir, iteration, callbacks, ctx=ctx)
    if setup.resume_from is not None and ctx.is_main:
        ctx.log(f"iteration {iteration}: resuming from {setup.resume_from} (a previous attempt was interrupted)")
    if ctx.is_main:
        iter_hparams = ctx.hparams
        ctx.log(
            f"iteration {iteration}: {setup.samples} pairs from iterations {list(iter_hparams.window)}, "
            f"lr {iter_hparams.learning_rate:g}, β {iter_hparams.beta:g}, {iter_hparams.loss_type} loss, "
            f"opponent {iter_hparams.start_model}, world size {ctx.world_size}"
        )
        if setup.identical_pairs * 2 > setup.samples:
            ctx.log(
                f"warning: iteration {iteration}: {setup.identical_pairs} of {setup.samples} pairs have generated == real "
                "and carry no gradient: the model already reproduces most answers, so this iteration will change "
                "little (sampled generation or prompts the model has not memorised give SPIN more to learn from)"
            )
    trainer.train(resume_from_checkpoint=str(setup.resume_from) if setup.resume_from else None)
    final = save_checkpoint(trainer, setup)
    metrics: dict[str, Any] | None = None
    if trainer.accelerator.is_main_process:
        metrics = train_metrics(trainer, setup)
        if epochs.wants_epochs(ctx.spec):
            metrics["epoch_selection"] = select_epoch(setup, final)
        ctx.update_metrics("train", metrics)
        shutil.rmtree(setup.scratch, ignore_errors=True)
        ctx.mark_done({"model": layout.model_dir(iteration), "steps": metrics["summary"]["steps"]})
        shutil.rmtree(setup.checkpoints, ignore_errors=True)
        ctx.log(f"iteration {iteration}: saved {final} ({metrics['summary']['steps']} steps)")
    trainer.accelerator.wait_for_everyone()
    return metrics
