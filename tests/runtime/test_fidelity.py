"""Fidelity to SPIN (Chen et al., 2024), pinned on the math rather than on TRL: the loss `spin train` logs
equals the SPIN formula computed here from summed answer log-probs of the policy and of the
iteration's start model; the reference is that saved start checkpoint; the per-iteration
schedule and the data window are the paper's."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from spin_runtime.api.spec import SpinRunSpec
from spin_runtime.plan import hparams, layout
from spin_runtime.steps import trl_args as tc
from spin_runtime.steps.train import build_trainer, run_train, window_rows
from tests.runtime.train_helpers import (
    addition_rows,
    answer_logp,
    make_run,
    one_thread,  # noqa: F401 - fixture
    perturbed_copy,
    weights,
    write_pairs,
)

pytestmark = pytest.mark.usefixtures("one_thread")

BETA = 0.5
#: Large enough for one RMSProp step to move the policy away from the reference.
LR = 1e-4


@pytest.fixture(scope="module")
def start_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """An iter-0 checkpoint that differs from the built-in tiny model."""
    return perturbed_copy(tiny_model_dir, tmp_path_factory.mktemp("start") / "model")


class Snapshot(TrainerCallback):
    """Keeps the policy's weights at the beginning of every optimizer step."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.states[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}


def _iteration1_run(run_dir: Path, tiny_model_dir: Path, start: Path, **training: Any) -> list[dict[str, Any]]:
    """A run at iteration 1: start model iter-0/model, window syn(0) ∪ syn(1) of 2 pairs each,
    one batch of all 4 pairs per step."""
    make_run(
        run_dir,
        tiny_model_dir,
        training={
            "perDeviceBatchSize": 4,
            "maxSteps": 2,
            "lrScheduler": "constant",
            "warmupRatio": 0.0,
            # long enough that neither our prompt truncation nor TRL's max_length cuts anything
            "maxLength": 128,
            "maxPromptLength": 96,
            **training,
        },
        schedule=[{"learningRate": LR, "beta": BETA}],
    )
    shutil.copytree(start, run_dir / layout.model_dir(0))
    rows0, rows1 = addition_rows(2, 0), addition_rows(2, 1)
    write_pairs(run_dir, 0, "train", rows0)
    write_pairs(run_dir, 1, "train", rows1)
    return rows0 + rows1


def _spin_loss(t: float, loss_type: str) -> float:
    if loss_type == "sigmoid":
        return math.log1p(math.exp(-t))  # −log σ(t)
    return max(0.0, 1.0 - t)


@pytest.mark.parametrize(
    ("loss_type", "precompute"),
    [("sigmoid", False), ("hinge", True)],
    ids=["sigmoid-live-reference", "hinge-precomputed-reference"],
)
def test_logged_loss_equals_spin_formula_of_summed_answer_logps(
    loss_type: str, precompute: bool, tmp_path: Path, tiny_model_dir: Path, start_checkpoint: Path
) -> None:
    run_dir = tmp_path / "run"
    rows = _iteration1_run(
        run_dir, tiny_model_dir, start_checkpoint, lossType=loss_type, precomputeRefLogProbs=precompute
    )
    snap = Snapshot()
    run_train(run_dir, 1, callbacks=[snap])
    history = json.loads((run_dir / layout.metrics_path(1)).read_text())["train"]["history"]
    assert [h["step"] for h in history] == [1, 2]

    # Step 1: the policy is the start model, which is also the opponent → t = 0.
    assert history[0]["loss"] == pytest.approx(math.log(2) if loss_type == "sigmoid" else 1.0, abs=1e-6)
    assert history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)

    # Step 2: recompute from scratch with the weights the policy had at that step.
    tok = AutoTokenizer.from_pretrained(start_checkpoint)
    ref = AutoModelForCausalLM.from_pretrained(start_checkpoint, dtype=torch.float32).eval()
    policy = AutoModelForCausalLM.from_pretrained(start_checkpoint, dtype=torch.float32).eval()
    policy.load_state_dict(snap.states[1])
    ts, r_real, r_gen, losses = [], [], [], []
    for r in rows:
        d_real = answer_logp(policy, tok, r["prompt"], r["real"]) - answer_logp(ref, tok, r["prompt"], r["real"])
        d_gen = answer_logp(policy, tok, r["prompt"], r["generated"]) - answer_logp(ref, tok, r["prompt"], r["generated"])
        t = BETA * (d_real - d_gen)
        ts.append(t)
        r_real.append(BETA * d_real)
        r_gen.append(BETA * d_gen)
        losses.append(_spin_loss(t, loss_type))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert max(abs(t) for t in ts) > 0.05, "the policy must have moved for this check to mean something"
    step2 = history[1]
    assert step2["loss"] == pytest.approx(mean(losses), rel=1e-4, abs=1e-5)
    assert step2["rewards/margins"] == pytest.approx(mean(ts), rel=1e-4, abs=1e-5)
    assert step2["rewards/real"] == pytest.approx(mean(r_real), rel=1e-4, abs=1e-5)
    assert step2["rewards/generated"] == pytest.approx(mean(r_gen), rel=1e-4, abs=1e-5)
    assert step2["rewards/accuracies"] == pytest.approx(mean([1.0 if t > 0 else 0.0 for t in ts]))
    assert step2["rewards/chosen"] == step2["rewards/real"]


