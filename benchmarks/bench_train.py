"""SPIN training-step throughput on CPU: `spin train` (our fast path) against TRL's `DPOTrainer`
with its defaults (fp32, live reference, gradient checkpointing), measured side by side.

SmolLM2-135M-Instruct on two sets of pairs: the demo's (3-digit addition, 8 pairs per step,
≤ 128 tokens) and 256-token pairs (4 pairs per step, 200–256 tokens each). Every configuration
runs in its own process (own allocator, own peak RSS), all of them alive at once and taking
turns: one step of A, one step of B, ..., then a GEMM probe, in alternating order, so that
baseline and candidate see the same load on a shared machine (the per-round ratios are paired).
The fp32 GEMM peak is the best of the probes taken between the steps. FLOPs are counted as
6·N·tokens for the policy (+2·N·tokens for a live reference), tokens = non-padding tokens.

    .venv/bin/python benchmarks/bench_train.py                 # both sets, 4 timed steps each (~15 min)
    .venv/bin/python benchmarks/bench_train.py --steps 2 --sets demo

Writes benchmarks/results/train.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
#: Parameters of SmolLM2-135M's (tied) vocabulary projection: 49152 × 576.
_HEAD_PARAMS = 49152 * 576
#: A learning rate large enough for the loss and margins to move within a few steps.
LEARNING_RATE = 1e-6

#: Pair sets: pairs per step, max length, max prompt length.
SETS: dict[str, dict[str, int]] = {
    "demo": {"pairs_per_step": 8, "max_length": 128, "max_prompt_length": 64},
    "long": {"pairs_per_step": 4, "max_length": 256, "max_prompt_length": 128},
}

#: name → (description, spec.training overrides, trainer); overrides None = TRL's DPOTrainer defaults.
CONFIGS: dict[str, tuple[str, dict[str, Any] | None, str]] = {
    "trl-default": ("TRL DPOTrainer defaults: fp32, live reference, gradient checkpointing", None, "trl"),
    "spin-fast-before": (
        "spin train before #14: TRL's DPOTrainer, fp32, precomputed reference, no gradient checkpointing",
        {"precision": "fp32", "precomputeRefLogProbs": True, "gradientCheckpointing": False},
        "trl",
    ),
    "spin-fast": (
        "spin train fast path: SpinDPOTrainer, fp32, precomputed reference, no gradient checkpointing",
        {"precision": "fp32", "precomputeRefLogProbs": True, "gradientCheckpointing": False},
        "spin",
    ),
    # our CPU defaults (live reference, checkpointing) with the fast log-probs: run it with --configs
    "spin-fp32": (
        "spin train, CPU defaults: SpinDPOTrainer, fp32, live reference, gradient checkpointing",
        {"precision": "auto", "precomputeRefLogProbs": False, "gradientCheckpointing": True},
        "spin",
    ),
}

WORDS = (
    "model data train answer question light river stone cloud green table music paper garden window "
    "silver orange forest bridge candle planet rocket winter summer yellow pencil basket mirror castle "
    "dragon ocean valley thunder marble rabbit number system value result method process energy water "
    "because however therefore first second finally example important different general special"
).split()


# --------------------------------------------------------------------------- data


def _text(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n_words)]
    out, sentence = [], []
    for w in words:
        sentence.append(w)
        if len(sentence) >= rng.randint(8, 14):
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    if sentence:
        out.append(" ".join(sentence).capitalize() + ".")
    return " ".join(out)


def make_pairs(n: int, tok: Any, seed: int = 0, max_length: int = 256) -> list[dict[str, Any]]:
    """n pairs whose prompt+answer sequences (chat template) have 200–256 tokens; the real answer
    is fluent-ish text, the generated one the same words shuffled (a learnable difference)."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        prompt = "Write a short paragraph about " + _text(rng, rng.randint(20, 45))
        real = _text(rng, rng.randint(120, 190))
        words = real.split()
        rng.shuffle(words)
        generated = " ".join(words[: rng.randint(int(len(words) * 0.85), len(words))])

        def length(answer: str, prompt: str = prompt) -> int:
            msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            out = tok.apply_chat_template(msgs, tokenize=True)
            return len(out["input_ids"] if hasattr(out, "keys") else out)

        if 200 <= length(real) <= max_length and 200 <= length(generated) <= max_length:
            rows.append({"id": str(len(rows)), "prompt": prompt, "real": real, "generated": generated, "answer": None})
    return rows


