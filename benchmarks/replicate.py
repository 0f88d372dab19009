"""Small-scale replication of SPIN's comparison on CPU (SmolLM2-135M-Instruct), as the paper runs it.

Per task and seed:
1. SFT SmolLM2-135M-Instruct on the task's training examples with TRL's SFTTrainer until the
   held-out loss on a validation split stops improving (patience 1); the best epoch is the start.
2. One `spin run` from that start with `evaluation.sftBaseline` on: SPIN iterations 0..T-1 and,
   beside each, continued SFT on the same real answers for the same optimizer steps; the evaluate
   step scores both on the test split (disjoint from the validation split).
Tasks: `addition-3digit` (built-in, exact match) and `docstrings` (free-form: the first sentence
of a standard-library docstring, token F1 with `freeform:token_f1`). Writes
benchmarks/results/replicate.{json,md,png}: mean and min–max over seeds.

    python benchmarks/replicate.py [--tasks addition-3digit docstrings] [--seeds 0 1] [--iterations 2]
    python benchmarks/replicate.py --aggregate-only    # tables from the finished runs under --work
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import freeform  # noqa: E402
from sft import converge  # noqa: E402

from spin_runtime import report  # noqa: E402
from spin_runtime.api.spec import BuiltinTask, ModelSource, SpinRunSpec  # noqa: E402
from spin_runtime.data import tasks  # noqa: E402
from spin_runtime.modeling import models  # noqa: E402

#: Per task: the spec's dataset kind, the answer metric (eval key) and its name, new tokens.
TASKS: dict[str, dict[str, Any]] = {
    "addition-3digit": {"metric": "exact_match", "metric_name": "exact match", "max_new_tokens": 16},
    "docstrings": {"metric": "score", "metric_name": "token F1", "max_new_tokens": 40, "scorer": "freeform:token_f1"},
}


# --------------------------------------------------------------------------- data and spec


def task_rows(task: str, seed: int, n_train: int, n_val: int, n_test: int, work: Path) -> tuple[dict, list, list]:
    """(spec dataset, train rows, validation rows) for a task and seed; test rows are the spec's."""
    if task == "docstrings":
        splits = freeform.write_dataset(work / "data", seed, {"train": n_train, "val": n_val, "test": n_test})
        rows = {
            s: [{"prompt": r["prompt"], "real": r["response"], "generated": r["response"]} for r in v]
            for s, v in splits.items()
        }
        dataset = {"path": str(work / "data"), "split": "train", "testSplit": "test", "maxSamples": n_train,
                   "testSize": n_test, "seed": seed}  # fmt: skip
        return dataset, rows["train"], rows["val"]
    # Built-in: the spec's train/test are the generator's first n_train + n_test; validation follows.
    train, rest = tasks.make_examples(BuiltinTask(name=task, train_size=n_train, test_size=n_test + n_val, seed=seed))
    as_rows = [
        [{"prompt": e.prompt, "real": e.response, "generated": e.response} for e in part]
        for part in (train, rest[n_test:])
    ]
    dataset = {"builtin": {"name": task, "trainSize": n_train, "testSize": n_test, "seed": seed}}
    return dataset, as_rows[0], as_rows[1]


def spin_spec(args: argparse.Namespace, task: str, seed: int, dataset: dict, start: Path) -> dict:
    """The SpinRun of one task and seed, from the converged SFT start, with the continued-SFT arm."""
    t = TASKS[task]
    evaluation: dict[str, Any] = {"exactMatch": True, "sftBaseline": {"enabled": True}}
    if args.arm_lr is not None:
        evaluation["sftBaseline"]["learningRate"] = args.arm_lr
    if "scorer" in t:
        evaluation["scorer"] = t["scorer"]
    return {
        "apiVersion": "spin.dev/v1alpha1",
        "kind": "SpinRun",
        "metadata": {"name": f"replicate-{task}-s{seed}"},
        "spec": {
            "model": {"path": str(start)},
            "dataset": dataset,
            "iterations": args.iterations,
            "schedule": [{"learningRate": args.lr, "beta": args.beta, "epochs": 1}],
            "generation": {"engine": "transformers", "maxNewTokens": t["max_new_tokens"], "batchSize": 64, "shards": 1},
            "training": {
                "gpusPerNode": 0, "perDeviceBatchSize": 8, "maxLength": 128, "maxPromptLength": 64,
                "precision": "fp32", "gradientCheckpointing": False, "loggingSteps": 1, "optimizer": args.optimizer,
                "precomputeRefLogProbs": True, "seed": seed,
            },
            "evaluation": evaluation,
            "storage": {"newClaim": {}},
        },
    }  # fmt: skip


