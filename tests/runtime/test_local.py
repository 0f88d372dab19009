"""The local driver: one full iteration (2 generation shards → convert → train → evaluate) on
the tiny model through `spin run`, resume from markers, status and report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spin_runtime import errors
from spin_runtime.local import status_text
from spin_runtime.plan import layout, stages
from spin_runtime.store import atomic, rundir

SPEC = {
    "apiVersion": "spin.dev/v1alpha1",
    "kind": "SpinRun",
    "metadata": {"name": "local-e2e"},
    "spec": {
        "model": {"builtin": "tiny-random-llama"},
        "dataset": {"builtin": {"name": "addition-3digit", "trainSize": 8, "testSize": 4}},
        "iterations": 1,
        "schedule": [{"learningRate": 1.0e-4, "beta": 0.1, "epochs": 1}],
        "generation": {"engine": "transformers", "maxNewTokens": 6, "shards": 2},
        "training": {
            "gpusPerNode": 0, "perDeviceBatchSize": 4, "maxLength": 64, "maxPromptLength": 48,
            "precision": "fp32", "gradientCheckpointing": False, "loggingSteps": 1,
        },
        "storage": {"newClaim": {}},
    },
}  # fmt: skip


def spin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spin_runtime.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_spin_run_does_one_full_iteration_then_resumes_without_redoing_work(tmp_path: Path, tiny_model_dir: Path):
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    run_dir = tmp_path / "run"

    first = spin("run", str(spec_file), "--run-dir", str(run_dir))
    assert first.returncode == 0, first.stderr[-3000:]
    run = rundir.load_run(run_dir)
    for step in stages.all_steps(run.spec):
        assert rundir.is_done(run_dir, step), step.key
    assert (run_dir / layout.done_path(0)).exists()
    assert (run_dir / layout.model_dir(0) / "model.safetensors").exists()
    metrics = atomic.read_json(run_dir / layout.metrics_path(0))
    assert metrics["train"]["history"] and "reward_margin" in metrics["eval"]
    assert (run_dir / "report" / "summary.md").exists() and (run_dir / "report" / "training.png").exists()
    assert "| iter0 |" in first.stdout

    weights = (run_dir / layout.model_dir(0) / "model.safetensors").read_bytes()
    again = spin("run", str(spec_file), "--run-dir", str(run_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done earlier, skipped") == len(stages.all_steps(run.spec))
    assert (run_dir / layout.model_dir(0) / "model.safetensors").read_bytes() == weights

    text = status_text(run_dir)
    assert "iteration 0: done" in text and "iter-0/model" in text

    # A changed learning rate is refused (naming the field and the way out); nothing is touched.
    changed = {**SPEC, "spec": {**SPEC["spec"], "schedule": [{"learningRate": 5.0e-5, "beta": 0.1, "epochs": 1}]}}
    spec_file.write_text(yaml.safe_dump(changed))
    refused = spin("run", str(spec_file), "--run-dir", str(run_dir))
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "spec.schedule[0].learningRate" in refused.stderr and "--rerun-changed" in refused.stderr
    assert "it0/train" in refused.stderr and "it0/convert" not in refused.stderr
    assert rundir.load_run(run_dir).spec.schedule[0].learning_rate == 1.0e-4
    assert (run_dir / layout.model_dir(0) / "model.safetensors").read_bytes() == weights

    # With --rerun-changed exactly train and what follows run again, and the report says so.
    rerun = spin("run", str(spec_file), "--run-dir", str(run_dir), "--rerun-changed")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stdout.count("done earlier, skipped") == 3  # two shards and convert
    assert atomic.read_json(run_dir / layout.metrics_path(0))["train"]["summary"]["learning_rate"] == 5.0e-5
    assert rundir.load_run(run_dir).spec.schedule[0].learning_rate == 5.0e-5


def test_status_of_a_fresh_run_lists_pending_steps(tmp_path: Path):
    from spin_runtime.api.spec import SpinRun

    rundir.init_run(tmp_path, SpinRun.model_validate(SPEC))
    text = status_text(tmp_path)
    assert "iteration 0: pending" in text and "generate-1-of-2" in text and "last checkpoint: none yet" in text


def test_failed_step_stops_the_run_with_its_exit_code_and_names_the_step(tmp_path: Path):
    bad = {**SPEC, "spec": {**SPEC["spec"], "model": {"path": str(tmp_path / "missing-model")}}}
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(yaml.safe_dump(bad))
    out = spin("run", str(spec_file), "--run-dir", str(tmp_path / "run"))
    assert out.returncode != 0
    assert "missing-model" in out.stderr and "generate-0-of-2: failed" in out.stderr
    assert not any((tmp_path / "run").rglob("*.done"))
    log = tmp_path / "run" / layout.step_log_path(0, "generate-0-of-2")
    assert f"log: {log}" in out.stderr, "the failure names the step's log"
    assert "    " in out.stderr.split(f"log: {log}", 1)[1], "and shows its last lines"
    assert "failed" in atomic.read_json(tmp_path / "run" / layout.progress_path(0, "generate-0-of-2"))["state"]
    assert f"failed: it0/generate-0-of-2 (exit {errors.EXIT_BAD_MODEL})" in status_text(tmp_path / "run")


# --------------------------------------------------------------------------- the console


NOISE = ("Warning", "warnings.warn", "{'loss'", "{'train_runtime'", "%|", "it/s]", "Loading weights", "Saving the dataset")


def _run_on_a_terminal(argv: list[str], timeout: float = 900) -> str:
    """Run a command with a pseudo-terminal as stdout and stderr; everything it wrote."""
    import os
    import pty
    import select
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode("utf-8", errors="replace")


@pytest.mark.slow
def test_two_iterations_on_a_terminal_print_few_clean_lines_and_keep_full_logs(tmp_path: Path, tiny_model_dir: Path):
    spec = {**SPEC, "spec": {**SPEC["spec"], "iterations": 2}}
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "run"
    text = _run_on_a_terminal([sys.executable, "-m", "spin_runtime.cli", "run", str(spec_file), "--run-dir", str(run_dir)])

    final = [line.rsplit("\r", 1)[-1].replace("\x1b[K", "") for line in text.replace("\r\n", "\n").split("\n")]
    assert text.count("\n") <= 80, text
    for noise in NOISE:
        assert noise not in text, noise
    run = rundir.load_run(run_dir)
    for step in stages.all_steps(run.spec):  # one summary line per step
        stem = step.key.split("/", 1)[1]
        assert sum(f"iteration {step.iteration} · {stem}: done in" in line for line in final) == 1, stem
    assert any("train: done in" in line and "loss" in line and "margin" in line for line in final)
    assert "| iter1 |" in text and "index.html" in text
    assert "\r" in text.replace("\r\n", ""), "a live line redrawn in place"

    # the full output is in the run directory, one log per step, beside TensorBoard's files
    train_log = (run_dir / layout.step_log_path(1, "train")).read_text()
    assert "{'loss'" in train_log and "spin train: iteration 1: saved" in train_log
    gen_log = (run_dir / layout.step_log_path(0, "generate-0-of-2")).read_text()
    assert gen_log.startswith("# ") and "spin_runtime.cli generate" in gen_log and "answers →" in gen_log
    assert list((run_dir / layout.logs_dir(1)).glob("events.out.tfevents.*"))
    record = atomic.read_json(run_dir / layout.progress_path(1, "train"))
    assert record["state"] == "done" and record["done"] == record["total"] and "loss" in record["metrics"]


def test_without_a_terminal_progress_comes_as_plain_periodic_lines():
    import io

    from spin_runtime.local import Console

    out = io.StringIO()
    console = Console(out=out, err=out, tty=False)
    console.start_step()
    for i in range(50):
        console.live(f"[1/1] iteration 0 · train step {i}/50")
    console.line("[1/1] iteration 0 · train: done in 3s")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert out.getvalue().count("\n") == 1, "no progress line before a full interval has passed"


def test_live_line_adds_up_parallel_shards():
    from spin_runtime.local import live_text

    records = [
        {"state": "running", "unit": "prompts", "done": 10, "total": 32, "rate": 1.0, "metrics": {"tok/s": 100.0}},
        {"state": "running", "unit": "prompts", "done": 20, "total": 32, "rate": 2.0, "metrics": {"tok/s": 150.0}},
    ]
    text = live_text(["0-of-2", "1-of-2"], records, now=0.0)
    assert "2 shards running" in text and "30/64 prompts" in text and "250 tok/s" in text and "ETA 22s" in text


# --------------------------------------------------------------------------- several GPUs


def _spec(**generation: object):
    from spin_runtime.api.spec import SpinRun

    data = {**SPEC["spec"], "generation": {**SPEC["spec"]["generation"], **generation}}
    return SpinRun.model_validate({**SPEC, "spec": data}).spec


def test_generation_slots_are_gpu_groups_of_tensor_parallel_size():
    from spin_runtime.local import generation_slots, visible_gpu_ids

    ids = visible_gpu_ids(8, env={})
    assert generation_slots(_spec(tensorParallelSize=2), ids) == [
        (("CUDA_VISIBLE_DEVICES", "0,1"),), (("CUDA_VISIBLE_DEVICES", "2,3"),),
        (("CUDA_VISIBLE_DEVICES", "4,5"),), (("CUDA_VISIBLE_DEVICES", "6,7"),),
    ]  # fmt: skip
    assert len(generation_slots(_spec(tensorParallelSize=3), ids)) == 2, "leftover GPUs stay idle"
    assert len(generation_slots(_spec(tensorParallelSize=1, parallelism=3), ids)) == 3
    assert generation_slots(_spec(), visible_gpu_ids(0, env={})) == [()], "CPU: one shard at a time"
    assert generation_slots(_spec(tensorParallelSize=4), ids[:2]) == [()], "too few GPUs for one group"
    # the user's own CUDA_VISIBLE_DEVICES is split, not replaced
    mine = visible_gpu_ids(4, env={"CUDA_VISIBLE_DEVICES": "3,5,6,7"})
    assert generation_slots(_spec(tensorParallelSize=2), mine)[1] == (("CUDA_VISIBLE_DEVICES", "6,7"),)


def test_training_runs_under_torchrun_across_the_local_gpus():
    from spin_runtime.api.spec import SpinRun
    from spin_runtime.local import Launch, step_command, training_procs

    def spec(gpus: int):
        data = {**SPEC["spec"], "training": {**SPEC["spec"]["training"], "gpusPerNode": gpus}}
        return SpinRun.model_validate({**SPEC, "spec": data}).spec

    assert training_procs(spec(8), 8) == 8 and training_procs(spec(8), 4) == 4
    assert training_procs(spec(0), 8) == 0 and training_procs(spec(1), 8) == 0 and training_procs(spec(8), 0) == 0
    argv = step_command(Launch(stages.Step(0, "train"), nproc=8), Path("/r"))
    assert argv[1:4] == ["-m", "spin_runtime.cli", "torchrun"] and "--nproc_per_node" in argv and "8" in argv
    assert step_command(Launch(stages.Step(0, "train")), Path("/r"))[1:3] == ["-m", "spin_runtime.cli"]


class _FakeProc:
    def __init__(self, clock: list[float], seconds: float, code: int = 0) -> None:
        self.clock, self.end, self.code = clock, clock[0] + seconds, code

    def poll(self) -> int | None:
        return self.code if self.clock[0] >= self.end else None


def test_shards_share_the_gpu_groups_a_freed_group_takes_the_next_shard():
    from spin_runtime.local import Launch, generation_slots, run_pool, visible_gpu_ids

    slots = generation_slots(_spec(tensorParallelSize=2, shards=6), visible_gpu_ids(4, env={}))
    clock = [0.0]
    started: list[tuple[float, str, str]] = []
    durations = {0: 10, 1: 3, 2: 5, 3: 5, 4: 1, 5: 1}

    def start(launch_: Launch) -> _FakeProc:
        started.append((clock[0], launch_.step.key, dict(launch_.env)["CUDA_VISIBLE_DEVICES"]))
        return _FakeProc(clock, durations[launch_.step.shard or 0])

    def sleep(seconds: float) -> None:
        clock[0] += 1

    steps = [stages.Step(0, "generate", i, 6) for i in range(6)]
    assert run_pool(steps, slots, start, sleep=sleep) == 0
    assert started == [
        (0, "it0/generate-0-of-6", "0,1"), (0, "it0/generate-1-of-6", "2,3"),
        (3, "it0/generate-2-of-6", "2,3"), (8, "it0/generate-3-of-6", "2,3"),
        (10, "it0/generate-4-of-6", "0,1"), (11, "it0/generate-5-of-6", "0,1"),
    ]  # fmt: skip


def test_a_failed_shard_stops_new_shards_and_the_running_ones_finish():
    from spin_runtime.local import Launch, run_pool

    clock = [0.0]
    started: list[str] = []
    finished: list[tuple[str, int]] = []

    def start(launch_: Launch) -> _FakeProc:
        started.append(launch_.step.key)
        shard = launch_.step.shard or 0
        return _FakeProc(clock, 1 if shard == 0 else 4, code=3 if shard == 0 else 0)

    def sleep(seconds: float) -> None:
        clock[0] += 1

    steps = [stages.Step(0, "generate", i, 4) for i in range(4)]
    slots = [(("CUDA_VISIBLE_DEVICES", "0"),), (("CUDA_VISIBLE_DEVICES", "1"),)]
    code = run_pool(steps, slots, start, finished=lambda la, c: finished.append((la.step.key, c)), sleep=sleep)
    assert code == 3
    assert started == ["it0/generate-0-of-4", "it0/generate-1-of-4"]
    assert finished == [("it0/generate-0-of-4", 3), ("it0/generate-1-of-4", 0)]


def test_verbose_streams_the_steps_output_and_still_keeps_the_log(tmp_path: Path):
    bad = {**SPEC, "spec": {**SPEC["spec"], "model": {"path": str(tmp_path / "missing-model")}}}
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(yaml.safe_dump(bad))
    out = spin("run", str(spec_file), "--run-dir", str(tmp_path / "run"), "--verbose")
    assert out.returncode != 0
    streamed = [ln for ln in out.stdout.splitlines() if ln.startswith("[it0/generate-0-of-2] ")]
    assert any("spin generate: error" in ln and "missing-model" in ln for ln in streamed)
    assert "spin generate: error" in (tmp_path / "run" / layout.step_log_path(0, "generate-0-of-2")).read_text()
