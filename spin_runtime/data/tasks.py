"""Built-in synthetic tasks: deterministic prompts with ground-truth answers and an exact-match
scorer, short enough that SPIN on a 135M model runs in minutes on a CPU.

The SFT "real" answer has a fixed format (e.g. `964 + 494 = 1458.`); scoring compares the
final number (or the word sequence) of a generated answer with the ground truth.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from spin_runtime.api.spec import BuiltinTask

_WORDS = (
    "apple river stone cloud green table light music paper garden window silver "
    "orange forest bridge candle planet rocket winter summer yellow pencil basket "
    "mirror castle dragon ocean valley thunder marble rabbit"
).split()


@dataclass(frozen=True)
class Example:
    """One task example: the user prompt, the SFT answer and the ground truth to score."""

    prompt: str
    response: str
    answer: str


def _addition(rng: random.Random, digits: int) -> Example:
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    return Example(
        prompt=f"What is {a} + {b}? Reply in the form 'a + b = c.'",
        response=f"{a} + {b} = {a + b}.",
        answer=str(a + b),
    )


def _reverse(rng: random.Random) -> Example:
    words = rng.sample(_WORDS, rng.randint(3, 5))
    reversed_words = " ".join(reversed(words))
    return Example(
        prompt=f"Reverse the order of these words: {' '.join(words)}",
        response=f"{reversed_words}.",
        answer=reversed_words,
    )


def _make(name: str, rng: random.Random) -> Example:
    if name == "addition-3digit":
        return _addition(rng, 3)
    if name == "addition-2digit":
        return _addition(rng, 2)
    if name == "reverse-words":
        return _reverse(rng)
    raise ValueError(f"unknown built-in task {name!r}")


def make_examples(task: BuiltinTask) -> tuple[list[Example], list[Example]]:
    """Deterministic, disjoint train and test examples of a built-in task."""
    rng = random.Random(f"{task.name}:{task.seed}")
    seen: set[str] = set()
    out: list[Example] = []
    want = task.train_size + task.test_size
    attempts = 0
    while len(out) < want:
        attempts += 1
        if attempts > want * 50:
            raise ValueError(
                f"built-in task {task.name} cannot produce {want} distinct examples: lower trainSize/testSize"
            )
        ex = _make(task.name, rng)
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
    return out[: task.train_size], out[task.train_size :]


_NUMBER = re.compile(r"-?\d[\d,]*")


def score(task_name: str, generated: str, answer: str) -> bool:
    """Exact match: the last number of the answer (addition) or its word sequence (reverse)."""
    if task_name.startswith("addition"):
        numbers = _NUMBER.findall(generated)
        return bool(numbers) and numbers[-1].replace(",", "") == answer
    words = re.findall(r"[a-zA-Z]+", generated.lower())
    return " ".join(words) == answer


def task_name_of_prompt(prompt: str) -> str | None:
    """Recognise which built-in task a prompt belongs to (None for other data)."""
    if prompt.startswith("Reverse the order of these words:"):
        return "reverse-words"
    m = re.match(r"What is (\d+) \+ (\d+)\?", prompt)
    if m:
        return "addition-3digit" if len(m.group(1)) == 3 else "addition-2digit"
    return None
