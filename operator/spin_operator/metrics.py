"""Prometheus metrics of the operator: runs by phase, iterations, step durations, retries,
reconcile latency and API requests. Updated from status documents' transitions (old → new), so
a restarted operator does not count history twice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from spin_operator.kube.timestamps import parse_time
from spin_runtime.api.status import PHASES

RUNS = Gauge("spinrun_runs", "SpinRuns known to this operator, by phase.", ["phase"])
ITERATIONS = Counter("spinrun_iterations_completed_total", "SPIN iterations completed.")
STEP_SECONDS = Histogram(
    "spinrun_step_duration_seconds",
    "Wall time of a step from its Job's creation to its completion.",
    ["step"],
    buckets=(1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400),
)
RETRIES = Counter("spinrun_step_retries_total", "Failed step attempts that were retried.", ["step"])
RECONCILE_SECONDS = Histogram(
    "spinrun_reconcile_duration_seconds", "Time of one reconcile (read, decide, act, write status)."
)
RECONCILE_ERRORS = Counter("spinrun_reconcile_errors_total", "Reconciles that hit an API error.")
API_REQUESTS = Counter("spinrun_api_requests_total", "Kubernetes API requests made by the reconcile.", ["verb", "resource"])

_phases: dict[tuple[str, str], str] = {}


def _refresh_phases() -> None:
    counts = dict.fromkeys(PHASES, 0)
    for phase in _phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    for phase, n in counts.items():
        RUNS.labels(phase=phase).set(n)


def forget(key: tuple[str, str]) -> None:
    """A SpinRun was deleted."""
    _phases.pop(key, None)
    _refresh_phases()


def observe(key: tuple[str, str], old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Record what changed between two statuses of one run."""
    _phases[key] = str(new.get("phase") or "Pending")
    _refresh_phases()
    gained = int(new.get("completedIterations") or 0) - int(old.get("completedIterations") or 0)
    if gained > 0:
        ITERATIONS.inc(gained)
    before = {
        (it.get("iteration"), s.get("step")): s for it in old.get("iterations") or [] for s in it.get("steps") or []
    }
    for it in new.get("iterations") or []:
        for s in it.get("steps") or []:
            prev = before.get((it.get("iteration"), s.get("step")), {})
            step = str(s.get("step"))
            added = int(s.get("retries") or 0) - int(prev.get("retries") or 0)
            if added > 0:
                RETRIES.labels(step=step).inc(added)
            if s.get("completionTime") and not prev.get("completionTime"):
                start, end = parse_time(s.get("startTime")), parse_time(s.get("completionTime"))
                if start and end:
                    STEP_SECONDS.labels(step=step).observe(max((end - start).total_seconds(), 0.0))


def serve(port: int, addr: str = "0.0.0.0") -> Any:
    """Expose /metrics on addr:port from a daemon thread; 0 = disabled (returns None). Returns
    the HTTP server (`.shutdown()` stops it)."""
    if not port:
        return None
    server, _thread = start_http_server(port, addr=addr)
    return server