def demo_pairs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Pairs shaped like the demo's: a 3-digit addition prompt, the real `a + b = c.` and a
    generated answer of up to 16 tokens (what SmolLM2 answers before SPIN)."""
    rng = random.Random(seed)
    forms = (
        "The sum of {a} and {b} is {c}.",
        "{a} + {b} = {c}",
        "To find the sum, add {a} and {b}: the answer is {c}.",
        "{c}",
    )
    rows = []
    for i in range(n):
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        wrong = a + b + rng.choice([-100, -10, -1, 1, 10, 100])
        rows.append({
            "id": str(i), "prompt": f"What is {a} + {b}? Reply in the form 'a + b = c.'",
            "real": f"{a} + {b} = {a + b}.", "generated": rng.choice(forms).format(a=a, b=b, c=wrong),
            "answer": str(a + b),
        })  # fmt: skip
    return rows


def pairs_for(set_name: str, n: int, tok: Any) -> list[dict[str, Any]]:
    """The rows of a pair set."""
    return demo_pairs(n) if set_name == "demo" else make_pairs(n, tok, max_length=SETS["long"]["max_length"])


# --------------------------------------------------------------------------- workers


def _turn_callback(conn: Any, steps: int) -> Any:
    """A Trainer callback that waits for the orchestrator's "go" before every step and reports
    the step's wall and CPU seconds after it; after the last step it waits for "finish", so that
    saving the model never overlaps another configuration's timed step."""
    from transformers import TrainerCallback

    class Turns(TrainerCallback):
        t0 = c0 = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            conn.send(("ready", None))
            assert conn.recv() == "go"
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            timing = {"seconds": time.perf_counter() - self.t0, "cpu_seconds": time.process_time() - self.c0}
            work = getattr(kw.get("model"), "spin_work", None)  # the fast path counts what it computed
            if work is not None:
                timing["work"] = dict(work)
            conn.send(("step", timing))
            if state.global_step == steps:
                assert conn.recv() == "finish"

    return Turns()


def _history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = ("loss", "rewards/margins", "rewards/accuracies", "num_tokens")
    return [{k: e[k] for k in keep if k in e} | {"step": e["step"]} for e in log_history if "loss" in e]


