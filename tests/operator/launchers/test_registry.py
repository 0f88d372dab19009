"""The launcher registry (launchers/__init__.py): one launcher per `training.launcher` value,
each satisfying the protocol, and the lookups by kind."""

from __future__ import annotations

from spin_operator import launchers
from spin_operator.builders.job import suspend_patch
from spin_operator.settings import LAUNCHER_NAMES


def test_every_spec_launcher_value_has_a_launcher() -> None:
    assert set(launchers.LAUNCHERS) == set(LAUNCHER_NAMES)
    for name, launcher in launchers.LAUNCHERS.items():
        assert launcher.name == name and launcher.api_version and launcher.kind and launcher.plural


def test_batch_jobs_are_read_and_patched_as_jobs() -> None:
    assert launchers.by_kind("Job") is None
    assert launchers.suspend_patch("Job", True) == suspend_patch(True)
    job = {"kind": "Job", "metadata": {"name": "j"}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert launchers.read_state(job).complete


def test_custom_resources_are_found_by_kind() -> None:
    for launcher in launchers.LAUNCHERS.values():
        if launcher.custom_resource:
            assert launchers.by_kind(launcher.kind) is launcher
