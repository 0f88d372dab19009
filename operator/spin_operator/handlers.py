"""kopf registrations only: every trigger (a SpinRun created, resumed or changed, a resync
timer, an event of an owned Job) leads to `driver.reconcile_run`; kopf's indexes hold the
owned children; kopf's memo holds the per-process state."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from spin_operator import metrics
from spin_operator.builders.meta import LABEL_MANAGED_BY, LABEL_RUN, MANAGED_BY
from spin_operator.driver import Indexes, OperatorState, reconcile_run
from spin_operator.reconcile.conditions import is_terminal
from spin_runtime.api.spec import GROUP, PLURAL, VERSION

SPINRUNS = (GROUP, VERSION, PLURAL)
MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}
#: Seconds between periodic re-checks of each run (deadlines, TTLs, missed events).
RESYNC_SECONDS = float(os.environ.get("SPIN_RESYNC_SECONDS", "20"))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Our own annotation prefix for kopf's bookkeeping; only warnings as kopf's own events; a
    fresh per-process state (an operator restarted in the same process, as in tests, starts empty)."""
    memo.state = OperatorState()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "spin-operator"
    settings.watching.server_timeout = float(os.environ.get("SPIN_WATCH_TIMEOUT", "300"))
    settings.watching.client_timeout = settings.watching.server_timeout + 30


def _state(memo: Any) -> OperatorState:
    return memo.state  # type: ignore[no-any-return]


def _owner_key(namespace: str | None, labels: Mapping[str, str]) -> tuple[str, str] | None:
    run = labels.get(LABEL_RUN)
    return (namespace or "", run) if run else None


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
def spin_jobs(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
    key = _owner_key(namespace, labels)
    return {key: dict(body)} if key else {}


@kopf.index("", "v1", "configmaps", labels=MANAGED)
def spin_configmaps(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
    key = _owner_key(namespace, labels)
    return {key: dict(body)} if key else {}


@kopf.index("", "v1", "services", labels=MANAGED)
def spin_services(namespace: str, labels: Mapping[str, str], name: str, **_: Any) -> dict[Any, Any]:
    key = _owner_key(namespace, labels)
    return {key: {"metadata": {"name": name, "labels": dict(labels)}}} if key else {}


@kopf.index("", "v1", "persistentvolumeclaims", labels=MANAGED)
def spin_pvcs(namespace: str, labels: Mapping[str, str], name: str, **_: Any) -> dict[Any, Any]:
    key = _owner_key(namespace, labels)
    return {key: {"metadata": {"name": name, "labels": dict(labels)}}} if key else {}


def _indexes(kw: Mapping[str, Any]) -> Indexes:
    return Indexes(kw.get("spin_jobs"), kw.get("spin_configmaps"), kw.get("spin_services"), kw.get("spin_pvcs"))


# One handler per cause, each with its own id: kopf keys its progress annotations by handler
# id, and one function stacked under create/resume/update would register three handlers
# sharing one id.


@kopf.on.create(*SPINRUNS, id="spinrun-created")
async def spinrun_created(namespace: str, name: str, logger: Any, memo: Any, **kw: Any) -> None:
    """A SpinRun appeared."""
    await reconcile_run(namespace, name, _indexes(kw), _state(memo), logger)


@kopf.on.resume(*SPINRUNS, id="spinrun-resumed")
async def spinrun_resumed(namespace: str, name: str, logger: Any, memo: Any, **kw: Any) -> None:
    """The operator (re)started and found this SpinRun."""
    await reconcile_run(namespace, name, _indexes(kw), _state(memo), logger)


@kopf.on.update(*SPINRUNS, id="spinrun-updated", field="spec")
async def spinrun_updated(namespace: str, name: str, logger: Any, memo: Any, **kw: Any) -> None:
    """The spec changed (suspend, iterations, ...); metadata-only changes need no reconcile."""
    await reconcile_run(namespace, name, _indexes(kw), _state(memo), logger)


@kopf.timer(*SPINRUNS, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def spinrun_resync(
    namespace: str, name: str, status: Mapping[str, Any], spec: Mapping[str, Any], logger: Any, memo: Any, **kw: Any
) -> None:
    """Periodic re-check: deadlines, TTLs and anything a missed event left behind. Finished
    runs with nothing left to clean up are skipped."""
    if is_terminal(status):
        has_children = bool(list((kw.get("spin_jobs") or {}).get((namespace, name), [])))
        if spec.get("ttlSecondsAfterFinished") is None or not has_children:
            return
    await reconcile_run(namespace, name, _indexes(kw), _state(memo), logger)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def owned_job_event(
    namespace: str, labels: Mapping[str, str], logger: Any, body: kopf.Body, memo: Any, type: str | None = None, **kw: Any
) -> None:
    """A Job of a SpinRun changed: re-evaluate its owner (unless nothing it reads changed)."""
    key = _owner_key(namespace, labels)
    if key is None:
        return
    expectations = _state(memo).expectations
    # The watch has now shown this Job: its expectation is met. Settle it here, not at the
    # next reconcile, or a deletion that follows before any reconcile would stay masked.
    expectations.settle(key, str((body.get("metadata") or {}).get("name")))
    if not expectations.is_news(namespace, type, body):
        return
    await reconcile_run(key[0], key[1], _indexes(kw), _state(memo), logger)


@kopf.on.delete(*SPINRUNS, optional=True)
def spinrun_deleted(namespace: str, name: str, memo: Any, **_: Any) -> None:
    """Children go with the SpinRun through their ownerReferences; forget our state."""
    _state(memo).forget_run(namespace, name)
    metrics.forget((namespace, name))
