"""The tests read the apiserver's audit log while the apiserver writes it (tests/kube.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.kube import Kube


def test_an_audit_line_still_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    """Found in a fresh-clone CI run: a test polling the audit log read the apiserver's last line
    half written and failed with a JSONDecodeError."""
    log = tmp_path / "audit.log"
    event: dict[str, Any] = {"stage": "ResponseComplete", "verb": "patch", "objectRef": {"namespace": "ns"}}
    whole = json.dumps(event)
    log.write_text(whole + "\n" + whole[:40])
    kube = Kube(SimpleNamespace(audit_log=log), tmp_path)  # type: ignore[arg-type]
    assert kube.audit("ns") == [event]
    log.write_text(whole + "\n" + whole + "\n")
    assert kube.audit("ns") == [event, event]
