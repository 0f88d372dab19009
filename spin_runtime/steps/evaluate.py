"""`spin evaluate`: held-out metrics of iteration k's model against its opponent (the iteration's
start model) on `iter-<k>/data/test.parquet`.

For every held-out pair: the summed log-prob of the real and of the generated answer (prompt
tokens masked, fp32) under the new model and under the opponent; from them SPIN's implicit
rewards β·(log πθ − log π_ref), the reward margin and accuracy. Then the greedy answers of the new
model to the held-out prompts, judged against the reference — and those of the start model on the
run's first iteration (`baseline_*`): `exact_match` (built-in rows by their task scorer, other rows
by normalised match with the real answer; `evaluation.exactMatch`) and `score` (the mean of the
user's `evaluation.scorer`). Optionally lm-evaluation-harness scores ("lm_eval").
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_runtime.data.pairs import read_pairs
from spin_runtime.errors import DataError
from spin_runtime.modeling import models
from spin_runtime.modeling.scoring import (
    encode_pairs,
    heldout_scores,
    load_scorer,
    pair_logps,
    reward_metrics,
)
from spin_runtime.plan import layout, stages
from spin_runtime.steps import progress as step_progress
from spin_runtime.steps.context import StepContext

if TYPE_CHECKING:
    pass



def _log(msg: str) -> None:
    print(f"spin evaluate: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- encoding


# --------------------------------------------------------------------------- exact match


# --------------------------------------------------------------------------- entry point


def _finite_or_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def run_evaluate(run_dir: Path, iteration: int, force: bool = False) -> dict[str, Any] | None:
    """Evaluate iteration k unless its marker exists (or `force`); returns the "eval" metrics."""
    import torch

    ctx = StepContext.open(run_dir, stages.Step(iteration, "evaluate"))
    run_dir, spec, k = ctx.run_dir, ctx.spec, iteration
    if not ctx.should_run(force):
        return None
    t0 = time.perf_counter()
    prog = step_progress.for_step(run_dir, ctx.step, rank=ctx.rank)
    prog.phase("loading the held-out pairs and the new model")
    if spec.evaluation.lm_eval.enabled:
        from spin_runtime.steps import lm_eval

        lm_eval.require_executable()  # fail before spending time on the other metrics
    test_path = run_dir / layout.data_path(k, "test")
    if not test_path.exists():
        raise DataError(f"{test_path}: held-out data not found; run `spin convert --run-dir {run_dir} --iteration {k}` first")
    rows = read_pairs(test_path)
    if spec.evaluation.max_samples is not None:
        rows = rows[: spec.evaluation.max_samples]
    if not rows:
        raise DataError(f"{test_path}: no held-out rows to evaluate")
    scorer = load_scorer(spec.evaluation.scorer) if spec.evaluation.scorer else None  # fail before the models load

    new_path = run_dir / layout.model_dir(k)
    models.check_checkpoint(new_path)
    start_path = models.resolve(ctx.start_model, run_dir)
    on_gpu = models.gpu_available()
    device = "cuda" if on_gpu else "cpu"
    dtype = models.resolve_dtype("auto", on_gpu)
    beta = ctx.hparams.beta

    tok = models.load_tokenizer(str(new_path), padding_side="right")
    pairs = encode_pairs(
        tok, rows, spec.training.max_prompt_length, spec.training.max_length,
        system=spec.system_prompt, truncation=spec.training.truncation,
    )
    baseline_too = k == spec.start_iteration

    policy = models.load_model(str(new_path), dtype=dtype, device=device)
    policy.eval()
    prog.phase(f"log-probs of {len(pairs)} held-out pairs, new model")
    pol_real, pol_gen = pair_logps(policy, pairs, tok.pad_token_id)
    prog.phase("held-out answers, new model")
    answers = heldout_scores(policy, tok, spec, rows, scorer)
    del policy

    opponent = models.load_model(start_path, dtype=dtype, device=device)
    opponent.eval()
    opp_tok = models.load_tokenizer(start_path, padding_side="right")
    prog.phase(f"log-probs of {len(pairs)} held-out pairs, opponent")
    ref_real, ref_gen = pair_logps(opponent, pairs, opp_tok.pad_token_id)
    if baseline_too:
        prog.phase("held-out answers, start model")
    baseline = heldout_scores(opponent, opp_tok, spec, rows, scorer, prefix="baseline_") if baseline_too else {}
    del opponent
    if on_gpu:
        torch.cuda.empty_cache()

    metrics = reward_metrics(pol_real, pol_gen, ref_real, ref_gen, beta)
    metrics.update(
        {
            "model": layout.model_dir(k),
            "opponent": ctx.start_model.describe(),
            "seconds": time.perf_counter() - t0,
        }
    )
    metrics.update(answers)
    metrics.update(baseline)
    metrics = _finite_or_none(metrics)
    ctx.update_metrics("eval", metrics)

    if spec.evaluation.lm_eval.enabled:
        from spin_runtime.steps import lm_eval

        prog.phase("lm-evaluation-harness")
        scores = lm_eval.run_lm_eval(
            new_path,
            spec.evaluation.lm_eval,
            run_dir / layout.iter_dir(k) / "lm_eval",
            dtype="bfloat16" if on_gpu else "float32",
            device=device,
        )
        ctx.update_metrics("lm_eval", scores)

    ctx.mark_done({"samples": metrics["samples"]})
    em_text = "".join(
        f", {name.replace('_', ' ')} {metrics[name]:.3f}" for name in ("exact_match", "score") if name in metrics
    )
    base_text = f" (start model {metrics['baseline_exact_match']:.3f})" if "baseline_exact_match" in metrics else ""
    prog.finish(f"margin {metrics['reward_margin']:.3f}, accuracy {metrics['reward_accuracy']:.2f}{em_text}{base_text}")
    _log(
        f"iteration {k}: margin {metrics['reward_margin']:.4f}, accuracy {metrics['reward_accuracy']:.3f}"
        f"{em_text} on {metrics['samples']} held-out pairs"
    )
    return metrics
