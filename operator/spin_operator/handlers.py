"""kopf registrations only: every trigger (a SpinRun created, resumed or changed, an event of an
owned Job or pod) leads to `driver.reconcile_run`; kopf's indexes hold the owned children,
filtered by label on the API server; kopf's memo holds the per-process state. No timer and no
mandatory deletion handler: kopf puts no finalizer on SpinRuns (and removes an old one). The
deployment's settings are read once, when the operator starts, and kept in the memo's state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from spin_operator import metrics
from spin_operator.builders.meta import LABEL_MANAGED_BY, LABEL_RUN, MANAGED_BY
from spin_operator.driver import Indexes, OperatorState, reconcile_run
from spin_operator.kube import crd_identity, index_audit
from spin_operator.kube.expectations import attempt_of
from spin_operator.kube.objects import PodState
from spin_operator.settings import DeploymentSettings
from spin_runtime.api.spec import GROUP, PLURAL, VERSION

SPINRUNS = (GROUP, VERSION, PLURAL)
MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}
#: The label selector every child carries; sent to the API server on list/watch.
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
#: The child resources the operator watches (group, version, plural).
CHILD_RESOURCES = (
    ("batch", "v1", "jobs"),
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("", "v1", "persistentvolumeclaims"),
    ("", "v1", "pods"),
)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Our own annotation prefix for kopf's bookkeeping; only warnings as kopf's own events;
    children watched through a server-side label selector (unless the deployment turns it off);
    a fresh per-process state holding the deployment's settings (an operator restarted in the
    same process, as in tests, starts empty and reads them again)."""
    deployment = DeploymentSettings.from_env()
    memo.state = OperatorState.of(deployment)
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{GROUP}/finalizer"  # the name kopf removes from older runs
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "spin-operator"
    # whole seconds: the apiserver parses timeoutSeconds as an integer (300.0 is a 400 Bad Request)
    settings.watching.server_timeout = deployment.watch_timeout_seconds
    settings.watching.client_timeout = settings.watching.server_timeout + 30
    if deployment.server_side_filter:
        for resource in CHILD_RESOURCES:
            settings.watching.label_selectors[resource] = MANAGED_SELECTOR


