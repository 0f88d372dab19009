"""The run report: PNG plots, summary.md (a per-iteration table like the paper's) and
report/index.html, one self-contained page (table and plots embedded) that opens without a server.

Plots: training loss and reward margin per step coloured by iteration; held-out metrics per
model with the start model as the first point of every panel; and SPIN's own picture of
success, the log-probs of real and of generated answers converging (training batches step by
step, and each model's held-out log-probs of the real answers and of its own answers).

Reads only the run directory's metrics.json files; safe to run while a run is in progress.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from spin_runtime.plan import hparams, layout, stages
from spin_runtime.store import atomic, rundir

REPORT_DIR = "report"
INDEX_FILE = "index.html"

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

#: Colours: the start model in grey, iterations from matplotlib's default cycle.
START_COLOUR = "#777777"
REAL_COLOUR, GENERATED_COLOUR = "#1f77b4", "#d62728"
SPIN_COLOUR, SFT_COLOUR = "#2a6f97", "#e07b00"

SFT_PREFIX = layout.SFT_METRICS_PREFIX
#: The held-out metrics the arms are compared on (higher is better), the first one both arms
#: have deciding: (key, name, format).
VERDICT_METRICS: tuple[tuple[str, str, str], ...] = (
    ("exact_match", "held-out exact match", "{:.3f}"),
    ("score", "held-out score", "{:.3f}"),
    ("logp_real", "held-out log p(real answer)", "{:.2f}"),
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


def sft_arm(metrics: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The continued-SFT arm's metrics in the SPIN arm's shape (hparams, train, eval, lm_eval),
    for the iterations that trained or evaluated it; the start model's values stay with SPIN's."""
    out: dict[int, dict[str, Any]] = {}
    for k, m in metrics.items():
        sft = m.get("sft") or {}
        summary = sft.get("summary") or {}
        ev = {key[len(SFT_PREFIX):]: v for key, v in (m.get("eval") or {}).items() if key.startswith(SFT_PREFIX)}
        if not summary and not ev:
            continue
        out[k] = {
            "hparams": {"learning_rate": summary.get("learning_rate"), "beta": None, "epochs": summary.get("epochs")},
            "train": {**summary, "train_samples": summary.get("samples"), "final_margin": None},
            "eval": ev,
            "lm_eval": m.get(f"{SFT_PREFIX}lm_eval") or {},
        }
    return out


def arm_verdict(metrics: dict[int, dict[str, Any]]) -> str | None:
    """One sentence: after the last iteration where both arms were evaluated, which is ahead on
    the first held-out metric both have (exact match, score, log p(real)) and by how much; when
    they are level there, the next metric says who leads."""
    arm = sft_arm(metrics)
    both = [k for k in sorted(arm) if (metrics[k].get("eval") or {}) and arm[k]["eval"]]
    if not both:
        return None
    k = both[-1]
    spin, sft = metrics[k]["eval"], arm[k]["eval"]
    steps = (metrics[k].get("train") or {}).get("steps")
    compute = f" at equal compute ({steps:.0f} optimizer steps in iteration {k})" if steps is not None else ""
    level: list[str] = []
    for key, name, fmt in VERDICT_METRICS:
        a, b = spin.get(key), sft.get(key)
        if a is None or b is None:
            continue
        if fmt.format(a) == fmt.format(b):
            level.append(f"{name} ({fmt.format(a)})")
            continue
        ahead, behind = ("SPIN", "continued SFT") if a > b else ("continued SFT", "SPIN")
        lead = f"{ahead} is ahead of {behind}{'' if level else compute} by {fmt.format(abs(a - b))} {name} " \
               f"({fmt.format(max(a, b))} vs {fmt.format(min(a, b))})"
        if level:
            return f"After iteration {k}, SPIN and continued SFT{compute} are level on {' and '.join(level)}; {lead}."
        return f"After iteration {k}, {lead}."
    if level:
        return f"After iteration {k}, SPIN and continued SFT{compute} are level on {' and '.join(level)}."
    return None


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


