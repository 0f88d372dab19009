"""The generate step: the iteration's start model answers shard i of n of all prompts and
writes them as JSONL (`id, split, prompt, real, generated, answer`), replacing the shard file.

Engines: `vllm` on GPUs, `transformers` as the fallback (`modeling.decoding`); prompts are
built by `modeling.chat`. The pure parts here (shard slicing, engine choice, vLLM arguments)
are plain functions so they can be tested without a model.
"""

from __future__ import annotations

import importlib.util
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from spin_runtime.api.spec import Generation
from spin_runtime.data.sft import Row, load_sft
from spin_runtime.errors import SpecConfigError
from spin_runtime.modeling import models
from spin_runtime.modeling.chat import encode_prompts
from spin_runtime.modeling.decoding import (
    GenerationStats,
    clean_answer,
    transformers_generate,
)
from spin_runtime.plan import hparams, layout, stages
from spin_runtime.steps import step_progress
from spin_runtime.steps.context import StepContext
from spin_runtime.store import atomic

if TYPE_CHECKING:
    pass


Engine = Literal["vllm", "transformers"]


@dataclass(frozen=True)
class Prompt:
    """One prompt to answer, with the split it belongs to."""

    split: Literal["train", "test"]
    row: Row


# --------------------------------------------------------------------------- pure parts


def check_shard(shard: int, shards: int, spec_shards: int | None = None) -> None:
    """Refuse a shard index outside 0..n−1, or an n that differs from generation.shards
    (convert gathers exactly generation.shards files)."""
    if shards < 1:
        raise SpecConfigError(f"--shards must be at least 1 (got {shards})")
    if not 0 <= shard < shards:
        raise SpecConfigError(f"--shard must be between 0 and {shards - 1} for --shards {shards} (got {shard})")
    if spec_shards is not None and shards != spec_shards:
        raise SpecConfigError(
            f"--shards {shards} differs from spec.generation.shards ({spec_shards}): "
            f"convert gathers {spec_shards} shard files; pass --shards {spec_shards} or change the spec"
        )


def shard_indices(n_items: int, shard: int, shards: int, seed: int) -> list[int]:
    """Indices of shard i of n: a seeded shuffle of all items dealt round-robin, so every
    item lands in exactly one shard and shard sizes differ by at most one; returned in the
    items' original order."""
    order = list(range(n_items))
    random.Random(f"generate-shards:{seed}").shuffle(order)
    return sorted(order[shard::shards])


def all_prompts(train: Sequence[Row], test: Sequence[Row]) -> list[Prompt]:
    """Every prompt of the run (train rows, then test rows) in load order."""
    return [Prompt("train", r) for r in train] + [Prompt("test", r) for r in test]


def shard_prompts(prompts: Sequence[Prompt], shard: int, shards: int, seed: int) -> list[Prompt]:
    """The prompts of shard i of n (see `shard_indices`)."""
    return [prompts[i] for i in shard_indices(len(prompts), shard, shards, seed)]


def choose_engine(choice: str, vllm_importable: bool, gpu: bool) -> Engine:
    """`auto` = vllm when it is importable and a GPU is present, else transformers; an explicit
    `vllm` without vLLM or a GPU is refused with what must change."""
    if choice == "transformers":
        return "transformers"
    if choice == "vllm":
        if not vllm_importable:
            raise SpecConfigError(
                "generation.engine is vllm but vLLM is not installed here: use the generator image "
                "(pip install 'spinrun[vllm]') or set generation.engine to transformers or auto"
            )
        if not gpu:
            raise SpecConfigError(
                "generation.engine is vllm but no GPU is visible: request GPUs or set generation.engine to auto"
            )
        return "vllm"
    if choice == "auto":
        return "vllm" if vllm_importable and gpu else "transformers"
    raise SpecConfigError(f"unknown generation.engine {choice!r}: use auto, vllm or transformers")


def vllm_importable() -> bool:
    """True when the vllm package can be imported (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def vllm_dtype(choice: str) -> str:
    """vLLM's dtype name for a spec dtype (auto = bfloat16, vLLM only runs on GPUs here)."""
    return "bfloat16" if choice == "auto" else choice


def vllm_llm_kwargs(gen: Generation, model_path: str) -> dict[str, Any]:
    """Arguments of `vllm.LLM`: one engine per shard (tensor parallel inside it), the run's
    seed on the engine (not on SamplingParams, which would repeat samples across prompts)."""
    kwargs: dict[str, Any] = {
        "model": model_path,
        "tensor_parallel_size": gen.tensor_parallel_size,
        "dtype": vllm_dtype(gen.dtype),
        "seed": gen.seed,
        "gpu_memory_utilization": gen.gpu_memory_utilization,
    }
    if gen.max_model_len is not None:
        kwargs["max_model_len"] = gen.max_model_len
    return kwargs


def vllm_sampling_kwargs(gen: Generation) -> dict[str, Any]:
    """Arguments of `vllm.SamplingParams`: greedy is temperature 0; sampling uses the spec's
    temperature and top_p."""
    if gen.decoding == "greedy":
        return {"temperature": 0.0, "top_p": 1.0, "max_tokens": gen.max_new_tokens}
    return {"temperature": gen.temperature, "top_p": gen.top_p, "max_tokens": gen.max_new_tokens}


