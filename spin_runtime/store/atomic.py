"""Atomic file writes (temporary file + rename) that honour the umask, so other users and pods
of a shared volume can read what a step wrote, and JSON reads that name the file when
something is wrong."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from spin_runtime.errors import RunDirError


def now_iso() -> str:
    """The current UTC time in RFC 3339."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_error(path: Path, e: OSError) -> RunDirError:
    """A failed write (disk full, a file where a folder should be, read-only volume) as one
    line naming the path."""
    where = f" at {e.filename}" if e.filename and str(e.filename) != str(path) else ""
    return RunDirError(
        f"{path}: cannot write ({e.strerror or e}{where}); check free space and that the run directory is a writable folder"
    )


def _temp_sibling(path: Path) -> Path:
    """A fresh temporary name beside `path`. Created with os.open/mkdir (not tempfile's owner-only
    0600/0700), so outputs get the umask's mode and other users of a shared volume can read them."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _umask() -> int:
    """The process umask, read from /proc where possible (os.umask can only read it by setting it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _readable_as_umask_allows(folder: Path) -> None:
    """Add the read (and, for folders, search) bits the umask allows to everything in `folder`:
    libraries write some files owner-only (safetensors' weights are 0600)."""
    mask = _umask()
    for p in [folder, *folder.rglob("*")]:
        if p.is_symlink():
            continue
        mode = p.stat().st_mode
        want = mode | ((0o555 if p.is_dir() else 0o444) & ~mask)
        if want != mode:
            os.chmod(p, want & 0o7777)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder + rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_sibling(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise write_error(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from e
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write JSON (indented, sorted keys for stable diffs)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path` whole. If the swap
    fails, the previous folder stays in place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_sibling(path)
        tmp.mkdir()
    except OSError as e:
        raise write_error(path, e) from e
    old = path.with_name(f".{path.name}.old")
    moved_aside = False
    try:
        yield tmp
        _readable_as_umask_allows(tmp)
        try:
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                moved_aside = True
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except OSError as e:
            raise write_error(path, e) from e
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved_aside and not path.exists():  # moved aside, the new one never arrived: put it back
            os.replace(old, path)
        raise


def read_json(path: Path) -> Any:
    """Read JSON, naming the file when it is missing or malformed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise RunDirError(f"{path}: file not found") from e
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e


