"""Runtime faults, on the real `spin` steps: training SIGKILLed mid-iteration, a disk that is
full or a run directory that cannot be written, and damaged inputs (shards, parquet,
checkpoints). Each must end in a one-line error naming the file, with nothing half-written
marked done and nothing damaged trained on."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spin_runtime import errors
from spin_runtime.api.spec import SpinRun
from spin_runtime.cli import main as spin_main
from spin_runtime.plan import layout, stages
from spin_runtime.store import atomic, rundir
from tests.reliability.conftest import Tally
from tests.runtime.train_helpers import FAST_TRAINING, addition_rows, write_pairs

SPIN = str(Path(sys.executable).parent / "spin")


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_run_dir(run_dir: Path, tiny_model_dir: Path, *, iterations: int = 2, training: dict[str, Any] | None = None,
                 shards: int = 2) -> SpinRun:
    """A run on the builtin tiny model whose iteration 0 is trained (iter-0/model = the tiny
    model) and whose iterations 0 and 1 have converted data."""
    spec = {
        "model": {"builtin": "tiny-random-llama"},
        "dataset": {"builtin": {"name": "addition-3digit", "trainSize": 8, "testSize": 4}},
        "iterations": iterations,
        "generation": {"engine": "transformers", "maxNewTokens": 4, "shards": shards},
        "training": {**FAST_TRAINING, **(training or {})},
        "schedule": [{"learningRate": 1e-4}],
        "evaluation": {"maxSamples": 4},
    }
    run = SpinRun.model_validate({"metadata": {"name": "faults"}, "spec": spec})
    rundir.init_run(run_dir, run)
    shutil.copytree(tiny_model_dir, run_dir / layout.model_dir(0))
    write_pairs(run_dir, 0, "train", addition_rows(4, 0))
    write_pairs(run_dir, 1, "train", addition_rows(4, 1))
    write_pairs(run_dir, 1, "test", addition_rows(2, 1))
    for step in stages.steps_for_iteration(run.spec, 0):
        rundir.mark_done(run_dir, run, step, {"by": "test"})
    return run


def spin(*args: str, preexec: Callable[[], None] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SPIN, *args], capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line `spin` prints (no traceback)."""
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


# --------------------------------------------------------------------------- SIGKILL