# --------------------------------------------------------------------------- transformers


# --------------------------------------------------------------------------- vLLM


def vllm_prompts(prompt_ids: Sequence[Sequence[int]]) -> list[dict[str, list[int]]]:
    """vLLM token prompts: the exact ids the transformers engine would feed (`chat.encode_prompts`),
    so vLLM adds no BOS of its own and both engines see the same tokens for the same spec."""
    return [{"prompt_token_ids": list(ids)} for ids in prompt_ids]


def vllm_generate(
    model_path: str, prompt_ids: Sequence[Sequence[int]], gen: Generation, eos_token: str | None = None
) -> list[str]:
    """Answer token-id prompts with vLLM (imported only here)."""
    from vllm import LLM, SamplingParams

    llm = LLM(**vllm_llm_kwargs(gen, model_path))
    params = SamplingParams(**vllm_sampling_kwargs(gen))
    outputs = llm.generate(vllm_prompts(prompt_ids), params)
    return [clean_answer(o.outputs[0].text, eos_token) for o in outputs]


def shard_rows_jsonl(prompts: Sequence[Prompt], answers: Sequence[str]) -> str:
    """The shard file's text: one JSON object per prompt."""
    lines = [
        json.dumps(
            {
                "id": p.row.id,
                "split": p.split,
                "prompt": p.row.prompt,
                "real": p.row.real,
                "generated": a,
                "answer": p.row.answer,
            },
            ensure_ascii=False,
        )
        for p, a in zip(prompts, answers, strict=True)
    ]
    return "".join(line + "\n" for line in lines)


def run_generate(run_dir: Path, iteration: int, shard: int, shards: int, force: bool = False) -> Path:
    """Answer shard `shard` of `shards` of iteration k's prompts with its start model and write
    `iter-<k>/generated/shard-<i>-of-<n>.jsonl` (replaced whole), then the step's marker.
    Skipped when the marker exists, unless `force`."""
    ctx = StepContext.open(run_dir, stages.Step(iteration, "generate", shard, shards))
    run_dir, spec, step = ctx.run_dir, ctx.spec, ctx.step
    gen = spec.generation
    check_shard(shard, shards, gen.shards)
    out = run_dir / layout.shard_path(iteration, shard, shards)
    if not hparams.generated_by_run(spec, iteration):
        raise SpecConfigError(
            f"iteration {iteration} uses syntheticData from the spec: it has no generate step; run `spin convert`"
        )
    if not ctx.should_run(force):
        return out

    train, test = load_sft(spec)
    prompts = shard_prompts(all_prompts(train, test), shard, shards, gen.seed)
    prog = step_progress.for_step(run_dir, step, unit="prompts", total=len(prompts), rank=ctx.rank)
    prog.phase("loading the model")
    model_path = models.resolve(ctx.start_model, run_dir)
    on_gpu = models.gpu_available()
    engine = choose_engine(gen.engine, vllm_importable(), on_gpu)
    texts = [p.row.prompt for p in prompts]
    stats = GenerationStats()
    start = time.perf_counter()
    if not prompts:
        answers: list[str] = []
    elif engine == "vllm":
        tokenizer = models.load_tokenizer(model_path)
        prog.phase("generating with vLLM")
        ids = encode_prompts(tokenizer, texts, gen.prompt_format, spec.system_prompt)
        answers = vllm_generate(model_path, ids, gen, tokenizer.eos_token)
    else:
        tokenizer = models.load_tokenizer(model_path, padding_side="left")
        model = models.load_model(
            model_path, dtype=models.resolve_dtype(gen.dtype, on_gpu), device="cuda" if on_gpu else "cpu"
        )
        t_gen = time.perf_counter()

        def report(answered: int, new_tokens: int) -> None:
            prog.update(answered, **{"tok/s": new_tokens / max(time.perf_counter() - t_gen, 1e-9)})

        prog.update(0)
        answers = transformers_generate(
            model, tokenizer, texts, gen, system=spec.system_prompt, stats=stats, on_progress=report
        )
    seconds = time.perf_counter() - start
    atomic.atomic_write_text(out, shard_rows_jsonl(prompts, answers))
    info = {
        "engine": engine,
        "model": ctx.start_model.describe(),
        "rows": len(prompts),
        "empty_generated": sum(1 for a in answers if not a.strip()),
        "seconds": round(seconds, 3),
    }
    if stats.new_tokens:
        info["new_tokens"] = stats.new_tokens
        info["tokens_per_second"] = round(stats.tokens_per_second, 2)
    ctx.mark_done(info)
    rate = f", {stats.tokens_per_second:.0f} tok/s" if stats.new_tokens else ""
    prog.finish(f"{len(prompts)} answers{rate} ({engine})")
    print(f"{step.key}: {len(prompts)} answers → {out} ({seconds:.1f} s, {engine})")
    return out
