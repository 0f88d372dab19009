"""SFT and synthetic data loading: formats, sampling, determinism and errors that name the file."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from spin_runtime.api.spec import BuiltinTask, Dataset, SyntheticData
from spin_runtime.data.pairs import PairRow
from spin_runtime.data.sft import Row, load_sft
from spin_runtime.data.synthetic import load_synthetic
from spin_runtime.errors import DataError


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_parquet(path: Path, records: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def chat(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def messages_records(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                *chat(f"question {i}", f"answer {i}"),
                {"role": "user", "content": "more?"},
                {"role": "assistant", "content": "no"},
            ]
        }
        for i in range(n)
    ]


# --------------------------------------------------------------------------- built-in tasks


def test_builtin_task_rows_have_ids_answers_and_sizes() -> None:
    ds = Dataset(builtin=BuiltinTask(name="addition-2digit", train_size=12, test_size=4))
    train, test = load_sft(ds)
    assert (len(train), len(test)) == (12, 4)
    assert all(isinstance(r, Row) and r.answer for r in train + test)
    assert len({r.id for r in train + test}) == 16
    assert train[0]["prompt"] == train[0].prompt  # rows also read like dicts
    assert train[0].real.endswith(f"= {train[0].answer}.")


def test_builtin_task_is_deterministic_and_max_samples_is_a_seeded_subset() -> None:
    full = Dataset(builtin=BuiltinTask(train_size=20, test_size=4))
    assert load_sft(full) == load_sft(full)
    capped = Dataset(builtin=BuiltinTask(train_size=20, test_size=4), max_samples=5, seed=1)
    train, _ = load_sft(capped)
    assert len(train) == 5
    assert {r.id for r in train} <= {r.id for r in load_sft(full)[0]}
    assert train == load_sft(capped)[0]
    other, _ = load_sft(Dataset(builtin=BuiltinTask(train_size=20, test_size=4), max_samples=5, seed=2))
    assert other != train


# --------------------------------------------------------------------------- files


def test_jsonl_messages_take_first_user_and_following_assistant_turn(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "sft.jsonl", messages_records(10))
    train, test = load_sft(Dataset(path=str(path), test_split=None, test_size=3, max_samples=None))
    assert (len(train), len(test)) == (7, 3)
    rows = sorted(train + test, key=lambda r: int(r.id.split(":")[1]))
    assert [(r.prompt, r.real) for r in rows] == [(f"question {i}", f"answer {i}") for i in range(10)]
    assert all(r.answer is None for r in rows)
    assert not {r.id for r in train} & {r.id for r in test}


def test_parquet_prompt_response_columns_with_custom_names(tmp_path: Path) -> None:
    records = [{"q": f"q{i}", "a": f"a{i}", "extra": i} for i in range(6)]
    path = write_parquet(tmp_path / "sft.parquet", records)
    ds = Dataset(path=str(path), prompt_field="q", response_field="a", test_split=None, test_size=2, max_samples=3)
    train, test = load_sft(ds)
    assert (len(train), len(test)) == (3, 2)
    assert all(r.real == "a" + r.prompt[1:] for r in train + test)
    assert load_sft(ds) == (train, test)


def test_folder_with_train_and_test_files_uses_the_test_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(5)])
    write_jsonl(tmp_path / "test.jsonl", [{"prompt": f"t{i}", "response": f"s{i}"} for i in range(4)])
    train, test = load_sft(Dataset(path=str(tmp_path), test_size=2))
    assert [r.prompt for r in train] == [f"p{i}" for i in range(5)]
    assert len(test) == 2 and all(r.prompt.startswith("t") for r in test)


def test_messages_column_is_preferred_when_both_formats_exist(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"messages": chat("from messages", "x"), "prompt": "p", "response": "r"}] * 3
    )
    train, test = load_sft(Dataset(path=str(path), test_split=None, test_size=1))
    assert {r.prompt for r in train + test} == {"from messages"}


@pytest.mark.parametrize(
    ("records", "fragment"),
    [
        ([{"question": "q", "reply": "a"}], "columns found: question, reply"),
        ([{"prompt": "q", "response": "a"}, {"prompt": "   ", "response": "a"}], "line 2: column 'prompt' is empty"),
        ([{"prompt": "q", "response": "a"}, {"prompt": "q2", "response": ""}], "line 2: column 'response' is empty"),
        ([{"prompt": "q", "response": "a"}, {"prompt": "q2"}], "line 2: missing column 'response'"),
        ([{"messages": [{"role": "user", "content": "only a question"}]}], "no assistant turn"),
        ([{"messages": chat("q", "   ")}], "first assistant turn) is empty"),
    ],
)
def test_bad_rows_name_the_file_and_row(tmp_path: Path, records: list[dict[str, Any]], fragment: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(DataError) as e:
        load_sft(Dataset(path=str(path), test_split=None, test_size=0))
    assert str(path) in str(e.value)
    assert fragment in str(e.value)


def test_invalid_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "q", "response": "a"}\n{"prompt": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl line 2: invalid JSON"):
        load_sft(Dataset(path=str(path), test_split=None, test_size=0))


def test_unreadable_parquet_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet: unreadable parquet"):
        load_sft(Dataset(path=str(path), test_split=None, test_size=0))


@pytest.mark.parametrize("name", ["missing.jsonl", "data.csv"])
def test_missing_or_unsupported_file_is_named(tmp_path: Path, name: str) -> None:
    if name.endswith(".csv"):
        (tmp_path / name).write_text("prompt,response\n", encoding="utf-8")
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        load_sft(Dataset(path=str(tmp_path / name)))


def test_empty_file_and_oversized_test_split_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows"):
        load_sft(Dataset(path=str(empty)))
    small = write_jsonl(tmp_path / "small.jsonl", [{"prompt": "q", "response": "a"}] * 3)
    with pytest.raises(DataError, match=r"testSize \(3\) leaves no training rows"):
        load_sft(Dataset(path=str(small), test_split=None, test_size=3))


def test_hub_dataset_goes_through_datasets_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []

    def load_dataset(name: str, split: str, revision: str | None = None) -> list[dict[str, Any]]:
        calls.append((name, split))
        n = 6 if split == "train_sft" else 3
        return [{"messages": chat(f"{split} q{i}", f"a{i}")} for i in range(n)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    train, test = load_sft(Dataset(hub="org/chat", max_samples=4, test_size=2))
    assert calls == [("org/chat", "train_sft"), ("org/chat", "test_sft")]
    assert len(train) == 4 and all(r.prompt.startswith("train_sft") for r in train)
    assert len(test) == 2 and all(r.prompt.startswith("test_sft") for r in test)


# --------------------------------------------------------------------------- synthetic


def published(n: int, prefix: str = "q") -> list[dict[str, Any]]:
    return [
        {"real": chat(f"{prefix}{i}", f"real {i}"), "generated": chat(f"{prefix}{i}", f"gen {i}")} for i in range(n)
    ]


def test_synthetic_import_of_the_published_format_from_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "spin_iter0" / "data"
    folder.mkdir(parents=True)
    write_parquet(folder / "train-00000-of-00001.parquet", published(5))
    write_parquet(folder / "test-00000-of-00001.parquet", published(2, "t"))
    train, test = load_synthetic(SyntheticData(iteration=0, path=str(tmp_path / "spin_iter0")))
    assert [r.prompt for r in train] == [f"q{i}" for i in range(5)]
    assert train[3] == PairRow(id="train:3", prompt="q3", real="real 3", generated="gen 3")
    assert [r.prompt for r in test] == ["t0", "t1"]


def test_synthetic_single_jsonl_file_is_all_train_and_keeps_empty_generations(tmp_path: Path) -> None:
    records = published(3)
    records[1]["generated"] = chat("q1", "")
    path = write_jsonl(tmp_path / "iter0.jsonl", records)
    train, test = load_synthetic(SyntheticData(iteration=0, path=str(path)))
    assert len(train) == 3 and test == []
    assert train[1].generated == ""


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda r: r.pop("generated"), "line 2: missing column 'generated'"),
        (
            lambda r: r.update(generated=chat("another prompt", "x")),
            "line 2: the user turns of 'real' and 'generated' differ",
        ),
        (lambda r: r.update(real=[{"role": "assistant", "content": "x"}]), "line 2: column 'real' must be a list"),
        (lambda r: r.update(real=chat("q1", " ")), "line 2: real[1].content is empty"),
    ],
)
def test_bad_synthetic_rows_name_file_and_line(tmp_path: Path, change: Any, fragment: str) -> None:
    records = published(3)
    change(records[1])
    path = write_jsonl(tmp_path / "syn.jsonl", records)
    with pytest.raises(DataError) as e:
        load_synthetic(SyntheticData(iteration=0, path=str(path)))
    assert str(path) in str(e.value) and fragment in str(e.value)


def test_synthetic_folder_without_train_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no train data file"):
        load_synthetic(SyntheticData(iteration=0, path=str(tmp_path)))
