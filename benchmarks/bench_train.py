"""SPIN training-step throughput on CPU: `spin train` (our configuration) against TRL's
`DPOTrainer` with its defaults (fp32, live reference, gradient checkpointing), in one run.

SmolLM2-135M-Instruct, 4 pairs = 8 sequences of at most 256 tokens per step. Each
configuration runs in its own process (peak RSS per configuration); the GEMM peak of the
machine is measured in the same run with a torch.matmul loop at 2 threads. FLOPs are counted
as 6·N·tokens for the policy (+2·N·tokens for a live reference), tokens = non-padding tokens.

    .venv/bin/python benchmarks/bench_train.py            # ~6-9 min on 2 cores
    .venv/bin/python benchmarks/bench_train.py --steps 3  # quicker, noisier

Writes benchmarks/results/train.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAIRS_PER_STEP = 4
MAX_LENGTH = 256
#: A learning rate large enough for the loss and margins to move within a few steps.
LEARNING_RATE = 1e-6

#: name → (description, spec.training overrides); None = TRL's DPOTrainer defaults.
CONFIGS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "trl-default": ("TRL DPOTrainer defaults: fp32, live reference, gradient checkpointing", None),
    # = spin train's CPU defaults (same compute as trl-default); run it with --configs to check
    "spin-fp32": (
        "spin train, CPU defaults: fp32, live reference, gradient checkpointing",
        {"precision": "auto", "precomputeRefLogProbs": False, "gradientCheckpointing": True},
    ),
    "spin-fast": (
        "spin train, fp32, precomputed reference, no gradient checkpointing",
        {"precision": "fp32", "precomputeRefLogProbs": True, "gradientCheckpointing": False},
    ),
    "spin-fast-bf16": (
        "spin train, bf16 autocast, precomputed reference, no gradient checkpointing",
        {"precision": "bf16", "precomputeRefLogProbs": True, "gradientCheckpointing": False},
    ),
    "spin-live-nockpt": (
        "spin train, fp32, live reference, no gradient checkpointing",
        {"precision": "fp32", "precomputeRefLogProbs": False, "gradientCheckpointing": False},
    ),
}

WORDS = (
    "model data train answer question light river stone cloud green table music paper garden window "
    "silver orange forest bridge candle planet rocket winter summer yellow pencil basket mirror castle "
    "dragon ocean valley thunder marble rabbit number system value result method process energy water "
    "because however therefore first second finally example important different general special"
).split()


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


def make_pairs(n: int, tok: Any, seed: int = 0) -> list[dict[str, Any]]:
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

        if 200 <= length(real) <= MAX_LENGTH and 200 <= length(generated) <= MAX_LENGTH:
            rows.append({"id": str(len(rows)), "prompt": prompt, "real": real, "generated": generated, "answer": None})
    return rows


# --------------------------------------------------------------------------- workers


def _timing_callback() -> Any:
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def __init__(self) -> None:
            self.begin: dict[int, tuple[float, float]] = {}
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []
            self.load: list[float] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.begin[state.global_step] = (time.perf_counter(), time.process_time())

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            wall, cpu = self.begin[state.global_step - 1]
            self.seconds.append(time.perf_counter() - wall)
            # CPU seconds of all threads of this process: on a shared machine, tokens per CPU
            # second × threads estimates the rate the process would get on idle cores
            self.cpu_seconds.append(time.process_time() - cpu)
            self.load.append(os.getloadavg()[0])

    return Timing()


def _history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = ("loss", "rewards/margins", "rewards/accuracies", "num_tokens")
    return [{k: e[k] for k in keep if k in e} | {"step": e["step"]} for e in log_history if "loss" in e]


def worker_gemm(out: Path) -> None:
    """Best GEMM throughput of torch.matmul at 2 threads, fp32 and bf16 (GFLOP/s)."""
    import torch
    from gemm import best_gemm_gflops

    torch.set_num_threads(2)
    result, sizes = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        # a CPU without native bf16 runs bf16 matmuls ~100x slower: probe small, grow if fast
        a = torch.randn(512, 512, dtype=dtype)
        t = time.perf_counter()
        a @ a
        n = 2048 if time.perf_counter() - t < 0.05 else 512
        result[name], sizes[name] = best_gemm_gflops(dtype, n=n, reps=8 if n == 2048 else 1), n
    out.write_text(json.dumps({"gemm_gflops": result, "threads": 2, "n": sizes}))


def worker_trl(model_dir: str, data: Path, steps: int, out: Path) -> None:
    """TRL's DPOTrainer with its defaults on CPU (fp32, live reference)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from spin_runtime.steps.trl_args import shuffled

    # same row order as `spin train` (its window shuffle with seed 42), so both see the same batches
    rows = shuffled(json.loads(data.read_text()), 42)
    ds = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["real"]}],
                "rejected": [{"role": "assistant", "content": r["generated"]}],
            }
            for r in rows
        ]
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp,
            use_cpu=True,
            bf16=False,
            per_device_train_batch_size=PAIRS_PER_STEP,
            max_steps=steps,
            # optimizer and schedule as in `spin train` (they do not change the compute), so the
            # losses of both runs can be compared step by step
            learning_rate=LEARNING_RATE,
            optim="rmsprop",
            lr_scheduler_type="constant",
            beta=0.1,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
        )
        timing = _timing_callback()
        trainer = DPOTrainer(
            model=model_dir, args=args, train_dataset=ds, processing_class=AutoTokenizer.from_pretrained(model_dir),
            callbacks=[timing],
        )
        setup = time.perf_counter() - t0
        trainer.train()
    n_params = sum(p.numel() for p in trainer.model.parameters())
    out.write_text(
        json.dumps(
            {
                "step_seconds": timing.seconds,
                "step_cpu_seconds": timing.cpu_seconds,
                "load_average": timing.load,
                "history": _history(trainer.state.log_history),
                "setup_seconds": setup,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "params": n_params,
                "live_reference": True,
                "threads": torch.get_num_threads(),
            }
        )
    )


