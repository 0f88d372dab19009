"""benchmarks/replicate.py's pure parts: the SFT stopping rule, the free-form task (deterministic
disjoint splits, its token-F1 scorer, a spec the runtime accepts) and the table over seeds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import freeform  # noqa: E402
import replicate  # noqa: E402
from sft import chosen_epoch  # noqa: E402

from spin_runtime.api.spec import SpinRunSpec  # noqa: E402
from spin_runtime.data.sft import load_sft  # noqa: E402


def test_sft_stops_at_the_first_epoch_that_does_not_improve_and_keeps_the_best() -> None:
    assert chosen_epoch([1.0, 0.8, 0.7, 0.75]) == (3, 4)
    assert chosen_epoch([1.0, 1.0]) == (1, 2)  # equal is not better
    assert chosen_epoch([1.0, 0.9, 0.8]) == (3, 3)  # the cap, still improving
    assert chosen_epoch([1.0, 1.1, 0.9, 1.2, 1.3], patience=2) == (3, 5)


def test_freeform_splits_are_deterministic_disjoint_and_seeded() -> None:
    items = freeform.stdlib_items()
    assert len(items) > 300 and len({s for _, s in items}) == len(items)
    sizes = {"train": 64, "val": 32, "test": 50}
    a, b = freeform.split_items(items, 0, sizes), freeform.split_items(items, 0, sizes)
    assert a == b
    prompts = [{r["prompt"] for r in a[s]} for s in sizes]
    assert sum(map(len, prompts)) == len(set.union(*prompts)) == 146
    assert freeform.split_items(items, 1, sizes)["train"] != a["train"]
    with pytest.raises(ValueError, match="lower the sizes"):
        freeform.split_items(items, 0, {"train": len(items) + 1})


def test_token_f1_ignores_case_punctuation_and_articles() -> None:
    assert freeform.token_f1("", "Return the base 2 logarithm of x.", "return base 2 logarithm of X") == 1.0
    assert freeform.token_f1("", "Return the sum.", "") == 0.0
    assert freeform.token_f1("", "join the path parts", "join a path") == pytest.approx(0.8)  # p 1, r 2/3
    assert freeform.token_f1("", "sort a list", "sort list quickly") == pytest.approx(0.8)  # p 2/3, r 1


def _args(**kw: object) -> argparse.Namespace:
    base = {"iterations": 2, "lr": 2e-6, "beta": 0.1, "optimizer": "rmsprop", "arm_lr": None}
    return argparse.Namespace(**{**base, **kw})


def test_both_tasks_make_specs_the_runtime_accepts_with_the_arm_on(tmp_path: Path) -> None:
    for task in replicate.TASKS:
        dataset, train, val = replicate.task_rows(task, 0, 8, 4, 5, tmp_path / task)
        spec = SpinRunSpec.model_validate(replicate.spin_spec(_args(), task, 0, dataset, tmp_path / "sft")["spec"])
        assert spec.evaluation.sft_baseline.enabled and spec.evaluation.sft_baseline.learning_rate is None
        spec_train, spec_test = load_sft(spec)
        assert [r.prompt for r in spec_train] == [r["prompt"] for r in train]
        assert len(spec_test) == 5 and len(val) == 4
        held_out = {r.prompt for r in spec_test} | {r["prompt"] for r in val}
        assert len(held_out) == 9 and not held_out & {r["prompt"] for r in train}
    assert (
        SpinRunSpec.model_validate(
            replicate.spin_spec(_args(arm_lr=1e-5), "docstrings", 0, dataset, tmp_path)["spec"]
        ).evaluation.scorer
        == "freeform:token_f1"
    )


def _result(seed: int, start: float, spin: list[float], sft: list[float]) -> dict:
    its = [
        {"iteration": k, "spin_steps": 8 * (k + 1), "sft_steps": 8 * (k + 1),
         "spin": {"metric": s, "logp_real": -1.0, "reward_accuracy": 0.5}, "sft": {"metric": c, "logp_real": -2.0}}
        for k, (s, c) in enumerate(zip(spin, sft, strict=True))
    ]  # fmt: skip
    its[0]["start"] = {"metric": start, "logp_real": -1.5}
    sft = {"epoch": 3, "epochs_run": 4, "eval_loss_by_epoch": [0.9, 0.8]}
    return {"task": "addition-3digit", "seed": seed, "sft": sft, "iterations": its}


def test_the_table_shows_mean_and_range_over_the_seeds_that_ran_each_iteration() -> None:
    results = [_result(0, 0.5, [0.6, 0.7], [0.5, 0.6]), _result(1, 0.4, [0.4, 0.5], [0.5, 0.5])]
    results.append({**_result(2, 0.3, [0.3], [0.2]), "seed": 2})
    table = "\n".join(replicate.task_table("addition-3digit", results))
    assert "| SFT start | 0 | 0.400 (0.300–0.500) | -1.50 (-1.50–-1.50) | – |" in table
    assert "| SPIN iter0 | 8 (8–8) | 0.433 (0.300–0.600) |" in table
    assert "| SPIN iter1 (seed 0, 1 only) | 24 (24–24) | 0.600 (0.500–0.700) |" in table
    assert "| continued SFT (same steps) | 24 (24–24) | 0.550 (0.500–0.600) |" in table
    assert "| 2 | 3 (4) | 0.900, 0.800 | 0.300 | 0.300 / 0.200 | – |" in table
    assert replicate.verdict("addition-3digit", results) == (
        "iter0: SPIN ahead of continued SFT on exact match in 2 of 3 seeds (0 level), mean gap +0.033, SPIN vs SFT "
        "start +0.033; iter1: SPIN ahead of continued SFT on exact match in 1 of 2 seeds (1 level), mean gap +0.050, "
        "SPIN vs SFT start +0.150."
    )