def test_reference_is_the_saved_start_checkpoint(tmp_path: Path, tiny_model_dir: Path, start_checkpoint: Path) -> None:
    run_dir = tmp_path / "run"
    _iteration1_run(run_dir, tiny_model_dir, start_checkpoint, maxSteps=1)
    trainer, setup = build_trainer(run_dir, 1)
    assert Path(setup.start_path) == run_dir / layout.model_dir(0)
    start = weights(run_dir / layout.model_dir(0))
    builtin = weights(tiny_model_dir)
    ref = trainer.ref_model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in start.items())
    assert any(not torch.equal(ref[k], builtin[k]) for k in start)
    trainer.train()
    policy = trainer.model.state_dict()
    assert any(not torch.equal(policy[k], start[k]) for k in start)
    # training did not touch the opponent
    assert all(torch.equal(trainer.ref_model.state_dict()[k], v) for k, v in start.items())


def test_schedule_of_iterations_follows_the_paper() -> None:
    from trl import DPOConfig

    spec = SpinRunSpec()
    expected = {0: (5e-7, 0.1), 1: (5e-7, 0.1), 2: (1e-7, 0.1), 3: (1e-7, 5.0), 7: (1e-7, 5.0)}
    for k, (lr, beta) in expected.items():
        kw = tc.dpo_config_kwargs(spec, hparams.hparams(spec, k), on_gpu=False, output_dir="/tmp/x", attn_implementation="sdpa")
        assert (kw["learning_rate"], kw["beta"]) == (lr, beta), k
    kw = tc.dpo_config_kwargs(spec, hparams.hparams(spec, 2), on_gpu=True, output_dir="/tmp/x", attn_implementation="sdpa")
    assert kw["loss_type"] == ["sigmoid"]
    assert kw["optim"] == "rmsprop"
    assert kw["lr_scheduler_type"] == "linear"
    assert kw["warmup_steps"] == 0.1
    assert kw["num_train_epochs"] == 2
    assert kw["per_device_train_batch_size"] == 8 and kw["gradient_accumulation_steps"] == 1
    assert kw["max_length"] == 1024 and kw["truncation_mode"] == "keep_start"
    assert kw["gradient_checkpointing"] is True and kw["disable_dropout"] is True
    assert kw["seed"] == 42 and kw["bf16"] is True and "use_cpu" not in kw
    # TRL accepts what we build (CPU flavour: use_cpu, no bf16)
    cpu = tc.dpo_config_kwargs(spec, hparams.hparams(spec, 3), on_gpu=False, output_dir="/tmp/x", attn_implementation="sdpa")
    cpu.pop("gradient_checkpointing")
    args = DPOConfig(**cpu)
    assert (args.learning_rate, args.beta, args.use_cpu, args.bf16) == (1e-7, 5.0, True, False)


