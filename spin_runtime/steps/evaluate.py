"""`spin evaluate`: held-out metrics of iteration k's model against its opponent (the iteration's
start model) on `iter-<k>/data/test.parquet`.

For every held-out pair: the summed log-prob of the real and of the generated answer (prompt
tokens masked, fp32) under the new model and under the opponent; from them SPIN's implicit
rewards β·(log πθ − log π_ref), the reward margin and accuracy. Then the greedy answers of the new
model to the held-out prompts, judged against the reference — and those of the start model on the
run's first iteration (`baseline_*`): `exact_match` (built-in rows by their task scorer, other rows
by normalised match with the real answer; `evaluation.exactMatch`) and `score` (the mean of the
user's `evaluation.scorer`). Optionally lm-evaluation-harness scores ("lm_eval"). With
`evaluation.sftBaseline` the continued-SFT arm's model gets the same log-probs, answers and
lm-eval scores (`sft_*` keys, section "sft_lm_eval").
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spin_runtime.data.pairs import read_pairs
from spin_runtime.errors import DataError
from spin_runtime.modeling import models
from spin_runtime.modeling.scoring import (
    EncodedPair,
    Scorer,
    encode_pairs,
    heldout_scores,
    load_scorer,
    pair_logps,
    reward_metrics,
)
from spin_runtime.plan import layout, stages
from spin_runtime.steps import step_progress
from spin_runtime.steps.context import StepContext

SFT_PREFIX = layout.SFT_METRICS_PREFIX


def _log(msg: str) -> None:
    print(f"spin evaluate: {msg}", file=sys.stderr, flush=True)


def _finite_or_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


@dataclass
class HeldOut:
    """The held-out rows of iteration k, encoded once, and where the models run."""

    rows: list[dict[str, Any]]
    pairs: list[EncodedPair]
    scorer: Scorer | None
    device: str
    dtype: Any
    on_gpu: bool


def load_heldout(ctx: StepContext) -> HeldOut:
    """Read and encode iteration k's held-out pairs (the scorer imported before any model loads)."""
    spec, k, run_dir = ctx.spec, ctx.iteration, ctx.run_dir
    test_path = run_dir / layout.data_path(k, "test")
    if not test_path.exists():
        raise DataError(f"{test_path}: held-out data not found; run `spin convert --run-dir {run_dir} --iteration {k}` first")
    rows = read_pairs(test_path)
    if spec.evaluation.max_samples is not None:
        rows = rows[: spec.evaluation.max_samples]
    if not rows:
        raise DataError(f"{test_path}: no held-out rows to evaluate")
    scorer = load_scorer(spec.evaluation.scorer) if spec.evaluation.scorer else None
    on_gpu = models.gpu_available()
    tok = models.load_tokenizer(str(run_dir / layout.model_dir(k)), padding_side="right")
    pairs = encode_pairs(
        tok, rows, spec.training.max_prompt_length, spec.training.max_length,
        system=spec.system_prompt, truncation=spec.training.truncation,
    )  # fmt: skip
    return HeldOut(rows, pairs, scorer, "cuda" if on_gpu else "cpu", models.resolve_dtype("auto", on_gpu), on_gpu)


def score_model(
    ctx: StepContext, path: str, held: HeldOut, prog: step_progress.Progress, who: str, *, prefix: str | None = ""
) -> tuple[list[float], list[float], dict[str, Any]]:
    """One model's log-probs of the held-out real and generated answers, and (unless `prefix` is
    None) its greedy answers scored, with keys prefixed; the model is freed afterwards."""
    model = models.load_model(path, dtype=held.dtype, device=held.device)
    model.eval()
    tok = models.load_tokenizer(path, padding_side="right")
    prog.phase(f"log-probs of {len(held.pairs)} held-out pairs, {who}")
    real, generated = pair_logps(model, held.pairs, tok.pad_token_id)
    answers: dict[str, Any] = {}
    if prefix is not None:
        prog.phase(f"held-out answers, {who}")
        answers = heldout_scores(model, tok, ctx.spec, held.rows, held.scorer, prefix=prefix)
    del model
    if held.on_gpu:
        import torch

        torch.cuda.empty_cache()
    return real, generated, answers


