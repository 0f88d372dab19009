"""The run report: PNG plots (training loss and reward margin per step coloured by iteration,
held-out metrics per iteration) and summary.md, a per-iteration table like the paper's.

Reads only the run directory's metrics.json files; safe to run while a run is in progress.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from spin_runtime.plan import hparams, layout, stages
from spin_runtime.store import atomic, rundir

REPORT_DIR = "report"

#: Columns of the summary table: (header, section, key, format).
COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("lr", "hparams", "learning_rate", "{:.1e}"),
    ("β", "hparams", "beta", "{:g}"),
    ("pairs", "train", "train_samples", "{:.0f}"),
    ("steps", "train", "steps", "{:.0f}"),
    ("train loss", "train", "final_loss", "{:.4f}"),
    ("train margin", "train", "final_margin", "{:.3f}"),
    ("held-out acc", "eval", "reward_accuracy", "{:.3f}"),
    ("held-out margin", "eval", "reward_margin", "{:.3f}"),
    ("logp real", "eval", "logp_real", "{:.2f}"),
    ("logp generated", "eval", "logp_generated", "{:.2f}"),
    ("exact match", "eval", "exact_match", "{:.3f}"),
    ("score", "eval", "score", "{:.3f}"),
    ("lm-eval avg", "lm_eval", "average", "{:.3f}"),
)


def load_metrics(run_dir: Path) -> dict[int, dict[str, Any]]:
    """metrics.json of every iteration that has one, with the hyperparameters it really trained
    with (recorded by `spin train`; the stored spec's only for iterations not trained yet)."""
    run = rundir.load_run(run_dir)
    out: dict[int, dict[str, Any]] = {}
    for k in stages.iterations(run.spec):
        path = Path(run_dir) / layout.metrics_path(k)
        if not path.exists():
            continue
        m = atomic.read_json(path)
        hp = hparams.hparams(run.spec, k)
        train = m.get("train") or {}
        ran = train.get("summary") or {}
        m["hparams"] = {
            "learning_rate": ran.get("learning_rate", hp.learning_rate),
            "beta": ran.get("beta", hp.beta),
            "epochs": ran.get("epochs", hp.epochs),
        }
        history = [h for h in train.get("history", []) if "loss" in h]
        if history:
            train.setdefault("final_loss", history[-1]["loss"])
            margin = history[-1].get("rewards/margins")
            if margin is not None:
                train.setdefault("final_margin", margin)
        m["train"] = {**train, **(train.get("summary") or {})}
        out[k] = m
    return out


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def summary_table(run_dir: Path) -> str:
    """The per-iteration markdown table (the start model's held-out answers as a first row)."""
    metrics = load_metrics(run_dir)
    header = ["iteration", *[c[0] for c in COLUMNS]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base_eval = next((m["eval"] for m in metrics.values() if any(k.startswith("baseline_") for k in m.get("eval") or {})), None)
    if base_eval is not None:
        row = ["start model", *[_fmt(base_eval.get(f"baseline_{key}"), fmt) if sec == "eval" else "–" for _, sec, key, fmt in COLUMNS]]
        lines.append("| " + " | ".join(row) + " |")
    for k, m in sorted(metrics.items()):
        row = [f"iter{k}", *[_fmt((m.get(sec) or {}).get(key), fmt) for _, sec, key, fmt in COLUMNS]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _plot(run_dir: Path, metrics: dict[int, dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for k, m in sorted(metrics.items()):
        history = [h for h in (m.get("train") or {}).get("history", []) if "loss" in h]
        steps = [offset + h.get("step", i + 1) for i, h in enumerate(history)]
        axes[0].plot(steps, [h["loss"] for h in history], marker=".", label=f"iter{k}")
        axes[1].plot(steps, [h.get("rewards/margins", float("nan")) for h in history], marker=".", label=f"iter{k}")
        offset = steps[-1] if steps else offset
    axes[0].set(title="SPIN training loss", xlabel="step (across iterations)", ylabel="loss")
    axes[1].set(title="reward margin (real − generated)", xlabel="step (across iterations)", ylabel="margin")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / "training.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    evals = {k: m["eval"] for k, m in metrics.items() if m.get("eval")}
    if evals:
        keys = [("logp_real", "held-out log p(real)"), ("logp_generated", "held-out log p(generated)"),
                ("reward_accuracy", "held-out reward accuracy"), ("exact_match", "exact match")]
        keys = [(key, title) for key, title in keys if any(key in e for e in evals.values())]
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6), squeeze=False)
        xs = sorted(evals)
        for ax, (key, title) in zip(axes[0], keys, strict=True):
            ys = [evals[k].get(key, float("nan")) for k in xs]
            labels = [f"iter{k}" for k in xs]
            if key == "exact_match":
                base = next((e["baseline_exact_match"] for e in evals.values() if "baseline_exact_match" in e), None)
                if base is not None:
                    ys, labels = [base, *ys], ["start", *labels]
            ax.plot(labels, ys, marker="o")
            ax.set(title=title)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / "heldout.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(run_dir: Path) -> Path:
    """Write report/summary.md and the plots; returns the summary's path."""
    run_dir = Path(run_dir)
    run = rundir.load_run(run_dir)
    out = run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    metrics = load_metrics(run_dir)
    plots = _plot(run_dir, metrics, out) if metrics else []
    lines = [
        f"# SPIN run `{run.metadata.name}`",
        "",
        f"Model: {run.spec.model.describe()} · iterations {run.spec.start_iteration}..{run.spec.iterations - 1}"
        f" · loss {run.spec.training.loss_type}",
        "",
        summary_table(run_dir),
        "",
        *[f"![{p.stem}]({p.name})" for p in plots],
        "",
    ]
    path = out / "summary.md"
    atomic.atomic_write_text(path, "\n".join(lines))
    return path