def _train_trl(model_dir: str, rows: list[dict[str, Any]], steps: int, pset: dict[str, int], callback: Any) -> Any:
    """TRL's DPOTrainer with its defaults on CPU (fp32, live reference, gradient checkpointing)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from spin_runtime.modeling.chat import conversational_row
    from spin_runtime.steps.trl_args import shuffled

    # same row order as `spin train` (its window shuffle with seed 42), so both see the same batches
    ds = Dataset.from_list([conversational_row(r["prompt"], r["real"], r["generated"]) for r in shuffled(rows, 42)])
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp, use_cpu=True, bf16=False, per_device_train_batch_size=pset["pairs_per_step"],
            max_steps=steps,
            # optimizer and schedule as in `spin train` (they do not change the compute), so the
            # losses of both runs can be compared step by step
            learning_rate=LEARNING_RATE, optim="rmsprop", lr_scheduler_type="constant", beta=0.1, logging_steps=1,
            report_to="none", save_strategy="no", disable_tqdm=True,
        )  # fmt: skip
        trainer = DPOTrainer(
            model=model_dir, args=args, train_dataset=ds, processing_class=AutoTokenizer.from_pretrained(model_dir),
            callbacks=[callback],
        )  # fmt: skip
        trainer.train()
    return _history(trainer.state.log_history)


def _train_spin(
    model_dir: str, rows: list[dict[str, Any]], steps: int, pset: dict[str, int], overrides: dict[str, Any],
    trainer: str, callback: Any,
) -> Any:  # fmt: skip
    """`spin train` (run_train) on a fresh run directory with the given training overrides;
    trainer "trl" puts TRL's own DPOTrainer back (spin train as it was before the fast path)."""
    import pandas as pd

    from spin_runtime.api.spec import SpinRun
    from spin_runtime.plan import layout
    from spin_runtime.steps import spin_trainer
    from spin_runtime.steps.train import run_train
    from spin_runtime.store import rundir

    if trainer == "trl":
        from trl import DPOTrainer

        spin_trainer.SpinDPOTrainer = DPOTrainer  # type: ignore[misc]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run = SpinRun.model_validate({
            "metadata": {"name": "bench"},
            "spec": {
                "model": {"path": model_dir},
                "schedule": [{"learningRate": LEARNING_RATE, "beta": 0.1}],
                "training": {
                    "perDeviceBatchSize": pset["pairs_per_step"], "maxSteps": steps, "loggingSteps": 1,
                    "maxLength": pset["max_length"], "maxPromptLength": pset["max_prompt_length"],
                    "lrScheduler": "constant", "warmupRatio": 0.0, "reportTo": [], "gpusPerNode": 0, **overrides,
                },
            },
        })  # fmt: skip
        rundir.init_run(run_dir, run)
        path = run_dir / layout.data_path(0, "train")
        path.parent.mkdir(parents=True)
        pd.DataFrame(rows).to_parquet(path, index=False)
        metrics = run_train(run_dir, 0, callbacks=[callback])
    assert metrics is not None
    return [
        {k: h[k] for k in ("step", "loss", "rewards/margins", "rewards/accuracies", "num_tokens") if k in h}
        for h in metrics["history"]
    ]


