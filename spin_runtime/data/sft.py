"""Reading the SFT data (prompts + real answers) into plain rows: `load_sft` gives the
train/test prompts every iteration answers, and the file/hub readers the synthetic data
shares. Bad input raises `DataError` naming the file and the row or column to fix. Hubs are
only contacted when `hub` is set."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spin_runtime.api.spec import Dataset
from spin_runtime.errors import DataError

#: File suffixes read as data (JSON Lines and parquet); a `.json` file may also hold a list.
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Row:
    """One SFT example: a stable id, the first user turn, the first assistant turn and, for
    built-in tasks, the ground truth used for exact-match scoring (else None)."""

    id: str
    prompt: str
    real: str
    answer: str | None = None

    def __getitem__(self, key: str) -> Any:
        """Mapping-style access (`row["prompt"]`), for code that treats rows as dicts."""
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain dict."""
        return asdict(self)



# --------------------------------------------------------------------------- reading files


def read_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Records of a JSONL/JSON/parquet file as `(location, record)` pairs, where location is
    "line N" (JSONL) or "row N" (parquet, JSON list), 1-based, for error messages."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return list(_read_parquet(path))
    if suffix in (".jsonl", ".json"):
        return list(_read_json_lines(path))
    raise DataError(f"{path}: unsupported data file type {suffix!r}; use .jsonl, .json or .parquet")


def _read_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: unreadable parquet file ({e}); rewrite or replace it") from e
    for i, record in enumerate(table.to_pylist(), start=1):
        yield f"row {i}", record


def _read_json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable file ({e})") from e
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from e
        for i, record in enumerate(records, start=1):
            if not isinstance(record, dict):
                raise DataError(f"{path} row {i}: expected an object, got {type(record).__name__}")
            yield f"row {i}", record
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {lineno}: invalid JSON ({e.msg}); fix or remove the line") from e
        if not isinstance(record, dict):
            raise DataError(f"{path} line {lineno}: expected a JSON object, got {type(record).__name__}")
        yield f"line {lineno}", record


def text_field(value: Any, where: str, what: str) -> str:
    """A non-empty string field, or a DataError naming where it is missing."""
    if not isinstance(value, str):
        got = "nothing" if value is None else type(value).__name__
        raise DataError(f"{where}: {what} must be text, got {got}")
    if not value.strip():
        raise DataError(f"{where}: {what} is empty; remove the row or fill it in")
    return value


def _first_turns(messages: Any, where: str, field: str) -> tuple[str, str]:
    """The first user turn and the first assistant turn after it, from a messages list."""
    if hasattr(messages, "tolist"):  # numpy arrays from pandas/datasets
        messages = messages.tolist()
    if not isinstance(messages, list):
        raise DataError(f"{where}: column {field!r} must be a list of {{role, content}} messages")
    user: str | None = None
    for j, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{where}: {field}[{j}] must be an object with 'role' and 'content'")
        if user is None and message["role"] == "user":
            user = text_field(message["content"], where, f"{field}[{j}].content (first user turn)")
        elif user is not None and message["role"] == "assistant":
            real = text_field(message["content"], where, f"{field}[{j}].content (first assistant turn)")
            return user, real
    if user is None:
        raise DataError(f"{where}: {field!r} has no user turn")
    raise DataError(f"{where}: {field!r} has no assistant turn after the first user turn")


def detect_format(columns: Sequence[str], dataset: Dataset, source: str) -> str:
    """'messages' when the messages column exists, else 'prompt-response' when both the
    prompt and response columns exist; a DataError listing the columns otherwise."""
    if dataset.messages_field in columns:
        return "messages"
    if dataset.prompt_field in columns and dataset.response_field in columns:
        return "prompt-response"
    found = ", ".join(sorted(columns)) or "none"
    raise DataError(
        f"{source}: needs a {dataset.messages_field!r} column (dataset.messagesField) or "
        f"{dataset.prompt_field!r} and {dataset.response_field!r} columns "
        f"(dataset.promptField/responseField); columns found: {found}"
    )


def sft_rows(records: Sequence[tuple[str, dict[str, Any]]], dataset: Dataset, source: str, split: str) -> list[Row]:
    """Rows from raw records (messages or prompt/response format, detected from the first
    record); ids are `<split>:<index>` in the source's order."""
    if not records:
        raise DataError(f"{source}: no rows; the {split} data must not be empty")
    fmt = detect_format(list(records[0][1].keys()), dataset, source)
    rows: list[Row] = []
    for i, (loc, record) in enumerate(records):
        where = f"{source} {loc}"
        if fmt == "messages":
            if dataset.messages_field not in record:
                raise DataError(f"{where}: missing column {dataset.messages_field!r}")
            prompt, real = _first_turns(record[dataset.messages_field], where, dataset.messages_field)
        else:
            for col in (dataset.prompt_field, dataset.response_field):
                if col not in record:
                    raise DataError(f"{where}: missing column {col!r}")
            prompt = text_field(record[dataset.prompt_field], where, f"column {dataset.prompt_field!r}")
            real = text_field(record[dataset.response_field], where, f"column {dataset.response_field!r}")
        rows.append(Row(id=f"{split}:{i}", prompt=prompt, real=real))
    return rows


# --------------------------------------------------------------------------- selection