# --------------------------------------------------------------------------- pure series


def start_model_eval(metrics: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The start model's held-out values: its log-probs as the first iteration's opponent, margin
    0 by definition (its rewards are relative to itself), and its exact match when measured."""
    if not metrics:
        return {}
    first = metrics[min(metrics)].get("eval") or {}
    out: dict[str, Any] = {"reward_margin": 0.0} if first else {}
    for key, src in (("logp_real", "opponent_logp_real"), ("logp_generated", "opponent_logp_generated"),
                     ("exact_match", "baseline_exact_match"), ("score", "baseline_score")):  # fmt: skip
        if first.get(src) is not None:
            out[key] = first[src]
    return out


def heldout_series(metrics: dict[int, dict[str, Any]], key: str) -> tuple[list[str], list[float]]:
    """(labels, values) of one held-out metric per model: the start model, then every iteration
    that was evaluated."""
    labels: list[str] = []
    values: list[float] = []
    start = start_model_eval(metrics)
    if start.get(key) is not None:
        labels.append("start")
        values.append(float(start[key]))
    for k in sorted(metrics):
        value = (metrics[k].get("eval") or {}).get(key)
        if value is not None:
            labels.append(f"iter{k}")
            values.append(float(value))
    return labels, values


def convergence_series(metrics: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model (start, iter0, iter1, ...): its mean held-out log-prob of the real answers and of
    its own (generated) answers. A model's own answers are generated at the start of the next
    iteration, whose evaluation scores them with that model as the opponent; the last model's
    own answers are not generated yet (None)."""
    if not metrics:
        return []
    ks = sorted(k for k, m in metrics.items() if m.get("eval"))
    if not ks:
        return []
    rows: list[dict[str, Any]] = []
    # the model playing the opponent in iteration k: the start model for the first, else iter(k-1)
    for k in ks:
        e = metrics[k]["eval"]
        rows.append({
            "model": "start" if k == ks[0] else f"iter{k - 1}",
            "logp_real": e.get("opponent_logp_real"),
            "logp_own": e.get("opponent_logp_generated"),
        })  # fmt: skip
    last = metrics[ks[-1]]["eval"]
    rows.append({"model": f"iter{ks[-1]}", "logp_real": last.get("logp_real"), "logp_own": None})
    return rows


# --------------------------------------------------------------------------- table


def summary_rows(run_dir: Path, metrics: dict[int, dict[str, Any]] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-iteration table (the start model first)."""
    metrics = load_metrics(run_dir) if metrics is None else metrics
    header = ["iteration", *[c[0] for c in COLUMNS]]
    rows: list[list[str]] = []
    start = start_model_eval(metrics)
    if start:
        rows.append(["start model", *[
            _fmt(start.get(key), fmt) if sec == "eval" and key in ("logp_real", "logp_generated", "exact_match", "score") else "–"
            for _, sec, key, fmt in COLUMNS
        ]])  # fmt: skip
    arm = sft_arm(metrics)
    for k, m in sorted(metrics.items()):
        rows.append([f"iter{k}", *[_fmt((m.get(sec) or {}).get(key), fmt) for _, sec, key, fmt in COLUMNS]])
        if k in arm:
            rows.append([f"iter{k} · SFT", *[_fmt((arm[k].get(sec) or {}).get(key), fmt) for _, sec, key, fmt in COLUMNS]])
    return header, rows


def summary_table(run_dir: Path) -> str:
    """The per-iteration markdown table (the start model as a first row)."""
    header, rows = summary_rows(run_dir)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _training_history(metrics: dict[int, dict[str, Any]]) -> list[tuple[int, list[int], list[dict[str, Any]]]]:
    """(iteration, global steps, history rows) with steps continuing across iterations."""
    out = []
    offset = 0
    for k, m in sorted(metrics.items()):
        history = [h for h in (m.get("train") or {}).get("history", []) if "loss" in h]
        steps = [offset + int(h.get("step", i + 1)) for i, h in enumerate(history)]
        out.append((k, steps, history))
        offset = steps[-1] if steps else offset
    return out


def _save_figure(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out, write the PNG atomically (a report read mid-write never shows half a plot), close."""
    import io

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic.atomic_write_bytes(path, buf.getvalue())
    return path


def _plot_training(metrics: dict[int, dict[str, Any]], out: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, steps, history in _training_history(metrics):
        axes[0].plot(steps, [h["loss"] for h in history], marker=".", label=f"iter{k}")
        axes[1].plot(steps, [h.get("rewards/margins", float("nan")) for h in history], marker=".", label=f"iter{k}")
    axes[0].axhline(math.log(2), color=START_COLOUR, lw=0.8, ls=":", label="log 2 (no preference)")
    axes[1].axhline(0.0, color=START_COLOUR, lw=0.8, ls=":")
    axes[0].set(title="SPIN training loss", xlabel="step (across iterations)", ylabel="loss")
    axes[1].set(title="reward margin, real − generated", xlabel="step (across iterations)", ylabel="margin")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save_figure(plt, fig, out / "training.png")


#: Held-out panels: (metric key, title, y label).
HELDOUT_PANELS: tuple[tuple[str, str, str], ...] = (
    ("logp_real", "held-out log p(real answer)", "mean summed log-prob"),
    ("logp_generated", "held-out log p(generated answer)", "mean summed log-prob"),
    ("reward_margin", "held-out reward margin vs opponent", "β·Δ log-ratio"),
    ("exact_match", "held-out exact match", "share correct"),
)


def arm_series(metrics: dict[int, dict[str, Any]], key: str) -> tuple[list[str], list[float]]:
    """(labels, values) of one held-out metric for the continued-SFT arm: the start model (both
    arms start there), then every iteration whose arm was evaluated; empty without the arm."""
    arm = sft_arm(metrics)
    points = [(f"iter{k}", arm[k]["eval"][key]) for k in sorted(arm) if arm[k]["eval"].get(key) is not None]
    if not points:
        return [], []
    start = start_model_eval(metrics).get(key)
    if start is not None:
        points.insert(0, ("start", start))
    return [p[0] for p in points], [float(p[1]) for p in points]


def _plot_heldout(metrics: dict[int, dict[str, Any]], out: Path) -> Path | None:
    panels = [(key, title, ylabel) for key, title, ylabel in HELDOUT_PANELS if heldout_series(metrics, key)[1]]
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.6), squeeze=False)
    for ax, (key, title, ylabel) in zip(axes[0], panels, strict=True):
        labels, values = heldout_series(metrics, key)
        xs = list(range(len(labels)))
        arm_labels, arm_values = arm_series(metrics, key)
        ax.plot(xs, values, marker="o", color=SPIN_COLOUR, label="SPIN" if arm_values else None)
        if arm_values:
            ax.plot([labels.index(a) for a in arm_labels if a in labels],
                    [v for a, v in zip(arm_labels, arm_values, strict=True) if a in labels],
                    marker="s", color=SFT_COLOUR, ls="--", label="continued SFT, equal compute")  # fmt: skip
        if labels and labels[0] == "start":
            ax.plot([0], [values[0]], marker="o", ms=9, color=START_COLOUR, ls="none", label="start model")
            if key == "reward_margin":
                ax.annotate("0 by definition", (0, values[0]), textcoords="offset points", xytext=(6, 8), fontsize=8,
                            color=START_COLOUR)  # fmt: skip
        if arm_values:
            ax.legend(fontsize=7, loc="best")
        ax.set_xticks(xs, labels)
        if key == "exact_match":
            ax.set_ylim(-0.03, 1.03)
        ax.set(title=title, ylabel=ylabel)
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
    return _save_figure(plt, fig, out / "heldout.png")


def _plot_logps(metrics: dict[int, dict[str, Any]], out: Path) -> Path | None:
    history = _training_history(metrics)
    rows = convergence_series(metrics)
    has_train = any(any("logps/real" in h or "logps/chosen" in h for h in hist) for _, _, hist in history)
    if not has_train and not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4))
    ax = axes[0]
    for i, (k, steps, hist) in enumerate(history):
        real = [h.get("logps/real", h.get("logps/chosen")) for h in hist]
        gen = [h.get("logps/generated", h.get("logps/rejected")) for h in hist]
        ax.plot(steps, real, color=REAL_COLOUR, marker=".", label="real answers" if i == 0 else None)
        ax.plot(steps, gen, color=GENERATED_COLOUR, marker=".", label="generated answers" if i == 0 else None)
        if steps and i > 0:
            ax.axvline(steps[0] - 0.5, color=START_COLOUR, lw=0.8, ls="--")
        if steps:
            ax.annotate(f"iter{k}", (steps[0], 1.0), xycoords=("data", "axes fraction"), xytext=(2, -12),
                        textcoords="offset points", fontsize=8, color=START_COLOUR)  # fmt: skip
    ax.set(title="training batches: log p of real vs generated answers", xlabel="step (across iterations)",
           ylabel="mean summed log-prob")  # fmt: skip
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")

    ax = axes[1]
    xs = list(range(len(rows)))
    real = [r["logp_real"] for r in rows]
    own = [r["logp_own"] for r in rows]
    ax.plot(xs, [float("nan") if v is None else v for v in real], marker="o", color=REAL_COLOUR,
            label="real answers")  # fmt: skip
    ax.plot(xs, [float("nan") if v is None else v for v in own], marker="s", color=GENERATED_COLOUR,
            label="its own greedy answers")  # fmt: skip
    for x, (a, b) in enumerate(zip(real, own, strict=True)):
        if a is not None and b is not None:
            ax.vlines(x, min(a, b), max(a, b), color=START_COLOUR, lw=0.8, ls=":")
            ax.annotate(f"gap {abs(b - a):.1f}", (x, (a + b) / 2), textcoords="offset points", xytext=(8, -4),
                        fontsize=8, color=START_COLOUR)  # fmt: skip
    ax.set_xticks(xs, [r["model"] for r in rows])
    ax.set(title="held-out: each model's log p of real vs its own answers", ylabel="mean summed log-prob")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save_figure(plt, fig, out / "logps.png")


