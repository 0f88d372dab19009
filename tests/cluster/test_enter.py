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