def seeded_subset(n: int, k: int | None, seed: int, salt: str) -> list[int]:
    """Indices of a seeded sample of k of n items (all when k is None or ≥ n), in order."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(random.Random(f"{salt}:{seed}").sample(range(n), k))


def split_rows(
    train_pool: list[Row], test_pool: list[Row] | None, max_samples: int | None, test_size: int, seed: int
) -> tuple[list[Row], list[Row]]:
    """Pick the test rows (a seeded sample of `test_pool`, or held out from the train pool
    when there is no test pool) and a seeded sample of `max_samples` training rows."""
    if test_pool is None:
        if test_size >= len(train_pool):
            raise DataError(
                f"testSize ({test_size}) leaves no training rows out of {len(train_pool)}: lower dataset.testSize"
            )
        held = set(random.Random(f"heldout:{seed}").sample(range(len(train_pool)), test_size))
        test = [r for i, r in enumerate(train_pool) if i in held]
        train_pool = [r for i, r in enumerate(train_pool) if i not in held]
    else:
        test = [test_pool[i] for i in seeded_subset(len(test_pool), test_size, seed, "test")]
    train = [train_pool[i] for i in seeded_subset(len(train_pool), max_samples, seed, "train")]
    return train, test


# --------------------------------------------------------------------------- SFT data


def load_sft(spec: Any) -> tuple[list[Row], list[Row]]:
    """The run's SFT data as (train, test) rows in a deterministic order.

    `spec` is a SpinRunSpec (or anything with a `.dataset`). Built-in tasks use their own
    train/test sizes, capped by maxSamples/testSize. Files and hub datasets give a seeded
    sample of maxSamples training rows and testSize test rows, taken from the test split,
    or held out from the training rows when there is none.
    """
    dataset: Dataset = spec.dataset if hasattr(spec, "dataset") else spec
    if dataset.builtin is not None:
        return _builtin_rows(dataset)
    if dataset.path is not None:
        return _file_rows(dataset)
    return _hub_rows(dataset)


def _builtin_rows(dataset: Dataset) -> tuple[list[Row], list[Row]]:
    from spin_runtime.data.tasks import make_examples

    task = dataset.builtin
    assert task is not None
    try:
        train_ex, test_ex = make_examples(task)
    except ValueError as e:
        raise DataError(f"dataset.builtin: {e}") from e
    train = [
        Row(id=f"{task.name}:train:{i}", prompt=e.prompt, real=e.response, answer=e.answer)
        for i, e in enumerate(train_ex)
    ]
    test = [
        Row(id=f"{task.name}:test:{i}", prompt=e.prompt, real=e.response, answer=e.answer)
        for i, e in enumerate(test_ex)
    ]
    train = [train[i] for i in seeded_subset(len(train), dataset.max_samples, dataset.seed, "train")]
    test = [test[i] for i in seeded_subset(len(test), dataset.test_size, dataset.seed, "test")]
    return train, test


def split_files(folder: Path, names: Sequence[str]) -> list[Path]:
    """Data files of a split inside a folder: `<name>.<ext>` or `<name>-*.<ext>` (also under
    `data/`, the hub layout), for the first name that matches."""
    for name in names:
        found: list[Path] = []
        for base in (folder, folder / "data"):
            if base.is_dir():
                found += [
                    p
                    for p in sorted(base.iterdir())
                    if p.is_file()
                    and p.suffix.lower() in DATA_SUFFIXES
                    and (p.stem == name or p.stem.startswith(f"{name}-") or p.stem.startswith(f"{name}_"))
                ]
        if found:
            return found
    return []


def records_of(paths: Sequence[Path]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for p in paths:
        out += [(f"{p.name} {loc}" if len(paths) > 1 else loc, record) for loc, record in read_records(p)]
    return out


def _file_rows(dataset: Dataset) -> tuple[list[Row], list[Row]]:
    path = Path(str(dataset.path))
    if path.is_dir():
        train_files = split_files(path, [dataset.split, "train"])
        if not train_files:
            raise DataError(
                f"{path}: no {dataset.split}/train data file (.jsonl, .json or .parquet) in this folder; "
                "point dataset.path at a file or name the file after dataset.split"
            )
        test_files = split_files(path, [dataset.test_split, "test"]) if dataset.test_split else []
        source = str(train_files[0]) if len(train_files) == 1 else f"{path} ({dataset.split})"
        train_pool = sft_rows(records_of(train_files), dataset, source, "train")
        test_pool = None
        if test_files:
            tsource = str(test_files[0]) if len(test_files) == 1 else f"{path} (test)"
            test_pool = sft_rows(records_of(test_files), dataset, tsource, "test")
    else:
        train_pool = sft_rows(read_records(path), dataset, str(path), "train")
        test_pool = None
    return split_rows(train_pool, test_pool, dataset.max_samples, dataset.test_size, dataset.seed)


def load_hub_split(hub: str, split: str, revision: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Records of one hub dataset split (only called when the spec names a hub dataset)."""
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"dataset {hub}: the `datasets` package is needed for hub data (pip install datasets)") from e
    try:
        ds = datasets.load_dataset(hub, split=split, revision=revision)
    except Exception as e:  # network, auth and missing-split errors all land here
        raise DataError(f"dataset {hub} split {split!r}: cannot load ({e}); check the id, split and HF_TOKEN") from e
    return [(f"row {i + 1}", dict(record)) for i, record in enumerate(ds)]


def _hub_rows(dataset: Dataset) -> tuple[list[Row], list[Row]]:
    hub = str(dataset.hub)
    train_pool = sft_rows(load_hub_split(hub, dataset.split), dataset, f"{hub}[{dataset.split}]", "train")
    test_pool = None
    if dataset.test_split:
        test_pool = sft_rows(load_hub_split(hub, dataset.test_split), dataset, f"{hub}[{dataset.test_split}]", "test")
    return split_rows(train_pool, test_pool, dataset.max_samples, dataset.test_size, dataset.seed)
