"""Scoring a model on SPIN pairs: summed answer log-probs of real and generated answers, the
implicit reward margin and accuracy against the opponent, and its greedy answers to the held-out
prompts judged against the reference (built-in task scorers, normalised exact match with the real
answer, or the user's `evaluation.scorer`)."""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spin_runtime.api.spec import Generation, SpinRunSpec
from spin_runtime.data import tasks
from spin_runtime.errors import SpecConfigError
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
                prompt_ids, answer_ids = sequences[i]
                end = len(prompt_ids) + len(answer_ids)
                ids[row, :end] = torch.tensor(prompt_ids + answer_ids)
                attn[row, :end] = 1
                mask[row, len(prompt_ids) : end] = True
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


def row_task(spec: SpinRunSpec, row: dict[str, Any]) -> str | None:
    """The built-in task whose scorer judges a held-out row: set for rows that carry a ground
    truth `answer` of a known task; None = the row is judged by normalised match with `real`."""
    if row.get("answer") is None:
        return None
    return task_name(spec, row["prompt"])


_SPACES = re.compile(r"\s+")


def _is_edge_junk(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def normalise_answer(text: str) -> str:
    """The answer as normalised exact match compares it: case-folded, every run of whitespace made
    one space, and whitespace and punctuation (Unicode category P*) stripped at both ends.
    Punctuation inside the answer and symbols such as '$' or '%' are kept."""
    out = _SPACES.sub(" ", text.casefold())
    start, end = 0, len(out)
    while start < end and _is_edge_junk(out[start]):
        start += 1
    while end > start and _is_edge_junk(out[end - 1]):
        end -= 1
    return out[start:end]


def normalised_match(generated: str, real: str) -> bool:
    """True when the generated answer equals the real one after `normalise_answer`."""
    return normalise_answer(generated) == normalise_answer(real)


def new_token_budget(tok: PreTrainedTokenizerBase, reals: Sequence[str], cap: int = MAX_NEW_TOKENS) -> int:
    """Greedy generation budget: the longest real answer plus slack, within [24, cap] tokens
    (cap: 64 for built-in tasks, generation.maxNewTokens for other data)."""
    longest = max((len(tok(r, add_special_tokens=False)["input_ids"]) for r in reals), default=0)
    return max(min(MIN_NEW_TOKENS, cap), min(cap, longest + 8))


def generate_answers(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    gen: Generation | None = None,
    system: str | None = None,
) -> list[str]:
    """Greedy answers to `prompts`, built as the generation step builds them (the spec's prompt
    format and system turn in `gen`) with its transformers engine (length-sorted batches, KV
    cache, stop at EOS), so evaluation decodes as generation does, but greedily."""
    from spin_runtime.modeling.decoding import transformers_generate

    base = gen if gen is not None else Generation()
    greedy = base.model_copy(
        update={"engine": "transformers", "decoding": "greedy", "max_new_tokens": max_new_tokens, "batch_size": GENERATE_BATCH}
    )
    tok.padding_side = "left"
    return transformers_generate(model, tok, prompts, greedy, system=system, progress=False)


Scorer = Callable[[str, str, str], Any]


def load_scorer(ref: str) -> Scorer:
    """Import `evaluation.scorer` ('module:function'); the working directory is searched too. A
    missing module or function is a SpecConfigError naming the field."""
    module_name, _, func_name = ref.partition(":")
    if not module_name or not func_name:
        raise SpecConfigError(f"evaluation.scorer {ref!r} must be 'module:function'")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raises while importing
        raise SpecConfigError(
            f"evaluation.scorer {ref!r}: cannot import module {module_name!r} ({type(e).__name__}: {e}); put it on "
            f"PYTHONPATH (or in {cwd}, the evaluate step's working directory; in a cluster: in the trainer image) "
            "or fix the name"
        ) from e
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise SpecConfigError(
            f"evaluation.scorer {ref!r}: module {module_name!r} has no function {func_name!r}; fix the name"
        )
    return fn


def call_scorer(fn: Scorer, ref: str, row: dict[str, Any], generated: str) -> float:
    """The user scorer's value for one row as a float (bool → 1.0/0.0); a raise or a value that
    is not a finite number is a SpecConfigError naming the field and the row."""
    where = f"held-out row {row.get('id')!r}"
    try:
        value = fn(row["prompt"], row["real"], generated)
    except Exception as e:
        raise SpecConfigError(f"evaluation.scorer {ref!r} raised on {where}: {type(e).__name__}: {e}") from e
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    try:  # ints, floats, numpy and torch scalars
        number = math.nan if isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise SpecConfigError(
            f"evaluation.scorer {ref!r} returned {value!r} ({type(value).__name__}) on {where}: it must return a "
            "finite float or a bool"
        )
    return number


def exact_match_rule(spec: SpinRunSpec, rows: Sequence[dict[str, Any]]) -> str:
    """How the rows are judged: 'task:<name>' (built-in scorer), 'normalised' (vs the real
    answer) or both joined by '+'."""
    names = sorted({t for r in rows if (t := row_task(spec, r))})
    rules = [f"task:{n}" for n in names] + (["normalised"] if any(row_task(spec, r) is None for r in rows) else [])
    return "+".join(rules)


def heldout_scores(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    spec: SpinRunSpec,
    rows: Sequence[dict[str, Any]],
    scorer: Scorer | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """Greedy answers of `model` to the held-out rows, scored: `exact_match` (built-in rows with
    their task scorer, the others by normalised match with `real`) when evaluation.exactMatch, and
    `score` (the mean of evaluation.scorer) when a scorer is given. Keys get `prefix`."""
    evaluation = spec.evaluation
    if not rows or not (evaluation.exact_match or scorer is not None):
        return {}
    builtin_only = all(row_task(spec, r) for r in rows)
    cap = MAX_NEW_TOKENS if builtin_only else max(MIN_NEW_TOKENS, spec.generation.max_new_tokens)
    budget = new_token_budget(tok, [r["real"] for r in rows], cap)
    answers = generate_answers(model, tok, [r["prompt"] for r in rows], budget, spec.generation, spec.system_prompt)
    out: dict[str, Any] = {}
    if evaluation.exact_match:
        hits = [
            tasks.score(task, text, str(r["answer"])) if (task := row_task(spec, r)) else normalised_match(text, r["real"])
            for r, text in zip(rows, answers, strict=True)
        ]
        out[f"{prefix}exact_match"] = sum(hits) / len(hits)
        if not prefix:
            out["exact_match_samples"] = len(hits)
            out["exact_match_rule"] = exact_match_rule(spec, rows)
    if scorer is not None and evaluation.scorer is not None:
        values = [call_scorer(scorer, evaluation.scorer, r, text) for r, text in zip(rows, answers, strict=True)]
        out[f"{prefix}score"] = sum(values) / len(values)
        if not prefix:
            out["score_samples"] = len(values)
            out["scorer"] = evaluation.scorer
    return out


def exact_match(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, spec: SpinRunSpec, rows: Sequence[dict[str, Any]]
) -> tuple[float, int] | None:
    """(share correct, rows scored) of `heldout_scores`' exact match (built-in rows by their task
    scorer, the others by normalised match); None when evaluation.exactMatch is off or no rows."""
    out = heldout_scores(model, tok, spec, rows)  # no scorer passed: exact match only
    if "exact_match" not in out:
        return None
    return out["exact_match"], out["exact_match_samples"]
