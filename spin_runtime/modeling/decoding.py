"""The transformers generation engine: batched greedy or sampled decoding with a KV cache, left
padding, length-sorted batches and finished rows dropped from the batch."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spin_runtime.api.spec import Generation
from spin_runtime.modeling.chat import encode_prompts

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


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

    device = model.device
    input_ids, mask, positions = (tensor.to(device) for tensor in _left_padded(batch, pad_id))
    cache_kw, keep_kw = _forward_kwargs(model)
    cache = DynamicCache(config=model.config)
    extra: dict[str, Any] = {"logits_to_keep": 1} if keep_kw else {}
    out = model(
        input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kw: cache}, **extra
    )
    logits = out.logits[:, -1, :]
    rows = _LiveRows(active=list(range(len(batch))), mask=mask, last_pos=positions[:, -1], cache=cache, device=device)
    answers: list[list[int]] = [[] for _ in batch]
    for step in range(max_new_tokens):
        tokens = sampler(logits).tolist()
        keep = _append_tokens(answers, tokens, rows.active, stop_ids, more_to_come=step + 1 < max_new_tokens)
        if on_step is not None:
            on_step(len(tokens), len(tokens) - len(keep))
        if not keep:
            break
        next_tokens = torch.tensor([tokens[j] for j in keep], dtype=torch.long, device=device)[:, None]
        rows.keep_only(keep)
        rows.advance()
        out = model(
            input_ids=next_tokens,
            attention_mask=rows.mask,
            position_ids=rows.last_pos[:, None],
            use_cache=True,
            **{cache_kw: cache},
        )
        logits = out.logits[:, -1, :]
    return answers


def _left_padded(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, position ids) of the prompts padded on the left to the longest;
    a row's positions count from 0 at its first real token."""
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids) :] = 1
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    return input_ids, mask, positions


def _append_tokens(
    answers: list[list[int]], tokens: Sequence[int], active: Sequence[int], stop_ids: set[int], more_to_come: bool
) -> list[int]:
    """Add each live row's new token to its answer (a stop token ends the row instead); returns the
    batch rows that go on (none when no further token is to come)."""
    keep: list[int] = []
    for j, token in enumerate(tokens):
        if token in stop_ids:
            continue
        answers[active[j]].append(token)
        if more_to_come:
            keep.append(j)
    return keep


@dataclass
class _LiveRows:
    """The rows still decoding: their original row numbers, attention mask, last positions and the
    KV cache they share."""

    active: list[int]  # batch row → original row
    mask: torch.Tensor
    last_pos: torch.Tensor
    cache: Any
    device: Any

    def keep_only(self, keep: list[int]) -> None:
        """Drop the finished rows from the batch and its KV cache."""
        import torch

        if len(keep) < len(self.active):
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            self.cache.batch_select_indices(index)
            self.mask = self.mask[index]
            self.last_pos = self.last_pos[index]
            self.active = [self.active[j] for j in keep]

    def advance(self) -> None:
        """One more attended token per row, one position further."""
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.active), 1))], dim=-1)
        self.last_pos = self.last_pos + 1


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
    system: str | None = None,
    progress: bool = True,
    stats: GenerationStats | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Answer prompts with a transformers model: length-sorted batches of generation.batchSize,
    KV cache, inference mode; answers come back in the prompts' order. The prompts become token
    ids through `chat.encode_prompts`, as for every engine. `on_progress(prompts answered, new
    tokens)` is called after every decoding step."""
    import torch
    from tqdm.auto import tqdm

    stats = stats if stats is not None else GenerationStats()
    encoded = encode_prompts(tokenizer, prompts, gen.prompt_format, system)
    stop_ids = stop_token_ids(tokenizer, getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stop_ids), 0)
    sampler = _Sampler(gen)
    answers: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), unit="prompt", desc="generate", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    answered = [0]

    def on_step(new_tokens: int, finished: int) -> None:
        stats.new_tokens += new_tokens
        elapsed = time.perf_counter() - start
        bar.set_postfix_str(f"{stats.new_tokens / max(elapsed, 1e-9):.1f} tok/s", refresh=False)
        bar.update(finished)
        answered[0] += finished
        if on_progress is not None:
            on_progress(answered[0], stats.new_tokens)

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
