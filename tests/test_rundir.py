"""Run-directory writes are atomic and markers are written last."""

from __future__ import annotations

import os

import pytest

from spin_runtime import errors
from spin_runtime.api.spec import SpinRun
from spin_runtime.plan import layout, stages
from spin_runtime.store import atomic, rundir


def make_run(**spec) -> SpinRun:
    return SpinRun.model_validate({"metadata": {"name": "t"}, "spec": spec})


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic.atomic_write_text(tmp_path / "a" / "f.txt", "hello")
    atomic.atomic_write_text(tmp_path / "a" / "f.txt", "again")
    assert (tmp_path / "a" / "f.txt").read_text() == "again"
    assert os.listdir(tmp_path / "a") == ["f.txt"]


def test_atomic_dir_failure_keeps_the_old_folder(tmp_path):
    target = tmp_path / "model"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "w").write_text("v1")
    with pytest.raises(RuntimeError), atomic.atomic_dir(target) as tmp:
        (tmp / "w").write_text("partial")
        raise RuntimeError("killed")
    assert (target / "w").read_text() == "v1"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_atomic_outputs_get_the_umask_mode_so_other_users_can_read_them(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.atomic_write_text(tmp_path / "a.json", "{}")
        with atomic.atomic_dir(tmp_path / "model") as tmp:
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
    train = stages.Step(0, "train")
    rundir.mark_done(tmp_path, run, train)
    assert rundir.is_done(tmp_path, train)
    assert not (tmp_path / layout.done_path(0)).exists()
    rundir.mark_done(tmp_path, run, stages.Step(0, "evaluate"))
    assert (tmp_path / layout.done_path(0)).exists()
    assert {s.key for s in stages.all_steps(run.spec) if rundir.is_done(tmp_path, s)} == {"it0/train", "it0/evaluate"}


def test_a_marker_records_the_run_uid_and_the_step_fingerprint(tmp_path):
    run = rundir.with_uid(make_run(iterations=2), "uid-1")
    rundir.init_run(tmp_path, run)
    rundir.mark_done(tmp_path, run, stages.Step(0, "train"), {"steps": 3})
    record = atomic.read_json(tmp_path / stages.Step(0, "train").marker)
    assert record["runUid"] == "uid-1" and record["run"] == run.metadata.name and record["steps"] == 3
    assert record["fingerprint"] == rundir.fingerprints(run)["it0/train"]


def test_a_marker_of_another_run_with_the_same_name_is_not_done(tmp_path):
    old = rundir.with_uid(make_run(iterations=2), "old-uid")
    rundir.mark_done(tmp_path, old, stages.Step(0, "convert"))
    new = rundir.with_uid(make_run(iterations=2), "new-uid")
    state = rundir.marker_state(tmp_path, new, stages.Step(0, "convert"))
    assert not state.done and "another run (uid old-uid)" in (state.why_not or "")


def test_a_changed_learning_rate_invalidates_train_and_everything_after_it_only(tmp_path):
    before = make_run(iterations=2)
    for s in stages.all_steps(before.spec):
        rundir.mark_done(tmp_path, before, s)
    after = make_run(iterations=2, schedule=[{"learningRate": 1e-6, "beta": 0.1}])
    done = {s.key for s in stages.all_steps(after.spec) if rundir.is_done(tmp_path, s, after)}
    assert done == {"it0/generate-0-of-1", "it0/convert"}
    state = rundir.marker_state(tmp_path, after, stages.Step(0, "train"))
    assert state.why_not == "the spec fields it depends on changed since it ran"


def test_cluster_only_fields_do_not_invalidate_finished_steps(tmp_path):
    before = make_run(iterations=2)
    for s in stages.all_steps(before.spec):
        rundir.mark_done(tmp_path, before, s)
    after = make_run(
        iterations=3,
        images={"trainer": "registry.example/t:2"},
        training={"resources": {"requests": {"cpu": "4"}}, "loggingSteps": 5},
        generation={"parallelism": 1},
    )
    assert all(rundir.is_done(tmp_path, s, after) for s in stages.all_steps(before.spec))



def test_stored_spec_round_trips(tmp_path):
    run = make_run(iterations=3, generation={"shards": 2})
    rundir.init_run(tmp_path, run)
    assert rundir.load_run(tmp_path).spec == run.spec


def test_missing_spec_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(errors.RunDirError, match=r"spec.json: no spec here; start the run with `spin run"):
        rundir.load_run(tmp_path)


def test_metrics_sections_are_merged(tmp_path):
    rundir.update_metrics(tmp_path, 0, "train", {"loss": 0.5})
    rundir.update_metrics(tmp_path, 0, "eval", {"exact_match": 0.25})
    assert atomic.read_json(tmp_path / layout.metrics_path(0)) == {"train": {"loss": 0.5}, "eval": {"exact_match": 0.25}}