def worker(conn: Any, name: str, model_dir: str, data: str, steps: int, set_name: str) -> None:
    """One configuration in its own process, stepping when the orchestrator says so."""
    t0 = time.perf_counter()
    os.environ.update({"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(2)
    rows = json.loads(Path(data).read_text())
    pset = SETS[set_name]
    callback = _turn_callback(conn, steps)
    _, overrides, trainer = CONFIGS[name]
    conn.send(("started", time.perf_counter() - t0))
    if overrides is None:
        history = _train_trl(model_dir, rows, steps, pset, callback)
    else:
        history = _train_spin(model_dir, rows, steps, pset, overrides, trainer, callback)
    conn.send(("done", {
        "history": history, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "live_reference": overrides is None or not overrides.get("precomputeRefLogProbs", False),
        "threads": torch.get_num_threads(),
    }))  # fmt: skip


# --------------------------------------------------------------------------- orchestration


def gemm_probe() -> float:
    """fp32 GEMM GFLOP/s of this process right now (2 threads, 2048², best of 2 short rounds)."""
    import torch
    from gemm import best_gemm_gflops

    torch.set_num_threads(2)
    return best_gemm_gflops(torch.float32, n=2048, reps=2, rounds=2)


def _expect(conn: Any, kind: str) -> Any:
    try:
        msg, payload = conn.recv()
    except EOFError:
        raise RuntimeError(f"a worker died while {kind!r} was expected (killed for memory? see dmesg)") from None
    if msg != kind:
        raise RuntimeError(f"worker sent {msg!r} while {kind!r} was expected")
    return payload


def run_set(set_name: str, configs: list[str], steps: int, model_dir: str, tok: Any) -> dict[str, Any]:
    """Run the configurations of one pair set in lockstep; raw timings per configuration."""
    pset = SETS[set_name]
    rows = pairs_for(set_name, pset["pairs_per_step"] * steps, tok)
    data = RESULTS / f".bench_pairs_{set_name}.tmp"
    data.write_text(json.dumps(rows))
    ctx = mp.get_context("spawn")
    procs, conns, setup = {}, {}, {}
    try:
        for name in configs:  # set-ups one after the other (model load, reference precompute)
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker, args=(child, name, model_dir, str(data), steps, set_name), daemon=True)
            t = time.perf_counter()
            p.start()
            _expect(parent, "started")
            _expect(parent, "ready")
            setup[name] = time.perf_counter() - t
            procs[name], conns[name] = p, parent
            print(f"  {set_name}/{name}: set up in {setup[name]:.0f} s", flush=True)
        probes = [gemm_probe()]
        timings: dict[str, list[dict[str, Any]]] = {n: [] for n in configs}
        for step in range(steps):
            order = configs if step % 2 == 0 else configs[::-1]
            for name in order:
                conns[name].send("go")
                t = _expect(conns[name], "step")
                t["load_average"] = os.getloadavg()[0]
                t["probe_index"] = len(probes)
                timings[name].append(t)
                if step + 1 < steps:
                    _expect(conns[name], "ready")
            probes.append(gemm_probe())
            print(f"  {set_name} step {step + 1}: " + ", ".join(
                f"{n} {timings[n][-1]['seconds']:.1f} s" for n in configs) + f"; GEMM {probes[-1]:.0f} GFLOP/s",
                flush=True)  # fmt: skip
        raw = {}
        for name in configs:
            conns[name].send("finish")
            raw[name] = {**_expect(conns[name], "done"), "steps": timings[name], "setup_seconds": setup[name]}
            procs[name].join(timeout=120)
    finally:
        for p in procs.values():
            if p.is_alive():
                p.terminate()
        data.unlink(missing_ok=True)
    return {"raw": raw, "probes": probes, "pairs": len(rows), **pset}


def summarize(name: str, raw: dict[str, Any], probes: list[float], params: int) -> dict[str, Any]:
    """Medians over the steps after the first (warm-up): tokens/s, FLOP/s, fraction of the GEMM peak."""
    hist = raw["history"]
    tokens = [hist[0]["num_tokens"]] + [b["num_tokens"] - a["num_tokens"] for a, b in zip(hist, hist[1:], strict=False)]
    steps = raw["steps"]
    timed = list(range(1, len(steps))) or [0]
    flops_per_token = (8 if raw["live_reference"] else 6) * params
    tok_s = [tokens[i] / steps[i]["seconds"] for i in timed]
    # against the GEMM probe taken right after the step's round (same load)
    local_fraction = [tokens[i] / steps[i]["seconds"] * flops_per_token / 1e9 / probes[steps[i]["probe_index"]] for i in timed]
    tok_cpu = [tokens[i] / steps[i]["cpu_seconds"] * raw["threads"] for i in timed]
    tokens_per_second = statistics.median(tok_s)
    gflops = tokens_per_second * flops_per_token / 1e9
    executed = None
    if all("work" in s for s in steps):
        # matmul FLOPs really run: 6·(N − V·H) per token through the model, 6·V·H per scored token
        head = _HEAD_PARAMS
        cum = [(0, 0)] + [(s["work"]["backbone_tokens"], s["work"]["head_tokens"]) for s in steps]
        per_step = [6 * ((cum[i + 1][0] - cum[i][0]) * (params - head) + (cum[i + 1][1] - cum[i][1]) * head)
                    for i in range(len(steps))]  # fmt: skip
        executed = statistics.median(per_step[i] / steps[i]["seconds"] / 1e9 for i in timed)
    return {
        "config": name,
        "description": CONFIGS[name][0],
        "median_step_seconds": statistics.median(steps[i]["seconds"] for i in timed),
        "tokens_per_step": statistics.mean(tokens[i] for i in timed),
        "tokens_per_second": tokens_per_second,
        "tokens_per_second_by_step": tok_s,
        "achieved_gflops": gflops,
        "fraction_of_gemm_peak": gflops / max(probes),
        "fraction_of_adjacent_gemm_probe": statistics.median(local_fraction),
        "executed_gflops": executed,
        "executed_fraction_of_gemm_peak": executed / max(probes) if executed else None,
        "tokens_per_cpu_second_x_threads": statistics.median(tok_cpu),
        "load_average": statistics.mean(steps[i]["load_average"] for i in timed),
        "peak_rss_mb": raw["peak_rss_mb"],
        "setup_seconds": raw["setup_seconds"],
        "live_reference": raw["live_reference"],
        "history": hist,
        "step_seconds": [s["seconds"] for s in steps],
    }


def _executed(r: dict[str, Any]) -> str:
    if not r.get("executed_gflops"):
        return "–"
    return f"{r['executed_gflops']:.0f} ({r['executed_fraction_of_gemm_peak']:.2f})"


def paired_ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Median over the timed steps of b's tokens/s over a's in the same round."""
    return statistics.median(y / x for x, y in zip(a["tokens_per_second_by_step"], b["tokens_per_second_by_step"], strict=False))


def write_markdown(result: dict[str, Any], path: Path) -> None:
    lines = [
        "# SPIN training step on CPU (SmolLM2-135M-Instruct)",
        "",
        f"Command: `{result['command']}` — {result['steps']} steps per configuration (step 1 = warm-up, medians "
        f"over the rest), {result['threads']} threads, {result['machine']} ({result['cpu_bf16']}). The configurations "
        "run in separate processes taking turns step by step, with an fp32 GEMM probe (torch.matmul 2048², "
        "2 threads) after every round; the GEMM peak is the best probe of the set. FLOPs = 6·N·tokens (+2·N·tokens "
        f"with a live reference), N = {result['params'] / 1e6:.1f} M, tokens = non-padding tokens. "
        "Paired ratio = median over rounds of the candidate's tok/s over TRL's in the same round. "
        "GFLOP/s and 'of GEMM peak' use that standard count (model FLOPs: work the fast path avoids, prompt and padding "
        "positions in the vocabulary projection and a pair's second prompt, counts as done); 'executed' counts the "
        "matmul FLOPs the fast path really ran (6·(N − V·H) per token through the model, 6·V·H per scored token; "
        "attention excluded as in the standard count).",
        "",
    ]
    for set_name, s in result["sets"].items():
        rows = s["configs"]
        base = rows.get("trl-default")
        lines += [
            f"## {set_name} pairs: {s['pairs_per_step']} pairs per step, ≤ {s['max_length']} tokens",
            "",
            f"GEMM probes (GFLOP/s): {', '.join(f'{p:.0f}' for p in s['probes'])}; peak {max(s['probes']):.0f}.",
            "",
            "| configuration | s/step | tokens/step | tok/s | × TRL (paired) | tok/CPU-s×threads | GFLOP/s | of GEMM peak "
            "| of adjacent probe | executed GFLOP/s (of peak) | peak RSS | setup s | load avg |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows.values():
            ratio = f"{paired_ratio(base, r):.2f}" if base else "–"
            lines.append(
                f"| {r['description']} | {r['median_step_seconds']:.2f} | {r['tokens_per_step']:.0f} | "
                f"{r['tokens_per_second']:.1f} | {ratio} | {r['tokens_per_cpu_second_x_threads']:.0f} | "
                f"{r['achieved_gflops']:.1f} | {r['fraction_of_gemm_peak']:.2f} | "
                f"{r['fraction_of_adjacent_gemm_probe']:.2f} | {_executed(r)} | {r['peak_rss_mb'] / 1024:.2f} GB | "
                f"{r['setup_seconds']:.0f} | {r['load_average']:.1f} |"
            )
        names = list(rows)
        lines += ["", "Losses step by step (same batches, RMSProp, lr 1e-6):", "",
                  "| step | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]  # fmt: skip
        for i in range(min(len(r["history"]) for r in rows.values())):
            lines.append(f"| {i + 1} | " + " | ".join(f"{rows[n]['history'][i]['loss']:.5f}" for n in names) + " |")
        lines.append("")
    lines += ["## Notes", "", *result["notes"], ""]
    path.write_text("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="steps per configuration, the first a warm-up")
    p.add_argument("--sets", default="demo,long")
    p.add_argument("--configs", default="trl-default,spin-fast-before,spin-fast")
    p.add_argument("--render", action="store_true", help="only rewrite train.md from train.json")
    a = p.parse_args()
    if a.render:
        write_markdown(json.loads((RESULTS / "train.json").read_text()), RESULTS / "train.md")
        return 0
    os.environ.setdefault("SPIN_CACHE_DIR", str(REPO / ".cache" / "spinrun"))
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from spin_runtime.api.spec import ModelSource
    from spin_runtime.modeling.models import load_tokenizer, resolve_source

    t_start = time.perf_counter()
    model_dir = resolve_source(ModelSource(builtin="smollm2-135m-instruct"))
    tok = load_tokenizer(model_dir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    params = _params(model_dir)
    configs = a.configs.split(",")
    sets: dict[str, Any] = {}
    notes = []
    for set_name in a.sets.split(","):
        run = run_set(set_name, configs, a.steps, model_dir, tok)
        rows = {n: summarize(n, run["raw"][n], run["probes"], params) for n in configs}
        sets[set_name] = {k: v for k, v in run.items() if k != "raw"} | {"configs": rows}
        base, fast, before = rows.get("trl-default"), rows.get("spin-fast"), rows.get("spin-fast-before")
        if base and fast:
            notes.append(
                f"- {set_name}: spin-fast vs TRL defaults **{paired_ratio(base, fast):.2f}×** (paired; medians "
                f"{fast['tokens_per_second'] / base['tokens_per_second']:.2f}×; target ≥ 1.8×), "
                f"{fast['fraction_of_gemm_peak']:.2f} of the best GEMM probe and "
                f"{fast['fraction_of_adjacent_gemm_probe']:.2f} of the probe after each step (target ≥ 0.6); "
                f"per CPU-second {fast['tokens_per_cpu_second_x_threads'] / base['tokens_per_cpu_second_x_threads']:.2f}×"
                + (f"; before this fast path: {paired_ratio(base, before):.2f}×, "
                   f"{before['fraction_of_gemm_peak']:.2f} of the peak." if before else ".")
            )  # fmt: skip
        _write(a, params, sets, notes, t_start)
    return 0


def _write(a: Any, params: int, sets: dict[str, Any], notes: list[str], t_start: float) -> None:
    """train.json and train.md with the sets measured so far."""
    result = {
        "command": "python benchmarks/bench_train.py " + " ".join(sys.argv[1:]),
        "steps": a.steps,
        "threads": 2,
        "machine": f"{os.cpu_count()} CPUs",
        "cpu_bf16": "native bf16 (AVX512-BF16/AMX)" if _native_bf16() else "no AVX512-BF16/AMX",
        "params": params,
        "sets": sets,
        "notes": notes,
        "wall_seconds": time.perf_counter() - t_start,
    }
    (RESULTS / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, RESULTS / "train.md")
    print((RESULTS / "train.md").read_text(), flush=True)


def _native_bf16() -> bool:
    from spin_runtime.steps.train import cpu_flags
    from spin_runtime.steps.trl_args import cpu_has_native_bf16

    return cpu_has_native_bf16(cpu_flags())


def _params(model_dir: str) -> int:
    from safetensors import safe_open

    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        total = 0
        for k in f.keys():  # noqa: SIM118
            n = 1
            for s in f.get_slice(k).get_shape():
                n *= s
            total += n
        return total


if __name__ == "__main__":
    sys.exit(main())
