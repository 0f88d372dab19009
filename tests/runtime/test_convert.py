"""The convert step: shards → train/test parquet, duplicates dropped and counted, clear errors
for missing or malformed shards, syntheticData imports, and `read_pairs`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spin_runtime.api.spec import SpinRun
from spin_runtime.data.pairs import read_pairs
from spin_runtime.errors import DataError
from spin_runtime.plan import layout, stages
from spin_runtime.steps.convert import natural_key, run_convert
from spin_runtime.store import atomic, rundir


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The tiny model runs fastest on one thread on a shared machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_run(tmp_path: Path, shards: int = 2, **spec: Any) -> Path:
    body = {
        "model": {"builtin": "tiny-random-llama"},
        "dataset": {"builtin": {"name": "addition-3digit", "trainSize": 12, "testSize": 4}},
        "iterations": 1,
        "generation": {"engine": "transformers", "maxNewTokens": 4, "shards": shards},
        **spec,
    }
    run_dir = tmp_path / "run"
    rundir.init_run(run_dir, SpinRun(metadata={"name": "convert-test"}, spec=body))
    return run_dir


def row(i: int, split: str = "train", generated: str | None = None) -> dict[str, Any]:
    return {
        "id": f"task:{split}:{i}",
        "split": split,
        "prompt": f"What is {i} + {i}?",
        "real": f"{i} + {i} = {2 * i}.",
        "generated": f"It is {i}." if generated is None else generated,
        "answer": str(2 * i),
    }


def write_shard(run_dir: Path, shard: int, shards: int, rows: list[dict[str, Any]] | str) -> Path:
    path = run_dir / layout.shard_path(0, shard, shards)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    return path


def two_shards(run_dir: Path) -> None:
    write_shard(run_dir, 0, 2, [row(0), row(2), row(0, "test")])
    write_shard(run_dir, 1, 2, [row(1), row(10), row(1, "test")])


# --------------------------------------------------------------------------- happy paths


def test_generate_then_convert_with_the_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    from spin_runtime.steps.generate import run_generate

    run_dir = make_run(tmp_path)
    for i in range(2):
        run_generate(run_dir, 0, i, 2)
    info = run_convert(run_dir, 0)
    train = read_pairs(run_dir / layout.data_path(0, "train"))
    test = read_pairs(run_dir / layout.data_path(0, "test"))
    assert (len(train), len(test)) == (12, 4)
    assert list(train[0]) == ["id", "prompt", "real", "generated", "answer"]
    assert [r["id"] for r in train] == [f"addition-3digit:train:{i}" for i in range(12)]  # source order
    assert info["rows_read"] == 16 and info["duplicates_dropped"] == 0
    # the random model's greedy answer is whitespace: kept (a model output) and counted
    assert info["empty_generated"] == sum(1 for r in train + test if not r["generated"].strip())
    assert rundir.is_done(run_dir, stages.Step(0, "convert"))


def test_rows_are_ordered_by_id_and_split(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    two_shards(run_dir)
    info = run_convert(run_dir, 0)
    train = read_pairs(run_dir / layout.data_path(0, "train"))
    assert [r["id"] for r in train] == ["task:train:0", "task:train:1", "task:train:2", "task:train:10"]
    assert len(read_pairs(run_dir / layout.data_path(0, "test"))) == 2
    assert (info["train_rows"], info["test_rows"], info["shards"]) == (4, 2, 2)


def test_duplicates_are_dropped_and_counted(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    rows = [row(0), row(2), row(0, "test")]
    write_shard(run_dir, 0, 2, rows + rows)  # what the original's appending rerun produced
    write_shard(run_dir, 1, 2, [row(1), row(1)])
    info = run_convert(run_dir, 0)
    assert (info["rows_read"], info["duplicates_dropped"], info["train_rows"], info["test_rows"]) == (8, 4, 3, 1)
    metrics = atomic.read_json(run_dir / layout.metrics_path(0))["convert"]
    assert metrics["duplicates_dropped"] == 4 and metrics["train_rows"] == 3
    assert atomic.read_json(run_dir / stages.Step(0, "convert").marker)["duplicates_dropped"] == 4


def test_empty_generated_answers_are_kept_and_counted(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, shards=1)
    write_shard(run_dir, 0, 1, [row(0), row(1, generated=""), row(2, generated="  ")])
    info = run_convert(run_dir, 0)
    assert info["empty_generated"] == 2 and info["train_rows"] == 3


def test_pairs_whose_generated_answer_is_the_real_one_are_counted(tmp_path: Path) -> None:
    """They stay (as in the original) but carry no gradient: the count tells a user why a
    well-fitted model learns little from an iteration."""
    run_dir = make_run(tmp_path, shards=1)
    same = row(1)
    same["generated"] = same["real"] + " "
    write_shard(run_dir, 0, 1, [row(0), same, row(2), row(3, "test")])
    info = run_convert(run_dir, 0)
    assert info["identical_train_pairs"] == 1 and info["train_rows"] == 3


def test_convert_is_skipped_when_done_and_rewritten_with_force(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    two_shards(run_dir)
    run_convert(run_dir, 0)
    path = run_dir / layout.data_path(0, "train")
    first = path.read_bytes()
    write_shard(run_dir, 1, 2, [row(1)])
    assert run_convert(run_dir, 0) == {}
    assert path.read_bytes() == first
    assert run_convert(run_dir, 0, force=True)["train_rows"] == 3  # shard 1 now holds one train row


# --------------------------------------------------------------------------- errors


def test_missing_shard_is_named_with_the_command_and_outputs_stay(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, shards=3)
    write_shard(run_dir, 0, 3, [row(0)])
    write_shard(run_dir, 1, 3, [row(1)])
    write_shard(run_dir, 2, 3, [row(2)])
    run_convert(run_dir, 0)
    before = (run_dir / layout.data_path(0, "train")).read_bytes()
    (run_dir / layout.shard_path(0, 1, 3)).unlink()
    with pytest.raises(DataError) as e:
        run_convert(run_dir, 0, force=True)
    message = str(e.value)
    assert "iteration 0: missing shard files shard-1-of-3.jsonl" in message
    assert "spin generate --run-dir" in message and "--iteration 0 --shard 1 --shards 3" in message
    assert "shard-0-of-3" not in message.split("rerun")[0]
    assert (run_dir / layout.data_path(0, "train")).read_bytes() == before
    assert not rundir.is_done(run_dir, stages.Step(0, "convert"))


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"id": "x", oops\n', "line 2: invalid JSON"),
        (json.dumps({k: v for k, v in row(5).items() if k != "generated"}) + "\n", "line 2: missing key 'generated'"),
        (json.dumps({**row(5), "split": "dev"}) + "\n", "line 2: 'split' must be train or test"),
        (json.dumps({**row(5), "real": ""}) + "\n", "line 2: 'real' is empty"),
        (json.dumps({**row(5), "generated": None}) + "\n", "line 2: 'generated' must be a string"),
    ],
)
def test_malformed_shard_line_names_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    run_dir = make_run(tmp_path, shards=1)
    path = write_shard(run_dir, 0, 1, json.dumps(row(0)) + "\n" + line)
    with pytest.raises(DataError) as e:
        run_convert(run_dir, 0)
    assert f"{path} {fragment}" in str(e.value)


def test_one_id_with_two_contents_is_refused(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    write_shard(run_dir, 0, 2, [row(0)])
    write_shard(run_dir, 1, 2, [row(0, generated="something else")])
    with pytest.raises(
        DataError, match=r"shard-1-of-2\.jsonl line 1: id 'task:train:0' also appears at .*shard-0-of-2\.jsonl line 1"
    ):
        run_convert(run_dir, 0)


def test_truncated_shard_is_caught_by_its_marker_count(tmp_path: Path, tiny_model_dir: Path) -> None:
    from spin_runtime.steps.generate import run_generate

    run_dir = make_run(tmp_path, shards=1)
    path = run_generate(run_dir, 0, 0, 1)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:-3]), encoding="utf-8")
    with pytest.raises(DataError, match=r"holds 13 rows but its generate step wrote 16.*--force"):
        run_convert(run_dir, 0)


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_data_is_imported_in_the_published_format(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def pair(q: str, real: str, gen: str) -> dict[str, Any]:
        return {
            "real": [{"role": "user", "content": q}, {"role": "assistant", "content": real}],
            "generated": [{"role": "user", "content": q}, {"role": "assistant", "content": gen}],
        }

    folder = tmp_path / "SPIN_iter0"
    folder.mkdir()
    train = [pair(f"q{i}", f"r{i}", f"g{i}") for i in range(5)]
    pq.write_table(pa.Table.from_pylist(train + train[:2]), folder / "train.parquet")  # 2 duplicated rows
    pq.write_table(pa.Table.from_pylist([pair("t", "r", "g")]), folder / "test.parquet")
    run_dir = make_run(tmp_path, syntheticData=[{"iteration": 0, "path": str(folder)}])
    info = run_convert(run_dir, 0)
    # exact duplicates are counted and kept, as the original kept them ...
    assert (info["rows_read"], info["duplicates_dropped"], info["exact_duplicates"], info["train_rows"]) == (8, 0, 2, 7)
    # ... unless dataset.dropDuplicates
    run_dir = make_run(tmp_path / "drop", syntheticData=[{"iteration": 0, "path": str(folder)}], dataset={"builtin": {"name": "addition-3digit", "trainSize": 12, "testSize": 4}, "dropDuplicates": True})
    info = run_convert(run_dir, 0)
    assert (info["rows_read"], info["duplicates_dropped"], info["train_rows"], info["test_rows"]) == (8, 2, 5, 1)
    rows = read_pairs(run_dir / layout.data_path(0, "train"))
    assert rows[4] == {"id": "train:4", "prompt": "q4", "real": "r4", "generated": "g4", "answer": None}
    assert info["source"].startswith("syntheticData")


# --------------------------------------------------------------------------- read_pairs


def test_read_pairs_names_a_truncated_or_missing_file(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    two_shards(run_dir)
    run_convert(run_dir, 0)
    path = run_dir / layout.data_path(0, "train")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"train\.parquet: unreadable parquet \(truncated or corrupt"):
        read_pairs(path)
    with pytest.raises(DataError, match=r"nothing\.parquet: data file not found"):
        read_pairs(tmp_path / "nothing.parquet")


def test_natural_key_orders_numbers_numerically() -> None:
    ids = ["a:train:10", "a:train:9", "a:test:1", "a:train:100"]
    assert sorted(ids, key=natural_key) == ["a:test:1", "a:train:9", "a:train:10", "a:train:100"]
