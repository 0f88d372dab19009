"""The report: the start model is the first point of every held-out panel and the first row of
the table; index.html is one self-contained page (table and plots embedded); the log-prob
convergence series pairs each model with its own generated answers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from spin_runtime import report
from spin_runtime.api.spec import SpinRun
from spin_runtime.plan import layout
from spin_runtime.store import atomic, rundir


def _eval(k: int) -> dict[str, Any]:
    return {
        "logp_real": -10.0 + 3 * k, "logp_generated": -6.0 - k, "opponent_logp_real": -12.0 + 3 * k,
        "opponent_logp_generated": -4.0 - k, "reward_margin": 0.5 + k, "reward_accuracy": 0.7, "exact_match": 0.2 + 0.1 * k,
        **({"baseline_exact_match": 0.05} if k == 0 else {}),
    }  # fmt: skip


def _history(n: int, k: int) -> list[dict[str, Any]]:
    return [{"step": i + 1, "loss": 0.69 - 0.05 * i, "rewards/margins": 0.1 * i, "logps/real": -10.0 + i + 3 * k,
             "logps/generated": -5.0 - i} for i in range(n)]  # fmt: skip


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    spec = {"metadata": {"name": "rep"}, "spec": {"model": {"builtin": "tiny-random-llama"}, "iterations": 2,
                                                  "storage": {"newClaim": {}}}}  # fmt: skip
    rundir.init_run(tmp_path, SpinRun.model_validate(spec))
    for k in (0, 1):
        atomic.atomic_write_json(tmp_path / layout.metrics_path(k), {
            "train": {"history": _history(4, k), "summary": {"steps": 4, "learning_rate": 1e-6, "beta": 0.1}},
            "eval": _eval(k),
        })  # fmt: skip
    log = tmp_path / layout.step_log_path(0, "train")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("training output\n")
    return tmp_path


def test_every_heldout_panel_starts_with_the_start_model(run_dir: Path) -> None:
    metrics = report.load_metrics(run_dir)
    for key, _, _ in report.HELDOUT_PANELS:
        labels, values = report.heldout_series(metrics, key)
        assert labels == ["start", "iter0", "iter1"], key
    assert report.heldout_series(metrics, "logp_real")[1][0] == -12.0, "the first iteration's opponent"
    assert report.heldout_series(metrics, "logp_generated")[1][0] == -4.0
    assert report.heldout_series(metrics, "reward_margin")[1][0] == 0.0, "no margin against itself"
    assert report.heldout_series(metrics, "exact_match")[1][0] == 0.05


def test_convergence_pairs_each_model_with_its_own_answers(run_dir: Path) -> None:
    rows = report.convergence_series(report.load_metrics(run_dir))
    assert rows == [
        {"model": "start", "logp_real": -12.0, "logp_own": -4.0},
        {"model": "iter0", "logp_real": -9.0, "logp_own": -5.0},  # iteration 1's opponent scores its own answers
        {"model": "iter1", "logp_real": -7.0, "logp_own": None},  # not generated yet
    ]


def test_index_html_is_self_contained_with_table_and_plots(run_dir: Path) -> None:
    summary = report.write_report(run_dir)
    out = summary.parent
    assert {p.name for p in out.iterdir()} >= {"summary.md", "index.html", "training.png", "heldout.png", "logps.png"}
    page = (out / "index.html").read_text()
    assert page.startswith("<!doctype html>") and "<table>" in page and "<td>start model</td>" in page
    images = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(images) == 3 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.findall(r'(?:src|href)="(?:https?:)?//', page), "nothing fetched from elsewhere"
    assert 'href="../iter-0/logs/train.log"' in page
    for png in ("training.png", "heldout.png", "logps.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = summary.read_text()
    assert "| start model |" in md and "![logps](logps.png)" in md


def test_report_of_a_run_without_metrics_has_only_the_page(tmp_path: Path) -> None:
    spec = {"metadata": {"name": "empty"}, "spec": {"model": {"builtin": "tiny-random-llama"}, "storage": {"newClaim": {}}}}
    rundir.init_run(tmp_path, SpinRun.model_validate(spec))
    out = report.write_report(tmp_path).parent
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "summary.md"]


def test_the_report_lists_every_scored_epoch_and_the_selected_one() -> None:
    from spin_runtime.report import epoch_table

    scores = [{"epoch": e, "reward_margin": m, "reward_accuracy": 0.5, "logp_real": -3.0, "exact_match": None}
              for e, m in ((1, 0.1), (2, 0.4), (3, 0.2))]
    lines = epoch_table({0: {"train": {"epoch_selection": {"scores": scores, "selected": 2, "select": "best"}}}, 1: {"train": {}}})
    body = [line for line in lines if line.startswith("| iter0")]
    assert len(body) == 3 and "**selected** (best)" in body[1] and "selected" not in body[0] + body[2]
    assert epoch_table({0: {"train": {}}}) == []