@pytest.mark.slow
def test_training_sigkilled_after_its_first_step_leaves_no_trace_and_reruns(
    tmp_path: Path, tiny_model_dir: Path, tally: Tally
) -> None:
    run_dir = tmp_path / "run"
    run = make_run_dir(run_dir, tiny_model_dir, training={"maxSteps": 4, "loggingSteps": 1})
    start = run_dir / layout.model_dir(0)
    before = tree_hashes(start)
    others = {p: h for p, h in tree_hashes(run_dir).items() if not p.startswith("iter-1/")}

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([SPIN, "train", "--run-dir", str(run_dir), "--iteration", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    seen: list[str] = []
    first_step = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode(errors="replace")
            seen.append(line)
            if "'loss'" in line or '"loss"' in line:
                first_step.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert first_step.wait(240), f"no training step logged: {''.join(seen)[-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    reader.join(10)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-2000:]
    step = stages.Step(1, "train")
    assert not (run_dir / step.marker).exists()
    assert not (run_dir / layout.model_dir(1)).exists()
    assert not (run_dir / layout.done_path(1)).exists()
    assert "train" not in (json.loads((run_dir / layout.metrics_path(1)).read_text()) if (run_dir / layout.metrics_path(1)).exists() else {})
    assert tree_hashes(start) == before, "the previous iteration's checkpoint changed"

    done = spin("train", "--run-dir", str(run_dir), "--iteration", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert rundir.is_done(run_dir, step)
    from spin_runtime.modeling.models import check_checkpoint

    check_checkpoint(run_dir / layout.model_dir(1))
    assert json.loads((run_dir / step.marker).read_text())["steps"] == 4
    assert tree_hashes(start) == before
    after = tree_hashes(run_dir)
    assert {p: h for p, h in after.items() if p in others} == others, "files outside iteration 1 changed"
    leftovers = [p for p in after if "/." in f"/{p}" or ".train-scratch" in p]
    assert leftovers == [], f"temporary files left behind: {leftovers}"
    tally.add("faults.training_sigkill", 1)
    tally.add("observed.half_written_marked_done", 0)
    tally.add("observed.files_changed_after_kill", sum(1 for p, h in before.items() if tree_hashes(start).get(p) != h))
    assert run.spec.iterations == 2


# --------------------------------------------------------------------------- disk full / unwritable


def _converted_run(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A run whose iteration 1 has its two shards generated (written by hand) but not converted."""
    run_dir = tmp_path / "run"
    run = make_run_dir(run_dir, tiny_model_dir)
    for p in (layout.data_path(1, "train"), layout.data_path(1, "test")):
        (run_dir / p).unlink()
    for i in range(2):
        rows = [{"id": f"t:{s}:{i}-{j}", "split": s, "prompt": f"q {i} {j} {s}", "real": f"r {j}", "generated": f"g {j}",
                 "answer": None} for j in range(3) for s in ("train", "test")]
        shard = run_dir / layout.shard_path(1, i, 2)
        shard.parent.mkdir(parents=True, exist_ok=True)
        shard.write_text("".join(json.dumps(r) + "\n" for r in rows))
        rundir.mark_done(run_dir, run, stages.Step(1, "generate", i, 2), {"rows": len(rows)})
    return run_dir


def _nothing_marked(run_dir: Path) -> None:
    assert not rundir.is_done(run_dir, stages.Step(1, "convert"))
    assert not (run_dir / layout.data_path(1, "train")).exists()
    temps = [p for p in run_dir.rglob(".*.tmp")]
    assert temps == [], f"temporary files left behind: {temps}"


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))  # a disk with 1 KiB left, for root too


def test_disk_full_while_converting_fails_naming_the_file_and_marks_nothing(
    tmp_path: Path, tiny_model_dir: Path, tally: Tally
) -> None:
    run_dir = _converted_run(tmp_path, tiny_model_dir)
    done = spin("convert", "--run-dir", str(run_dir), "--iteration", "1", preexec=_limit_file_size)
    assert done.returncode == 1, done.stderr[-3000:]
    line = error_line(done)
    assert str(run_dir / "iter-1") in line and "File too large" in line, line
    _nothing_marked(run_dir)
    assert spin("convert", "--run-dir", str(run_dir), "--iteration", "1").returncode == 0, "reruns once space is back"
    assert rundir.is_done(run_dir, stages.Step(1, "convert"))
    tally.add("faults.disk_full", 1)


def test_no_space_left_on_rename_fails_naming_the_file(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tally: Tally
) -> None:
    run_dir = _converted_run(tmp_path, tiny_model_dir)
    real_replace = os.replace

    def full(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        if str(dst).endswith(".parquet"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))
        real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", full)
    assert spin_main(["convert", "--run-dir", str(run_dir), "--iteration", "1"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "train.parquet" in err, err
    _nothing_marked(run_dir)
    tally.add("faults.disk_full", 1)


def test_checkpoint_rename_failing_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "iter-0" / "model"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "model.safetensors").write_bytes(b"v1")
    real_replace = os.replace
    calls: list[str] = []

    def fail_second(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        calls.append(str(dst))
        if len(calls) == 2:  # old moved aside, new one cannot be moved in
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))
        real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises((OSError, errors.RunDirError)), atomic.atomic_dir(target) as tmp:
        (tmp / "model.safetensors").write_bytes(b"v2-partial")
    monkeypatch.setattr(os, "replace", real_replace)
    assert (target / "model.safetensors").read_bytes() == b"v1", "the previous checkpoint is lost"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]


@pytest.mark.parametrize("where", ["iter-1", "iter-1/data", "iter-1/markers"])
def test_a_file_where_a_run_folder_should_be_is_a_clear_error(
    where: str, tmp_path: Path, tiny_model_dir: Path, tally: Tally
) -> None:
    """Root ignores permission bits, so "unwritable" is a file squatting on a folder's path."""
    run_dir = _converted_run(tmp_path, tiny_model_dir)
    squat = run_dir / where
    if squat.is_dir():
        shutil.rmtree(squat)
    squat.write_text("not a folder")
    done = spin("convert", "--run-dir", str(run_dir), "--iteration", "1")
    assert done.returncode == (errors.EXIT_BAD_DATA if where == "iter-1" else 1)  # shards gone, or an unwritable folder
    line = error_line(done)
    assert str(squat) in line, line
    assert squat.read_text() == "not a folder"
    assert not (run_dir / stages.Step(1, "convert").marker).is_file()
    tally.add("faults.unwritable_run_dir", 1)


def test_init_run_into_a_file_is_a_clear_error(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"metadata": {"name": "r"}, "spec": {}}))
    target = tmp_path / "run"
    target.write_text("a file")
    done = subprocess.run([sys.executable, "-m", "spin_runtime.cli", "init-run", "--spec", str(spec), "--run-dir", str(target)],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and str(target) in done.stderr, done.stderr


# --------------------------------------------------------------------------- damaged inputs


SHARD_DAMAGE: dict[str, Callable[[Path], None]] = {
    "binary garbage": lambda p: p.write_bytes(os.urandom(64) + b"\xff\xfe"),
    "cut mid-line": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "NUL bytes": lambda p: p.write_bytes(b"\x00" * 100),
    "emptied": lambda p: p.write_text(""),
    "lines swapped with another run": lambda p: p.write_text(p.read_text().replace('"g ', '"other ')),
    "a folder": lambda p: (p.unlink(), p.mkdir()),  # type: ignore[func-returns-value]
}


@pytest.mark.parametrize("damage", list(SHARD_DAMAGE))
def test_damaged_shard_is_named_and_never_converted(damage: str, tmp_path: Path, tiny_model_dir: Path, tally: Tally) -> None:
    run_dir = _converted_run(tmp_path, tiny_model_dir)
    shard = run_dir / layout.shard_path(1, 1, 2)
    if damage == "lines swapped with another run":  # same ids, other content: shard 0 disagrees
        shard.write_text((run_dir / layout.shard_path(1, 0, 2)).read_text().replace('"g ', '"other '))
    else:
        SHARD_DAMAGE[damage](shard)
    done = spin("convert", "--run-dir", str(run_dir), "--iteration", "1")
    assert done.returncode == errors.EXIT_BAD_DATA, (done.stdout, done.stderr[-2000:])
    line = error_line(done)
    assert "shard-1-of-2.jsonl" in line, line
    _nothing_marked(run_dir)
    tally.add("faults.corrupt_shard", 1)


@pytest.mark.parametrize("split", ["train", "test"])
def test_truncated_parquet_is_named_and_never_trained_or_evaluated_on(
    split: str, tmp_path: Path, tiny_model_dir: Path, tally: Tally
) -> None:
    run_dir = tmp_path / "run"
    make_run_dir(run_dir, tiny_model_dir)
    rundir.mark_done(run_dir, rundir.load_run(run_dir), stages.Step(1, "convert"))
    if split == "test":  # evaluate reads the test split of a trained iteration
        shutil.copytree(tiny_model_dir, run_dir / layout.model_dir(1))
        rundir.mark_done(run_dir, rundir.load_run(run_dir), stages.Step(1, "train"))
    path = run_dir / layout.data_path(1, split)  # type: ignore[arg-type]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    step = "train" if split == "train" else "evaluate"
    done = spin(step, "--run-dir", str(run_dir), "--iteration", "1")
    assert done.returncode == errors.EXIT_BAD_DATA, done.stderr[-3000:]
    line = error_line(done)
    assert f"iter-1/data/{split}.parquet" in line, line
    assert not rundir.is_done(run_dir, stages.Step(1, step))  # type: ignore[arg-type]
    if split == "train":
        assert not (run_dir / layout.model_dir(1)).exists()
    tally.add("faults.truncated_parquet", 1)


CHECKPOINT_DAMAGE: dict[str, Callable[[Path], None]] = {
    "weights missing": lambda m: (m / "model.safetensors").unlink(),
    "weights truncated": lambda m: (m / "model.safetensors").write_bytes((m / "model.safetensors").read_bytes()[:5000]),
    "weights garbage": lambda m: (m / "model.safetensors").write_bytes(os.urandom(4096)),
    "config missing": lambda m: (m / "config.json").unlink(),
}


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE))
@pytest.mark.parametrize("step", ["train", "generate"])
def test_damaged_checkpoint_is_named_and_never_used(
    step: str, damage: str, tmp_path: Path, tiny_model_dir: Path, tally: Tally
) -> None:
    run_dir = tmp_path / "run"
    make_run_dir(run_dir, tiny_model_dir)
    model = run_dir / layout.model_dir(0)
    CHECKPOINT_DAMAGE[damage](model)
    args = ["--shard", "0", "--shards", "2"] if step == "generate" else []
    done = spin(step, "--run-dir", str(run_dir), "--iteration", "1", *args)
    assert done.returncode == errors.EXIT_BAD_MODEL, done.stderr[-3000:]
    line = error_line(done)
    assert str(model) in line, line
    marker = stages.Step(1, "generate", 0, 2).marker if step == "generate" else stages.Step(1, "train").marker
    assert not (run_dir / marker).exists()
    assert not (run_dir / layout.model_dir(1)).exists()
    if step == "generate":
        assert not (run_dir / layout.shard_path(1, 0, 2)).exists()
    tally.add("faults.damaged_checkpoint", 1)



def test_an_invalid_pinned_spec_fails_init_run_with_the_bad_spec_exit_code(tmp_path: Path) -> None:
    """Exit 78 (errors.EXIT_BAD_SPEC, sysexits EX_CONFIG) is one of the codes the operator's podFailurePolicy fails on at
    once: a retry of the same spec cannot succeed."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"apiVersion": "spin.dev/v1alpha1", "kind": "SpinRun", "metadata": {"name": "r"},
                                "spec": {"training": {"lossType": "hinge-ish"}}}))
    done = subprocess.run([sys.executable, "-m", "spin_runtime.cli", "init-run", "--spec", str(spec), "--run-dir",
                           str(tmp_path / "run")], capture_output=True, text=True)
    assert done.returncode == errors.EXIT_BAD_SPEC, done.stderr
    assert "spec.training.lossType" in done.stderr and "Traceback" not in done.stderr
    assert errors.EXIT_BAD_SPEC in errors.DETERMINISTIC_EXIT_CODES
