"""What `spin train` records of a training run: the per-step history of TRL's metrics under their
SPIN names (real = chosen, generated = rejected) and the run's totals."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: TRL metric names and their SPIN names (real = chosen, generated = rejected).
SPIN_ALIASES: dict[str, str] = {
    "rewards/chosen": "rewards/real",
    "rewards/rejected": "rewards/generated",
    "logps/chosen": "logps/real",
    "logps/rejected": "logps/generated",
    "logits/chosen": "logits/real",
    "logits/rejected": "logits/generated",
}


#: Per-logging-step keys kept in metrics.json (besides step and epoch) when TRL logs them.
HISTORY_KEYS: tuple[str, ...] = (
    "loss",
    "learning_rate",
    "grad_norm",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "entropy",
    "mean_token_accuracy",
    "num_tokens",
)


def _finite(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def history_from_log(log_history: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-logging-step entries of the Trainer's `log_history` (those with a loss), with the
    SPIN names of TRL's chosen/rejected metrics added."""
    history: list[dict[str, Any]] = []
    for entry in log_history:
        if "loss" not in entry or "train_runtime" in entry:
            continue
        row: dict[str, Any] = {"step": int(entry.get("step", 0)), "epoch": _finite(entry.get("epoch"))}
        for key in HISTORY_KEYS:
            if key in entry:
                row[key] = _finite(entry[key])
        for trl_name, spin_name in SPIN_ALIASES.items():
            if trl_name in row:
                row[spin_name] = row[trl_name]
        history.append(row)
    return history


def train_summary(
    log_history: Iterable[Mapping[str, Any]],
    history: Sequence[Mapping[str, Any]],
    tokens: float | None = None,
) -> dict[str, Any]:
    """Run totals: steps, runtime, samples/s and tokens/s. `tokens` counts the non-padding
    tokens of the policy batches over all ranks (default: the last logged `num_tokens`)."""
    final: Mapping[str, Any] = {}
    for entry in log_history:
        if "train_runtime" in entry:
            final = entry
    runtime = _finite(final.get("train_runtime")) or 0.0
    if tokens is None:
        tokens = max((float(h.get("num_tokens") or 0.0) for h in history), default=0.0)
    summary: dict[str, Any] = {
        "steps": int(final.get("step", history[-1]["step"] if history else 0)),
        "train_runtime": runtime,
        "train_samples_per_second": _finite(final.get("train_samples_per_second")),
        "train_steps_per_second": _finite(final.get("train_steps_per_second")),
        "tokens": int(tokens),
        "tokens_per_second": tokens / runtime if runtime > 0 else None,
        "final_loss": history[-1].get("loss") if history else None,
        "final_margin": history[-1].get("rewards/margins") if history else None,
        "mean_train_loss": _finite(final.get("train_loss")),
    }
    return summary
