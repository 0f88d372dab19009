"""The generate step: shard slicing, prompt formats, the transformers engine on a tiny model,
idempotent shard files, and the vLLM arguments (with a fake vllm module)."""

from __future__ import annotations

import functools
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spin_runtime.api.spec import Generation, SpinRun
from spin_runtime.data.sft import load_sft
from spin_runtime.errors import SpinError
from spin_runtime.modeling import decoding, models
from spin_runtime.modeling.chat import encode_prompts, instruction_prompt
from spin_runtime.modeling.decoding import clean_answer, length_sorted_batches, transformers_generate
from spin_runtime.plan import layout, stages
from spin_runtime.steps import generate
from spin_runtime.steps.generate import (
    all_prompts,
    check_shard,
    choose_engine,
    run_generate,
    shard_indices,
    vllm_llm_kwargs,
    vllm_sampling_kwargs,
)
from spin_runtime.store import atomic, rundir

#: Prompts of very different lengths, so batches need padding.
PROMPTS = [
    "hi",
    "What is 123 + 456? Reply in the form 'a + b = c.'",
    "Reverse the order of these words: apple river stone cloud green",
    "Write a long story about a dragon who guards a castle near the sea and the knight who visits",
    "ok?",
    "Name three colours.",
    "Explain photosynthesis in one sentence, please, for a child of seven.",
    "x",
    "Why is the sky blue?",
    "List four planets.",
]


