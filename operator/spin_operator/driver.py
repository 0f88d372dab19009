"""The operator's driver of one run: read the SpinRun, gather its children from kopf's indexes
(plus a launcher's custom resources), call the pure decision, execute its actions and write the
status (the only writer). Reconciles of one run are serialised by a per-run lock, triggers
arriving while one waits are folded into it, and the next look at a run (a deadline, a timeout,
a retry after an API error, the periodic resync) is scheduled here, in memory: no kopf timer,
so SpinRuns carry no finalizer and can be deleted with the operator gone. While a step's pods
serve their progress, each look polls it (kube/progress_poller.py) at most once per poll interval."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from spin_operator import executor, launchers, metrics
from spin_operator.kube import client
from spin_operator.kube.expectations import Expectations, RunKey
from spin_operator.kube.objects import JobState, Observed
from spin_operator.kube.progress_poller import ProgressPoller
from spin_operator.kube.timestamps import rfc3339
from spin_operator.reconcile.actions import Create, Delete
from spin_operator.reconcile.conditions import is_terminal, status_patch
from spin_operator.reconcile.decide import Decision, ParsedSpec, parse_spec, reconcile
from spin_operator.reconcile.refusals import Refusal, after_refusal, refusal_of
from spin_operator.settings import DeploymentSettings
from spin_runtime.api.load import SpecError

Logger = logging.Logger | logging.LoggerAdapter  # type: ignore[type-arg]
log = logging.getLogger("spin_operator")

#: Seconds before a reconcile that hit an API error runs again.
RETRY_SECONDS = 5.0
READ_RETRY_SECONDS = 2.0


@dataclass
class RunLock:
    """Serialises reconciles of one run; `queued` folds triggers in while one waits."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: bool = False


