"""Paper-style benchmark scores with lm-evaluation-harness (Open LLM Leaderboard shots): the
`lm_eval` command lines for a checkpoint (one per distinct shot count), running them, and
reading their results JSON into metrics.json's "lm_eval" section.

The builders are pure; `run_lm_eval` needs the `lm-eval` package and network access for the
task datasets, so the test suite checks only the commands and the parsing.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spin_runtime.api.spec import LmEval
from spin_runtime.errors import SpinError

#: The metric reported per task, in order of preference (the leaderboard's choice first).
PREFERRED_METRICS: tuple[str, ...] = (
    "acc_norm,none",
    "acc,none",
    "exact_match,strict-match",
    "exact_match,flexible-extract",
    "exact_match,none",
)

INSTALL_HINT = (
    "install lm-evaluation-harness with `pip install 'spinrun[evaluate]'` (lm-eval>=0.4); it also needs "
    "network access to download the task datasets (or a filled HF_DATASETS_CACHE)"
)


class LmEvalError(SpinError):
    """lm-evaluation-harness is missing, failed, or wrote no results."""


def shots_groups(lm: LmEval) -> dict[int, list[str]]:
    """Task names grouped by number of shots (one lm_eval call per group), in first-seen order."""
    groups: dict[int, list[str]] = {}
    for task in lm.tasks:
        names = groups.setdefault(task.num_fewshot, [])
        if task.name not in names:
            names.append(task.name)
    return groups


def lm_eval_commands(
    checkpoint: str | Path,
    lm: LmEval,
    output_dir: str | Path,
    *,
    dtype: str = "bfloat16",
    device: str | None = None,
    executable: str = "lm_eval",
) -> list[list[str]]:
    """The `lm_eval --model hf ...` command lines (argument lists) evaluating `checkpoint`,
    one per distinct shot count, each writing under `<output_dir>/shots-<n>`."""
    ckpt = str(checkpoint)
    if "," in ckpt or "=" in ckpt:
        raise LmEvalError(f"{ckpt}: lm_eval's --model_args cannot carry a path with ',' or '=': move the run directory")
    if not lm.tasks:
        raise LmEvalError("evaluation.lmEval.tasks is empty: list at least one task or disable lmEval")
    commands: list[list[str]] = []
    for shots, names in shots_groups(lm).items():
        cmd = [
            executable,
            "--model",
            "hf",
            "--model_args",
            f"pretrained={ckpt},dtype={dtype}",
            "--tasks",
            ",".join(names),
            "--num_fewshot",
            str(shots),
            "--batch_size",
            lm.batch_size,
            "--output_path",
            str(Path(output_dir) / f"shots-{shots}"),
        ]
        if device:
            cmd += ["--device", device]
        if lm.limit is not None:
            cmd += ["--limit", str(lm.limit)]
        commands.append(cmd)
    return commands


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def parse_results(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-task metrics of one lm-eval results JSON: every numeric metric (names as lm-eval
    writes them, e.g. `acc_norm,none`), the shots used, and `score` (the preferred metric)."""
    results = data.get("results")
    if not isinstance(results, Mapping):
        raise LmEvalError("lm_eval results JSON has no 'results' object")
    shots = data.get("n-shot") or {}
    out: dict[str, dict[str, Any]] = {}
    for task, metrics in results.items():
        if not isinstance(metrics, Mapping):
            continue
        values = {name: v for name, raw in metrics.items() if (v := _number(raw)) is not None}
        entry: dict[str, Any] = {"metrics": values}
        if task in shots:
            entry["num_fewshot"] = shots[task]
        for name in PREFERRED_METRICS:
            if name in values:
                entry["score"] = values[name]
                entry["score_metric"] = name
                break
        out[task] = entry
    return out


def newest_results_file(folder: Path) -> Path:
    """The newest `results*.json` lm_eval wrote under `folder` (it adds a model sub-folder)."""
    found = sorted(Path(folder).rglob("results*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise LmEvalError(f"{folder}: lm_eval wrote no results*.json")
    return found[-1]


def summarize(tasks: Mapping[str, Mapping[str, Any]], wanted: list[str]) -> dict[str, Any]:
    """metrics.json's "lm_eval" section: per-task entries plus the mean score of the wanted tasks."""
    scores = [tasks[t]["score"] for t in wanted if t in tasks and "score" in tasks[t]]
    return {
        "tasks": dict(tasks),
        "average": sum(scores) / len(scores) if scores else None,
        "scored_tasks": len(scores),
    }


def find_executable() -> str | None:
    """The `lm_eval` console script of this environment, else the one on PATH."""
    beside = Path(sys.executable).with_name("lm_eval")
    if beside.exists():
        return str(beside)
    return shutil.which("lm_eval")


def run_lm_eval(
    checkpoint: str | Path, lm: LmEval, output_dir: str | Path, *, dtype: str = "bfloat16", device: str | None = None
) -> dict[str, Any]:
    """Run lm-evaluation-harness on `checkpoint` and return the "lm_eval" metrics section."""
    exe = find_executable()
    if exe is None:
        raise LmEvalError(f"evaluation.lmEval.enabled needs the lm_eval command: {INSTALL_HINT}")
    tasks: dict[str, dict[str, Any]] = {}
    for cmd, (shots, names) in zip(
        lm_eval_commands(checkpoint, lm, output_dir, dtype=dtype, device=device, executable=exe),
        shots_groups(lm).items(),
        strict=True,
    ):
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            raise LmEvalError(
                f"lm_eval exited with {proc.returncode} on tasks {', '.join(names)} ({shots}-shot); see its output "
                f"above ({INSTALL_HINT})"
            )
        path = newest_results_file(Path(output_dir) / f"shots-{shots}")
        tasks.update(parse_results(json.loads(path.read_text(encoding="utf-8"))))
    return summarize(tasks, [t.name for t in lm.tasks])
