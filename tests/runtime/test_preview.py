"""`spin preview`: the generation prompt as the engine receives it and the chosen/rejected training
sequences as TRL tokenises and collates them, checked against an independent tokenisation through
the chat template, with the prompt/answer boundary, cut tokens and masks marked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from spin_runtime import preview
from spin_runtime.api.load import load_spinrun
from spin_runtime.api.spec import SpinRun, SpinRunSpec
from spin_runtime.cli import main
from spin_runtime.modeling.chat import encode_prompts
from spin_runtime.store import rundir
from tests.runtime.train_helpers import addition_rows, write_pairs

REPO = Path(__file__).resolve().parents[2]


def _spec(model: Path, generation: dict | None = None, **training: object) -> SpinRunSpec:
    return SpinRunSpec.model_validate(
        {
            "model": {"path": str(model)},
            "dataset": {"builtin": {"trainSize": 4, "testSize": 2}},
            "iterations": 2,
            "generation": generation or {},
            "training": {"gpusPerNode": 0, "maxLength": 128, "maxPromptLength": 96, **training},
        }
    )


def _template_ids(tok, messages: list[dict], gen: bool) -> list[int]:  # type: ignore[no-untyped-def]
    out = tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_sequences_are_the_chat_template_with_the_loss_starting_after_the_generation_prompt(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = _spec(tiny_model_dir)
    rows = addition_rows(2, 0)
    (p,) = preview.preview_rows(tok, spec, rows[:1], "test rows")
    user = [{"role": "user", "content": rows[0]["prompt"]}]
    prompt_ids = _template_ids(tok, user, True)
    assert p.generation_ids == prompt_ids == encode_prompts(tok, [rows[0]["prompt"]], "chat")[0]
    for seq, answer in ((p.chosen, rows[0]["real"]), (p.rejected, rows[0]["generated"])):
        assert seq is not None
        full = _template_ids(tok, [*user, {"role": "assistant", "content": answer}], False)
        assert seq.input_ids == full and not seq.cut_ids
        assert seq.completion_mask == [0] * len(prompt_ids) + [1] * (len(full) - len(prompt_ids))
        assert seq.attention_mask == [1] * len(full) and seq.unattended == []
        assert seq.prompt_tokens == len(prompt_ids)


def test_text_view_marks_the_boundary_newlines_and_what_max_length_cut(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = _spec(tiny_model_dir, maxLength=80, maxPromptLength=64)
    row = {**addition_rows(1, 0)[0], "real": "The sum is " + "very " * 40 + "large."}
    (p,) = preview.preview_rows(tok, spec, [row], "test rows")
    assert p.chosen is not None and len(p.chosen.input_ids) == 80 and p.chosen.cut_ids, "cut to maxLength (keep start)"
    text = preview.render_sequence(tok, p.chosen)
    assert text.index(preview.PROMPT_MARK) < text.index("What is") < text.index(preview.ANSWER_MARK) < text.index("The sum")
    assert preview.CUT_MARK in text and text.rstrip().endswith("large.<|im_end|>" + preview.NEWLINE)
    assert preview.NEWLINE + "\n" in text
    out = preview.format_preview(tok, spec, [p], tokens=True)
    assert "tokens cut by maxLength" in out and "attn loss  token" in out
    assert "the training prompt is the generation prompt, token for token" in out


def test_unattended_positions_are_bracketed() -> None:
    class Tok:
        def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
            return "".join(chr(96 + i) for i in ids)

    seq = preview.TrainingSequence([1, 2, 3, 4, 5], [1, 1, 0, 1, 0], [0, 0, 1, 1, 1])
    assert seq.unattended == [2, 4] and seq.prompt_tokens == 2 and seq.loss_tokens == 3
    text = preview.render_sequence(Tok(), seq, indent="")
    assert text == f"{preview.PROMPT_MARK}ab{preview.ANSWER_MARK}⟦c⟧d⟦e⟧"


def test_instruction_prompts_are_shown_to_differ_from_the_training_prompt(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = _spec(tiny_model_dir, generation={"promptFormat": "instruction"})
    rows = addition_rows(1, 0)
    (p,) = preview.preview_rows(tok, spec, rows, "test rows")
    assert tok.decode(p.generation_ids) == f"### Instruction: {rows[0]['prompt']}\n\n### Response: "
    assert "differs from the generation prompt from token 0" in preview.format_preview(tok, spec, [p])


def _store(run_dir: Path, spec: SpinRunSpec) -> Path:
    run = SpinRun.model_validate({"metadata": {"name": "p"}, "spec": spec.model_dump(by_alias=True)})
    rundir.init_run(run_dir, run)
    return run_dir / "spec.json"


def test_spin_preview_shows_a_run_directorys_generated_answers(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    spec_file = _store(run_dir, _spec(tiny_model_dir))
    rows = addition_rows(3, 0)
    write_pairs(run_dir, 0, "train", rows)
    assert main(["preview", str(spec_file), "--run-dir", str(run_dir), "--rows", "2"]) == 0
    out = capsys.readouterr().out
    assert "first 2 training row(s)" in out and "generated answers from" in out
    assert rows[0]["generated"] in out and rows[1]["generated"] in out and rows[2]["prompt"] not in out
    assert "<|im_start|>assistant" in out and preview.ANSWER_MARK in out


def test_spin_preview_refuses_bad_options_naming_them(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_file = _store(tmp_path / "run", _spec(tiny_model_dir))
    assert main(["preview", str(spec_file), "--iteration", "5"]) == 2
    assert "--iteration must be within 0..1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["preview", str(spec_file), "--rows", "0"])
    assert "--rows must be a whole number of at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_spin_preview_of_the_local_example_shows_smollm2s_chat_template(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", str(REPO / "examples" / "spinrun-local.yaml"), "--rows", "1"]) == 0
    out = capsys.readouterr().out
    assert "generation prompt (" in out and "<|im_start|>system" in out and "<|im_start|>user" in out
    assert preview.ANSWER_MARK in out and "<|im_end|>" in out
    assert "a placeholder generated answer" in out


def test_original_collator_rows_show_the_eos_tokens_it_does_not_attend(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = _spec(tiny_model_dir, collator="original").model_copy(update={"system_prompt": ""})
    (p,) = preview.preview_rows(tok, spec, addition_rows(1, 0), "test rows")
    assert p.chosen is not None
    eos = tok.eos_token_id
    inner = [i for i, t in enumerate(p.chosen.input_ids[:-1]) if t == eos]
    assert inner and p.chosen.unattended == inner, "every EOS but the appended last one is masked"
    assert p.chosen.input_ids[-1] == eos and p.chosen.attention_mask[-1] == 1
    text = preview.render_sequence(tok, p.chosen)
    assert f"{preview.UNATTENDED[0]}{tok.eos_token}{preview.UNATTENDED[1]}" in text
    assert "<|im_start|>system" in tok.decode(p.generation_ids), "systemPrompt '' = an empty system turn"


def _published_stand_in(folder: Path, model: Path) -> Path:
    """examples/spinrun-zephyr-7b-published.yaml with every hub id replaced by a local stand-in of
    the same shape: SPIN_iter<k> folders with train/test files of `real`/`generated` message lists
    (as the published sets hold them), the tiny model for zephyr and for the iter0 checkpoint."""
    doc = yaml.safe_load((REPO / "examples" / "spinrun-zephyr-7b-published.yaml").read_text())
    spec = doc["spec"]
    hub_ids = [spec["model"]["hub"], spec["startCheckpoint"]["hub"], spec["dataset"]["hub"],
               *(d["hub"] for d in spec["syntheticData"])]
    assert hub_ids[:2] == ["alignment-handbook/zephyr-7b-sft-full", "UCLA-AGI/zephyr-7b-sft-full-SPIN-iter0"]
    assert hub_ids[2:] == ["UCLA-AGI/SPIN_iter0", "UCLA-AGI/SPIN_iter0", "UCLA-AGI/SPIN_iter1", "UCLA-AGI/SPIN_iter2",
                           "UCLA-AGI/SPIN_iter3"]
    for d in spec["syntheticData"]:
        k = d["iteration"]
        sets = folder / f"SPIN_iter{k}"
        sets.mkdir(parents=True)
        for split, offset in (("train", 0), ("test", 100)):
            rows = [{"real": [{"role": "user", "content": f"What is {k}{i} + {i}?"},
                              {"role": "assistant", "content": f"The sum is {k * 10 + 2 * i + offset}."}],
                     "generated": [{"role": "user", "content": f"What is {k}{i} + {i}?"},
                                   {"role": "assistant", "content": f"iter{k} model says {i}"}]}
                    for i in range(3)]
            (sets / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        del d["hub"]
        d["path"] = str(sets)
    spec["model"] = {"path": str(model)}
    spec["startCheckpoint"] = {"path": str(model)}
    spec["dataset"] = {"path": str(folder / "SPIN_iter0"), "split": "train", "testSplit": "test", "messagesField": "real"}
    out = folder / "published.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def test_the_published_data_example_validates_and_previews_the_authors_pairs_on_a_local_stand_in(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(REPO / "examples" / "spinrun-zephyr-7b-published.yaml")]) == 0
    spec = load_spinrun(REPO / "examples" / "spinrun-zephyr-7b-published.yaml").spec
    assert (spec.start_iteration, spec.training.select_epoch, spec.schedule[0].epochs) == (1, 2, 6)
    assert spec.training.collator == "original" and spec.system_prompt == "" and spec.training.max_grad_norm == 0
    capsys.readouterr()

    stand_in = _published_stand_in(tmp_path / "hub", tiny_model_dir)
    assert main(["validate", str(stand_in)]) == 0
    assert main(["preview", str(stand_in), "--rows", "2"]) == 0
    out = capsys.readouterr().out
    assert f"spin preview: iteration 1, tokenizer of {tiny_model_dir}, first 2 training row(s)" in out
    assert "generated answers from syntheticData of iteration 1" in out
    assert "iter1 model says 0" in out and "iter1 model says 1" in out and "The sum is 12." in out
    assert "iter0 model says" not in out, "the first rows of the window come from iteration 1's set"
    assert preview.UNATTENDED[0] in out, "the original collator's masked EOS inside the sequences is shown"
    assert main(["preview", str(stand_in), "--rows", "1", "--iteration", "3"]) == 0
    assert "iter3 model says 0" in capsys.readouterr().out
