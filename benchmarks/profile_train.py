"""Profile one SPIN training step on CPU with torch.profiler: where the time of a step goes
(backbone GEMMs, the vocabulary projection, attention, elementwise work, the optimizer).

SmolLM2-135M-Instruct, fp32, precomputed reference, no gradient checkpointing (the fast path's
compute), on the benchmark's 256-token pairs or on demo-like pairs (3-digit addition, short
answers). The first steps warm up; the last one is profiled.

    .venv/bin/python benchmarks/profile_train.py --pairs long --trainer trl
    .venv/bin/python benchmarks/profile_train.py --pairs demo --trainer fast

Prints a breakdown by category and the top operators, and writes
benchmarks/results/profile-<pairs>-<trainer>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

#: Operator name prefixes by category (self CPU time is summed per category).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GEMM (mm/addmm/bmm/linear)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::addmm_")),
    ("attention (sdpa)", ("aten::_scaled_dot_product", "aten::_flash_attention", "aten::scaled_dot_product")),
    ("optimizer", ("Optimizer.", "aten::_foreach")),
    ("memory (alloc/fill/copy)", ("aten::empty", "aten::zeros", "aten::zero_", "aten::fill_", "aten::copy_",
                                  "aten::clone", "aten::contiguous", "aten::resize_", "aten::to", "aten::_to_copy")),
    ("exp/log/softmax", ("aten::exp", "aten::log", "aten::_log_softmax", "aten::_softmax", "aten::logsumexp",
                         "aten::log_softmax", "aten::softmax")),
    ("reductions", ("aten::sum", "aten::amax", "aten::max", "aten::mean", "aten::argmax", "aten::norm",
                    "aten::linalg_vector_norm")),
)  # fmt: skip


def make_rows(kind: str, n: int, tok: Any) -> list[dict[str, Any]]:
    from bench_train import pairs_for

    return pairs_for(kind, n, tok)


def build(kind: str, trainer_kind: str, model_dir: str, steps: int, pairs_per_step: int, tmp: str) -> Any:
    """A DPOTrainer (TRL's or the fast path) on `steps` batches, fp32, precomputed reference."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from spin_runtime.modeling.chat import conversational_row

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = make_rows(kind, steps * pairs_per_step, tok)
    ds = Dataset.from_list([conversational_row(r["prompt"], r["real"], r["generated"]) for r in rows])
    args = DPOConfig(
        output_dir=tmp, use_cpu=True, bf16=False, per_device_train_batch_size=pairs_per_step, max_steps=steps,
        learning_rate=1e-6, optim="rmsprop", lr_scheduler_type="constant", beta=0.1, logging_steps=1,
        report_to="none", save_strategy="no", precompute_ref_log_probs=True, gradient_checkpointing=False,
        max_length=256, disable_tqdm=True,
    )  # fmt: skip
    cls = DPOTrainer
    if trainer_kind == "fast":
        from spin_runtime.steps.spin_trainer import SpinDPOTrainer

        cls = SpinDPOTrainer
    return cls(model=model_dir, args=args, train_dataset=ds, processing_class=tok)


def categorize(events: list[Any]) -> dict[str, float]:
    """Self CPU seconds per category (top-level categories by operator name prefix)."""
    out: dict[str, float] = defaultdict(float)
    for e in events:
        name = e.key
        for cat, prefixes in CATEGORIES:
            if name.startswith(prefixes):
                out[cat] += e.self_cpu_time_total / 1e6
                break
        else:
            out["other"] += e.self_cpu_time_total / 1e6
    return dict(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", choices=("long", "demo"), default="long")
    p.add_argument("--trainer", choices=("trl", "fast"), default="trl")
    p.add_argument("--steps", type=int, default=3, help="steps to run; the last one is profiled")
    p.add_argument("--pairs-per-step", type=int, default=0, help="default: 4 (long) or 8 (demo)")
    p.add_argument("--top", type=int, default=22)
    a = p.parse_args()
    os.environ.setdefault("SPIN_CACHE_DIR", str(REPO / ".cache" / "spinrun"))
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    from transformers import TrainerCallback

    from spin_runtime.api.spec import ModelSource
    from spin_runtime.modeling.models import resolve_source

    torch.set_num_threads(2)
    pairs_per_step = a.pairs_per_step or (4 if a.pairs == "long" else 8)
    model_dir = resolve_source(ModelSource(builtin="smollm2-135m-instruct"))
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    seconds: list[float] = []
    sys_seconds: list[float] = []
    cpu_seconds: list[float] = []

    class Profile(TrainerCallback):
        t0 = s0 = c0 = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == a.steps - 1:
                prof.start()
            self.t0, self.c0 = time.perf_counter(), time.process_time()
            self.s0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            seconds.append(time.perf_counter() - self.t0)
            cpu_seconds.append(time.process_time() - self.c0)
            sys_seconds.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - self.s0)
            if state.global_step == a.steps:
                prof.stop()

    with tempfile.TemporaryDirectory() as tmp:
        trainer = build(a.pairs, a.trainer, model_dir, a.steps, pairs_per_step, tmp)
        trainer.add_callback(Profile())
        trainer.train()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    cats = categorize(list(events))
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: a.top]
    hist = [h for h in trainer.state.log_history if "loss" in h]
    result = {
        "command": "python benchmarks/profile_train.py " + " ".join(sys.argv[1:]),
        "pairs": a.pairs,
        "trainer": a.trainer,
        "pairs_per_step": pairs_per_step,
        "step_seconds": seconds,
        "step_cpu_seconds": cpu_seconds,
        "step_system_seconds": sys_seconds,
        "profiled_step_seconds": seconds[-1],
        "profiled_self_cpu_seconds": total,
        "categories": cats,
        "top": [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in top],
        "losses": [h["loss"] for h in hist],
        "tokens": hist[-1].get("num_tokens"),
        "load_average": os.getloadavg()[0],
    }
    name = f"profile-{a.pairs}-{a.trainer}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Profile of one training step: {a.pairs} pairs, {a.trainer} trainer",
        "",
        f"`{result['command']}` — {pairs_per_step} pairs per step, fp32, precomputed reference, no gradient "
        f"checkpointing; profiled step {seconds[-1]:.2f} s wall (steps: {', '.join(f'{s:.2f}' for s in seconds)}), "
        f"{total:.2f} s of operator self time; CPU seconds per step (all threads) "
        f"{', '.join(f'{s:.1f}' for s in cpu_seconds)}, of which in the kernel (page faults, madvise) "
        f"{', '.join(f'{s:.1f}' for s in sys_seconds)}; load average {result['load_average']:.1f}.",
        "",
        "| category | self s | share |",
        "|---|---|---|",
        *[f"| {c} | {s:.2f} | {s / total:.0%} |" for c, s in sorted(cats.items(), key=lambda kv: -kv[1])],
        "",
        "| operator | self s | calls |",
        "|---|---|---|",
        *[f"| `{t['op']}` | {t['self_cpu_s']:.3f} | {t['calls']} |" for t in result["top"]],
        "",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