def test_iteration_2_trains_on_syn1_and_syn2_shuffled_with_the_seed(
    tmp_path: Path, tiny_model_dir: Path, start_checkpoint: Path
) -> None:
    run_dir = tmp_path / "run"
    run = make_run(run_dir, tiny_model_dir, training={"maxSteps": 1})  # the paper's schedule
    for j in range(3):
        write_pairs(run_dir, j, "train", addition_rows(3, j))
    shutil.copytree(start_checkpoint, run_dir / layout.model_dir(1))
    rows = window_rows(run_dir, run.spec, 2)
    assert sorted({r["iteration"] for r in rows}) == [1, 2]
    assert {r["id"] for r in rows} == {f"it{j}-{i}" for j in (1, 2) for i in range(3)}

    trainer, _ = build_trainer(run_dir, 2)
    expected_order = [r["id"] for r in tc.shuffled(rows, 42)]
    assert trainer.train_dataset["id"] == expected_order
    assert expected_order != [r["id"] for r in rows]
    assert (trainer.args.learning_rate, trainer.args.beta) == (1e-7, 0.1)
    assert trainer.args.loss_type == ["sigmoid"]


def test_prompts_are_truncated_from_the_left_to_max_prompt_length(tiny_model_dir: Path) -> None:
    from spin_runtime.modeling.chat import prepare_rows

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    words = " ".join(f"w{i}" for i in range(200))
    rows = [{"id": "a", "prompt": words + " THE END", "real": "yes", "generated": "no"}]
    (row,) = prepare_rows(rows, tok, 40)
    prompt = row["prompt"][0]["content"]
    rendered = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
    n = len(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
    assert n <= 40
    assert n >= 36, "truncation should keep as much as fits"
    assert prompt.endswith("THE END") and not prompt.startswith("w0 ")
    short = [{"id": "b", "prompt": "What is 1 + 1?", "real": "2", "generated": "3"}]
    assert prepare_rows(short, tok, 40)[0]["prompt"][0]["content"] == "What is 1 + 1?"


def test_window_before_start_iteration_comes_from_the_given_synthetic_data(tmp_path: Path, tiny_model_dir: Path) -> None:
    published = tmp_path / "SPIN_iter0.jsonl"
    pairs = addition_rows(2, 0)
    published.write_text(
        "\n".join(
            json.dumps(
                {
                    "real": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["real"]}],
                    "generated": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["generated"]}],
                }
            )
            for r in pairs
        )
    )
    run_dir = tmp_path / "run"
    spec = make_run(
        run_dir, tiny_model_dir, start_iteration=1, synthetic_data=[{"iteration": 0, "path": str(published)}]
    ).spec
    write_pairs(run_dir, 1, "train", addition_rows(3, 1))
    rows = window_rows(run_dir, spec, 1)
    assert [r["iteration"] for r in rows] == [0, 0, 1, 1, 1]
    assert [(r["prompt"], r["real"], r["generated"]) for r in rows[:2]] == [
        (r["prompt"], r["real"], r["generated"]) for r in pairs
    ]


def test_original_truncation_cuts_only_pairs_that_do_not_fit_then_the_answers(tiny_model_dir: Path) -> None:
    """training.truncation: original — the rule of the original code, computed here on token ids."""
    from spin_runtime.modeling import models
    from spin_runtime.modeling.chat import prepare_rows

    tok = models.load_tokenizer(str(tiny_model_dir), padding_side="right")
    long_prompt = " ".join(f"word{i}" for i in range(60))
    short = [{"id": "a", "prompt": long_prompt, "real": "Yes.", "generated": "No."}]
    # prompt (> maxPromptLength) + answer fits in maxLength: the original leaves it whole, `always` cuts it
    (kept,) = prepare_rows(short, tok, 32, truncation="original", max_length=512)
    assert kept["prompt"][-1]["content"] == long_prompt and kept["chosen"][0]["content"] == "Yes."
    (cut,) = prepare_rows(short, tok, 32, truncation="always", max_length=512)
    assert cut["prompt"][-1]["content"] != long_prompt and long_prompt.endswith(cut["prompt"][-1]["content"].strip())

    real = " ".join(f"fact{i}" for i in range(80))
    generated = " ".join(f"guess{i}" for i in range(10))
    long = [{"id": "b", "prompt": long_prompt, "real": real, "generated": generated}]
    (row,) = prepare_rows(long, tok, 32, truncation="original", max_length=96)
    budget = 96 - 32
    real_ids = tok(real, add_special_tokens=False)["input_ids"]
    assert row["chosen"][0]["content"] == tok.decode(real_ids[:budget])
    assert row["rejected"][0]["content"] == generated  # already within the budget
    prompt_ids = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert len(prompt_ids) <= 32 and long_prompt.endswith(row["prompt"][-1]["content"].strip())


