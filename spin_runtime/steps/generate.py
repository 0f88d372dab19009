"""The generate step: the iteration's start model answers shard i of n of all prompts and
writes them as JSONL (`id, split, prompt, real, generated, answer`), replacing the shard file.

Engines: `vllm` on GPUs, `transformers` as the fallback (batched greedy/sampled decoding with
a KV cache, left padding, length-sorted batches and finished rows dropped from the batch).
The pure parts (shard slicing, prompt strings, engine choice, vLLM arguments) are plain
functions so they can be tested without a model.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from spin_runtime.api.spec import Generation
from spin_runtime.data.sft import Row, load_sft
from spin_runtime.errors import SpinError
from spin_runtime.modeling import models
from spin_runtime.plan import hparams, layout, stages
from spin_runtime.steps.context import StepContext
from spin_runtime.store import atomic

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: The original SPIN prompt string (HF path), used without BOS or other special tokens.
INSTRUCTION_TEMPLATE = "### Instruction: {prompt}\n\n### Response: "

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
        raise SpinError(f"--shards must be at least 1 (got {shards})")
    if not 0 <= shard < shards:
        raise SpinError(f"--shard must be between 0 and {shards - 1} for --shards {shards} (got {shard})")
    if spec_shards is not None and shards != spec_shards:
        raise SpinError(
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


def instruction_prompt(prompt: str) -> str:
    """The original SPIN prompt string for a question."""
    return INSTRUCTION_TEMPLATE.format(prompt=prompt)


def chat_messages(prompt: str) -> list[dict[str, str]]:
    """The conversation whose chat-template rendering (with the generation prompt) is fed
    to the model."""
    return [{"role": "user", "content": prompt}]


def choose_engine(choice: str, vllm_importable: bool, gpu: bool) -> Engine:
    """`auto` = vllm when it is importable and a GPU is present, else transformers; an explicit
    `vllm` without vLLM or a GPU is refused with what must change."""
    if choice == "transformers":
        return "transformers"
    if choice == "vllm":
        if not vllm_importable:
            raise SpinError(
                "generation.engine is vllm but vLLM is not installed here: use the generator image "
                "(pip install 'spinrun[vllm]') or set generation.engine to transformers or auto"
            )
        if not gpu:
            raise SpinError(
                "generation.engine is vllm but no GPU is visible: request GPUs or set generation.engine to auto"
            )
        return "vllm"
    if choice == "auto":
        return "vllm" if vllm_importable and gpu else "transformers"
    raise SpinError(f"unknown generation.engine {choice!r}: use auto, vllm or transformers")


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


def clean_answer(text: str, eos_token: str | None) -> str:
    """The answer as stored: EOS text removed, leading whitespace stripped (as the original)."""
    if eos_token:
        text = text.replace(eos_token, "")
    return text.lstrip()


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (stable sort by length, so padding is
    minimal); the caller restores the original order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[b : b + batch_size] for b in range(0, len(order), batch_size)]


def stop_token_ids(tokenizer: Any, model_eos: int | Sequence[int] | None) -> set[int]:
    """Token ids that end an answer: the tokenizer's EOS and the model's generation EOS ids."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if isinstance(model_eos, int):
        ids.add(model_eos)
    elif model_eos is not None:
        ids.update(int(i) for i in model_eos)
    return ids