@kopf.on.startup()
async def start_watchdogs(memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Two looks in the background that ask for a restart through the memo's `restart` (the
    `spin-operator` command starts kopf again in the same process; an operator embedded elsewhere
    only says what to do): the SpinRun CRD applied again (kube/crd_identity.py), and children kopf
    still indexes that the API no longer has (kube/index_audit.py)."""
    deployment = _state(memo).deployment

    def restart_for(why: str) -> None:
        restart = getattr(memo, "restart", None)
        logger.warning(f"{why}: {'restarting kopf' if restart else 'restart the operator'}.")
        if restart is not None:
            restart()

    def recreated(old: str | None, new: str) -> None:
        restart_for(f"The SpinRun CRD was applied again (uid {old} → {new}); kopf may no longer watch SpinRuns")

    def ghosts(found: frozenset[index_audit.Child]) -> None:
        listed = ", ".join(sorted(f"{resource} {namespace}/{uid}" for resource, namespace, uid in found))
        restart_for(f"kopf's indexes hold {len(found)} children the API no longer lists (deleted during a watch gap: {listed})")

    memo.watchdogs = []
    if deployment.crd_check_seconds > 0:
        memo.watchdogs.append(asyncio.create_task(crd_identity.watch(deployment.crd_check_seconds, recreated)))
    if deployment.index_audit_seconds > 0:
        memo.watchdogs.append(asyncio.create_task(index_audit.watch(
            deployment.index_audit_seconds, lambda: _state(memo).indexes, MANAGED_SELECTOR, ghosts)))


@kopf.on.cleanup()
def stop_timers(memo: kopf.Memo, **_: Any) -> None:
    """The operator stops: no scheduled look and no watchdog outlives it."""
    state = getattr(memo, "state", None)
    if state is not None:
        state.cancel_all()
    for task in getattr(memo, "watchdogs", ()):
        task.cancel()


def _state(memo: Any) -> OperatorState:
    return memo.state  # type: ignore[no-any-return]


def _owner_key(namespace: str | None, labels: Mapping[str, str]) -> tuple[str, str] | None:
    run = labels.get(LABEL_RUN)
    return (namespace or "", run) if run else None


def _brief(body: Mapping[str, Any], *status_keys: str) -> dict[str, Any]:
    """The part of an object the decision reads: name, labels, annotations, owners (+ status keys),
    and its uid (for the index audit)."""
    meta = body.get("metadata") or {}
    out: dict[str, Any] = {"metadata": {k: meta[k] for k in ("name", "uid", "labels", "annotations", "ownerReferences") if k in meta}}
    status = body.get("status") or {}
    if status_keys:
        out["status"] = {k: status[k] for k in status_keys if k in status}
    return out


#: The kopf indexes of the run's children, by the ids they are registered under and read back by
#: (kopf passes each index as the keyword argument named by its id), in Indexes' field order.
JOBS_INDEX, CONFIGMAPS_INDEX, SERVICES_INDEX, PVCS_INDEX, PODS_INDEX = INDEX_IDS = (
    "spin_jobs", "spin_configmaps", "spin_services", "spin_pvcs", "spin_pods"
)


@kopf.index("batch", "v1", "jobs", labels=MANAGED, id=JOBS_INDEX)
def spin_jobs(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
    key = _owner_key(namespace, labels)
    return {key: dict(body)} if key else {}


@kopf.index("", "v1", "configmaps", labels=MANAGED, id=CONFIGMAPS_INDEX)
def spin_configmaps(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
    key = _owner_key(namespace, labels)
    return {key: dict(body)} if key else {}


@kopf.index("", "v1", "services", labels=MANAGED, id=SERVICES_INDEX)
def spin_services(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
    key = _owner_key(namespace, labels)
    return {key: _brief(body)} if key else {}


@kopf.index("", "v1", "persistentvolumeclaims", labels=MANAGED, id=PVCS_INDEX)
def spin_pvcs(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
    key = _owner_key(namespace, labels)
    return {key: _brief(body, "phase")} if key else {}


@kopf.index("", "v1", "pods", labels=MANAGED, id=PODS_INDEX)
def spin_pods(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
    key = _owner_key(namespace, labels)
    return {key: PodState.from_pod(body)} if key else {}


def _indexes(kw: Mapping[str, Any]) -> Indexes:
    """The children indexes kopf passed a handler (a KeyError, not an empty index, if one is missing)."""
    return Indexes(*(kw[index_id] for index_id in INDEX_IDS))


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


@kopf.on.event(*SPINRUNS)
def spinrun_event(namespace: str, name: str, memo: Any, type: str | None = None, **_: Any) -> None:
    """A SpinRun was deleted: its children go with it through their ownerReferences (the claim
    stays unless deleteWithRun); forget our state. Other events reach the handlers above."""
    if type == "DELETED":
        _state(memo).forget_run(namespace, name)
        metrics.forget((namespace, name))


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
    expectations.settle(key, str((body.get("metadata") or {}).get("name")), attempt_of(body))
    if not expectations.is_news(namespace, type, body):
        return
    await reconcile_run(key[0], key[1], _indexes(kw), _state(memo), logger)


@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def owned_pod_event(
    namespace: str, labels: Mapping[str, str], logger: Any, body: kopf.Body, memo: Any, type: str | None = None, **kw: Any
) -> None:
    """A pod of a SpinRun changed in a way the decision reads (phase, why it cannot start)."""
    key = _owner_key(namespace, labels)
    if key is None or not _state(memo).expectations.pod_is_news(namespace, type, body):
        return
    await reconcile_run(key[0], key[1], _indexes(kw), _state(memo), logger)
