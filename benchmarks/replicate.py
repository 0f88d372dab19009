"""Small-scale replication of SPIN's core claims on CPU (SmolLM2-135M, built-in 3-digit addition).

1. SFT SmolLM2-135M-Instruct on N task examples until it is imperfect (held-out exact match).
2. SPIN iterations 0..T-1 from that SFT checkpoint on the same SFT prompts, with `spin run`.
3. Continued SFT from the same checkpoint for the same number of optimizer steps per iteration.
Writes benchmarks/results/replicate.{json,md,png}: held-out exact match and mean log p(real)
per iteration for both, to test: SPIN improves on SFT; later iterations improve on earlier ones;
SPIN beats equal-compute continued SFT.

    python benchmarks/replicate.py [--sft-examples 100] [--iterations 3] [--lr 5e-6] [--beta 0.1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from sft import sft  # noqa: E402

from spin_runtime.api.spec import BuiltinTask, ModelSource, SpinRunSpec  # noqa: E402
from spin_runtime.data import tasks  # noqa: E402
from spin_runtime.modeling import models  # noqa: E402
from spin_runtime.modeling.scoring import answer_logps, encode_pairs, exact_match  # noqa: E402
from spin_runtime.plan import layout  # noqa: E402
from spin_runtime.store import atomic  # noqa: E402


def heldout(model_path: str, spec: SpinRunSpec, rows: list[dict]) -> dict:
    """Exact match and mean summed log p(real answer) on held-out rows."""
    tok = models.load_tokenizer(model_path, padding_side="right")
    model = models.load_model(model_path).eval()
    pairs = encode_pairs(tok, rows, spec.training.max_prompt_length, spec.training.max_length)
    logps = answer_logps(model, [(p.prompt, p.real) for p in pairs], tok.pad_token_id)
    em = exact_match(model, tok, spec, rows)
    return {"exact_match": em[0] if em else None, "logp_real": sum(logps) / len(logps)}


def spin_spec(args: argparse.Namespace, sft_dir: Path) -> dict:
    return {
        "apiVersion": "spin.dev/v1alpha1",
        "kind": "SpinRun",
        "metadata": {"name": "replicate"},
        "spec": {
            "model": {"path": str(sft_dir)},
            "dataset": {"builtin": {"name": args.task, "trainSize": args.sft_examples, "testSize": args.test_examples, "seed": args.seed}},
            "iterations": args.iterations,
            "schedule": [{"learningRate": args.lr, "beta": args.beta, "epochs": args.epochs}],
            "generation": {"engine": "transformers", "maxNewTokens": 16, "batchSize": 64, "shards": 1},
            "training": {
                "gpusPerNode": 0, "perDeviceBatchSize": 8, "maxLength": 128, "maxPromptLength": 64,
                "precision": "fp32", "gradientCheckpointing": False, "loggingSteps": 1, "optimizer": args.optimizer,
                "precomputeRefLogProbs": True,
            },
            # Held-out exact match is measured here, once per checkpoint, for SPIN and SFT alike.
            "evaluation": {"exactMatch": False},
            "storage": {"newClaim": {}},
        },
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="addition-3digit")
    ap.add_argument("--sft-examples", type=int, default=100)
    ap.add_argument("--test-examples", type=int, default=100)
    ap.add_argument("--sft-lr", type=float, default=1e-4)
    ap.add_argument("--sft-epochs", type=float, default=1.0)
    ap.add_argument("--sft-dir", help="reuse this SFT checkpoint (default: WORK/sft, made when absent)")
    ap.add_argument("--cont-sft-lr", type=float, nargs="+", help="continued SFT learning rate(s), one arm each (default: --sft-lr)")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--optimizer", default="rmsprop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT / "runs" / "replicate"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    task = BuiltinTask(name=args.task, train_size=args.sft_examples, test_size=args.test_examples, seed=args.seed)
    train, test = tasks.make_examples(task)
    test_rows = [{"prompt": e.prompt, "real": e.response, "generated": e.response, "answer": e.answer} for e in test]
    base = models.resolve_source(ModelSource(builtin="smollm2-135m-instruct"))

    sft_dir = Path(args.sft_dir) if args.sft_dir else work / "sft"
    if not models.has_weights(sft_dir):
        info = sft(base, [(e.prompt, e.response) for e in train], sft_dir, epochs=args.sft_epochs, lr=args.sft_lr)
        print(f"SFT: {info['steps']} steps, final loss {info['final_loss']:.3f}, {info['seconds']:.0f}s")
    spec_doc = spin_spec(args, sft_dir)
    spec = SpinRunSpec.model_validate(spec_doc["spec"])
    results: dict = {"config": vars(args), "sft": heldout(str(sft_dir), spec, test_rows)}
    print("SFT start:", results["sft"])

    spec_file = work / "spin.yaml"
    spec_file.write_text(yaml.safe_dump(spec_doc, sort_keys=False))
    spin_dir = work / "spin"
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "spin_runtime.cli", "run", str(spec_file), "--run-dir", str(spin_dir)], check=True)
    results["spin_seconds"] = time.time() - t0
    results["spin"] = []
    for k in range(args.iterations):
        m = atomic.read_json(spin_dir / layout.metrics_path(k))
        steps = int(m["train"].get("summary", m["train"]).get("steps", 0))
        ev = m.get("eval") or {}
        trained = {"reward_accuracy": ev.get("reward_accuracy"), "reward_margin": ev.get("reward_margin")}
        results["spin"].append({"iteration": k, "steps": steps, **trained, **heldout(str(spin_dir / layout.model_dir(k)), spec, test_rows)})
        print(f"SPIN iter{k}:", results["spin"][-1])

    # Continued SFT from the same start, the same optimizer steps per iteration, one arm per lr.
    pairs = [(e.prompt, e.response) for e in train]
    results["continued_sft"] = {}
    for lr in args.cont_sft_lr or [args.sft_lr]:
        arm: list[dict] = results["continued_sft"].setdefault(f"{lr:g}", [])
        prev = sft_dir
        for k, row in enumerate(results["spin"]):
            nxt = work / f"cont-sft-lr{lr:g}-{k}"
            if not models.has_weights(nxt):
                sft(str(prev), pairs, nxt, max_steps=max(1, row["steps"]), lr=lr, seed=args.seed + k + 1)
            arm.append({"iteration": k, "steps": row["steps"], **heldout(str(nxt), spec, test_rows)})
            print(f"continued SFT lr {lr:g} {k}:", arm[-1])
            prev = nxt
    results["seconds"] = time.time() - t_start

    (out / "replicate.json").write_text(json.dumps(results, indent=2))
    lines = [
        "| model | optimizer steps (cumulative) | held-out exact match | mean log p(real) | held-out reward accuracy |",
        "|---|---|---|---|---|",
        f"| SFT start | 0 | {results['sft']['exact_match']:.3f} | {results['sft']['logp_real']:.2f} | – |",
    ]
    total = 0
    for k, s in enumerate(results["spin"]):
        total += s["steps"]
        acc = "–" if s.get("reward_accuracy") is None else f"{s['reward_accuracy']:.2f}"
        lines.append(f"| SPIN iter{s['iteration']} | {total} | {s['exact_match']:.3f} | {s['logp_real']:.2f} | {acc} |")
        for lr, arm in results["continued_sft"].items():
            c = arm[k]
            lines.append(f"| continued SFT, lr {lr} (same steps) | {total} | {c['exact_match']:.3f} | {c['logp_real']:.2f} | – |")
    a = args
    lines.append(
        f"\nSFT: {a.sft_examples} examples, {a.sft_epochs} epoch(s), lr {a.sft_lr}; SPIN: lr {a.lr}, β {a.beta}, "
        f"{a.epochs} epoch(s), {a.optimizer}; continued SFT lr {', '.join(results['continued_sft'])}; {a.test_examples} held-out; "
        f"{results['seconds'] / 60:.0f} min in all."
    )
    (out / "replicate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = ["SFT"] + [f"iter{s['iteration']}" for s in results["spin"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in ((axes[0], "exact_match", "held-out exact match"), (axes[1], "logp_real", "mean log p(real answer)")):
        ax.plot(xs, [results["sft"][key]] + [s[key] for s in results["spin"]], marker="o", label="SPIN")
        for lr, arm in results["continued_sft"].items():
            ax.plot(xs, [results["sft"][key]] + [c[key] for c in arm], marker="s", label=f"continued SFT (lr {lr})")
        ax.set(title=title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "replicate.png", dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