# --------------------------------------------------------------------------- transformers


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], prompt_format: str) -> list[list[int]]:
    """Token ids of each prompt: the chat template with the generation prompt, or the
    instruction string without BOS or other special tokens."""
    if prompt_format == "instruction":
        enc = tokenizer([instruction_prompt(p) for p in prompts], add_special_tokens=False)
        return [list(ids) for ids in enc["input_ids"]]
    if prompt_format != "chat":
        raise SpinError(f"unknown generation.promptFormat {prompt_format!r}: use chat or instruction")
    if not getattr(tokenizer, "chat_template", None):
        raise SpinError(
            "the model's tokenizer has no chat template: set generation.promptFormat to instruction "
            "or add chat_template.jinja to the model folder"
        )
    out: list[list[int]] = []
    for p in prompts:
        ids = tokenizer.apply_chat_template(
            chat_messages(p), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        out.append(list(ids["input_ids"]))
    return out


class _Sampler:
    """Picks the next token: argmax (greedy) or temperature/top-p sampling with a seeded generator."""

    def __init__(self, gen: Generation) -> None:
        self.greedy = gen.decoding == "greedy"
        self.temperature = gen.temperature
        self.top_p = gen.top_p
        self.seed = gen.seed
        self.generator: torch.Generator | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        if self.greedy:
            return logits.argmax(dim=-1)
        if self.generator is None or self.generator.device != logits.device:
            self.generator = torch.Generator(device=logits.device).manual_seed(self.seed)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, sorted_i = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(dim=-1) - sorted_p < self.top_p  # always keeps the top token
            sorted_p = sorted_p * keep
            choice = torch.multinomial(sorted_p, 1, generator=self.generator).squeeze(-1)
            return sorted_i.gather(-1, choice[:, None]).squeeze(-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)


def _forward_kwargs(model: PreTrainedModel) -> tuple[str, bool]:
    """The cache keyword of the model's forward (`cache` in transformers 5, else
    `past_key_values`) and whether it accepts `logits_to_keep`."""
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    return cache_kw, "logits_to_keep" in params


def decode_batch(
    model: PreTrainedModel,
    batch: Sequence[Sequence[int]],
    *,
    pad_id: int,
    stop_ids: set[int],
    max_new_tokens: int,
    sampler: Callable[[torch.Tensor], torch.Tensor],
    on_step: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Generate for one batch of token-id prompts; returns the new tokens of each (without
    the stop token). Prompts are left-padded with matching attention mask and position ids,
    so a row's greedy answer does not depend on its neighbours; rows that stopped are
    removed from the batch and its KV cache. `on_step(new_tokens, finished_rows)` reports
    progress."""
    import torch
    from transformers import DynamicCache

    n = len(batch)
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, ids in enumerate(batch):
        input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[r, width - len(ids) :] = 1
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    device = model.device
    input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)

    cache_kw, keep_kw = _forward_kwargs(model)
    cache = DynamicCache(config=model.config)
    extra: dict[str, Any] = {"logits_to_keep": 1} if keep_kw else {}
    out = model(
        input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kw: cache}, **extra
    )
    logits = out.logits[:, -1, :]
    last_pos = positions[:, -1]
    active = list(range(n))  # batch row → original row
    answers: list[list[int]] = [[] for _ in range(n)]
    for step in range(max_new_tokens):
        tokens = sampler(logits).tolist()
        keep: list[int] = []
        for j, tok in enumerate(tokens):
            row = active[j]
            if tok in stop_ids:
                continue
            answers[row].append(tok)
            if step + 1 < max_new_tokens:
                keep.append(j)
        if on_step is not None:
            on_step(len(tokens), len(tokens) - len(keep))
        if not keep:
            break
        next_tokens = torch.tensor([tokens[j] for j in keep], dtype=torch.long, device=device)[:, None]
        if len(keep) < len(active):
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            mask = mask[index]
            last_pos = last_pos[index]
            active = [active[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
        last_pos = last_pos + 1
        out = model(
            input_ids=next_tokens,
            attention_mask=mask,
            position_ids=last_pos[:, None],
            use_cache=True,
            **{cache_kw: cache},
        )
        logits = out.logits[:, -1, :]
    return answers


@dataclass
class GenerationStats:
    """Counts of one generation call (for the marker and the progress line)."""

    prompts: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def transformers_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    gen: Generation,
    *,
    progress: bool = True,
    stats: GenerationStats | None = None,
) -> list[str]:
    """Answer prompts with a transformers model: length-sorted batches of generation.batchSize,
    KV cache, inference mode; answers come back in the prompts' order."""
    import torch
    from tqdm.auto import tqdm

    stats = stats if stats is not None else GenerationStats()
    encoded = encode_prompts(tokenizer, prompts, gen.prompt_format)
    stop_ids = stop_token_ids(tokenizer, getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stop_ids), 0)
    sampler = _Sampler(gen)
    answers: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), unit="prompt", desc="generate", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()

    def on_step(new_tokens: int, finished: int) -> None:
        stats.new_tokens += new_tokens
        elapsed = time.perf_counter() - start
        bar.set_postfix_str(f"{stats.new_tokens / max(elapsed, 1e-9):.1f} tok/s", refresh=False)
        bar.update(finished)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for idx in length_sorted_batches([len(e) for e in encoded], gen.batch_size):
                new = decode_batch(
                    model,
                    [encoded[i] for i in idx],
                    pad_id=pad_id,
                    stop_ids=stop_ids,
                    max_new_tokens=gen.max_new_tokens,
                    sampler=sampler,
                    on_step=on_step,
                )
                for i, ids in zip(idx, new, strict=True):
                    answers[i] = clean_answer(tokenizer.decode(ids, skip_special_tokens=True), tokenizer.eos_token)
    finally:
        bar.close()
        model.train(was_training)
    stats.prompts += len(prompts)
    stats.seconds += time.perf_counter() - start
    return answers


# --------------------------------------------------------------------------- vLLM


def vllm_generate(model_path: str, prompts: Sequence[str], gen: Generation, eos_token: str | None = None) -> list[str]:
    """Answer prompts with vLLM (imported only here): `llm.chat` for the chat format, raw
    instruction strings through `llm.generate` otherwise."""
    from vllm import LLM, SamplingParams

    llm = LLM(**vllm_llm_kwargs(gen, model_path))
    params = SamplingParams(**vllm_sampling_kwargs(gen))
    if gen.prompt_format == "chat":
        outputs = llm.chat([chat_messages(p) for p in prompts], params)
    else:
        outputs = llm.generate([instruction_prompt(p) for p in prompts], params)
    return [clean_answer(o.outputs[0].text, eos_token) for o in outputs]


# --------------------------------------------------------------------------- the step


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
        raise SpinError(
            f"iteration {iteration} uses syntheticData from the spec: it has no generate step; run `spin convert`"
        )
    if not ctx.should_run(force):
        return out

    train, test = load_sft(spec)
    prompts = shard_prompts(all_prompts(train, test), shard, shards, gen.seed)
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
        answers = vllm_generate(model_path, texts, gen, tokenizer.eos_token)
    else:
        tokenizer = models.load_tokenizer(model_path, padding_side="left")
        model = models.load_model(
            model_path, dtype=models.resolve_dtype(gen.dtype, on_gpu), device="cuda" if on_gpu else "cpu"
        )
        answers = transformers_generate(model, tokenizer, texts, gen, stats=stats)
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
    print(f"{step.key}: {len(prompts)} answers → {out} ({seconds:.1f} s, {engine})")
    return out
