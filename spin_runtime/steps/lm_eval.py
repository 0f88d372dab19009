"""Paper-style benchmark scores with lm-evaluation-harness (Open LLM Leaderboard shots): the
`lm_eval` command lines for a checkpoint (one per distinct shot count), running them, and
reading their results JSON into metrics.json's "lm_eval" section, with the harness version that
ran beside the one the spec expects (evaluation.lmEval.version; the paper's is v0.4.0) and a
warning when they differ.

lm-eval lives in its own environment (its dependencies conflict with the kubernetes client's):
the command is `$SPIN_LM_EVAL`, else the `lm_eval` beside this Python, else the one on PATH.
`make test` builds `.venv-lmeval` and runs the evaluate step with it on a local task.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spin_runtime.api.spec import LM_EVAL_PAPER_VERSION, LmEval
from spin_runtime.errors import SpecConfigError, SpinError

#: Environment variable naming the `lm_eval` executable (e.g. .venv-lmeval/bin/lm_eval).
EXECUTABLE_ENV = "SPIN_LM_EVAL"

#: The metric reported per task, in order of preference (the leaderboard's choice first).
PREFERRED_METRICS: tuple[str, ...] = (
    "acc_norm,none",
    "acc,none",
    "exact_match,strict-match",
    "exact_match,flexible-extract",
    "exact_match,none",
)

INSTALL_HINT = (
    "install lm-evaluation-harness in its own environment (`make lmeval` builds .venv-lmeval; its dependencies "
    "conflict with the kubernetes client's, so not `pip install 'spinrun[evaluate]'` beside the operator) and set "
    f"{EXECUTABLE_ENV} to its bin/lm_eval (or put it on PATH); the paper's tasks also need network access to "
    "download their datasets (or a filled HF_DATASETS_CACHE)"
)


class LmEvalError(SpinError):
    """lm-evaluation-harness failed or wrote no results (may be transient: its datasets download)."""


class LmEvalMissingError(LmEvalError, SpecConfigError):
    """The spec turns lm-eval on and this environment (image) has no harness: no retry can help."""


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
        if lm.include_path:
            cmd += ["--include_path", lm.include_path]
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
    """The `lm_eval` command: `$SPIN_LM_EVAL`, else the console script of this environment, else
    the one on PATH."""
    named = os.environ.get(EXECUTABLE_ENV)
    if named:
        found = shutil.which(named)
        if found is None:
            raise LmEvalMissingError(
                f"{EXECUTABLE_ENV}={named}: no such executable; point it at lm-eval's bin/lm_eval"
            )
        return found
    beside = Path(sys.executable).with_name("lm_eval")
    if beside.exists():
        return str(beside)
    return shutil.which("lm_eval")


def require_executable() -> str:
    """The `lm_eval` command, or the error that ends the step at once (exit 78: the spec turns
    lm-eval on and this environment cannot serve it; a retry would fail the same way)."""
    exe = find_executable()
    if exe is None:
        raise LmEvalMissingError(
            f"evaluation.lmEval.enabled needs the lm_eval command, and this environment has none: {INSTALL_HINT}; "
            "spinrun's trainer image carries it in /opt/lm-eval, or turn evaluation.lmEval off"
        )
    return exe


def installed_version(executable: str) -> str | None:
    """The lm-eval version of the environment an `lm_eval` script belongs to (asked of the
    Python beside it), None when it cannot tell."""
    python = Path(executable).with_name("python")
    if not python.exists():
        return None
    code = "import importlib.metadata as m; print(m.version('lm_eval'))"
    try:
        proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def version_info(version: str | None, expected: str | None) -> dict[str, Any]:
    """metrics.json's record of the harness version, and of the one the spec expects
    (evaluation.lmEval.version; the paper's is 0.4.0) with a warning when their releases differ
    (other harness versions give other numbers on the same tasks)."""
    info: dict[str, Any] = {"harness_version": version}
    if expected is None:
        return info
    info["expected_harness_version"] = expected
    paper = " (the paper's)" if _release(expected) == _release(LM_EVAL_PAPER_VERSION) else ""
    if version is None:
        info["version_warning"] = (
            f"the lm-eval version is unknown; evaluation.lmEval.version asks for v{expected}{paper}, and other "
            "versions give other numbers"
        )
    elif _release(version)[: len(_release(expected))] != _release(expected):  # 0.4 admits any 0.4.x
        info["version_warning"] = (
            f"lm-eval {version} is not v{expected}{paper} (evaluation.lmEval.version): its scores are not comparable "
            f"with that version's; install lm-eval=={expected} in the lm-eval environment to compare"
        )
    return info


def run_lm_eval(
    checkpoint: str | Path, lm: LmEval, output_dir: str | Path, *, dtype: str = "bfloat16", device: str | None = None
) -> dict[str, Any]:
    """Run lm-evaluation-harness on `checkpoint` and return the "lm_eval" metrics section (with
    the version record of `version_info`; its warning is also printed)."""
    exe = require_executable()
    version = installed_version(exe)
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
        data = json.loads(path.read_text(encoding="utf-8"))
        tasks.update(parse_results(data))
        version = version or (str(data["lm_eval_version"]) if data.get("lm_eval_version") else None)
    info = version_info(version, lm.version)
    if "version_warning" in info:
        print(f"spin evaluate: warning: {info['version_warning']}", file=sys.stderr, flush=True)
    return {**summarize(tasks, [t.name for t in lm.tasks]), **info, "executable": exe}
