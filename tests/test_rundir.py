"""Run-directory writes are atomic and markers are written last."""

from __future__ import annotations

import os

import pytest

from spin_runtime import plan, rundir
from spin_runtime.spec import SpinRun


def make_run(**spec) -> SpinRun:
    return SpinRun.model_validate({"metadata": {"name": "t"}, "spec": spec})


def test_atomic_write_leaves_no_temp_files(tmp_path):
    rundir.atomic_write_text(tmp_path / "a" / "f.txt", "hello")
    rundir.atomic_write_text(tmp_path / "a" / "f.txt", "again")
    assert (tmp_path / "a" / "f.txt").read_text() == "again"
    assert os.listdir(tmp_path / "a") == ["f.txt"]


def test_atomic_dir_failure_keeps_the_old_folder(tmp_path):
    target = tmp_path / "model"
    with rundir.atomic_dir(target) as tmp:
        (tmp / "w").write_text("v1")
    with pytest.raises(RuntimeError), rundir.atomic_dir(target) as tmp:
        (tmp / "w").write_text("partial")
        raise RuntimeError("killed")
    assert (target / "w").read_text() == "v1"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_atomic_outputs_get_the_umask_mode_so_other_users_can_read_them(tmp_path):
    old = os.umask(0o022)
    try:
        rundir.atomic_write_text(tmp_path / "a.json", "{}")
        with rundir.atomic_dir(tmp_path / "model") as tmp:
            (tmp / "w").write_text("v1")
            (tmp / "weights").write_text("owner-only, as safetensors writes them")
            (tmp / "weights").chmod(0o600)
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "model" / "weights").stat().st_mode & 0o777 == 0o644


def test_last_step_marks_the_iteration_done(tmp_path):
    run = make_run(iterations=2)
    rundir.init_run(tmp_path, run)
    train = plan.Step(0, "train")
    rundir.mark_done(tmp_path, run, train)
    assert rundir.is_done(tmp_path, train)
    assert not (tmp_path / plan.done_path(0)).exists()
    rundir.mark_done(tmp_path, run, plan.Step(0, "evaluate"))
    assert (tmp_path / plan.done_path(0)).exists()
    assert rundir.done_keys(tmp_path, run) == {"it0/train", "it0/evaluate"}


def test_stored_spec_round_trips(tmp_path):
    run = make_run(iterations=3, generation={"shards": 2})
    rundir.init_run(tmp_path, run)
    assert rundir.load_run(tmp_path).spec == run.spec


def test_missing_spec_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(rundir.RunDirError, match=r"spec.json: no spec here; start the run with `spin run"):
        rundir.load_run(tmp_path)


def test_metrics_sections_are_merged(tmp_path):
    rundir.update_metrics(tmp_path, 0, "train", {"loss": 0.5})
    rundir.update_metrics(tmp_path, 0, "eval", {"exact_match": 0.25})
    assert rundir.read_json(tmp_path / plan.metrics_path(0)) == {"train": {"loss": 0.5}, "eval": {"exact_match": 0.25}}
