"""Generation benchmark: spinrun's transformers engine against the original SPIN approach.

The baseline reproduces the original `spin/generate.py` HF path: prompt
`### Instruction: {q}\\n\\n### Response: ` without special tokens, left padding to a multiple
of 8, pad = eos, `model.generate` greedy in batches of 8, fp32, EOS text removed and leading
whitespace stripped. spinrun's engine answers the same prompts in the same format (fp32, and
bf16 where the CPU has native bf16). Wall-clock and process CPU time are both recorded; on a
shared machine `--threads 1` gives the steadier CPU-time comparison. Results go to
`benchmarks/results/generate.{json,md}`.

    .venv/bin/python benchmarks/bench_generate.py --threads 1   # both prompt sets (~3 min CPU)
    .venv/bin/python benchmarks/bench_generate.py --sets mixed --limit 16
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

#: 64 short instructions of mixed kinds (facts, lists, explanations, writing, arithmetic):
#: answers range from a few tokens to more than 64, as in real SFT prompts.
MIXED_PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about autumn leaves.",
    "Explain photosynthesis in one sentence.",
    "Give two tips for better sleep.",
    "What is 12 times 12?",
    "Translate 'good morning' into Spanish.",
    "Describe a cat in five words.",
    "Why is the sky blue?",
    "List four planets of the solar system.",
    "What does a compiler do?",
    "Write a short thank-you note to a teacher.",
    "Suggest a name for a friendly robot.",
    "What is the boiling point of water in Celsius?",
    "Summarize the plot of Cinderella in two sentences.",
    "How do I make a cup of tea?",
    "What is the largest ocean on Earth?",
    "Give an example of a renewable energy source.",
    "Write a limerick about a lazy dog.",
    "Explain what a prime number is.",
    "What are the three states of matter?",
    "Recommend a good habit for students.",
    "Who wrote Romeo and Juliet?",
    "Describe the taste of a lemon.",
    "What is machine learning?",
    "Give three synonyms for happy.",
    "How many days are in a leap year?",
    "Write one sentence about the ocean.",
    "What is the difference between weather and climate?",
    "Name a famous painting.",
    "Explain gravity to a child.",
    "What should I pack for a beach trip?",
    "What is the square root of 81?",
    "Write a motivational quote.",
    "How does a rainbow form?",
    "List three fruits that are red.",
    "What is the main function of the heart?",
    "Write a two-line poem about coffee.",
    "Why do we need sleep?",
    "What is an adjective? Give an example.",
    "Describe your ideal weekend.",
    "What is the tallest mountain in the world?",
    "Give a tip for learning a new language.",
    "What is the freezing point of water in Fahrenheit?",
    "Explain what the internet is in simple words.",
    "Name two animals that live in the desert.",
    "Write a short story opening about a lost key.",
    "What causes the seasons on Earth?",
    "How can I save money on groceries?",
    "What is the chemical symbol for gold?",
    "Give a fun fact about octopuses.",
    "What is a healthy breakfast?",
    "Explain what recycling means.",
    "What is 15 plus 27?",
    "Write a polite way to decline an invitation.",
    "Why do leaves change color in the fall?",
    "Name three musical instruments.",
    "What is the purpose of a museum?",
    "Describe a sunset in one sentence.",
    "How do bees make honey?",
    "What is the opposite of ancient?",
    "Give two reasons to exercise regularly.",
    "What language is spoken in Brazil?",
    "Write a riddle and its answer.",
]


def native_bf16() -> bool:
    """True when this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX); without them
    torch's bf16 matmuls are several times slower than fp32 and the bf16 row is skipped."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def addition_prompts(n: int) -> list[str]:
    """The first n training prompts of the built-in 3-digit addition task."""
    from spin_runtime.api.spec import BuiltinTask
    from spin_runtime.data.tasks import make_examples

    train, _ = make_examples(BuiltinTask(name="addition-3digit", train_size=n, test_size=1))
    return [e.prompt for e in train]


def count_tokens(ids: list[int], eos_id: int) -> int:
    """Generated tokens up to and including the first EOS (padding after it not counted)."""
    return ids.index(eos_id) + 1 if eos_id in ids else len(ids)