# --------------------------------------------------------------------------- one task and seed


def run_one(args: argparse.Namespace, task: str, seed: int) -> dict[str, Any]:
    work = Path(args.work) / f"{task}-s{seed}"
    work.mkdir(parents=True, exist_ok=True)
    dataset, train, val = task_rows(task, seed, args.train, args.val, args.test, work)
    spec_doc = spin_spec(args, task, seed, dataset, work / "sft")
    spec = SpinRunSpec.model_validate(spec_doc["spec"])
    sft_file = work / "sft.json"
    if not (models.has_weights(work / "sft") and sft_file.exists()):
        base = models.resolve_source(ModelSource(builtin="smollm2-135m-instruct"))
        info = converge(spec, base, train, val, work / "sft", lr=args.sft_lr, max_epochs=args.max_epochs,
                        patience=args.patience)  # fmt: skip
        sft_file.write_text(json.dumps(info, indent=2))
    sft_info = json.loads(sft_file.read_text())
    print(f"[{task} s{seed}] SFT: epoch {sft_info['epoch']} of {sft_info['epochs_run']} run, held-out loss "
          f"{[round(x, 3) for x in sft_info['eval_loss_by_epoch']]}, {sft_info['seconds']:.0f}s", flush=True)  # fmt: skip
    spec_file = work / "spin.yaml"
    spec_file.write_text(yaml.safe_dump(spec_doc, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")])}
    t0 = time.time()
    cmd = [sys.executable, "-m", "spin_runtime.cli", "run", str(spec_file), "--run-dir", str(work / "spin")]
    subprocess.run(cmd, check=True, env=env)
    result = {"task": task, "seed": seed, "sft": sft_info, "spin_seconds": time.time() - t0,
              "iterations": iteration_rows(report.load_metrics(work / "spin"), TASKS[task]["metric"])}  # fmt: skip
    (work / "result.json").write_text(json.dumps(result, indent=2))
    return result


def iteration_rows(metrics: dict[int, dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per iteration: optimizer steps of SPIN and of the arm, and both arms' held-out values; the
    start model's values ride on iteration 0 (`start_*`)."""
    out = []
    for k in sorted(metrics):
        m = metrics[k]
        if not (m.get("eval") or {}).get("sft_logp_real"):
            continue  # not evaluated yet (a run stopped early): no row
        ev, summary = m.get("eval") or {}, (m.get("train") or {}).get("summary") or m.get("train") or {}
        row = {
            "iteration": k,
            "spin_steps": int(summary.get("steps", 0)),
            "sft_steps": int(((m.get("sft") or {}).get("summary") or {}).get("steps", 0)),
            "spin": {
                "metric": ev.get(metric),
                "logp_real": ev.get("logp_real"),
                "reward_accuracy": ev.get("reward_accuracy"),
            },
            "sft": {"metric": ev.get(f"sft_{metric}"), "logp_real": ev.get("sft_logp_real")},
        }
        if k == 0:
            row["start"] = {"metric": ev.get(f"baseline_{metric}"), "logp_real": ev.get("opponent_logp_real")}
        out.append(row)
    return out


# --------------------------------------------------------------------------- tables


def spread(values: list[float], fmt: str) -> str:
    """Mean, with min–max over seeds when there are several: `0.580 (0.56–0.60)`."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    mean = fmt.format(sum(vals) / len(vals))
    return mean if len(vals) == 1 else f"{mean} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"


def task_table(task: str, results: list[dict[str, Any]]) -> list[str]:
    """Markdown tables of a task: over its seeds (the SFT start, then per iteration SPIN and
    continued SFT at equal optimizer steps, cumulative; mean (min–max) over the seeds that ran
    that iteration), then seed by seed."""
    name = TASKS[task]["metric_name"]
    n_iter = max(len(r["iterations"]) for r in results)
    seeds = ", ".join(str(r["seed"]) for r in results)
    lines = [
        f"**{task}** — seeds {seeds}",
        "",
        f"| model | optimizer steps (cumulative) | held-out {name} | mean log p(real) | held-out reward accuracy |",
        "|---|---|---|---|---|",
    ]
    starts = [r["iterations"][0]["start"] for r in results]
    lines.append(f"| SFT start | 0 | {spread([s['metric'] for s in starts], '{:.3f}')} | "
                 f"{spread([s['logp_real'] for s in starts], '{:.2f}')} | – |")  # fmt: skip
    for k in range(n_iter):
        ran = [r for r in results if len(r["iterations"]) > k]
        its = [r["iterations"][k] for r in ran]
        cum = [float(sum(it["spin_steps"] for it in r["iterations"][: k + 1])) for r in ran]
        only = "" if len(ran) == len(results) else f" (seed {', '.join(str(r['seed']) for r in ran)} only)"
        for arm, label in (("spin", f"SPIN iter{k}{only}"), ("sft", "continued SFT (same steps)")):
            acc = spread([it["spin"]["reward_accuracy"] for it in its], "{:.2f}") if arm == "spin" else "–"
            lines.append(f"| {label} | {spread(cum, '{:.0f}')} | {spread([it[arm]['metric'] for it in its], '{:.3f}')} | "
                         f"{spread([it[arm]['logp_real'] for it in its], '{:.2f}')} | {acc} |")  # fmt: skip
    head = " | ".join(f"iter{k} SPIN / SFT" for k in range(n_iter))
    lines += ["", f"| seed | SFT epoch chosen (of run) | held-out loss by epoch | start | {head} |",
              "|---" * (4 + n_iter) + "|"]  # fmt: skip
    for r in results:
        cells = [f"{it['spin']['metric']:.3f} / {it['sft']['metric']:.3f}" for it in r["iterations"]]
        cells += ["–"] * (n_iter - len(cells))
        losses = ", ".join(f"{x:.3f}" for x in r["sft"]["eval_loss_by_epoch"])
        lines.append(f"| {r['seed']} | {r['sft']['epoch']} ({r['sft']['epochs_run']}) | {losses} | "
                     f"{r['iterations'][0]['start']['metric']:.3f} | {' | '.join(cells)} |")  # fmt: skip
    return lines


def verdict(task: str, results: list[dict[str, Any]]) -> str:
    """Per iteration, in how many seeds SPIN is ahead of continued SFT on the answer metric, the
    mean gap, and SPIN against its SFT start."""
    name = TASKS[task]["metric_name"]
    parts = []
    for k in range(max(len(r["iterations"]) for r in results)):
        ran = [r for r in results if len(r["iterations"]) > k]
        gaps = [r["iterations"][k]["spin"]["metric"] - r["iterations"][k]["sft"]["metric"] for r in ran]
        vs_start = [r["iterations"][k]["spin"]["metric"] - r["iterations"][0]["start"]["metric"] for r in ran]
        parts.append(
            f"iter{k}: SPIN ahead of continued SFT on {name} in {sum(g > 0 for g in gaps)} of {len(gaps)} seeds "
            f"({sum(g == 0 for g in gaps)} level), mean gap {round(sum(gaps) / len(gaps), 3) + 0.0:+.3f}, SPIN vs SFT start "
            f"{round(sum(vs_start) / len(vs_start), 3) + 0.0:+.3f}"
        )
    return "; ".join(parts) + "."


def collect(work: Path) -> list[dict[str, Any]]:
    """The result of every task and seed under `work`: result.json when the run finished, else
    what its run directory holds so far (the iterations evaluated; `partial`)."""
    out = []
    for d in sorted(p for p in work.iterdir() if (p / "sft.json").exists()):
        if (d / "result.json").exists():
            out.append(json.loads((d / "result.json").read_text()))
            continue
        task, _, seed = d.name.rpartition("-s")
        its = iteration_rows(report.load_metrics(d / "spin"), TASKS[task]["metric"]) if (d / "spin").exists() else []
        if its:
            sft = json.loads((d / "sft.json").read_text())
            out.append({"task": task, "seed": int(seed), "sft": sft, "spin_seconds": None, "iterations": its,
                        "partial": True})  # fmt: skip
    return out


def aggregate(args: argparse.Namespace, out: Path) -> None:
    results = collect(Path(args.work))
    if not results:
        print(f"no evaluated iteration under {args.work} yet")
        return
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_task.setdefault(r["task"], []).append(r)
    (out / "replicate.json").write_text(json.dumps({"config": vars(args), "runs": results}, indent=2))
    lines: list[str] = []
    for task, rs in by_task.items():
        lines += task_table(task, rs) + ["", verdict(task, rs), ""]
    a = args
    lines.append(
        f"SFT: TRL SFTTrainer, {a.train} examples, lr {a.sft_lr} AdamW constant, batch 8, early stop on the held-out "
        f"loss of {a.val} validation examples (patience {a.patience}, cap {a.max_epochs} epochs). SPIN: lr {a.lr}, "
        f"β {a.beta}, 1 epoch, {a.optimizer}, data window 2; continued SFT: lr "
        f"{a.arm_lr if a.arm_lr is not None else f'{a.lr} (= SPIN lr, the default)'}, same optimizer, steps and "
        f"examples; {a.test} test examples; mean (min–max) over seeds."
    )
    (out / "replicate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(by_task, out / "replicate.png")


def plot(by_task: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(by_task), 2, figsize=(10, 3.6 * len(by_task)), squeeze=False)
    for row, (task, rs) in enumerate(by_task.items()):
        n_iter = max(len(r["iterations"]) for r in rs)
        xs = ["SFT start"] + [f"iter{k}" for k in range(n_iter)]
        for col, (key, title) in enumerate((("metric", TASKS[task]["metric_name"]), ("logp_real", "mean log p(real)"))):
            ax = axes[row][col]
            for arm, label, marker, color in (("spin", "SPIN", "o", "C0"), ("sft", "continued SFT", "s", "C1")):
                series = [[r["iterations"][0]["start"][key]] + [it[arm][key] for it in r["iterations"]] for r in rs]
                for ys in series:
                    ax.plot(xs[: len(ys)], ys, marker=marker, alpha=0.3, color=color)
                mean = [
                    sum(ys[i] for ys in series if len(ys) > i) / sum(len(ys) > i for ys in series)
                    for i in range(len(xs))
                ]
                ax.plot(xs, mean, marker=marker, lw=2.5, color=color, label=f"{label} (mean over seeds)")
            ax.set(title=f"{task}: held-out {title}")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--val", type=int, default=32)
    ap.add_argument("--test", type=int, default=50)
    ap.add_argument("--sft-lr", type=float, default=1e-4)
    ap.add_argument("--max-epochs", type=int, default=8)
    ap.add_argument("--patience", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--optimizer", default="rmsprop")
    ap.add_argument("--arm-lr", type=float, help="continued SFT learning rate (default: the SPIN lr)")
    ap.add_argument("--aggregate-only", action="store_true")
    ap.add_argument("--work", default=str(ROOT / "runs" / "replicate"))
    ap.add_argument("--out", default=str(BENCH / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.aggregate_only:
        for seed in args.seeds:
            for task in args.tasks:
                run_one(args, task, seed)
    aggregate(args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