def worker_spin(model_dir: str, data: Path, steps: int, overrides: dict[str, Any], out: Path) -> None:
    """`spin train` (run_train) on a fresh run directory with the given training overrides."""
    import pandas as pd
    import torch

    from spin_runtime.api.spec import SpinRun
    from spin_runtime.plan import layout
    from spin_runtime.steps.train import run_train
    from spin_runtime.store import rundir

    rows = json.loads(data.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run = SpinRun.model_validate(
            {
                "metadata": {"name": "bench"},
                "spec": {
                    "model": {"path": model_dir},
                    "schedule": [{"learningRate": LEARNING_RATE, "beta": 0.1}],
                    "training": {
                        "perDeviceBatchSize": PAIRS_PER_STEP,
                        "maxSteps": steps,
                        "loggingSteps": 1,
                        "maxLength": MAX_LENGTH,
                        "maxPromptLength": 128,
                        "lrScheduler": "constant",
                        "warmupRatio": 0.0,
                        "reportTo": [],
                        "gpusPerNode": 0,
                        **overrides,
                    },
                },
            }
        )
        rundir.init_run(run_dir, run)
        path = run_dir / layout.data_path(0, "train")
        path.parent.mkdir(parents=True)
        pd.DataFrame(rows).to_parquet(path, index=False)
        timing = _timing_callback()
        t0 = time.perf_counter()
        metrics = run_train(run_dir, 0, callbacks=[timing])
        total = time.perf_counter() - t0
    assert metrics is not None
    n_params = _run_worker_params(model_dir)
    out.write_text(
        json.dumps(
            {
                "step_seconds": timing.seconds,
                "step_cpu_seconds": timing.cpu_seconds,
                "load_average": timing.load,
                "history": [
                    {k: h[k] for k in ("step", "loss", "rewards/margins", "rewards/accuracies", "num_tokens") if k in h}
                    for h in metrics["history"]
                ],
                "setup_seconds": metrics["summary"]["setup_seconds"],
                "total_seconds": total,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "params": n_params,
                "live_reference": not overrides.get("precomputeRefLogProbs", False),
                "threads": torch.get_num_threads(),
            }
        )
    )


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# --------------------------------------------------------------------------- orchestration


def _run_worker(args: list[str], timeout: int = 900) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--worker", *args, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    data = json.loads(out.read_text())
    out.unlink()
    return data


def summarize(name: str, raw: dict[str, Any], gemm: dict[str, float], dtype: str) -> dict[str, Any]:
    """Median step time over the steps after the first (warm-up), tokens/s and FLOP/s."""
    hist = raw["history"]
    tokens = [hist[0]["num_tokens"]] + [b["num_tokens"] - a["num_tokens"] for a, b in zip(hist, hist[1:], strict=False)]
    timed = list(range(1, len(raw["step_seconds"])))
    step_s = [raw["step_seconds"][i] for i in timed]
    tok_s = [tokens[i] / raw["step_seconds"][i] for i in timed]
    flops_per_token = (8 if raw["live_reference"] else 6) * raw["params"]
    tokens_per_second = statistics.median(tok_s)
    gflops = tokens_per_second * flops_per_token / 1e9
    threads = raw.get("threads", 2)
    cpu = raw.get("step_cpu_seconds") or []
    tok_cpu = [tokens[i] / cpu[i] * threads for i in timed] if cpu else []
    return {
        "config": name,
        "description": CONFIGS[name][0],
        "dtype": dtype,
        "median_step_seconds": statistics.median(step_s),
        "tokens_per_step": statistics.mean(tokens[i] for i in timed),
        "tokens_per_second": tokens_per_second,
        "achieved_gflops": gflops,
        "fraction_of_gemm_peak": gflops / gemm[dtype],
        "tokens_per_cpu_second_x_threads": statistics.median(tok_cpu) if tok_cpu else None,
        "load_average": raw.get("load_average"),
        "peak_rss_mb": raw["peak_rss_mb"],
        "setup_seconds": raw["setup_seconds"],
        "live_reference": raw["live_reference"],
        "history": hist,
        "step_seconds": raw["step_seconds"],
    }


def write_markdown(result: dict[str, Any], path: Path) -> None:
    rows = result["configs"]
    base = rows["trl-default"]["tokens_per_second"]
    lines = [
        "# SPIN training step on CPU (SmolLM2-135M-Instruct)",
        "",
        f"Command: `{result['command']}` — {result['steps']} steps per configuration "
        f"(step 1 = warm-up, medians over the rest), {PAIRS_PER_STEP} pairs = {2 * PAIRS_PER_STEP} sequences of "
        f"≤ {MAX_LENGTH} tokens per step, {result['threads']} threads, {result['machine']}.",
        f"GEMM peak measured in this run (torch.matmul, 2 threads): fp32 {result['gemm_gflops']['fp32']:.1f} "
        f"GFLOP/s, bf16 {result['gemm_gflops']['bf16']:.1f} GFLOP/s (CPU flags: {result['cpu_bf16']}). FLOPs = 6·N·tokens (+2·N·tokens with a live "
        f"reference), N = {result['params'] / 1e6:.1f} M, tokens = non-padding tokens.",
        "",
        "The machine is shared: wall-clock rates depend on the load (1-min load average shown); "
        "tokens per CPU-second × threads (recorded by runs made with this version of the script) estimates "
        "the rate on idle cores.",
        "",
        "| configuration | dtype | s/step | tok/s (wall) | × TRL (wall) | tok/CPU-s×threads | × TRL (CPU) | "
        "GFLOP/s (wall) | of GEMM peak | peak RSS | setup s | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base_cpu = rows["trl-default"].get("tokens_per_cpu_second_x_threads")
    for r in rows.values():
        cpu_rate = r.get("tokens_per_cpu_second_x_threads")
        cpu_cols = f"{cpu_rate:.0f} | {cpu_rate / base_cpu:.2f}" if cpu_rate and base_cpu else "– | –"
        load = r.get("load_average") or []
        load_text = f"{statistics.mean(load):.1f}" if load else "–"
        lines.append(
            f"| {r['description']} | {r['dtype']} | {r['median_step_seconds']:.1f} | {r['tokens_per_second']:.1f} | "
            f"{r['tokens_per_second'] / base:.2f} | {cpu_cols} | {r['achieved_gflops']:.1f} | "
            f"{r['fraction_of_gemm_peak']:.2f} | {r['peak_rss_mb'] / 1024:.2f} GB | {r['setup_seconds']:.0f} | "
            f"{load_text} |"
        )
    slow = "spin-fp32" if "spin-fp32" in rows else "trl-default"
    if "spin-fast" in rows:
        lines += [
            "",
            f"## Does the fast path train the same? ({slow} vs spin-fast: same batches, RMSProp, lr {LEARNING_RATE:g})",
            "",
            "| step | loss (live ref.) | loss (fast) | margin (live ref.) | margin (fast) |",
            "|---|---|---|---|---|",
        ]
        for a, b in zip(rows[slow]["history"], rows["spin-fast"]["history"], strict=False):
            lines.append(
                f"| {a['step']} | {a['loss']:.5f} | {b['loss']:.5f} | {a['rewards/margins']:.5f} | "
                f"{b['rewards/margins']:.5f} |"
            )
    supplementary = result.get("supplementary")
    if supplementary:
        lines += ["", "## Live vs precomputed reference, both without gradient checkpointing", "",
                  supplementary["how"], "",
                  "| configuration | s/step (step 2) | tok/s (wall) | peak RSS | setup s |", "|---|---|---|---|---|"]  # fmt: skip
        for r in supplementary["rows"]:
            lines.append(
                f"| {r['description']} | {r['step_seconds']:.1f} | {r['tokens_per_second']:.1f} | "
                f"{r['peak_rss_mb'] / 1024:.2f} GB | {r['setup_seconds']:.0f} |"
            )
    lines += ["", "## Notes", "", *result["notes"], ""]
    path.write_text("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--configs", default="trl-default,spin-fast")
    p.add_argument("--render", action="store_true", help="only rewrite train.md from train.json")
    p.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.render:
        write_markdown(json.loads((RESULTS / "train.json").read_text()), RESULTS / "train.md")
        return 0
    if a.worker:
        kind, *rest = a.worker
        out = Path(a.out)
        if kind == "gemm":
            worker_gemm(out)
        elif kind == "trl-default":
            worker_trl(rest[0], Path(rest[1]), int(rest[2]), out)
        else:
            worker_spin(rest[0], Path(rest[1]), int(rest[2]), CONFIGS[kind][1] or {}, out)
        return 0

    os.environ.setdefault("SPIN_CACHE_DIR", str(REPO / ".cache" / "spinrun"))
    sys.path.insert(0, str(REPO))
    from spin_runtime.api.spec import ModelSource
    from spin_runtime.modeling.models import load_tokenizer, resolve_source

    t_start = time.perf_counter()
    model_dir = resolve_source(ModelSource(builtin="smollm2-135m-instruct"))
    tok = load_tokenizer(model_dir)
    data = RESULTS / ".bench_pairs.tmp"
    RESULTS.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps(make_pairs(PAIRS_PER_STEP * a.steps, tok)))
    gemm = _run_worker(["gemm"])["gemm_gflops"]
    print(f"GEMM peak: fp32 {gemm['fp32']:.0f} GFLOP/s, bf16 {gemm['bf16']:.0f} GFLOP/s", flush=True)
    configs: dict[str, Any] = {}
    for name in a.configs.split(","):
        t = time.perf_counter()
        raw = _run_worker([name, model_dir, str(data), str(a.steps)])
        dtype = "bf16" if (CONFIGS[name][1] or {}).get("precision") == "bf16" else "fp32"
        configs[name] = summarize(name, raw, gemm, dtype)
        c = configs[name]
        print(
            f"{name}: {c['median_step_seconds']:.2f} s/step, {c['tokens_per_second']:.0f} tok/s, "
            f"{c['fraction_of_gemm_peak']:.2f} of {dtype} peak, RSS {c['peak_rss_mb'] / 1024:.2f} GB "
            f"({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
    data.unlink()
    params = _run_worker_params(model_dir)
    base = configs["trl-default"]["tokens_per_second"] if "trl-default" in configs else None
    fast = configs.get("spin-fast")
    notes = []
    if base and fast:
        notes.append(
            f"- spin-fast vs TRL default: **{fast['tokens_per_second'] / base:.2f}×** tokens/s "
            f"(target ≥ 1.8×); achieved {fast['fraction_of_gemm_peak']:.2f} of the {fast['dtype']} GEMM peak "
            "(target ≥ 0.6)."
        )
    before = configs.get("spin-fp32") or configs.get("trl-default")
    if before and fast:
        notes.append(
            f"- Before/after for our CPU options: {before['tokens_per_second']:.0f} → {fast['tokens_per_second']:.0f} "
            f"tok/s ({fast['tokens_per_second'] / before['tokens_per_second']:.2f}×; our CPU defaults have the "
            f"compute of TRL's: fp32, live reference, gradient checkpointing); peak RSS "
            f"{before['peak_rss_mb'] / 1024:.2f} → {fast['peak_rss_mb'] / 1024:.2f} GB (the fast row also drops "
            "gradient checkpointing). Precomputing the reference costs one forward pass over the window up front "
            "(in setup s)."
        )
    result = {
        "command": "python benchmarks/bench_train.py " + " ".join(sys.argv[1:]),
        "steps": a.steps,
        "threads": _threads(),
        "machine": f"{os.cpu_count()} CPUs",
        "cpu_bf16": "native bf16" if _native_bf16() else "no AVX512-BF16/AMX",
        "params": params,
        "gemm_gflops": gemm,
        "configs": configs,
        "notes": notes,
        "wall_seconds": time.perf_counter() - t_start,
    }
    (RESULTS / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, RESULTS / "train.md")
    print((RESULTS / "train.md").read_text())
    return 0


def _native_bf16() -> bool:
    from spin_runtime.steps.train import cpu_flags
    from spin_runtime.steps.trl_args import cpu_has_native_bf16

    return cpu_has_native_bf16(cpu_flags())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _run_worker_params(model_dir: str) -> int:
    from safetensors import safe_open

    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        return sum(_numel(list(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118


if __name__ == "__main__":
    sys.exit(main())
