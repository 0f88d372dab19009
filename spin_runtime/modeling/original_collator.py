"""The original SPIN code's tokenisation of a pair (`training.collator: original`): prompt and
answers rendered by the chat template, tokenised separately without special tokens, the
attention mask 0 at every EOS inside prompt and answers (zephyr's `</s>` turn separators), one
EOS appended to each answer (attended), and the original truncation on token ids. TRL's own
tokenisation renders and tokenises each sequence in one piece and attends every token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from spin_runtime.errors import SpecConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _render(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt))


def answer_text(tok: PreTrainedTokenizerBase, prompt_messages: list[dict[str, str]], answer: str) -> str:
    """The template's rendering of the assistant turn alone, without its assistant header (what
    the original stripped as `<|assistant|>\\n`): the full rendering minus the prompt's."""
    head = _render(tok, prompt_messages, True)
    full = _render(tok, [*prompt_messages, {"role": "assistant", "content": answer}], False)
    if not full.startswith(head):
        raise SpecConfigError(
            "training.collator original needs a chat template whose prompt rendering is a prefix of the full "
            "conversation's; use collator: trl with this model"
        )
    return full[len(head):]


def _ids(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def original_tokens(
    tok: PreTrainedTokenizerBase,
    prompt_messages: list[dict[str, str]],
    real: str,
    generated: str,
    max_length: int,
    max_prompt_length: int,
) -> dict[str, list[int]]:
    """`prompt_ids`, `chosen_ids` (real) and `rejected_ids` (generated) as the original built them,
    truncated by its rule: when prompt + the longer answer exceed `max_length`, the prompt keeps its
    last `max_prompt_length` tokens; if still too long, both answers keep their first
    `max_length - max_prompt_length`."""
    eos = tok.eos_token_id
    if eos is None:
        raise SpecConfigError("training.collator original needs a tokenizer with an EOS token")
    prompt = _ids(tok, _render(tok, prompt_messages, True))
    chosen = [*_ids(tok, answer_text(tok, prompt_messages, real)), eos]
    rejected = [*_ids(tok, answer_text(tok, prompt_messages, generated)), eos]
    longer = max(len(chosen), len(rejected))
    if len(prompt) + longer > max_length:
        prompt = prompt[-max_prompt_length:]
    if len(prompt) + longer > max_length:
        budget = max_length - max_prompt_length
        chosen, rejected = chosen[:budget], rejected[:budget]
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


def attention_without_inner_eos(
    input_ids: Sequence[int], attention: Sequence[int], completion: Sequence[int], eos: int
) -> list[int]:
    """The original's attention mask of one sequence: 0 at every EOS but the appended last one
    (the final completion token), padding stays 0."""
    last = max((i for i, c in enumerate(completion) if c), default=-1)
    return [0 if (t == eos and i != last) else a for i, (t, a) in enumerate(zip(input_ids, attention, strict=True))]


def original_collator(pad_token_id: int, eos_token_id: int, max_length: int | None = None) -> Any:
    """TRL's preference collator with the original's attention mask (EOS inside masked)."""
    import torch
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    class OriginalCollator(DataCollatorForPreference):
        """DataCollatorForPreference, then the original's attention masks."""

        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            out = super().torch_call(examples)
            masks = [
                attention_without_inner_eos(ids.tolist(), att.tolist(), comp.tolist(), eos_token_id)
                for ids, att, comp in zip(out["input_ids"], out["attention_mask"], out["completion_mask"], strict=True)
            ]
            out["attention_mask"] = torch.tensor(masks, dtype=out["attention_mask"].dtype)
            return out

    return OriginalCollator(pad_token_id=pad_token_id, max_length=max_length)

