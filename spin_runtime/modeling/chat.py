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


def chat_messages(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    """The conversation whose chat-template rendering (with the generation prompt) is fed to
    the model: the user turn, after a system turn when `system` is set ("" = an empty system
    turn, as the original inserted; None = none, so a template may add its own default)."""
    turns = [] if system is None else [{"role": "system", "content": system}]
    return [*turns, {"role": "user", "content": prompt}]


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], prompt_format: str, system: str | None = None
) -> list[list[int]]:
    """Token ids of each prompt exactly as every engine receives them: the chat template with the
    generation prompt (and the system turn, if any), or the instruction string without BOS or
    other special tokens (the original's HF path)."""
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
            chat_messages(p, system), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        out.append(list(ids["input_ids"]))
    return out


def conversational_row(
    prompt: str, real: str, generated: str, system: str | None = None
) -> dict[str, list[dict[str, str]]]:
    """One SPIN pair as a TRL conversational preference row (chosen = real, rejected = generated),
    the prompt built as in generation (`chat_messages`)."""
    return {
        "prompt": chat_messages(prompt, system),
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


def truncate_prompt(
    tok: PreTrainedTokenizerBase, prompt: str, max_prompt_length: int, overhead: int, system: str | None = None
) -> str:
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
        excess = len(_template_ids(tok, chat_messages(text, system), True)) - max_prompt_length
        if excess <= 0:
            break
        ids = encode(text)
        text = decode(ids[min(len(ids) - 1, excess) :])
    return text


def prepare_rows(
    rows: Sequence[dict[str, Any]],
    tok: PreTrainedTokenizerBase,
    max_prompt_length: int,
    *,
    system: str | None = None,
    truncation: str = "always",
    max_length: int | None = None,
) -> list[dict[str, Any]]:
    """TRL conversational rows (prompt/chosen/rejected, built as in generation) truncated by the
    spec's rule, plus each pair's approximate token length.

    - `always`: every prompt is cut from the left to `max_prompt_length` template tokens (TRL
      then cuts each sequence to `max_length`).
    - `original` (the original SPIN code): only when the prompt plus the longer answer exceed
      `max_length` is the prompt cut to its last `max_prompt_length` tokens; if the pair is still
      too long, both answers are cut to `max_length - max_prompt_length` tokens."""
    if truncation not in ("always", "original"):
        raise SpecConfigError(f"unknown training.truncation {truncation!r}: use always or original")
    if truncation == "original" and max_length is None:
        raise SpecConfigError("training.truncation original needs training.maxLength")
    overhead = len(_template_ids(tok, chat_messages("", system), True))
    prompts = [pair["prompt"] for pair in rows]
    enc = tok(prompts, add_special_tokens=False)["input_ids"]
    answer_texts = [pair["real"] for pair in rows] + [pair["generated"] for pair in rows]
    answers = tok(answer_texts, add_special_tokens=False)["input_ids"]
    n = len(rows)
    out: list[dict[str, Any]] = []
    for i, pair in enumerate(rows):
        prompt, real, generated = pair["prompt"], pair["real"], pair["generated"]
        prompt_len = len(enc[i]) + overhead
        real_ids, gen_ids = answers[i], answers[n + i]
        longer = max(len(real_ids), len(gen_ids))
        if truncation == "always":
            cut_prompt = prompt_len > max_prompt_length
        else:
            cut_prompt = prompt_len + longer > max_length and prompt_len > max_prompt_length  # type: ignore[operator]
        if cut_prompt:
            prompt = truncate_prompt(tok, prompt, max_prompt_length, overhead, system)
            prompt_len = max_prompt_length
        if truncation == "original" and prompt_len + longer > max_length:  # type: ignore[operator]
            budget = max(1, max_length - max_prompt_length)  # type: ignore[operator]
            real = tok.decode(real_ids[:budget], skip_special_tokens=False) if len(real_ids) > budget else real
            generated = tok.decode(gen_ids[:budget], skip_special_tokens=False) if len(gen_ids) > budget else generated
            longer = min(longer, budget)
        row = conversational_row(prompt, real, generated, system)
        row["id"] = str(pair.get("id", i))
        row[LENGTH_COLUMN] = prompt_len + longer + 2
        out.append(row)
    return out
