"""How prompts become model input, identically in generation, training and evaluation: the chat
template or the original's instruction string, and the pair rows TRL trains on."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from spin_runtime.errors import SpecConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


#: Name of the column holding each pair's approximate token length (length-grouped batches).
LENGTH_COLUMN = "length"

#: The original SPIN prompt string (HF path), used without BOS or other special tokens.
INSTRUCTION_TEMPLATE = "### Instruction: {prompt}\n\n### Response: "


def instruction_prompt(prompt: str) -> str:
    """The original SPIN prompt string for a question."""
    return INSTRUCTION_TEMPLATE.format(prompt=prompt)


def chat_messages(prompt: str) -> list[dict[str, str]]:
    """The conversation whose chat-template rendering (with the generation prompt) is fed
    to the model."""
    return [{"role": "user", "content": prompt}]


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], prompt_format: str) -> list[list[int]]:
    """Token ids of each prompt: the chat template with the generation prompt, or the
    instruction string without BOS or other special tokens."""
    if prompt_format == "instruction":
        enc = tokenizer([instruction_prompt(p) for p in prompts], add_special_tokens=False)
        return [list(ids) for ids in enc["input_ids"]]
    if prompt_format != "chat":
        raise SpecConfigError(f"unknown generation.promptFormat {prompt_format!r}: use chat or instruction")
    if not getattr(tokenizer, "chat_template", None):
        raise SpecConfigError(
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


def conversational_row(prompt: str, real: str, generated: str) -> dict[str, list[dict[str, str]]]:
    """One SPIN pair as a TRL conversational preference row (chosen = real, rejected = generated)."""
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": real}],
        "rejected": [{"role": "assistant", "content": generated}],
    }


def truncate_left(
    text: str,
    max_tokens: int,
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    overhead: int = 0,
) -> str:
    """Keep the last tokens of `text` so that `overhead` (chat-template tokens) + its tokens fit
    in `max_tokens` — the original SPIN truncated prompts from the left."""
    ids = encode(text)
    budget = max(1, max_tokens - overhead)
    if len(ids) <= budget:
        return text
    return decode(ids[-budget:])


def _template_ids(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    out = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    if isinstance(out, Mapping):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    return list(out)


def truncate_prompt(tok: PreTrainedTokenizerBase, prompt: str, max_prompt_length: int, overhead: int) -> str:
    """The prompt, cut from the left so that its chat-template rendering (with the generation
    prompt) has at most `max_prompt_length` tokens."""

    def encode(s: str) -> list[int]:
        return list(tok(s, add_special_tokens=False)["input_ids"])

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=False)

    text = truncate_left(prompt, max_prompt_length, encode, decode, overhead)
    if text == prompt:
        return prompt
    # the template can merge tokens at the boundary: check and trim further if needed
    for _ in range(4):
        excess = len(_template_ids(tok, [{"role": "user", "content": text}], True)) - max_prompt_length
        if excess <= 0:
            break
        ids = encode(text)
        text = decode(ids[min(len(ids) - 1, excess) :])
    return text


def prepare_rows(
    rows: Sequence[dict[str, Any]], tok: PreTrainedTokenizerBase, max_prompt_length: int
) -> list[dict[str, Any]]:
    """TRL conversational rows (prompt/chosen/rejected) with prompts truncated from the left to
    `max_prompt_length` template tokens, plus the pair's approximate token length."""
    overhead = len(_template_ids(tok, [{"role": "user", "content": ""}], True))
    prompts = [r["prompt"] for r in rows]
    enc = tok(prompts, add_special_tokens=False)["input_ids"]
    answers = tok([r["real"] for r in rows] + [r["generated"] for r in rows], add_special_tokens=False)["input_ids"]
    n = len(rows)
    out: list[dict[str, Any]] = []
    for i, r in enumerate(rows):
        prompt = r["prompt"]
        prompt_len = len(enc[i]) + overhead
        if prompt_len > max_prompt_length:
            prompt = truncate_prompt(tok, prompt, max_prompt_length, overhead)
            prompt_len = max_prompt_length
        row = conversational_row(prompt, r["real"], r["generated"])
        row["id"] = str(r.get("id", i))
        row[LENGTH_COLUMN] = prompt_len + max(len(answers[i]), len(answers[n + i])) + 2
        out.append(row)
    return out