@dataclass
class OperatorState:
    """What one operator process keeps between reconciles (kopf's memo carries it): the
    deployment's settings, per-run locks, the expectations, the latest kopf indexes, each run's
    next scheduled look and the progress poller."""

    deployment: DeploymentSettings = field(default_factory=DeploymentSettings)
    locks: dict[RunKey, RunLock] = field(default_factory=dict)
    expectations: Expectations = field(default_factory=Expectations)
    indexes: Indexes | None = None
    timers: dict[RunKey, tuple[float, asyncio.TimerHandle]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    progress: ProgressPoller = field(default_factory=ProgressPoller)

    @classmethod
    def of(cls, deployment: DeploymentSettings) -> OperatorState:
        """A fresh state for an operator deployed with these settings."""
        return cls(deployment=deployment, progress=ProgressPoller(interval=deployment.progress_seconds))

    def schedule(self, key: RunKey, delay: float, start: Callable[[], Awaitable[None]]) -> None:
        """Look at the run again in `delay` seconds, unless a look is due sooner already."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(delay, 0.0)
        current = self.timers.get(key)
        if current is not None and not current[1].cancelled() and current[0] <= when:
            return
        self.cancel(key)
        self.timers[key] = (when, loop.call_at(when, self._fire, key, start))

    def _fire(self, key: RunKey, start: Callable[[], Awaitable[None]]) -> None:
        self.timers.pop(key, None)
        task = asyncio.ensure_future(start())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def cancel(self, key: RunKey) -> None:
        entry = self.timers.pop(key, None)
        if entry is not None:
            entry[1].cancel()

    def cancel_all(self) -> None:
        for key in list(self.timers):
            self.cancel(key)
        for task in list(self.tasks):
            task.cancel()

    def forget_run(self, namespace: str, name: str) -> None:
        self.cancel((namespace, name))
        self.locks.pop((namespace, name), None)
        self.expectations.forget_run(namespace, name)
        self.progress.forget((namespace, name))


@dataclass
class Indexes:
    """kopf's in-memory indexes of owned children, keyed by (namespace, run)."""

    jobs: Any
    config_maps: Any
    services: Any
    pvcs: Any
    pods: Any = None

    def observed(
        self, key: RunKey, uid: str, expectations: Expectations, launched: list[dict[str, Any]], served: bool | None
    ) -> Observed:
        def values(index: Any) -> list[Any]:
            return list(index.get(key, [])) if index is not None else []

        jobs = values(self.jobs)
        return Observed.from_objects(
            key[1],
            uid=uid or None,
            jobs=jobs + expectations.pending(key, jobs, time.monotonic()) + launched,
            config_maps=values(self.config_maps),
            services=values(self.services),
            pvcs=values(self.pvcs),
            pods=values(self.pods),
            launcher_served=served,
            read_state=launchers.read_state,
        )


def _planned_iterations(spec: ParsedSpec) -> int | None:
    """How many iterations the run will run (None when its spec is invalid)."""
    if isinstance(spec, SpecError):
        return None
    return spec.iterations - spec.start_iteration


async def reconcile_run(namespace: str, name: str, indexes: Indexes, state: OperatorState, logger: Logger) -> None:
    """Reconcile one run now, or fold this trigger into the reconcile already waiting; then
    schedule the next look at it."""
    state.indexes = indexes
    run_lock = state.locks.setdefault((namespace, name), RunLock())
    if run_lock.queued:
        return
    run_lock.queued = True
    async with run_lock.lock:
        run_lock.queued = False
        started = time.perf_counter()
        try:
            next_look = await _reconcile_locked(namespace, name, indexes, state, logger)
        except Exception:
            logger.exception(f"reconciling {namespace}/{name} failed; retrying in {RETRY_SECONDS:.0f}s")
            next_look = RETRY_SECONDS
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
    key = (namespace, name)
    if next_look is None:
        state.cancel(key)
    else:
        state.schedule(key, next_look, lambda: _scheduled(namespace, name, state))


async def _scheduled(namespace: str, name: str, state: OperatorState) -> None:
    if state.indexes is not None:
        await reconcile_run(namespace, name, state.indexes, state, log)


def next_look(decision: Decision, resync_seconds: float) -> float | None:
    """When to look at the run again without an event: what the decision asked for, at the
    latest after `resync_seconds` (the deployment's) while it runs; a finished run only for its TTL."""
    if is_terminal(decision.status):
        return decision.requeue_after
    return min(decision.requeue_after or resync_seconds, resync_seconds)


async def _observe_launched(
    namespace: str, name: str, spec: ParsedSpec, settings: DeploymentSettings
) -> tuple[bool | None, list[dict[str, Any]]]:
    """(launcher resource served?, its objects) for a spec whose launcher is a custom resource
    the deployment allows; (None, []) otherwise (an invalid spec included: the decision reports it)."""
    if isinstance(spec, SpecError):
        return None, []
    launcher = launchers.for_spec(spec)
    if not launchers.may_list(launcher, settings):
        return None, []
    return await asyncio.to_thread(executor.list_launched, namespace, name, launcher)


async def _reconcile_locked(
    namespace: str, name: str, indexes: Indexes, state: OperatorState, logger: Logger
) -> float | None:
    """One reconcile; returns when to look again (None: not until an event)."""
    key = (namespace, name)
    try:
        body = await asyncio.to_thread(client.get_spinrun, namespace, name)
    except ApiException as e:  # 5xx/429 bursts: retry soon
        metrics.RECONCILE_ERRORS.inc()
        logger.warning(f"reading SpinRun {namespace}/{name} failed: {e.status} {e.reason}; retrying in {READ_RETRY_SECONDS:.0f}s")
        return READ_RETRY_SECONDS
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        state.forget_run(namespace, name)
        return None
    old_status = dict(body.get("status") or {})
    settings = state.deployment
    spec = parse_spec(body)  # once: the launcher, the decision and the metrics read this result
    served, launched = await _observe_launched(namespace, name, spec, settings)
    uid = str((body.get("metadata") or {}).get("uid") or "")
    observed = indexes.observed(key, uid, state.expectations, launched, served)
    reporting = [p for p in observed.pods if p.serves_progress]
    if reporting:
        observed = dataclasses.replace(observed, progress=await state.progress.records(key, reporting))
    now = datetime.now(timezone.utc)
    decision = reconcile(body, observed, now, settings, spec=spec)
    refusal: Refusal | None = None
    for action in decision.actions:
        creates_job = isinstance(action, Create) and action.kind == "Job"
        if creates_job:
            # Expected before the call: its ADDED event may be handled before the call returns.
            state.expectations.expect(key, action.name, action.obj, time.monotonic())
        try:
            await asyncio.to_thread(executor.execute, namespace, action)
            if creates_job:
                # Its ADDED event will bring nothing this reconcile did not already account for.
                state.expectations.record(namespace, action.name, JobState.from_job(action.obj))
            elif isinstance(action, Delete) and action.kind == "Job":
                state.expectations.settle(key, action.name)
        except ApiException as e:
            if creates_job:
                state.expectations.settle(key, action.name)
            metrics.RECONCILE_ERRORS.inc()
            refusal = refusal_of(int(e.status or 0), str(e.reason or ""), e.body)
            logger.warning(f"{type(action).__name__.lower()} {action.kind} {action.name} failed: {refusal.code} {refusal.reason}: {refusal.message}")
            generation = int((body.get("metadata") or {}).get("generation") or 0)
            decision = after_refusal(decision, action, refusal, old_status, rfc3339(now), generation)
            break
    if not await _write_status(namespace, name, body, old_status, decision, logger):
        return READ_RETRY_SECONDS
    metrics.record(key, decision.status_document(), _planned_iterations(spec))
    if refusal is not None and not is_terminal(decision.status):
        return RETRY_SECONDS
    look = next_look(decision, settings.resync_seconds)
    if reporting and state.progress.enabled and look is not None:  # a step reports progress: poll it again
        look = min(look, state.progress.interval)
    return look


async def _write_status(
    namespace: str, name: str, body: dict[str, Any], old: dict[str, Any], decision: Decision, logger: Logger
) -> bool:
    """Patch the status and post the events; False when the patch failed (retry soon)."""
    new = decision.status_document()
    patch = status_patch(old, new)
    if patch:
        try:
            await asyncio.to_thread(client.patch_status, namespace, name, patch)
        except ApiException as e:
            if e.status == 404:
                return True
            metrics.RECONCILE_ERRORS.inc()
            logger.warning(f"status patch of {namespace}/{name} failed: {e.status} {e.reason}; retrying")
            return False
        metrics.observe((namespace, name), old, new)
    for etype, reason, message in decision.events:
        kopf.event(body, type=etype, reason=reason, message=message)
        (logger.warning if etype == "Warning" else logger.info)(f"{reason}: {message}")
    return True
