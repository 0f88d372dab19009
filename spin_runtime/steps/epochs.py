"""Epochs as the SPIN authors used them: the model at the end of every epoch of an iteration is
kept (`iter-<k>/epochs/epoch-<e>`), scored on the held-out split against the iteration's
opponent, and `training.selectEpoch` (last, best by `selectMetric`, or an epoch number N, after
which training stops) decides which one becomes the iteration's model. Each epoch's end is also a resumable checkpoint, so a run killed after
epoch e resumes from there."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from spin_runtime.api.spec import SpinRunSpec
from spin_runtime.plan import layout
from spin_runtime.steps.resume import COMPLETE_FILE
from spin_runtime.store import atomic

#: Files of a resumable checkpoint that are training state, not the model.
_STATE_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin", "scaler.pt", COMPLETE_FILE)
#: Written into an epoch folder once the model in it is complete.
EPOCH_FILE = "spin-epoch.json"


def wants_epochs(spec: SpinRunSpec) -> bool:
    """Whether this run keeps and scores every epoch's model."""
    return spec.training.save_epochs or spec.training.select_epoch == "best"


def export_epoch_model(checkpoint: Path, out: Path, epoch: int, step: int) -> None:
    """Copy the model (weights, config, tokenizer) of a finished checkpoint into `out` atomically,
    leaving the optimizer and trainer state behind."""
    with atomic.atomic_dir(out) as tmp:
        for item in checkpoint.iterdir():
            if item.name in _STATE_FILES or item.name.startswith(("rng_state", "global_step")):
                continue
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
        atomic.atomic_write_json(tmp / EPOCH_FILE, {"epoch": epoch, "step": step, "time": atomic.now_iso()})


def saved_epochs(run_dir: Path, k: int) -> list[tuple[int, Path]]:
    """(epoch, folder) of every complete epoch model of iteration k, in epoch order."""
    root = Path(run_dir) / layout.iter_dir(k) / "epochs"
    out: list[tuple[int, Path]] = []
    if not root.is_dir():
        return out
    for folder in root.iterdir():
        if (folder / EPOCH_FILE).is_file() and folder.name.startswith("epoch-"):
            out.append((int(folder.name.split("-", 1)[1]), folder))
    return sorted(out)


def choose(scores: list[dict[str, Any]], select: str | int, metric: str) -> dict[str, Any]:
    """The epoch entry that becomes the iteration's model: the last, epoch `select` when it is a
    number, or the one with the highest `metric` (the earliest among equals; entries without the
    metric never win)."""
    if not scores:
        raise ValueError("no epoch was scored")
    if isinstance(select, int):
        numbered = [s for s in scores if s["epoch"] == select]
        if not numbered:
            raise ValueError(f"epoch {select} (training.selectEpoch) was not saved; saved: {[s['epoch'] for s in scores]}")
        return numbered[0]
    if select == "last":
        return scores[-1]
    ranked = [s for s in scores if s.get(metric) is not None]
    if not ranked:
        raise ValueError(f"training.selectMetric {metric} was not measured for any epoch (exact_match needs answers)")
    best = max(s[metric] for s in ranked)
    return next(s for s in ranked if s[metric] == best)


def stop_after_epoch_callback(epoch: int) -> Any:
    """A TrainerCallback that ends training at the end of epoch `epoch`: the learning-rate schedule
    keeps the length of every scheduled epoch, so the model is "epoch N of an M-epoch run"."""
    from transformers import TrainerCallback

    class StopAfterEpoch(TrainerCallback):
        """Training stops once `epoch` whole epochs are done."""

        def on_epoch_end(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
            if int(round(state.epoch or 0)) >= epoch:
                control.should_training_stop = True
            return control

    return StopAfterEpoch()


def epoch_callback(run_dir: Path, k: int) -> Any:
    """A TrainerCallback that saves a resumable checkpoint at every epoch's end and, on rank 0,
    exports that checkpoint's model to `iter-<k>/epochs/epoch-<e>`."""
    from transformers import TrainerCallback

    class EpochModels(TrainerCallback):
        """Per-epoch resumable checkpoints and model exports."""

        def __init__(self) -> None:
            self.pending: int | None = None

        def on_epoch_end(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
            self.pending = int(round(state.epoch or 0))
            control.should_save = True
            return control

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
            if self.pending is not None and state.is_world_process_zero:
                checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if checkpoint.is_dir():
                    export_epoch_model(checkpoint, Path(run_dir) / layout.epoch_dir(k, self.pending), self.pending,
                                       state.global_step)
            self.pending = None
            return control

    return EpochModels()


def score_epoch_models(
    run_dir: Path, spec: SpinRunSpec, k: int, opponent_path: str, beta: float, epochs: list[tuple[int, Path]]
) -> list[dict[str, Any]]:
    """Held-out metrics of every epoch's model (reward margin and accuracy against the opponent,
    mean log p of the real answers, exact match where answers exist), in epoch order."""
    from spin_runtime.data.pairs import read_pairs
    from spin_runtime.errors import DataError
    from spin_runtime.modeling import models
    from spin_runtime.modeling.scoring import encode_pairs, exact_match, pair_logps, reward_metrics

    test_path = Path(run_dir) / layout.data_path(k, "test")
    rows = read_pairs(test_path)[: spec.evaluation.max_samples]
    if not rows:
        raise DataError(f"{test_path}: no held-out rows to score the epochs on (training.selectEpoch needs them)")
    on_gpu = models.gpu_available()
    device, dtype = ("cuda" if on_gpu else "cpu"), models.resolve_dtype("auto", on_gpu)
    tok = models.load_tokenizer(str(epochs[0][1]), padding_side="right")
    pairs = encode_pairs(tok, rows, spec.training.max_prompt_length, spec.training.max_length,
                         system=spec.system_prompt, truncation=spec.training.truncation)
    opponent = models.load_model(opponent_path, dtype=dtype, device=device).eval()
    ref_real, ref_gen = pair_logps(opponent, pairs, tok.pad_token_id)
    del opponent
    do_exact = any(r.get("answer") is not None for r in rows)
    scores: list[dict[str, Any]] = []
    for epoch, folder in epochs:
        policy = models.load_model(str(folder), dtype=dtype, device=device).eval()
        pol_real, pol_gen = pair_logps(policy, pairs, tok.pad_token_id)
        em = exact_match(policy, tok, spec, rows) if do_exact else None
        del policy
        entry: dict[str, Any] = {"epoch": epoch, "path": layout.epoch_dir(k, epoch)}
        entry.update(reward_metrics(pol_real, pol_gen, ref_real, ref_gen, beta))
        entry["exact_match"] = em[0] if em is not None else None
        scores.append(entry)
    return scores