# --------------------------------------------------------------------------- outputs


#: What each plot shows, for summary.md and index.html.
CAPTIONS: dict[str, str] = {
    "training": "SPIN loss and reward margin (real − generated) per training step; each iteration starts again "
    "at log 2 and zero margin, because its opponent is its own start model.",
    "heldout": "Held-out metrics of every model, the start model first (grey): its log-probs are those it gives as "
    "the first iteration's opponent, its reward margin is 0 by definition. The generated answers of iteration k "
    "are those of iteration k's start model. With evaluation.sftBaseline the continued-SFT arm (dashed, orange) "
    "trained at equal compute from the same start model is drawn beside SPIN.",
    "logps": "SPIN's picture of success: the log-probs of real and generated answers converge. Left, within each "
    "iteration the model learns to prefer the real answers of its training batches over its opponent's; right, each "
    "model's held-out log-prob of the real answers and of its own greedy answers (generated at the start of the "
    "next iteration) — the gap closes as the model's answers become indistinguishable from the real ones.",
}


def _html_page(
    run: Any, header: list[str], rows: list[list[str]], plots: list[Path], run_dir: Path, verdict: str | None = None
) -> str:
    def esc(x: Any) -> str:
        return html.escape(str(x))

    table = ["<table>", "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    for r in rows:
        table.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>")
    table.append("</table>")
    figures = []
    for p in plots:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        figures.append(
            f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(CAPTIONS.get(p.stem, ''))}</figcaption></figure>"
        )
    logs = []
    for k in stages.iterations(run.spec):
        names = sorted((run_dir / layout.iter_dir(k) / "logs").glob("*.log"))
        if names:
            links = ", ".join(f'<a href="../{esc(layout.iter_dir(k))}/logs/{esc(n.name)}">{esc(n.stem)}</a>' for n in names)
            logs.append(f"<li>iteration {k}: {links}</li>")
    spec = run.spec
    return "\n".join([
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>SPIN run {esc(run.metadata.name)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f3f3f3}td:first-child{text-align:left}figure{margin:1.5em 0}img{max-width:100%}"
        "figcaption{color:#555;font-size:14px;max-width:60em}code{background:#f3f3f3;padding:0 3px}</style>",
        "</head><body>",
        f"<h1>SPIN run <code>{esc(run.metadata.name)}</code></h1>",
        f"<p>Model {esc(spec.model.describe())} · iterations {spec.start_iteration}..{spec.iterations - 1} · "
        f"{esc(spec.training.loss_type)} loss · written {esc(atomic.now_iso())}</p>",
        *table,
        f"<p><strong>{esc(verdict)}</strong></p>" if verdict else "",
        *figures,
        ("<h2>Step logs</h2><ul>" + "".join(logs) + "</ul>") if logs else "",
        "</body></html>",
        "",
    ])  # fmt: skip