def test_a_hub_revision_pins_the_one_folder_every_loader_reads(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    """model.revision: the hub model is fetched at that commit once; generation, training (policy and
    the opponent TRL reloads from the policy's path), evaluation and lm-eval all load that folder."""
    import huggingface_hub

    from spin_runtime.api.spec import ModelSource
    from spin_runtime.errors import ModelError
    from spin_runtime.modeling import models

    asked: list[tuple[str, str]] = []

    def snapshot(repo_id: str, revision: str) -> str:
        asked.append((repo_id, revision))
        return str(tiny_model_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    rev = "ac6e600eefcce74f5e8bae1035d4f66019e93190"
    src = ModelSource(hub="alignment-handbook/zephyr-7b-sft-full", revision=rev)
    assert models.resolve_source(src) == str(tiny_model_dir)
    assert asked == [("alignment-handbook/zephyr-7b-sft-full", rev)]
    assert models.resolve_source(ModelSource(hub="a/b")) == "a/b"  # no revision: the hub id, latest

    def offline(repo_id: str, revision: str) -> str:
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelError, match=r"model.hub a/b at revision v1: cannot fetch it .*HF_TOKEN"):
        models.resolve_source(ModelSource(hub="a/b", revision="v1"))


# --------------------------------------------------------------------------- pair tokenisation


PROMPT_TEXT = "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n<|im_start|>assistant\n"


def _pair_trainer(tmp_path: Path, tiny_model_dir: Path, collator: str) -> Any:
    from spin_runtime.steps.train import build_trainer

    run_dir = tmp_path / collator
    make_run(run_dir, tiny_model_dir, training={"collator": collator, "maxLength": 64, "maxPromptLength": 48})
    spec_file = run_dir / "spec.json"
    data = json.loads(spec_file.read_text())
    data["spec"]["systemPrompt"] = ""  # the original's empty system turn
    spec_file.write_text(json.dumps(data))
    write_pairs(run_dir, 0, "train", [{"id": "a", "prompt": "What is 1 + 1?", "real": "2.", "generated": "3.", "answer": None}])
    trainer, _ = build_trainer(run_dir, 0)
    return trainer


@pytest.mark.parametrize("collator", ["trl", "original"])
def test_pair_tokenisation_gives_the_expected_ids_labels_and_masks(tmp_path: Path, tiny_model_dir: Path, collator: str) -> None:
    """Expected values written out by hand for SmolLM2's ChatML template (EOS = <|im_end|>)."""
    trainer = _pair_trainer(tmp_path, tiny_model_dir, collator)
    tok = trainer.processing_class

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    eos = tok.eos_token_id
    prompt = ids(PROMPT_TEXT)
    if collator == "trl":  # one rendering of the whole conversation, everything attended
        chosen, rejected = ids("2.<|im_end|>\n"), ids("3.<|im_end|>\n")
    else:  # the answer's own rendering, plus one appended EOS
        chosen, rejected = [*ids("2.<|im_end|>\n"), eos], [*ids("3.<|im_end|>\n"), eos]
    row = trainer.train_dataset[0]
    assert (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) == (prompt, chosen, rejected)

    batch = trainer.data_collator([row])
    real_seq = prompt + chosen
    assert batch["input_ids"][0].tolist()[: len(real_seq)] == real_seq
    completion = batch["completion_mask"][0].tolist()[: len(real_seq)]
    assert completion == [0] * len(prompt) + [1] * len(chosen)  # labels: the answer tokens only
    attention = batch["attention_mask"][0].tolist()[: len(real_seq)]
    if collator == "trl":
        assert attention == [1] * len(real_seq)
    else:  # EOS inside prompt and answer masked, the appended last EOS attended
        expected = [0 if t == eos else 1 for t in real_seq]
        expected[-1] = 1
        assert attention == expected and attention.count(0) == 3
