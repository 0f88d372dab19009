"""Prometheus metrics of the operator: runs by namespace and phase (rebuilt from the cluster on
every start: each run's first reconcile records its phase), iterations, per-run progress, the
running step's progress (share done, ETA, loss, reward margin), step durations, retries, reconcile latency and API requests. Counters follow status transitions
(old → new), so a restarted operator does not count history twice."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from spin_operator.kube.timestamps import parse_time
from spin_runtime.api.status import PHASES

RUNS = Gauge("spinrun_runs", "SpinRuns known to this operator, by namespace and phase.", ["namespace", "phase"])
ITERATIONS = Counter("spinrun_iterations_completed_total", "SPIN iterations completed.", ["namespace"])
RUN_ITERATIONS_DONE = Gauge(
    "spinrun_run_completed_iterations", "Iterations a run has completed (its training progress).", ["namespace", "run"]
)
RUN_ITERATIONS_PLANNED = Gauge("spinrun_run_planned_iterations", "Iterations a run will run in total.", ["namespace", "run"])
STEP_DONE = Gauge(
    "spinrun_step_progress_ratio",
    "Share of the running step's work done, as its pods report it (shards' prompts, training steps).",
    ["namespace", "run", "step"],
)
STEP_ETA = Gauge("spinrun_step_eta_seconds", "Seconds left in the running step at its current rate.", ["namespace", "run", "step"])
TRAIN_LOSS = Gauge("spinrun_train_loss", "Training loss at the running training step's last logged step.", ["namespace", "run"])
TRAIN_MARGIN = Gauge(
    "spinrun_train_reward_margin", "Reward margin (chosen − rejected) at the last logged training step.", ["namespace", "run"]
)
STEP_SECONDS = Histogram(
    "spinrun_step_duration_seconds",
    "Wall time of a step from its Job's creation to its completion.",
    ["namespace", "step"],
    buckets=(1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400),
)
RETRIES = Counter("spinrun_step_retries_total", "Failed step attempts that were retried.", ["namespace", "step"])
RECONCILE_SECONDS = Histogram(
    "spinrun_reconcile_duration_seconds", "Time of one reconcile (read, decide, act, write status)."
)
RECONCILE_ERRORS = Counter("spinrun_reconcile_errors_total", "Reconciles that hit an API error.")
API_REQUESTS = Counter("spinrun_api_requests_total", "Kubernetes API requests made by the reconcile.", ["verb", "resource"])

#: (namespace, run) → phase, of every run this process has reconciled
_phases: dict[tuple[str, str], str] = {}
#: every namespace that had a run (its counts drop to 0 rather than vanish)
_namespaces: set[str] = set()
#: (namespace, run) → the live-progress series set for it (gauge, label values)
_live: dict[tuple[str, str], list[tuple[Gauge, tuple[str, ...]]]] = {}


def _refresh_phases() -> None:
    _namespaces.update(namespace for namespace, _ in _phases)
    counts = {(namespace, p): 0 for namespace in _namespaces for p in PHASES}
    for (namespace, _), phase in _phases.items():
        counts[(namespace, phase)] = counts.get((namespace, phase), 0) + 1
    for (namespace, phase), n in counts.items():
        RUNS.labels(namespace=namespace, phase=phase).set(n)


def forget(key: tuple[str, str]) -> None:
    """A SpinRun was deleted."""
    _phases.pop(key, None)
    _refresh_phases()
    for gauge in (RUN_ITERATIONS_DONE, RUN_ITERATIONS_PLANNED):
        with contextlib.suppress(KeyError):
            gauge.remove(*key)
    _clear_live(key)


def _clear_live(key: tuple[str, str]) -> None:
    for gauge, labels in _live.pop(key, []):
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)


def _set_live(key: tuple[str, str], gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
    gauge.labels(*labels).set(value)
    _live.setdefault(key, []).append((gauge, labels))


def _record_live(key: tuple[str, str], progress: Mapping[str, Any] | None) -> None:
    """The running step's progress gauges (only the current step's series exist)."""
    _clear_live(key)
    if not progress:
        return
    step = str(progress.get("step") or "")
    done, total = progress.get("done"), progress.get("total")
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        _set_live(key, STEP_DONE, (*key, step), min(done / total, 1.0))
    if isinstance(progress.get("etaSeconds"), int):
        _set_live(key, STEP_ETA, (*key, step), progress["etaSeconds"])
    for gauge, name in ((TRAIN_LOSS, "loss"), (TRAIN_MARGIN, "margin")):
        if isinstance(progress.get(name), (int, float)):
            _set_live(key, gauge, key, progress[name])


def record(key: tuple[str, str], status: Mapping[str, Any], planned: int | None) -> None:
    """The run's phase and progress as its latest reconcile sees them (after every reconcile, not
    only on changes, so that a restarted operator shows every run, finished ones included)."""
    _phases[key] = str(status.get("phase") or "Pending")
    _refresh_phases()
    RUN_ITERATIONS_DONE.labels(*key).set(int(status.get("completedIterations") or 0))
    if planned is not None:
        RUN_ITERATIONS_PLANNED.labels(*key).set(planned)
    _record_live(key, status.get("progress"))


def observe(key: tuple[str, str], old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Record what changed between two statuses of one run."""
    _phases[key] = str(new.get("phase") or "Pending")
    _refresh_phases()
    namespace = key[0]
    gained = int(new.get("completedIterations") or 0) - int(old.get("completedIterations") or 0)
    if gained > 0:
        ITERATIONS.labels(namespace=namespace).inc(gained)
    before = {
        (it.get("iteration"), s.get("step")): s for it in old.get("iterations") or [] for s in it.get("steps") or []
    }
    for it in new.get("iterations") or []:
        for s in it.get("steps") or []:
            prev = before.get((it.get("iteration"), s.get("step")), {})
            step = str(s.get("step"))
            added = int(s.get("retries") or 0) - int(prev.get("retries") or 0)
            if added > 0:
                RETRIES.labels(namespace=namespace, step=step).inc(added)
            if s.get("completionTime") and not prev.get("completionTime"):
                start, end = parse_time(s.get("startTime")), parse_time(s.get("completionTime"))
                if start and end:
                    STEP_SECONDS.labels(namespace=namespace, step=step).observe(max((end - start).total_seconds(), 0.0))


def serve(port: int, addr: str = "0.0.0.0") -> Any:
    """Expose /metrics on addr:port from a daemon thread; 0 = disabled (returns None). Returns
    the HTTP server (`.shutdown()` stops it)."""
    if not port:
        return None
    server, _thread = start_http_server(port, addr=addr)
    return server
