"""The SPIN pair row (prompt, real answer, generated answer) and the converted parquet files
that hold them (`iter-<k>/data/{train,test}.parquet`), written atomically and read with
errors that name the file."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spin_runtime.errors import DataError
from spin_runtime.store import atomic

#: Columns of the converted parquet files, in order.
COLUMNS = ("id", "prompt", "real", "generated", "answer")


@dataclass(frozen=True)
class PairRow:
    """One SPIN training pair: prompt, real answer and the model's generated answer."""

    id: str
    prompt: str
    real: str
    generated: str
    answer: str | None = None

    def __getitem__(self, key: str) -> Any:
        """Mapping-style access (`row["generated"]`), for code that treats rows as dicts."""
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain dict."""
        return asdict(self)




def _table(rows: Sequence[PairRow]) -> Any:
    import pyarrow as pa

    schema = pa.schema([(c, pa.string()) for c in COLUMNS])
    return pa.Table.from_pylist([{c: getattr(r, c) for c in COLUMNS} for r in rows], schema=schema)


def write_pairs(path: Path, rows: Sequence[PairRow]) -> None:
    """Write pairs as parquet atomically (temporary file in the same folder, then rename)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(_table(rows), buf)
    atomic.atomic_write_bytes(Path(path), buf.getvalue())


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """Rows (`id, prompt, real, generated, answer`) of a converted parquet file; a missing,
    truncated or corrupt file, or one without the pair columns, is a DataError naming it."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found; run `spin convert` for its iteration first")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise DataError(
            f"{path}: unreadable parquet (truncated or corrupt: {e}); rerun `spin convert --force` for its iteration"
        ) from e
    missing = [c for c in ("prompt", "real", "generated") if c not in table.column_names]
    if missing:
        raise DataError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; not a converted SPIN data file"
        )
    rows = table.to_pylist()
    for r in rows:
        r.setdefault("id", None)
        r.setdefault("answer", None)
    return rows
