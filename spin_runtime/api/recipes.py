"""Recipes: named sets of spec values that reproduce a published setup. `recipe: spin-paper`
sets every detail of the original SPIN code that changes results, for each field the spec
leaves unset (a field the spec sets wins). Pure data and one merge function."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

#: The zephyr SFT model whose hub copy was replaced after the paper; its pinned revision.
PAPER_MODEL_REVISIONS = {
    "alignment-handbook/zephyr-7b-sft-full": "ac6e600eefcce74f5e8bae1035d4f66019e93190",
    "HuggingFaceH4/zephyr-7b-sft-full": "ac6e600eefcce74f5e8bae1035d4f66019e93190",
}

#: What the original code did, as spec values (camelCase, as written in YAML); RECIPE_NOTES says why
#: each matters.
RECIPES: dict[str, dict[str, Any]] = {
    "spin-paper": {
        # the original inserted {"role": "system", "content": ""} before every user turn
        "systemPrompt": "",
        "dataWindow": 2,
        "schedule": [  # the paper's lr/β; "set 6 epochs and stop as needed" (the authors); the paper reports 2
            {"learningRate": 5.0e-7, "beta": 0.1, "epochs": 6},
            {"learningRate": 5.0e-7, "beta": 0.1, "epochs": 6},
            {"learningRate": 1.0e-7, "beta": 0.1, "epochs": 6},
            {"learningRate": 1.0e-7, "beta": 5.0, "epochs": 6},
        ],
        "generation": {  # the HF path the paper used, not vLLM
            "engine": "transformers",
            "promptFormat": "instruction",
            "decoding": "greedy",
            "maxNewTokens": 256,
        },
        "evaluation": {"lmEval": {"version": "0.4.0"}},
        "training": {
            "lossType": "sigmoid",
            "optimizer": "rmsprop",
            "lrScheduler": "linear",
            "warmupRatio": 0.1,
            "maxLength": 1024,
            "maxPromptLength": 512,
            "truncation": "original",
            "collator": "original",
            "seed": 42,
            "saveEpochs": True,
            "selectEpoch": "last",
            "maxGradNorm": 0,
            "attnImplementation": "sdpa",
        },
    }
}


#: Why the original's value matters, per recipe field (docs/spec-reference.md's paper table).
RECIPE_NOTES: dict[str, str] = {
    "spec.systemPrompt": "the original inserted an empty system turn before every user turn; without it every "
    "log-prob has another context",
    "spec.generation.engine": "the authors: vLLM generation differs from the HF generation they used",
    "spec.generation.promptFormat": "the original generated from the instruction string, without special tokens",
    "spec.schedule": "the authors: \"set 6 epochs and stop as needed\"; the paper reports 2 "
    "(`training.selectEpoch: 2`)",
    "spec.training.collator": "prompt and answers tokenised apart, each inner EOS masked, one EOS appended",
    "spec.training.truncation": "the prompt is cut only when prompt + the longer answer exceed maxLength",
    "spec.training.saveEpochs": "every epoch's model kept and scored on the held-out split (to stop as needed)",
    "spec.training.selectEpoch": "the repository's next iteration starts from the final epoch's output; "
    "`best` (by held-out reward margin) is spinrun's own rule, a number N the paper's reading (epoch N of the "
    "schedule, training stops there)",
    "spec.training.maxGradNorm": "the original never clipped: accelerate 0.23 clipped only when asked, its "
    "ZeRO-3 config set none, DeepSpeed's default is 0; TRL clips at 1.0",
    "spec.training.attnImplementation": "with collator original, flash_attention_2 drops each masked EOS inside "
    "an answer as a query as well as a key (one label per sequence changes); the original ran sdpa/eager "
    "(transformers 4.37), which hide it as a key only",
    "spec.evaluation.lmEval.version": "the paper's scores come from lm-evaluation-harness v0.4.0; other versions "
    "give other numbers (the evaluate step warns when the installed one differs)",
}


def _leaves(tree: Mapping[str, Any], prefix: str) -> Iterator[str]:
    for key, value in tree.items():
        path = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            yield from _leaves(value, path)
        else:
            yield path


#: Spec paths a recipe may set: the CRD gives them no default, so that a field the user left
#: unset is still unset when the operator reads the object, and the recipe can fill it.
RECIPE_PATHS: frozenset[str] = frozenset(p for r in RECIPES.values() for p in _leaves(r, "spec"))


def _merge_under(base: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """`given` with every key it lacks taken from `base`, recursively (given wins)."""
    out = copy.deepcopy(dict(given))
    for key, value in base.items():
        if key not in out:
            out[key] = copy.deepcopy(value)
        elif isinstance(value, Mapping) and isinstance(out[key], Mapping):
            out[key] = _merge_under(value, out[key])
    return out


def apply_recipe(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec data with its recipe's values filled in where the spec is silent."""
    name = spec.get("recipe")
    if not isinstance(name, str) or name not in RECIPES:
        return dict(spec)  # none, or a wrong value: the validator's to refuse
    out = _merge_under(RECIPES[name], spec)
    model = out.get("model")
    hub = model.get("hub") if isinstance(model, Mapping) else None
    if name == "spin-paper" and isinstance(hub, str) and hub in PAPER_MODEL_REVISIONS:  # else the validator's
        out["model"] = {"revision": PAPER_MODEL_REVISIONS[hub], **model}
    return out
