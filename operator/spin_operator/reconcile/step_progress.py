"""The running step's live progress for the SpinRun status, from the records its pods serve:
generation shards done of n (and the running shards' prompts), training step of total, loss,
reward margin and ETA, evaluation's phase and counts. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from spin_operator.kube.objects import JobState, PodState
from spin_operator.kube.timestamps import rfc3339
from spin_runtime.api.status import TRAINING_STEPS, StepName, StepProgress
from spin_runtime.steps.step_progress import describe, eta_seconds, fmt_duration

SUMMARY_MAX = 256


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _count(value: Any) -> int | None:
    n = _number(value)
    return int(n) if n is not None and n >= 0 else None


def _text(value: Any, limit: int = 120) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def clean_record(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A served record with every field of the expected type (what a pod serves is not trusted:
    a wrong type becomes unknown, never an error)."""
    metrics = raw.get("metrics") if isinstance(raw.get("metrics"), Mapping) else {}
    rate = _number(raw.get("rate"))
    return {
        "step": _text(raw.get("step")) or "",
        "state": _text(raw.get("state"), 16) or "running",
        "phase": _text(raw.get("phase")),
        "unit": _text(raw.get("unit"), 32) or "",
        "done": _count(raw.get("done")),
        "total": _count(raw.get("total")),
        "rate": rate if rate is not None and rate > 0 else None,
        "started": _number(raw.get("started")),
        "phase_started": _number(raw.get("phase_started")),
        "updated": _number(raw.get("updated")),
        "summary": _text(raw.get("summary"), SUMMARY_MAX),
        "metrics": {str(n)[:32]: v for n, v in list(metrics.items())[:8] if _number(v) is not None},
    }


def _records_of(k: int, pods: Sequence[PodState], records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The records of this stage's unfinished pods that speak of iteration k (a pod still
    serving an older step's record is ignored), cleaned."""
    out = []
    for pod in sorted(pods, key=lambda p: p.name):
        record = records.get(pod.name)
        if isinstance(record, Mapping):
            record = clean_record(record)
            if record["step"].startswith(f"it{k}/"):
                out.append(record)
    return out


def _generation(reported: list[dict[str, Any]], shards_done: int, shards: int, now: float) -> tuple[dict[str, Any], float | None]:
    """One combined record for the running shards, and the stage's ETA: the slowest running
    shard, plus as many more shard-lengths as waves of shards still wait for a pod."""
    done = sum(_count(r.get("done")) or 0 for r in reported)
    total = sum(_count(r.get("total")) or 0 for r in reported)
    rate = sum(_number(r["metrics"].get("tok/s")) or 0.0 for r in reported)
    etas = [eta_seconds(r) for r in reported]
    eta: float | None = None
    if reported and all(e is not None for e in etas):
        eta = max(e for e in etas if e is not None)
        waiting = max(0, shards - shards_done - len(reported))
        if waiting:
            lengths = [(now - (r["started"] or now)) + (e or 0.0) for r, e in zip(reported, etas, strict=True)]
            eta += math.ceil(waiting / len(reported)) * max(lengths)
    combined: dict[str, Any] = {"state": "running", "unit": "prompts", "done": done if total else None, "total": total or None}
    if len(reported) == 1:
        combined = {**reported[0], "metrics": dict(reported[0].get("metrics") or {})}
    elif rate:
        combined["metrics"] = {"tok/s": rate}
    return combined, eta


def _describe(record: Mapping[str, Any], now: float) -> str:
    """The runtime's own one-line description, without its ETA (the stage's is a column)."""
    return describe({**record, "rate": None}, now)


def step_progress(
    k: int,
    step: StepName,
    job: JobState,
    pods: Sequence[PodState],
    records: Mapping[str, Mapping[str, Any]],
    *,
    shards: int,
    now: datetime,
) -> StepProgress | None:
    """What the running step reports, None when no pod of it has reported yet (and, for
    generation, no shard has finished)."""
    now_s = now.timestamp()
    reported = _records_of(k, pods, records)
    shards_done = min(job.succeeded, shards) if step == "generate" else None
    if not reported and not shards_done:
        return None
    eta: float | None
    if step == "generate":
        record, eta = _generation(reported, shards_done or 0, shards, now_s)
        head = f"shards {shards_done}/{shards}"
        line = f"{head} · {_describe(record, now_s)}" if reported else f"{head} · waiting for the next shard's pod"
    else:
        record = next((r for r in reported if r.get("total") is not None), reported[0])
        eta = eta_seconds(record) if not record.get("phase") else None
        line = _describe(record, now_s)
    metrics = record.get("metrics") or {}
    updated = [r["updated"] for r in reported if r["updated"] is not None]
    eta_s = int(round(eta)) if eta is not None and math.isfinite(eta) else None
    return StepProgress(
        iteration=k,
        step=step,
        unit=str(record.get("unit") or "")[:32],
        done=_count(record.get("done")),
        total=_count(record.get("total")),
        shards_done=shards_done,
        shards_total=shards if step == "generate" else None,
        loss=_number(metrics.get("loss")) if step in TRAINING_STEPS else None,
        margin=_number(metrics.get("margin")) if step == "train" else None,
        eta_seconds=eta_s,
        eta=fmt_duration(eta_s) if eta_s is not None else None,
        summary=line[:SUMMARY_MAX],
        updated=rfc3339(datetime.fromtimestamp(max(updated), timezone.utc)) if updated else None,
    )