def original_spin_generate(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int = 8
) -> tuple[list[str], int, float]:
    """The original SPIN HF path (spin/generate.py): returns texts, new tokens, seconds."""
    strings = ["### Instruction: " + q + "\n\n### Response: " for q in prompts]
    tokenizer.padding_side = "left"
    batches = [
        tokenizer(
            strings[i : i + batch_size],
            return_tensors="pt",
            padding="longest",
            truncation=False,
            pad_to_multiple_of=8,
            add_special_tokens=False,
        )
        for i in range(0, len(strings), batch_size)
    ]
    texts: list[str] = []
    tokens = 0
    start = time.perf_counter()
    for enc in batches:
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id, do_sample=False)
        new = [o[len(i) :] for i, o in zip(enc["input_ids"], out, strict=True)]
        tokens += sum(count_tokens(n.tolist(), tokenizer.eos_token_id) for n in new)
        texts += [t.replace(tokenizer.eos_token, "").lstrip() for t in tokenizer.batch_decode(new)]
    return texts, tokens, time.perf_counter() - start


def spinrun_generate(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int
) -> tuple[list[str], int, float]:
    """spinrun's transformers engine in the instruction format, greedy."""
    from spin_runtime.api.spec import Generation
    from spin_runtime.modeling.decoding import GenerationStats, transformers_generate

    gen = Generation(
        engine="transformers",
        prompt_format="instruction",
        decoding="greedy",
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    stats = GenerationStats()
    texts = transformers_generate(model, tokenizer, prompts, gen, progress=False, stats=stats)
    return texts, stats.new_tokens, stats.seconds


@dataclass
class Timing:
    """Wall-clock and process CPU seconds of one measured call, with the load around it."""

    wall: float
    cpu: float
    load_before: float
    load_after: float


def measured(fn: Callable[[], tuple[list[str], int]]) -> tuple[list[str], int, Timing]:
    """Run fn, timing it by the wall clock and by this process's CPU time. On a shared machine
    CPU time is the steadier measure with one thread (no threads spinning at barriers)."""
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    texts, tokens = fn()
    timing = Timing(time.perf_counter() - wall, time.process_time() - cpu, load_before, os.getloadavg()[0])
    return texts, tokens, timing


def gemm_bound(model: Any, prompt_tokens: int, new_tokens: int, gflops: float) -> dict[str, float]:
    """The GEMM-bound limit of a generation: at least 2·N FLOPs per new token and 2·(N − lm_head)
    per prompt token (attention and everything else taken as free), run at the measured GEMM peak."""
    n = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    flops = 2 * (n - head) * prompt_tokens + 2 * n * new_tokens
    seconds = flops / (gflops * 1e9)
    return {"params": n, "min_flops": flops, "min_seconds": round(seconds, 2), "limit_tokens_per_second": round(new_tokens / seconds, 1)}


def run_set(
    name: str, prompts: list[str], path: str, max_new_tokens: int, batch_size: int, bf16: bool, gflops: float
) -> dict[str, Any]:
    import torch

    from spin_runtime.modeling import models

    tokenizer = models.load_tokenizer(path, padding_side="left")
    tokenizer.pad_token = tokenizer.eos_token
    rows: list[dict[str, Any]] = []
    base_texts: list[str] = []
    settings = [
        ("original SPIN (HF generate, batch 8, fp32)", torch.float32, "baseline"),
        (f"spinrun transformers (batch {batch_size}, fp32)", torch.float32, "ours"),
    ]
    if bf16:
        settings.append((f"spinrun transformers (batch {batch_size}, bf16)", torch.bfloat16, "ours"))
    for label, dtype, fn in settings:
        model = models.load_model(path, dtype=dtype).eval()
        if fn == "baseline":
            texts, tokens, t = measured(
                lambda m=model: original_spin_generate(m, tokenizer, prompts, max_new_tokens)[:2]
            )
            base_texts = texts
        else:
            texts, tokens, t = measured(
                lambda m=model: spinrun_generate(m, tokenizer, prompts, max_new_tokens, batch_size)[:2]
            )
        same = sum(a == b for a, b in zip(texts, base_texts, strict=True))
        same20 = sum(a[:20] == b[:20] for a, b in zip(texts, base_texts, strict=True))
        rows.append(
            {
                "setting": label,
                "dtype": str(dtype).removeprefix("torch."),
                "new_tokens": tokens,
                "wall_seconds": round(t.wall, 2),
                "cpu_seconds": round(t.cpu, 2),
                "tokens_per_second": round(tokens / t.wall, 1),
                "tokens_per_cpu_second": round(tokens / t.cpu, 1),
                "load_average": [round(t.load_before, 2), round(t.load_after, 2)],
                "same_text_as_baseline": same,
                "same_first_20_chars": same20,
            }
        )
        print(
            f"[{name}] {label}: {tokens} tokens, {t.wall:.1f} s wall ({tokens / t.wall:.1f} tok/s), "
            f"{t.cpu:.1f} s CPU ({tokens / t.cpu:.1f} tok/CPU-s), load {t.load_before:.1f}→{t.load_after:.1f}, "
            f"same text {same}/{len(prompts)}",
            flush=True,
        )
        if fn == "baseline":
            strings = ["### Instruction: " + q + "\n\n### Response: " for q in prompts]
            prompt_tokens = sum(len(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in strings)
            bound = {"prompt_tokens": prompt_tokens, **gemm_bound(model, prompt_tokens, tokens, gflops)}
        del model
    for r in rows:
        r["of_gemm_limit"] = round(r["tokens_per_second"] / bound["limit_tokens_per_second"], 2)
    for key in ("tokens_per_second", "tokens_per_cpu_second"):
        base = rows[0][key]
        for r in rows:
            r[f"x_baseline_{'wall' if key == 'tokens_per_second' else 'cpu'}"] = round(r[key] / base, 2)
    return {"prompt_set": name, "prompts": len(prompts), "max_new_tokens": max_new_tokens, "gemm_bound": bound, "results": rows}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Generation benchmark",
        "",
        f"Model: SmolLM2-135M-Instruct (builtin), torch threads: {report['threads']}, torch {report['torch']}, "
        f"transformers {report['transformers']}. Command: `{report['command']}`.",
        "",
        "Every setting uses the original's instruction prompt and greedy decoding. The baseline reproduces the",
        "original SPIN HF path (batch 8, left padding to a multiple of 8, pad = eos, fp32). Same-text counts",
        "compare with the baseline's texts. Settings ran one after another in one process. Speed is given by",
        "the wall clock and by this process's CPU time (steadier on a shared machine when running on one",
        "thread); load average = the machine's 1-minute load before → after each setting.",
        "",
    ]
    if not report["native_bf16"]:
        lines += ["This CPU has no native bf16 (no AVX512-BF16/AMX): bf16 is skipped unless `--bf16 yes`.", ""]
    for s in report["sets"]:
        lines += [
            f"## {s['prompt_set']} prompts ({s['prompts']}, ≤ {s['max_new_tokens']} new tokens)",
            "",
            "| setting | new tokens | wall s | tok/s | × baseline | CPU s | tok/CPU-s | × baseline (CPU) "
            "| of GEMM limit | load | same text | same first 20 chars |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in s["results"]:
            lines.append(
                f"| {r['setting']} | {r['new_tokens']} | {r['wall_seconds']} | {r['tokens_per_second']} "
                f"| {r['x_baseline_wall']} | {r['cpu_seconds']} | {r['tokens_per_cpu_second']} | {r['x_baseline_cpu']} "
                f"| {r.get('of_gemm_limit', '–')} "
                f"| {r['load_average'][0]}→{r['load_average'][1]} "
                f"| {r['same_text_as_baseline']}/{s['prompts']} | {r['same_first_20_chars']}/{s['prompts']} |"
            )
        b = s.get("gemm_bound")
        if b:
            lines += [
                "",
                f"GEMM-bound limit: {b['prompt_tokens']} prompt + {s['results'][0]['new_tokens']} new tokens need at least "
                f"{b['min_flops'] / 1e12:.2f} TFLOP (2·N per new token, 2·(N − lm_head) per prompt token, N = "
                f"{b['params'] / 1e6:.1f} M) = {b['min_seconds']} s at the measured fp32 GEMM peak of "
                f"{report['gemm_fp32_gflops']:.1f} GFLOP/s: **{b['limit_tokens_per_second']} tok/s** at most.",
            ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="mixed,addition", help="comma-separated prompt sets: mixed, addition")
    parser.add_argument("--limit", type=int, default=64, help="prompts per set")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of spinrun's engine")
    parser.add_argument(
        "--bf16",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also run bf16 (auto: when the CPU has native bf16)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)

    sys.path.insert(0, str(REPO))
    from spin_runtime.api.spec import ModelSource
    from spin_runtime.modeling import models
    from spin_runtime.store.atomic import atomic_write_json, atomic_write_text

    path = models.resolve_source(ModelSource(builtin="smollm2-135m-instruct"))
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and native_bf16())
    sets = {"mixed": MIXED_PROMPTS[: args.limit], "addition": addition_prompts(args.limit)}
    from gemm import best_gemm_gflops

    gflops = best_gemm_gflops()
    print(f"fp32 GEMM peak: {gflops:.1f} GFLOP/s", flush=True)
    report: dict[str, Any] = {
        "command": " ".join(["benchmarks/bench_generate.py", *(argv if argv is not None else sys.argv[1:])]),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.processor() or platform.machine(),
        "native_bf16": native_bf16(),
        "gemm_fp32_gflops": round(gflops, 1),
        "sets": [
            run_set(name, sets[name], path, args.max_new_tokens, args.batch_size, bf16, gflops)
            for name in args.sets.split(",")
        ],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "generate.json", report)
    atomic_write_text(args.out / "generate.md", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
