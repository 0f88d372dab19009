"""The operator's driver of one run: read the SpinRun, gather its children from kopf's indexes
(plus a launcher's custom resources), call the pure decision, execute its actions and write the
status (the only writer). Reconciles of one run are serialised by a per-run lock, and triggers
arriving while one waits are folded into it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from spin_operator import launchers, metrics
from spin_operator.kube import client
from spin_operator.kube.expectations import Expectations, RunKey
from spin_operator.kube.objects import JobState, Observed
from spin_operator.reconcile.actions import Create, Delete
from spin_operator.reconcile.decide import Decision, reconcile, spec_of
from spin_operator.settings import DeploymentSettings
from spin_runtime.api.load import SpecError

Logger = logging.Logger | logging.LoggerAdapter  # type: ignore[type-arg]


@dataclass
class RunLock:
    """Serialises reconciles of one run; `queued` folds triggers in while one waits."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: bool = False


@dataclass
class OperatorState:
    """What one operator process keeps between reconciles (kopf's memo carries it)."""

    locks: dict[RunKey, RunLock] = field(default_factory=dict)
    expectations: Expectations = field(default_factory=Expectations)

    def forget_run(self, namespace: str, name: str) -> None:
        self.locks.pop((namespace, name), None)
        self.expectations.forget_run(namespace, name)


@dataclass
class Indexes:
    """kopf's in-memory indexes of owned children, keyed by (namespace, run)."""

    jobs: Any
    config_maps: Any
    services: Any
    pvcs: Any

    def observed(
        self, key: RunKey, expectations: Expectations, launched: list[dict[str, Any]], served: bool | None
    ) -> Observed:
        def values(index: Any) -> list[dict[str, Any]]:
            return list(index.get(key, [])) if index is not None else []

        jobs = values(self.jobs)
        return Observed.from_objects(
            key[1],
            jobs=jobs + expectations.pending(key, jobs, time.monotonic()) + launched,
            config_maps=values(self.config_maps),
            services=values(self.services),
            pvcs=values(self.pvcs),
            launcher_served=served,
            read_state=launchers.read_state,
        )


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Merge patch turning `old` into `new` at the top level (removed keys become null)."""
    patch: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
    for k in old:
        if k not in new and k != "kopf":
            patch[k] = None
    return patch


async def reconcile_run(namespace: str, name: str, indexes: Indexes, state: OperatorState, logger: Logger) -> None:
    """Reconcile one run now, or fold this trigger into the reconcile already waiting."""
    run_lock = state.locks.setdefault((namespace, name), RunLock())
    if run_lock.queued:
        return
    run_lock.queued = True
    async with run_lock.lock:
        run_lock.queued = False
        started = time.perf_counter()
        try:
            await _reconcile_locked(namespace, name, indexes, state, logger)
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)


async def _observe_launched(namespace: str, name: str, body: Mapping[str, Any], settings: DeploymentSettings) -> tuple[bool | None, list[dict[str, Any]]]:
    """(launcher resource served?, its objects) for a spec whose launcher is a custom resource
    the deployment allows; (None, []) otherwise (an invalid spec included: the decision reports it)."""
    try:
        launcher = launchers.for_spec(spec_of(body))
    except SpecError:
        return None, []
    if not launchers.may_list(launcher, settings):
        return None, []
    return await asyncio.to_thread(client.list_launched, namespace, name, launcher)


async def _reconcile_locked(namespace: str, name: str, indexes: Indexes, state: OperatorState, logger: Logger) -> None:
    key = (namespace, name)
    try:
        body = await asyncio.to_thread(client.get_spinrun, namespace, name)
    except ApiException as e:  # 5xx/429 bursts: retry soon, not after kopf's 60 s default
        metrics.RECONCILE_ERRORS.inc()
        raise kopf.TemporaryError(f"reading SpinRun {namespace}/{name} failed: {e.status} {e.reason}", delay=2) from e
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    old_status = dict(body.get("status") or {})
    settings = DeploymentSettings.from_env()
    served, launched = await _observe_launched(namespace, name, body, settings)
    observed = indexes.observed(key, state.expectations, launched, served)
    decision = reconcile(body, observed, datetime.now(timezone.utc), settings)
    error: Exception | None = None
    for action in decision.actions:
        creates_job = isinstance(action, Create) and action.kind == "Job"
        if creates_job:
            # Expected before the call: its ADDED event may be handled before the call returns.
            state.expectations.expect(key, action.name, action.obj, time.monotonic())
        try:
            await asyncio.to_thread(client.execute, namespace, action)
            if creates_job:
                # Its ADDED event will bring nothing this reconcile did not already account for.
                state.expectations.record(namespace, action.name, JobState.from_job(action.obj))
            elif isinstance(action, Delete) and action.kind == "Job":
                state.expectations.settle(key, action.name)
        except ApiException as e:
            if creates_job:
                state.expectations.settle(key, action.name)
            error = e
            metrics.RECONCILE_ERRORS.inc()
            msg = f"{type(action).__name__.lower()} {action.kind} {action.name} failed: {e.status} {e.reason}: {(e.body or '')[:300]}"
            logger.warning(msg)
            decision.events.append(("Warning", "ApiError", msg))
            break
    await _write_status(namespace, name, body, old_status, decision, logger)
    if error is not None:
        raise kopf.TemporaryError(f"API error while reconciling {namespace}/{name}: {error}", delay=5)


async def _write_status(
    namespace: str, name: str, body: dict[str, Any], old: dict[str, Any], decision: Decision, logger: Logger
) -> None:
    new = decision.status_document()
    patch = status_patch(old, new)
    if patch:
        try:
            await asyncio.to_thread(client.patch_status, namespace, name, patch)
        except ApiException as e:
            if e.status == 404:
                return
            raise kopf.TemporaryError(f"status patch of {namespace}/{name} failed: {e.status} {e.reason}", delay=2) from e
        metrics.observe((namespace, name), old, new)
    for etype, reason, message in decision.events:
        kopf.event(body, type=etype, reason=reason, message=message)
        (logger.warning if etype == "Warning" else logger.info)(f"{reason}: {message}")
