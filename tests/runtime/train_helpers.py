"""Helpers of the training/evaluation tests: a run directory on the tiny random Llama with
hand-written iteration data (fake generated answers), independent of generate/convert."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spin_runtime.api.spec import SpinRun
from spin_runtime.plan import layout
from spin_runtime.store import rundir

#: Small, fast training settings (CPU, no TensorBoard, short sequences).
FAST_TRAINING: dict[str, Any] = {
    "maxLength": 64,
    "maxPromptLength": 48,
    "perDeviceBatchSize": 2,
    "maxSteps": 2,
    "loggingSteps": 1,
    "gradientCheckpointing": False,
    "reportTo": [],
    "gpusPerNode": 0,
}


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (the test machine's cores are shared)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def addition_rows(n: int, iteration: int, seed: int = 0, with_answer: bool = True) -> list[dict[str, Any]]:
    """n addition prompts with the real answer and a wrong 'generated' one."""
    rng = random.Random(f"{seed}:{iteration}")
    rows = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        wrong = a + b + rng.choice([-10, -1, 1, 10])
        rows.append(
            {
                "id": f"it{iteration}-{i}",
                "prompt": f"What is {a} + {b}? Reply in the form 'a + b = c.'",
                "real": f"{a} + {b} = {a + b}.",
                "generated": f"{a} + {b} = {wrong}." if i % 3 else f"I think it is {wrong}",
                "answer": str(a + b) if with_answer else None,
            }
        )
    return rows


def write_pairs(run_dir: Path, k: int, split: str, rows: list[dict[str, Any]]) -> Path:
    """Write iteration k's converted parquet (columns id, prompt, real, generated, answer)."""
    import pandas as pd

    path = Path(run_dir) / layout.data_path(k, split)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=["id", "prompt", "real", "generated", "answer"])
    frame["answer"] = frame["answer"].astype("string")
    frame.to_parquet(path, index=False)
    return path


def make_run(
    run_dir: Path,
    model_dir: Path,
    *,
    training: dict[str, Any] | None = None,
    schedule: list[dict[str, Any]] | None = None,
    evaluation: dict[str, Any] | None = None,
    iterations: int = 4,
    start_iteration: int = 0,
    name: str = "t",
    synthetic_data: list[dict[str, Any]] | None = None,
) -> SpinRun:
    """Store a SpinRun on the tiny model in `run_dir` (spec.json) and return it."""
    spec: dict[str, Any] = {
        "model": {"path": str(model_dir)},
        "iterations": iterations,
        "startIteration": start_iteration,
        "training": {**FAST_TRAINING, **(training or {})},
        "evaluation": evaluation or {"maxSamples": 6},
    }
    if schedule is not None:
        spec["schedule"] = schedule
    if synthetic_data is not None:
        spec["syntheticData"] = synthetic_data
    run = SpinRun.model_validate({"metadata": {"name": name}, "spec": spec})
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    rundir.init_run(Path(run_dir), run)
    return run


def perturbed_copy(model_dir: Path, out: Path, seed: int = 1, scale: float = 0.05) -> Path:
    """Save a copy of `model_dir` whose weights are moved by seeded noise: a start checkpoint
    that differs from the built-in model (so a wrong reference would show)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return Path(out)


def weights(folder: Path) -> dict[str, Any]:
    """The tensors of a checkpoint's model.safetensors."""
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def answer_logp(model: Any, tok: Any, prompt: str, answer: str) -> float:
    """Independent of TRL: log π(answer | prompt) summed over the answer's tokens (prompt tokens
    masked), in float64 from the logits, through the chat template."""
    import torch

    def ids(messages: list[dict[str, str]], gen: bool) -> list[int]:
        out = tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    user = [{"role": "user", "content": prompt}]
    p = ids(user, True)
    full = ids([*user, {"role": "assistant", "content": answer}], False)
    assert full[: len(p)] == p, "the chat template must render the prompt as a prefix"
    x = torch.tensor([full])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, :-1].double()
    logp = logits.log_softmax(-1).gather(-1, x[0, 1:, None])[:, 0]
    return float(logp[len(p) - 1 :].sum())
