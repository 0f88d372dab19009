"""Paths inside a container's root resolve as the container would see them."""

from __future__ import annotations

import os
from pathlib import Path

from spin_cluster.kubelet.enter import secure_join


def test_symlinks_resolve_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "var").mkdir()
    os.symlink("/run", tmp_path / "var" / "run")  # absolute: /run of the container, not of the host
    os.symlink("../../etc", tmp_path / "run" / "up")
    assert secure_join(str(tmp_path), "/var/run/secrets/x") == str(tmp_path / "run" / "secrets" / "x")
    assert secure_join(str(tmp_path), "/run/up/passwd") == str(tmp_path / "etc" / "passwd")
    assert secure_join(str(tmp_path), "/../../data") == str(tmp_path / "data")


def test_a_path_is_under_a_mount_path_only_at_a_folder_boundary() -> None:
    from spin_cluster.kubelet.enter import _under

    assert _under("/tmp/ci1/.venv", "/tmp") and _under("/tmp", "/tmp/") and _under("/x", "/")
    assert not _under("/tmpfoo/venv", "/tmp") and not _under("/work", "/work/main")
