"""Scoring a model on SPIN pairs: summed answer log-probs of real and generated answers, the
implicit reward margin and accuracy against the opponent, and exact match by greedy decoding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spin_runtime.api.spec import SpinRunSpec
from spin_runtime.data import tasks
from spin_runtime.modeling.chat import prepare_rows

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


#: Bounds of the new-token budget of exact-match generation (answers of built-in tasks are short).
MIN_NEW_TOKENS, MAX_NEW_TOKENS = 24, 64
#: Pairs (2 sequences each) per forward when scoring log-probs.
LOGP_BATCH_PAIRS = 4


#: Prompts per batch when generating for exact match.
GENERATE_BATCH = 64


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one held-out pair: the shared prompt and the two answers (template tokens
    of the assistant turn included, as TRL trains on them)."""

    prompt: list[int]
    real: list[int]
    generated: list[int]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _ids(out: Any) -> list[int]:
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def encode_pairs(
    tok: PreTrainedTokenizerBase,
    rows: Sequence[dict[str, Any]],
    max_prompt_length: int,
    max_length: int,
    *,
    system: str | None = None,
    truncation: str = "always",
) -> list[EncodedPair]:
    """Tokenize pairs the way training does: chat template, prompt cut from the left to
    `max_prompt_length`, answers from where prompt and prompt+answer diverge, prompt+answer cut
    to `max_length` (keep start)."""
    prepared = prepare_rows(rows, tok, max_prompt_length, system=system, truncation=truncation, max_length=max_length)
    out: list[EncodedPair] = []
    for r in prepared:
        prompt = _ids(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True))
        full_real = _ids(tok.apply_chat_template(r["prompt"] + r["chosen"], tokenize=True))
        full_gen = _ids(tok.apply_chat_template(r["prompt"] + r["rejected"], tokenize=True))
        cut = min(_common_prefix(prompt, full_real), _common_prefix(prompt, full_gen))
        prompt = prompt[:cut]
        keep = max(0, max_length - len(prompt))
        out.append(EncodedPair(prompt, full_real[cut:][:keep], full_gen[cut:][:keep]))
    return out


def answer_logps(model: PreTrainedModel, sequences: Sequence[tuple[list[int], list[int]]], pad_id: int) -> list[float]:
    """Summed log-probs (fp32) of each answer given its prompt: (prompt ids, answer ids) pairs,
    scored in length-sorted, right-padded batches."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    result = [0.0] * len(sequences)
    batch = 2 * LOGP_BATCH_PAIRS
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            seqs = [sequences[i][0] + sequences[i][1] for i in idx]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            attn = torch.zeros((len(seqs), width), dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.bool)
            for row, i in enumerate(idx):
                p, a = sequences[i]
                ids[row, : len(p) + len(a)] = torch.tensor(p + a)
                attn[row, : len(p) + len(a)] = 1
                mask[row, len(p) : len(p) + len(a)] = True
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits[:, :-1].float()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
            sums = (logp * mask[:, 1:].to(device)).sum(dim=1).cpu().tolist()
            for row, i in enumerate(idx):
                result[i] = float(sums[row])
    return result


def pair_logps(model: PreTrainedModel, pairs: Sequence[EncodedPair], pad_id: int) -> tuple[list[float], list[float]]:
    """(log p(real|x), log p(generated|x)) of every pair under `model`."""
    seqs = [(p.prompt, p.real) for p in pairs] + [(p.prompt, p.generated) for p in pairs]
    scores = answer_logps(model, seqs, pad_id)
    return scores[: len(pairs)], scores[len(pairs) :]


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def reward_metrics(
    policy_real: Sequence[float],
    policy_generated: Sequence[float],
    ref_real: Sequence[float],
    ref_generated: Sequence[float],
    beta: float,
) -> dict[str, Any]:
    """SPIN's held-out reward statistics: rewards β·(log πθ − log π_ref) of real and generated
    answers, margin = reward(real) − reward(generated), accuracy = share of positive margins."""
    r_real = [beta * (p - r) for p, r in zip(policy_real, ref_real, strict=True)]
    r_gen = [beta * (p - r) for p, r in zip(policy_generated, ref_generated, strict=True)]
    margins = [a - b for a, b in zip(r_real, r_gen, strict=True)]
    return {
        "samples": len(margins),
        "beta": beta,
        "logp_real": _mean(policy_real),
        "logp_generated": _mean(policy_generated),
        "opponent_logp_real": _mean(ref_real),
        "opponent_logp_generated": _mean(ref_generated),
        "reward_real": _mean(r_real),
        "reward_generated": _mean(r_gen),
        "reward_margin": _mean(margins),
        "reward_accuracy": _mean([1.0 if m > 0 else 0.0 for m in margins]),
    }


def task_name(spec: SpinRunSpec, prompt: str) -> str | None:
    """The built-in task a held-out prompt belongs to (the spec's task, else recognised)."""
    if spec.dataset.builtin is not None:
        return spec.dataset.builtin.name
    return tasks.task_name_of_prompt(prompt)


def new_token_budget(tok: PreTrainedTokenizerBase, reals: Sequence[str]) -> int:
    """Greedy generation budget: the longest real answer plus slack, within [24, 64] tokens."""
    longest = max((len(tok(r, add_special_tokens=False)["input_ids"]) for r in reals), default=0)
    return max(MIN_NEW_TOKENS, min(MAX_NEW_TOKENS, longest + 8))


def generate_answers(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    system: str | None = None,
) -> list[str]:
    """Greedy answers to `prompts` through the chat template, with the generation step's engine
    (length-sorted batches, KV cache, stop at EOS) so evaluation decodes as generation does."""
    from spin_runtime.api.spec import Generation
    from spin_runtime.modeling.decoding import transformers_generate

    gen = Generation(engine="transformers", prompt_format="chat", decoding="greedy",
                     max_new_tokens=max_new_tokens, batch_size=GENERATE_BATCH)
    tok.padding_side = "left"
    return transformers_generate(model, tok, prompts, gen, system=system, progress=False)


def exact_match(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, spec: SpinRunSpec, rows: Sequence[dict[str, Any]]
) -> tuple[float, int] | None:
    """(share correct, rows scored) over the built-in rows (answer not null, task known) whose
    greedy answer scores as correct; None when there are no such rows."""
    scored = [r for r in rows if r.get("answer") is not None and task_name(spec, r["prompt"])]
    if not scored:
        return None
    answers = generate_answers(
        model, tok, [r["prompt"] for r in scored], new_token_budget(tok, [r["real"] for r in scored]), spec.system_prompt
    )
    hits = [tasks.score(task_name(spec, r["prompt"]) or "", text, str(r["answer"])) for r, text in zip(scored, answers, strict=True)]
    return sum(hits) / len(hits), len(hits)
