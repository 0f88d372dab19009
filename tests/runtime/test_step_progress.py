"""Step progress files: written throttled and atomically, one line of text for the console and
`spin status`, plain lines on stderr for logs without a terminal, nothing on other ranks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from spin_runtime.api.spec import SpinRun
from spin_runtime.launch import PROGRESS_PORT_ENV
from spin_runtime.local import status_text
from spin_runtime.plan import layout, stages
from spin_runtime.steps import progress_server, step_progress
from spin_runtime.store import rundir


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _progress(tmp_path: Path, clock: Clock, echo: io.StringIO, **kw: object) -> step_progress.Progress:
    return step_progress.Progress(tmp_path / "p.json", "it0/generate-0-of-2", unit="prompts", total=64,
                                  echo=echo, clock=clock, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_updates_are_written_at_most_once_a_second_and_the_end_always(tmp_path: Path) -> None:
    clock, echo = Clock(), io.StringIO()
    p = _progress(tmp_path, clock, echo)
    p.phase("loading the model")
    assert json.loads((tmp_path / "p.json").read_text())["phase"] == "loading the model"
    clock.now += 5
    p.update(0)
    for i in range(1, 10):
        clock.now += 0.2
        p.update(i, **{"tok/s": 50.0})
    record = json.loads((tmp_path / "p.json").read_text())
    assert record["done"] == 5 and record["phase"] is None, "writes are throttled"
    clock.now += 0.2
    p.finish("64 answers, 50 tok/s")
    record = json.loads((tmp_path / "p.json").read_text())
    assert record["state"] == "done" and record["done"] == 64 and record["summary"] == "64 answers, 50 tok/s"
    assert list(tmp_path.iterdir()) == [tmp_path / "p.json"], "no temporary files left"


def test_rate_and_eta_count_from_the_first_update_not_from_set_up(tmp_path: Path) -> None:
    clock, echo = Clock(), io.StringIO()
    p = _progress(tmp_path, clock, echo)
    clock.now += 100  # loading the model
    p.update(0)
    clock.now += 10
    p.update(16, **{"tok/s": 231.4})
    rec = p.record
    assert rec["rate"] == 1.6 and step_progress.eta_seconds(rec) == 30
    assert step_progress.describe(rec, clock.now) == "16/64 prompts · 231 tok/s · ETA 30s"


def test_plain_progress_lines_on_stderr_every_thirty_seconds(tmp_path: Path) -> None:
    clock, echo = Clock(), io.StringIO()
    p = _progress(tmp_path, clock, echo)
    for i in range(0, 64, 4):
        clock.now += 5
        p.update(i)
    lines = echo.getvalue().splitlines()
    assert len(lines) == 2 and all(ln.startswith("progress it0/generate-0-of-2: ") for ln in lines)
    assert "\r" not in echo.getvalue()


def test_describe_training_and_set_up_phases() -> None:
    rec = {"state": "running", "unit": "steps", "done": 5, "total": 8, "rate": 0.1,
           "metrics": {"loss": 0.41234, "margin": 0.931, "s/step": 9.8}}  # fmt: skip
    assert step_progress.describe(rec) == "step 5/8 · loss 0.412 · margin 0.931 · 9.8 s/step · ETA 30s"
    phase = {"state": "running", "phase": "opponent log-probs of 64 train pairs", "phase_started": 0.0}
    assert step_progress.describe(phase, now=75.0) == "opponent log-probs of 64 train pairs (1m15s)"
    assert step_progress.describe({"state": "done", "summary": "8 steps, loss 0.41"}) == "8 steps, loss 0.41"
    assert step_progress.fmt_duration(3725) == "1h02m" and step_progress.fmt_duration(None) == "?"


def test_other_ranks_and_missing_run_directories_write_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "not-a-run"
    p = step_progress.for_step(run_dir, stages.Step(0, "train"), unit="steps")
    p.update(1, total=2)
    p.finish("done")
    assert not run_dir.exists()
    spec = {"metadata": {"name": "t"}, "spec": {"model": {"builtin": "tiny-random-llama"}, "storage": {"newClaim": {}}}}
    rundir.init_run(tmp_path / "run", SpinRun.model_validate(spec))
    step_progress.for_step(tmp_path / "run", stages.Step(0, "train"), rank=1).update(1, total=2)
    assert not (tmp_path / "run" / layout.progress_path(0, "train")).exists()
    step_progress.for_step(tmp_path / "run", stages.Step(0, "train")).update(1, total=2)
    assert (tmp_path / "run" / layout.progress_path(0, "train")).exists()


def test_status_shows_the_running_step_and_notices_a_vanished_process(tmp_path: Path) -> None:
    spec = {"metadata": {"name": "t"}, "spec": {"model": {"builtin": "tiny-random-llama"}, "storage": {"newClaim": {}}}}
    rundir.init_run(tmp_path, SpinRun.model_validate(spec))
    p = step_progress.for_step(tmp_path, stages.Step(0, "train"), unit="steps")
    p.update(3, total=8, loss=0.5)
    text = status_text(tmp_path)
    assert "running: it0/train — step 3/8 · loss 0.5" in text and "process is gone" not in text
    record = json.loads((tmp_path / layout.progress_path(0, "train")).read_text())
    record["pid"] = 2**22 + 12345  # no such process
    (tmp_path / layout.progress_path(0, "train")).write_text(json.dumps(record))
    assert "its process is gone (interrupted?)" in status_text(tmp_path)


# --------------------------------------------------------------------------- served to the operator


def _get(port: int, path: str = "/progress") -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_in_a_pod_rank_zero_serves_its_live_record_over_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_server, "_server", None)
    monkeypatch.setenv(PROGRESS_PORT_ENV, "0")  # any free port
    rundir.init_run(tmp_path, SpinRun.model_validate({"apiVersion": "spin.dev/v1alpha1", "kind": "SpinRun",
                                                       "metadata": {"name": "r"}, "spec": {}}))
    step = stages.Step(0, "train")
    p = step_progress.for_step(tmp_path, step, unit="steps", total=8)
    assert p.server is not None
    try:
        p.update(3, loss=0.5)  # within a second of the first write: the file lags, the server does not
        status, body = _get(p.server.port)
        record = json.loads(body)
        assert status == 200 and (record["step"], record["done"], record["total"], record["metrics"]) == (
            "it0/train", 3, 8, {"loss": 0.5})
        assert _get(p.server.port, "/metrics")[0] == 404
        assert step_progress.for_step(tmp_path, step, rank=1).server is None  # other ranks serve nothing
        assert step_progress.for_step(tmp_path, step).server is p.server  # one server per process
    finally:
        p.server.close()


def test_a_bad_or_busy_progress_port_costs_a_warning_not_the_step(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(progress_server, "_server", None)
    assert progress_server.shared_server({PROGRESS_PORT_ENV: "http"}) is None
    assert "not a port number" in capsys.readouterr().err
    busy = progress_server.ProgressServer(0, host="127.0.0.1")
    try:
        assert progress_server.shared_server({PROGRESS_PORT_ENV: str(busy.port)}) is None
        assert f"cannot serve progress on port {busy.port}" in capsys.readouterr().err
    finally:
        busy.close()
    assert progress_server.shared_server({}) is None


def test_metrics_read_as_numbers_people_use() -> None:
    record = {"state": "running", "done": 2, "total": 8, "unit": "steps",
              "metrics": {"loss": 0.69314, "margin": -3.81e-07, "s/step": 4.2, "tok/s": 231.4}}
    assert step_progress.describe(record, now=0) == "step 2/8 · loss 0.693 · margin 0.000 · 4.2 s/step · 231 tok/s"