@pytest.fixture(scope="module", autouse=True)
def _fast_tiny_models() -> Iterator[None]:
    """Tiny models run fastest on one thread on a shared machine; each model and tokenizer is
    loaded once per module (loading is covered by the models tests)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    patch = pytest.MonkeyPatch()
    patch.setattr(models, "load_tokenizer", functools.lru_cache(models.load_tokenizer))
    patch.setattr(models, "load_model", functools.lru_cache(models.load_model))
    yield
    patch.undo()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chatty_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose greedy answers are varied text (untied embeddings, larger
    init), unlike the built-in one whose greedy answer repeats its last prompt token."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(models.smollm2_tokenizer_dir())
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **{**models.TINY_LLAMA_CONFIG, "tie_word_embeddings": False, "initializer_range": 0.1},
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("chatty-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def chatty(chatty_model_dir: Path) -> tuple[Any, Any]:
    return models.load_model(str(chatty_model_dir)), models.load_tokenizer(str(chatty_model_dir))


def make_run(tmp_path: Path, model: dict[str, Any], **generation: Any) -> Path:
    spec = {
        "model": model,
        "dataset": {"builtin": {"name": "addition-3digit", "trainSize": 12, "testSize": 4}},
        "iterations": 1,
        "generation": {"engine": "transformers", "maxNewTokens": 8, "batchSize": 8, **generation},
    }
    run_dir = tmp_path / "run"
    rundir.init_run(run_dir, SpinRun(metadata={"name": "gen-test"}, spec=spec))
    return run_dir


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("n_items", [0, 1, 7, 16, 101])
@pytest.mark.parametrize("shards", [1, 2, 3, 5, 8])
def test_shards_cover_every_row_exactly_once(n_items: int, shards: int) -> None:
    parts = [shard_indices(n_items, i, shards, seed=42) for i in range(shards)]
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(n_items))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == [shard_indices(n_items, i, shards, seed=42) for i in range(shards)]


def test_shard_assignment_depends_on_the_seed() -> None:
    assert shard_indices(50, 0, 2, seed=1) != shard_indices(50, 0, 2, seed=2)


def test_all_prompts_include_train_and_test_rows() -> None:
    run = SpinRun(metadata={"name": "x"}, spec={"dataset": {"builtin": {"trainSize": 5, "testSize": 3}}})
    prompts = all_prompts(*load_sft(run.spec))
    assert [p.split for p in prompts] == ["train"] * 5 + ["test"] * 3


@pytest.mark.parametrize(
    ("shard", "shards", "spec_shards", "fragment"),
    [
        (2, 2, 2, "between 0 and 1"),
        (-1, 2, 2, "between 0 and 1"),
        (0, 0, None, "at least 1"),
        (0, 3, 2, "differs from spec.generation.shards (2)"),
    ],
)
def test_bad_shard_arguments_are_refused(shard: int, shards: int, spec_shards: int | None, fragment: str) -> None:
    with pytest.raises(SpinError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        check_shard(shard, shards, spec_shards)


def test_instruction_prompt_is_the_originals_string() -> None:
    assert instruction_prompt("Why?") == "### Instruction: Why?\n\n### Response: "


def test_answers_lose_eos_text_and_leading_whitespace() -> None:
    assert clean_answer("\n  The answer.<|im_end|>", "<|im_end|>") == "The answer."
    assert clean_answer(" a </s></s>", "</s>") == "a "


def test_length_sorted_batches_group_similar_lengths() -> None:
    batches = length_sorted_batches([5, 1, 9, 3, 7], batch_size=2)
    assert batches == [[1, 3], [0, 4], [2]]


@pytest.mark.parametrize(
    ("choice", "importable", "gpu", "expected"),
    [
        ("auto", True, True, "vllm"),
        ("auto", True, False, "transformers"),
        ("auto", False, True, "transformers"),
        ("transformers", True, True, "transformers"),
        ("vllm", True, True, "vllm"),
    ],
)
def test_engine_choice(choice: str, importable: bool, gpu: bool, expected: str) -> None:
    assert choose_engine(choice, importable, gpu) == expected


@pytest.mark.parametrize(("importable", "gpu", "fragment"), [(False, True, "not installed"), (True, False, "no GPU")])
def test_explicit_vllm_without_vllm_or_gpu_is_refused(importable: bool, gpu: bool, fragment: str) -> None:
    with pytest.raises(SpinError, match=fragment):
        choose_engine("vllm", importable, gpu)


def test_vllm_arguments_follow_the_spec() -> None:
    gen = Generation(tensor_parallel_size=4, gpu_memory_utilization=0.8, max_model_len=2048, seed=7)
    assert vllm_llm_kwargs(gen, "/m") == {
        "model": "/m",
        "tensor_parallel_size": 4,
        "dtype": "bfloat16",
        "seed": 7,
        "gpu_memory_utilization": 0.8,
        "max_model_len": 2048,
    }
    assert "max_model_len" not in vllm_llm_kwargs(Generation(dtype="float16"), "/m")
    assert vllm_sampling_kwargs(Generation(max_new_tokens=99)) == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 99}
    sample = Generation(decoding="sample", temperature=0.7, top_p=0.9)
    assert vllm_sampling_kwargs(sample) == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 256}
    assert "seed" not in vllm_sampling_kwargs(sample)  # the seed goes on the engine


# --------------------------------------------------------------------------- vLLM with a fake module


class FakeVLLM(types.ModuleType):
    """Records what spinrun builds and answers every prompt with a fixed text."""

    def __init__(self) -> None:
        super().__init__("vllm")
        self.llm_kwargs: dict[str, Any] = {}
        self.params: dict[str, Any] = {}
        self.calls: list[tuple[str, list[Any]]] = []
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs: Any) -> None:
                fake.params = kwargs

        class LLM:
            def __init__(self, **kwargs: Any) -> None:
                fake.llm_kwargs = kwargs

            def _answer(self, items: list[Any]) -> list[Any]:
                out = types.SimpleNamespace(text=" answer</s>")
                return [types.SimpleNamespace(outputs=[out]) for _ in items]

            def chat(self, conversations: list[Any], params: Any) -> list[Any]:
                fake.calls.append(("chat", conversations))
                return self._answer(conversations)

            def generate(self, prompts: list[str], params: Any) -> list[Any]:
                fake.calls.append(("generate", prompts))
                return self._answer(prompts)

        self.LLM = LLM
        self.SamplingParams = SamplingParams


@pytest.mark.parametrize("prompt_format", ["chat", "instruction"])
def test_vllm_engine_gets_the_transformers_engines_token_ids_and_writes_the_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chatty_model_dir: Path, prompt_format: str
) -> None:
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(generate, "vllm_importable", lambda: True)
    monkeypatch.setattr(models, "gpu_available", lambda: True)
    run_dir = make_run(
        tmp_path,
        {"path": str(chatty_model_dir)},
        engine="auto",
        promptFormat=prompt_format,
        tensorParallelSize=2,
        seed=3,
    )
    out = run_generate(run_dir, 0, 0, 1)
    assert fake.llm_kwargs == {
        "model": str(chatty_model_dir),
        "tensor_parallel_size": 2,
        "dtype": "bfloat16",
        "seed": 3,
        "gpu_memory_utilization": 0.9,
    }
    assert fake.params == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 8}
    ((method, items),) = fake.calls
    rows = read_rows(out)
    assert len(rows) == 16 and {r["generated"] for r in rows} == {"answer</s>"}  # eos of this tokenizer is <|im_end|>
    # vLLM is given the token ids the transformers engine feeds (no BOS of its own), in prompt order
    tok = models.load_tokenizer(str(chatty_model_dir))
    expected = encode_prompts(tok, [r["prompt"] for r in rows], prompt_format)
    assert method == "generate" and items == [{"prompt_token_ids": ids} for ids in expected]
    if prompt_format == "instruction":
        assert tok.decode(items[0]["prompt_token_ids"]) == instruction_prompt(rows[0]["prompt"])
        assert tok.bos_token_id is None or items[0]["prompt_token_ids"][0] != tok.bos_token_id
    marker = atomic.read_json(run_dir / stages.Step(0, "generate", 0, 1).marker)
    assert marker["engine"] == "vllm"


# --------------------------------------------------------------------------- transformers engine


def test_instruction_prompts_have_no_special_tokens(chatty: tuple[Any, Any]) -> None:
    _, tok = chatty
    ids = encode_prompts(tok, ["Why?"], "instruction")[0]
    assert ids == tok(instruction_prompt("Why?"), add_special_tokens=False)["input_ids"]
    assert not set(ids) & set(tok.all_special_ids)
    chat_ids = encode_prompts(tok, ["Why?"], "chat")[0]
    assert tok.decode(chat_ids).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("prompt_format", ["chat", "instruction"])
def test_greedy_answers_do_not_depend_on_the_batch(chatty: tuple[Any, Any], prompt_format: str) -> None:
    model, tok = chatty
    texts = {
        bs: transformers_generate(
            model,
            tok,
            PROMPTS,
            Generation(prompt_format=prompt_format, max_new_tokens=8, batch_size=bs),
            progress=False,
        )
        for bs in (1, 3, 8)
    }
    assert texts[1] == texts[3] == texts[8]
    assert all(t.strip() for t in texts[1])  # the tiny model says something for every prompt
    again = transformers_generate(
        model, tok, PROMPTS, Generation(prompt_format=prompt_format, max_new_tokens=8, batch_size=8), progress=False
    )
    assert again == texts[8]


def test_stop_tokens_end_rows_independently(chatty: tuple[Any, Any]) -> None:
    import torch

    model, tok = chatty
    encoded = encode_prompts(tok, PROMPTS, "chat")
    kwargs = {"pad_id": tok.pad_token_id, "max_new_tokens": 8, "sampler": lambda logits: logits.argmax(-1)}
    with torch.inference_mode():
        free = decoding.decode_batch(model, encoded, stop_ids=set(), **kwargs)
        stop = free[0][3]  # a token row 0 produces at step 3 now ends answers
        stopped = decoding.decode_batch(model, encoded, stop_ids={stop}, **kwargs)
        alone = [decoding.decode_batch(model, [e], stop_ids={stop}, **kwargs)[0] for e in encoded]
    assert stopped == alone
    assert stopped[0] == free[0][:3]
    for f, s in zip(free, stopped, strict=True):
        assert s == (f[: f.index(stop)] if stop in f else f)


def test_sampling_is_seeded(chatty: tuple[Any, Any]) -> None:
    model, tok = chatty

    def sample(seed: int) -> list[str]:
        gen = Generation(decoding="sample", temperature=1.0, top_p=0.9, seed=seed, max_new_tokens=6)
        return transformers_generate(model, tok, PROMPTS[:4], gen, progress=False)

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


@pytest.mark.parametrize("prompt_format", ["chat", "instruction"])
def test_generate_step_writes_valid_rows_for_its_shard(
    tmp_path: Path, chatty_model_dir: Path, prompt_format: str
) -> None:
    run_dir = make_run(tmp_path, {"path": str(chatty_model_dir)}, promptFormat=prompt_format, shards=2)
    outs = [run_generate(run_dir, 0, i, 2) for i in range(2)]
    assert outs[1] == run_dir / layout.shard_path(0, 1, 2)
    rows = [r for out in outs for r in read_rows(out)]
    assert len(rows) == 16 and len({r["id"] for r in rows}) == 16
    assert {r["split"] for r in rows} == {"train", "test"}
    for r in rows:
        assert set(r) == {"id", "split", "prompt", "real", "generated", "answer"}
        assert r["prompt"].startswith("What is") and r["answer"] in r["real"]
        assert isinstance(r["generated"], str) and r["generated"] == r["generated"].lstrip()
    marker = atomic.read_json(run_dir / stages.Step(0, "generate", 1, 2).marker)
    assert marker["engine"] == "transformers" and marker["rows"] == len(read_rows(outs[1]))


def test_shard_rerun_replaces_its_file(tmp_path: Path, chatty_model_dir: Path) -> None:
    run_dir = make_run(tmp_path, {"path": str(chatty_model_dir)}, shards=2)
    out = run_generate(run_dir, 0, 1, 2)
    first = out.read_bytes()
    out.write_text(out.read_text() + '{"stale": true}\n')  # what an interrupted append would leave
    run_generate(run_dir, 0, 1, 2)  # marker exists: skipped, file untouched
    assert out.read_bytes() != first
    run_generate(run_dir, 0, 1, 2, force=True)
    assert out.read_bytes() == first
    run_generate(run_dir, 0, 1, 2, force=True)
    assert out.read_bytes() == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["shard-1-of-2.jsonl"]


def test_builtin_tiny_model_runs_the_step(tmp_path: Path, tiny_model_dir: Path) -> None:
    run_dir = make_run(tmp_path, {"builtin": "tiny-random-llama"})
    rows = read_rows(run_generate(run_dir, 0, 0, 1))
    assert len(rows) == 16


@pytest.mark.parametrize(("system", "turns"), [(None, 1), ("", 2), ("Be brief.", 2)])
def test_the_system_prompt_option_is_one_prompt_for_generation_and_training(
    chatty_model_dir: Path, system: str | None, turns: int
) -> None:
    """Unset = no system turn; "" = an empty system turn (the original); text = that message. The
    generation ids are the training row's prompt rendered with the generation prompt."""
    from spin_runtime.modeling.chat import chat_messages, conversational_row

    tok = models.load_tokenizer(str(chatty_model_dir))
    messages = chat_messages("Why?", system)
    assert len(messages) == turns and messages[-1] == {"role": "user", "content": "Why?"}
    if system is not None:
        assert messages[0] == {"role": "system", "content": system}
    row = conversational_row("Why?", "Because.", "No idea.", system)
    assert row["prompt"] == messages
    ids = encode_prompts(tok, ["Why?"], "chat", system)[0]
    rendered = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)
    assert ids == list(rendered["input_ids"])