def arm_metrics(ctx: StepContext, held: HeldOut, prog: step_progress.Progress) -> dict[str, Any]:
    """The continued-SFT arm's held-out values (`sft_*`): log-probs of the real and generated
    answers and its greedy answers scored, as for the SPIN model."""
    path = str(ctx.path(layout.sft_model_dir(ctx.iteration)))
    models.check_checkpoint(Path(path))
    real, generated, answers = score_model(ctx, path, held, prog, "continued-SFT arm", prefix=SFT_PREFIX)
    values = {"logp_real": sum(real) / len(real), "logp_generated": sum(generated) / len(generated)}
    return {**{f"{SFT_PREFIX}{k}": v for k, v in values.items()}, **answers, f"{SFT_PREFIX}model": layout.sft_model_dir(ctx.iteration)}


def lm_eval_sections(ctx: StepContext, held: HeldOut, prog: step_progress.Progress) -> None:
    """lm-evaluation-harness on the iteration's model (section "lm_eval") and on the arm's
    ("sft_lm_eval") when evaluation.sftBaseline asks."""
    from spin_runtime.steps import lm_eval

    k, spec = ctx.iteration, ctx.spec
    targets = [("lm_eval", layout.model_dir(k), "lm_eval")]
    if spec.evaluation.sft_baseline.enabled:
        targets.append((f"{SFT_PREFIX}lm_eval", layout.sft_model_dir(k), "lm_eval-sft"))
    for section, model, folder in targets:
        prog.phase("lm-evaluation-harness" + (", continued-SFT arm" if section != "lm_eval" else ""))
        scores = lm_eval.run_lm_eval(
            ctx.path(model), spec.evaluation.lm_eval, ctx.path(layout.iter_dir(k)) / folder,
            dtype="bfloat16" if held.on_gpu else "float32", device=held.device,
        )  # fmt: skip
        ctx.update_metrics(section, scores)


def summary_line(metrics: dict[str, Any]) -> str:
    """The step's one-line result: margin, accuracy, exact match/score, the start model's and the arm's."""
    em_text = "".join(
        f", {name.replace('_', ' ')} {metrics[name]:.3f}" for name in ("exact_match", "score") if name in metrics
    )
    others = [f"start model {metrics['baseline_exact_match']:.3f}"] if "baseline_exact_match" in metrics else []
    if metrics.get(f"{SFT_PREFIX}exact_match") is not None:
        others.append(f"continued SFT {metrics[f'{SFT_PREFIX}exact_match']:.3f}")
    extra = f" ({', '.join(others)})" if others else ""
    return f"margin {metrics['reward_margin']:.3f}, accuracy {metrics['reward_accuracy']:.2f}{em_text}{extra}"


def run_evaluate(run_dir: Path, iteration: int, force: bool = False) -> dict[str, Any] | None:
    """Evaluate iteration k unless its marker exists (or `force`); returns the "eval" metrics."""
    ctx = StepContext.open(run_dir, stages.Step(iteration, "evaluate"))
    spec, k = ctx.spec, iteration
    if not ctx.should_run(force):
        return None
    t0 = time.perf_counter()
    prog = step_progress.for_step(ctx.run_dir, ctx.step, rank=ctx.rank)
    prog.phase("loading the held-out pairs and the new model")
    if spec.evaluation.lm_eval.enabled:
        from spin_runtime.steps import lm_eval

        lm_eval.require_executable()  # fail before spending time on the other metrics
    held = load_heldout(ctx)
    new_path = ctx.path(layout.model_dir(k))
    models.check_checkpoint(new_path)
    pol_real, pol_gen, answers = score_model(ctx, str(new_path), held, prog, "new model")
    first = k == spec.start_iteration  # the start model's own answers are scored once, as a baseline
    start_path = models.resolve(ctx.start_model, ctx.run_dir)
    ref_real, ref_gen, baseline = score_model(
        ctx, start_path, held, prog, "start model" if first else "opponent", prefix="baseline_" if first else None
    )
    metrics = reward_metrics(pol_real, pol_gen, ref_real, ref_gen, ctx.hparams.beta)
    metrics.update({"model": layout.model_dir(k), "opponent": ctx.start_model.describe()})
    metrics.update(answers)
    metrics.update(baseline)
    if spec.evaluation.sft_baseline.enabled:
        metrics.update(arm_metrics(ctx, held, prog))
    metrics["seconds"] = time.perf_counter() - t0
    metrics = _finite_or_none(metrics)
    ctx.update_metrics("eval", metrics)
    if spec.evaluation.lm_eval.enabled:
        lm_eval_sections(ctx, held, prog)
    ctx.mark_done({"samples": metrics["samples"]})
    prog.finish(summary_line(metrics))
    _log(f"iteration {k}: {summary_line(metrics)} on {metrics['samples']} held-out pairs")
    return metrics
