"""Pre-generated SPIN data (`spec.syntheticData`): the published format (`real`/`generated`
2-message lists) or spinrun's own text columns, from a file, a folder or a hub dataset."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spin_runtime.api.spec import SyntheticData
from spin_runtime.data.pairs import PairRow
from spin_runtime.data.sft import load_hub_split, read_records, records_of, split_files, text_field
from spin_runtime.errors import DataError


def _pair_messages(value: Any, where: str, column: str) -> tuple[str, str]:
    """(user, assistant) contents of a published-format 2-message list."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if (
        not isinstance(value, list)
        or len(value) < 2
        or not all(isinstance(m, dict) for m in value[:2])
        or value[0].get("role") != "user"
        or value[1].get("role") != "assistant"
    ):
        raise DataError(
            f"{where}: column {column!r} must be a list [{{role: user, content}}, {{role: assistant, content}}]"
        )
    prompt = text_field(value[0].get("content"), where, f"{column}[0].content")
    answer = value[1].get("content")
    if not isinstance(answer, str):
        raise DataError(f"{where}: {column}[1].content must be text")
    return prompt, answer


def synthetic_rows(records: Sequence[tuple[str, dict[str, Any]]], source: str, split: str) -> list[PairRow]:
    """Pairs from records in the published SPIN format (`real`/`generated` message lists) or
    spinrun's own format (`prompt`, `real`, `generated` text columns). Empty generated
    answers are kept (they are model outputs); an empty real answer is an error."""
    if not records:
        raise DataError(f"{source}: no rows; the {split} data must not be empty")
    rows: list[PairRow] = []
    for i, (loc, record) in enumerate(records):
        where = f"{source} {loc}"
        for col in ("real", "generated"):
            if col not in record:
                found = ", ".join(sorted(record)) or "none"
                raise DataError(f"{where}: missing column {col!r} (columns found: {found})")
        if isinstance(record["real"], str):
            if "prompt" not in record:
                raise DataError(f"{where}: text columns real/generated need a 'prompt' column too")
            prompt = text_field(record["prompt"], where, "column 'prompt'")
            real = text_field(record["real"], where, "column 'real'")
            if not isinstance(record["generated"], str):
                raise DataError(f"{where}: column 'generated' must be text like 'real'")
            generated = record["generated"]
        else:
            prompt, real = _pair_messages(record["real"], where, "real")
            gprompt, generated = _pair_messages(record["generated"], where, "generated")
            if gprompt != prompt:
                raise DataError(
                    f"{where}: the user turns of 'real' and 'generated' differ; both must hold the same prompt"
                )
            text_field(real, where, "real[1].content")
        row_id = record.get("id")
        answer = record.get("answer")
        rows.append(
            PairRow(
                id=str(row_id) if row_id not in (None, "") else f"{split}:{i}",
                prompt=prompt,
                real=real,
                generated=generated,
                answer=answer if isinstance(answer, str) else None,
            )
        )
    return rows


def load_synthetic(source: SyntheticData) -> tuple[list[PairRow], list[PairRow]]:
    """Pre-generated (train, test) pairs of one iteration from a file (all rows train), a
    folder with train/test files (named after `split`/`testSplit`), or a hub dataset."""
    if source.hub is not None:
        hub = source.hub
        train = synthetic_rows(load_hub_split(hub, source.split), f"{hub}[{source.split}]", "train")
        test: list[PairRow] = []
        if source.test_split:
            test = synthetic_rows(load_hub_split(hub, source.test_split), f"{hub}[{source.test_split}]", "test")
        return train, test
    path = Path(str(source.path))
    if path.is_dir():
        train_files = split_files(path, [source.split, "train"])
        if not train_files:
            raise DataError(
                f"{path}: no {source.split} data file (.parquet, .jsonl or .json) in this folder; "
                "name it after syntheticData.split (e.g. train.parquet) or point path at the file"
            )
        test_files = split_files(path, [source.test_split, "test"]) if source.test_split else []
        src = str(train_files[0]) if len(train_files) == 1 else f"{path} ({source.split})"
        train = synthetic_rows(records_of(train_files), src, "train")
        test = []
        if test_files:
            tsrc = str(test_files[0]) if len(test_files) == 1 else f"{path} (test)"
            test = synthetic_rows(records_of(test_files), tsrc, "test")
        return train, test
    return synthetic_rows(read_records(path), str(path), "train"), []