def epoch_table(metrics: dict[int, dict[str, Any]]) -> list[str]:
    """Markdown lines listing every scored epoch of each iteration (training.saveEpochs /
    selectEpoch) with the one that became the iteration's model; nothing without epochs."""
    lines: list[str] = []
    for k in sorted(metrics):
        epochs = (metrics[k].get("train") or {}).get("epoch_selection") or {}
        if not epochs.get("scores"):
            continue
        if not lines:
            lines += ["## Epochs", "", "| iteration | epoch | held-out margin | held-out acc | logp real | exact match | |",
                      "|---|---|---|---|---|---|---|"]
        for s in epochs["scores"]:
            chosen = "**selected** (" + str(epochs.get("select")) + ")" if s["epoch"] == epochs.get("selected") else ""
            lines.append(
                f"| iter{k} | {s['epoch']} | {_fmt(s.get('reward_margin'), '{:.3f}')} | {_fmt(s.get('reward_accuracy'), '{:.3f}')}"
                f" | {_fmt(s.get('logp_real'), '{:.2f}')} | {_fmt(s.get('exact_match'), '{:.3f}')} | {chosen} |"
            )
    return [*lines, ""] if lines else []


def write_report(run_dir: Path) -> Path:
    """Write report/summary.md, report/index.html and the plots; returns the summary's path."""
    run_dir = Path(run_dir)
    run = rundir.load_run(run_dir)
    out = run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    metrics = load_metrics(run_dir)
    plots: list[Path] = []
    if metrics:
        plots.append(_plot_training(metrics, out))
        plots += [p for p in (_plot_heldout(metrics, out), _plot_logps(metrics, out)) if p is not None]
    header, rows = summary_rows(run_dir, metrics)
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *["| " + " | ".join(r) + " |" for r in rows]]
    lines = [
        f"# SPIN run `{run.metadata.name}`",
        "",
        f"Model: {run.spec.model.describe()} · iterations {run.spec.start_iteration}..{run.spec.iterations - 1}"
        f" · loss {run.spec.training.loss_type}",
        "",
        *table,
        "",
        *([verdict, ""] if (verdict := arm_verdict(metrics)) else []),
        *epoch_table(metrics),
    ]
    for p in plots:
        lines += [f"![{p.stem}]({p.name})", "", CAPTIONS.get(p.stem, ""), ""]
    path = out / "summary.md"
    atomic.atomic_write_text(path, "\n".join(lines))
    atomic.atomic_write_text(out / INDEX_FILE, _html_page(run, header, rows, plots, run_dir, verdict))
    return path
