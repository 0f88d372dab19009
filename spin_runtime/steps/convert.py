"""The convert step: gather an iteration's generated shards (or import its pre-generated
syntheticData) into `iter-<k>/data/{train,test}.parquet` with columns
`id, prompt, real, generated, answer`, dropping exact duplicates and counting what it did.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spin_runtime.api.spec import SpinRunSpec
from spin_runtime.data.pairs import PairRow, write_pairs
from spin_runtime.data.synthetic import load_synthetic
from spin_runtime.errors import DataError
from spin_runtime.plan import hparams, layout, stages
from spin_runtime.steps.context import StepContext
from spin_runtime.store import atomic

#: Keys every shard line must have (`answer` may be null).
SHARD_KEYS = ("id", "split", "prompt", "real", "generated", "answer")
SPLITS = ("train", "test")


@dataclass
class ConvertCounts:
    """What convert read and wrote (stored in the marker and metrics.json's "convert")."""

    source: str = ""
    rows_read: int = 0
    duplicates_dropped: int = 0
    #: Different rows with the same split, prompt, real and generated answer (kept unless
    #: dataset.dropDuplicates).
    exact_duplicates: int = 0
    train_rows: int = 0
    test_rows: int = 0
    empty_generated: int = 0
    #: Training pairs whose generated answer equals the real one: under SPIN's loss they carry
    #: no gradient (the model already reproduces those answers).
    identical_train_pairs: int = 0
    shards: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# --------------------------------------------------------------------------- pure parts


def shard_files(k: int, shards: int) -> list[str]:
    """Relative paths of iteration k's n shard files."""
    return [layout.shard_path(k, i, shards) for i in range(shards)]


def missing_shards_message(run_dir: Path, k: int, shards: int, missing: Sequence[int]) -> str:
    """The error for absent shard files: which files, and the commands that produce them."""
    names = ", ".join(Path(layout.shard_path(k, i, shards)).name for i in missing)
    commands = "; ".join(
        f"`spin generate --run-dir {run_dir} --iteration {k} --shard {i} --shards {shards}`" for i in missing[:4]
    )
    more = f" (and {len(missing) - 4} more)" if len(missing) > 4 else ""
    return f"iteration {k}: missing shard files {names} in {Path(run_dir) / layout.iter_dir(k) / 'generated'}: rerun {commands}{more}"


def parse_shard_line(line: str, where: str) -> tuple[str, PairRow]:
    """(split, pair) of one shard line, or a DataError saying what is wrong there."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in SHARD_KEYS if k not in record]
    if missing:
        raise DataError(f"{where}: missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)}")
    for key in ("id", "prompt", "real", "generated"):
        if not isinstance(record[key], str):
            raise DataError(f"{where}: {key!r} must be a string, got {type(record[key]).__name__}")
    for key in ("id", "prompt", "real"):
        if not record[key].strip():
            raise DataError(f"{where}: {key!r} is empty")
    if record["split"] not in SPLITS:
        raise DataError(f"{where}: 'split' must be train or test, got {record['split']!r}")
    answer = record["answer"]
    if answer is not None and not isinstance(answer, str):
        raise DataError(f"{where}: 'answer' must be a string or null, got {type(answer).__name__}")
    return record["split"], PairRow(
        id=record["id"], prompt=record["prompt"], real=record["real"], generated=record["generated"], answer=answer
    )


def read_shard(path: Path) -> list[tuple[str, PairRow, str]]:
    """(split, pair, location) of every line of a shard file; blank lines are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable shard file ({e})") from e
    out: list[tuple[str, PairRow, str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        split, row = parse_shard_line(line, where)
        out.append((split, row, where))
    return out


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key comparing digit runs as numbers ("train:10" after "train:9")."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text) if p)


def dedupe(
    items: Iterable[tuple[str, PairRow, str]], drop_exact_duplicates: bool = False
) -> tuple[dict[str, list[PairRow]], int, int]:
    """Rows per split, (rows dropped, exact duplicates seen). The same row twice (same id and
    content: an appended or copied shard) is dropped; two different rows under one id are an
    error; different rows with the same split, prompt, real and generated answer are counted and
    kept, as the original kept them, unless `drop_exact_duplicates` (then the first is kept)."""
    seen: set[tuple[str, str, str, str]] = set()
    by_id: dict[str, tuple[tuple[str, str, str, str], str]] = {}
    out: dict[str, list[PairRow]] = {s: [] for s in SPLITS}
    dropped = exact = 0
    for split, row, where in items:
        key = (split, row.prompt, row.real, row.generated)
        if row.id in by_id:
            if by_id[row.id][0] != key:
                raise DataError(
                    f"{where}: id {row.id!r} also appears at {by_id[row.id][1]} with different content; "
                    "a shard holds output of another run or spec: rerun its generate step with --force"
                )
            dropped += 1
            continue
        if key in seen:
            exact += 1
            if drop_exact_duplicates:
                dropped += 1
                continue
        seen.add(key)
        by_id[row.id] = (key, where)
        out[split].append(row)
    for rows in out.values():
        rows.sort(key=lambda r: natural_key(r.id))
    return out, dropped, exact


# --------------------------------------------------------------------------- the step


def _gather_shards(run_dir: Path, k: int, shards: int) -> tuple[list[tuple[str, PairRow, str]], int]:
    """Every line of iteration k's shard files, checked against their generate markers;
    also returns how many generated answers are empty."""
    paths = [Path(run_dir) / p for p in shard_files(k, shards)]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        raise DataError(missing_shards_message(run_dir, k, shards, missing))
    items: list[tuple[str, PairRow, str]] = []
    for i, path in enumerate(paths):
        lines = read_shard(path)
        marker = Path(run_dir) / stages.Step(k, "generate", i, shards).marker
        if marker.is_file():
            expected = atomic.read_json(marker).get("rows")
            if isinstance(expected, int) and expected != len(lines):
                raise DataError(
                    f"{path}: holds {len(lines)} rows but its generate step wrote {expected}: the file was changed "
                    f"or truncated; rerun `spin generate --run-dir {run_dir} --iteration {k} --shard {i} --shards {shards} --force`"
                )
        items += lines
    return items, sum(1 for _, r, _ in items if not r.generated.strip())


def convert_iteration(spec: SpinRunSpec, run_dir: Path, k: int) -> tuple[dict[str, list[PairRow]], ConvertCounts]:
    """Rows of iteration k per split (deduplicated) and the counts; nothing is written."""
    counts = ConvertCounts()
    synthetic = hparams.synthetic_data_for(spec, k)
    if synthetic is not None:
        train, test = load_synthetic(synthetic)
        items = [("train", r, "") for r in train] + [("test", r, "") for r in test]
        counts.source = f"syntheticData {synthetic.hub or synthetic.path}"
        counts.empty_generated = sum(1 for _, r, _ in items if not r.generated.strip())
    else:
        n = spec.generation.shards
        items, counts.empty_generated = _gather_shards(run_dir, k, n)
        counts.source = f"{n} generated shard{'s' if n > 1 else ''}"
        counts.shards = n
    counts.rows_read = len(items)
    by_split, counts.duplicates_dropped, counts.exact_duplicates = dedupe(items, spec.dataset.drop_duplicates)
    counts.train_rows, counts.test_rows = len(by_split["train"]), len(by_split["test"])
    counts.identical_train_pairs = sum(1 for r in by_split["train"] if r.generated.strip() == r.real.strip())
    if not by_split["train"]:
        raise DataError(f"iteration {k}: no training rows in {counts.source}; check the data and rerun generation")
    return by_split, counts


def run_convert(run_dir: Path, iteration: int, force: bool = False) -> dict[str, Any]:
    """Write iteration k's train/test parquet from its shards or syntheticData, record the
    counts in metrics.json ("convert") and the marker. Skipped when done, unless `force`.
    Returns the counts."""
    ctx = StepContext.open(run_dir, stages.Step(iteration, "convert"))
    if not ctx.should_run(force):
        return {}
    by_split, counts = convert_iteration(ctx.spec, ctx.run_dir, iteration)
    for split in SPLITS:
        write_pairs(ctx.path(layout.data_path(iteration, split)), by_split[split])  # type: ignore[arg-type]
    info = counts.as_dict()
    ctx.update_metrics("convert", info)
    ctx.mark_done(info)
    step = ctx.step
    notes = f", {counts.duplicates_dropped} duplicates dropped" if counts.duplicates_dropped else ""
    if counts.exact_duplicates and not ctx.spec.dataset.drop_duplicates:
        notes += f", {counts.exact_duplicates} exact duplicate pairs kept (dataset.dropDuplicates drops them)"
    if counts.empty_generated:
        notes += f", {counts.empty_generated} empty generated answers kept"
    if counts.identical_train_pairs:
        notes += f", {counts.identical_train_pairs} train pairs with generated == real (no gradient)"
    print(
        f"{step.key}: {counts.rows_read} rows from {counts.source} → "
        f"{counts.train_rows} train, {counts.test_rows} test{notes}"
    )
    return info
