"""kopf wiring: every trigger (SpinRun create/resume/update, a resync timer, events of owned
Jobs) leads to `reconcile_run`, which reads the SpinRun, gathers its children from kopf's
in-memory indexes, calls the pure `reconcile`, executes the actions with the kubernetes
client and writes the status (the only writer). Reconciles of one run are serialised by a
per-run lock, and triggers arriving while one waits are coalesced into it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from spin_operator import metrics
from spin_operator import resources as res
from spin_operator.reconcile import Create, Decision, Delete, JobState, Observed, PatchJob, is_terminal, reconcile
from spin_operator.resources_training import PYTORCHJOB_GROUP, PYTORCHJOB_KIND, PYTORCHJOB_PLURAL
from spin_runtime.api.spec import GROUP, PLURAL, VERSION

SPINRUNS = (GROUP, VERSION, PLURAL)
MANAGED = {res.LABEL_MANAGED_BY: res.MANAGED_BY}
#: Seconds between periodic re-checks of each run (deadlines, TTLs, missed events).
RESYNC_SECONDS = float(os.environ.get("SPIN_RESYNC_SECONDS", "20"))
USER_AGENT = "spin-operator/0.1"

log = logging.getLogger("spin_operator")

# --------------------------------------------------------------------------- API access


_api: client.ApiClient | None = None


def api_client() -> client.ApiClient:
    """The operator's kubernetes client (in-cluster config, else the kubeconfig)."""
    global _api
    if _api is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        cfg = client.Configuration.get_default_copy()
        cfg.connection_pool_maxsize = 32
        api = client.ApiClient(cfg)
        api.user_agent = USER_AGENT
        # kubernetes.client imports its API modules lazily, ~1 s of CPU under the GIL on the
        # first reconcile (every handler stalls behind it): import them now, at start-up.
        _ = (client.BatchV1Api, client.CoreV1Api, client.CustomObjectsApi)
        _api = api
    return _api


def reset_api_client() -> None:
    """Forget the cached client (tests point the operator at a new server)."""
    global _api
    _api = None


def _count(verb: str, resource: str) -> None:
    metrics.API_REQUESTS.labels(verb=verb, resource=resource).inc()


def get_spinrun(namespace: str, name: str) -> dict[str, Any] | None:
    _count("get", "spinruns")
    try:
        obj = client.CustomObjectsApi(api_client()).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return dict(obj)


def patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    _count("patch", "spinruns/status")
    client.CustomObjectsApi(api_client()).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _content_type="application/merge-patch+json"
    )


def list_pytorchjobs(namespace: str, run: str) -> tuple[bool, list[dict[str, Any]]]:
    """(CRD served?, this run's PyTorchJobs)."""
    _count("list", "pytorchjobs")
    try:
        out = client.CustomObjectsApi(api_client()).list_namespaced_custom_object(
            PYTORCHJOB_GROUP, "v1", namespace, PYTORCHJOB_PLURAL, label_selector=f"{res.LABEL_RUN}={run}"
        )
    except ApiException as e:
        if e.status == 404:
            return False, []
        raise
    return True, list(out.get("items") or [])


_PLURALS = {"Job": "jobs", "ConfigMap": "configmaps", "Service": "services", "PersistentVolumeClaim": "persistentvolumeclaims",
            PYTORCHJOB_KIND: "pytorchjobs"}


def execute(namespace: str, action: Create | Delete | PatchJob) -> None:
    """Run one action; 409 on create and 404 on delete/patch count as done."""
    api = api_client()
    batch, core, custom = client.BatchV1Api(api), client.CoreV1Api(api), client.CustomObjectsApi(api)
    try:
        if isinstance(action, Create):
            obj, kind = action.obj, action.kind
            _count("create", _PLURALS[kind])
            if kind == "Job":
                batch.create_namespaced_job(namespace, obj, _preload_content=False)
            elif kind == "ConfigMap":
                core.create_namespaced_config_map(namespace, obj, _preload_content=False)
            elif kind == "Service":
                core.create_namespaced_service(namespace, obj, _preload_content=False)
            elif kind == "PersistentVolumeClaim":
                core.create_namespaced_persistent_volume_claim(namespace, obj, _preload_content=False)
            elif kind == PYTORCHJOB_KIND:
                custom.create_namespaced_custom_object(PYTORCHJOB_GROUP, "v1", namespace, PYTORCHJOB_PLURAL, obj)
            else:
                raise ValueError(f"no create for kind {kind}")
        elif isinstance(action, Delete):
            _count("delete", _PLURALS[action.kind])
            opts = client.V1DeleteOptions(propagation_policy="Background")
            if action.kind == "Job":
                batch.delete_namespaced_job(action.name, namespace, body=opts, _preload_content=False)
            elif action.kind == "Service":
                core.delete_namespaced_service(action.name, namespace, body=opts, _preload_content=False)
            elif action.kind == PYTORCHJOB_KIND:
                custom.delete_namespaced_custom_object(PYTORCHJOB_GROUP, "v1", namespace, PYTORCHJOB_PLURAL, action.name, body=opts)
            else:
                raise ValueError(f"no delete for kind {action.kind}")
        else:
            _count("patch", _PLURALS[action.kind])
            if action.kind == PYTORCHJOB_KIND:
                custom.patch_namespaced_custom_object(
                    PYTORCHJOB_GROUP, "v1", namespace, PYTORCHJOB_PLURAL, action.name, action.patch(),
                    _content_type="application/merge-patch+json",
                )
            else:
                batch.patch_namespaced_job(
                    action.name, namespace, action.patch(), _content_type="application/merge-patch+json",
                    _preload_content=False,
                )
    except ApiException as e:
        if isinstance(action, Create) and e.status == 409:
            return
        if not isinstance(action, Create) and e.status == 404:
            return
        raise


# --------------------------------------------------------------------------- per-run state


@dataclass
class RunState:
    """Serialises reconciles of one run; `queued` coalesces triggers while one waits."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: bool = False


_runs: dict[tuple[str, str], RunState] = {}

#: The last state of each owned Job that led to (or came from) a reconcile, keyed by
#: (namespace, job name): Job events that change nothing the reconcile reads are dropped.
_job_seen: dict[tuple[str, str], JobState] = {}

#: Jobs this operator created that kopf's index has not shown yet ("expectations", as
#: Kubernetes controllers keep them), keyed by (namespace, run) → job name → (time, body).
#: Under load the index lags behind the API server; without these a reconcile in that gap
#: would create the same Job again (answered 409) and announce its step twice.
_expected_jobs: dict[tuple[str, str], dict[str, tuple[float, dict[str, Any]]]] = {}
EXPECTATION_TTL_SECONDS = 300.0


def pending_created_jobs(key: tuple[str, str], indexed: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Jobs created by this process and not yet in the index (expired ones are forgotten)."""
    expected = _expected_jobs.get(key)
    if not expected:
        return []
    seen = {(j.get("metadata") or {}).get("name") for j in indexed}
    for job_name, (created, _) in list(expected.items()):
        if job_name in seen or now - created > EXPECTATION_TTL_SECONDS:
            del expected[job_name]
    return [body for _, body in expected.values()]


def settle_expectation(key: tuple[str, str], job_name: str) -> None:
    """The watch showed `job_name` (created, changed or deleted): stop expecting it."""
    expected = _expected_jobs.get(key)
    if expected is not None:
        expected.pop(job_name, None)
        if not expected:
            del _expected_jobs[key]


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Merge patch turning `old` into `new` at the top level (removed keys become null)."""
    patch: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
    for k in old:
        if k not in new and k != "kopf":
            patch[k] = None
    return patch


@dataclass
class Indexes:
    """kopf's in-memory indexes of owned children, keyed by (namespace, run)."""

    jobs: Any
    config_maps: Any
    services: Any
    pvcs: Any

    def observed(self, namespace: str, name: str, extra_jobs: list[dict[str, Any]], crd: bool | None) -> Observed:
        key = (namespace, name)

        def values(index: Any) -> list[dict[str, Any]]:
            return list(index.get(key, [])) if index is not None else []

        jobs = values(self.jobs)
        return Observed.from_objects(
            name,
            jobs=jobs + pending_created_jobs(key, jobs, time.monotonic()) + extra_jobs,
            config_maps=values(self.config_maps),
            services=values(self.services),
            pvcs=values(self.pvcs),
            pytorchjob_crd=crd,
        )


async def reconcile_run(namespace: str, name: str, indexes: Indexes, logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Reconcile one run now, or fold this trigger into the reconcile already waiting."""
    state = _runs.setdefault((namespace, name), RunState())
    if state.queued:
        return
    state.queued = True
    async with state.lock:
        state.queued = False
        started = time.perf_counter()
        try:
            await _reconcile_locked(namespace, name, indexes, logger)
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)


async def _reconcile_locked(namespace: str, name: str, indexes: Indexes, logger: logging.Logger | logging.LoggerAdapter) -> None:
    try:
        body = await asyncio.to_thread(get_spinrun, namespace, name)
    except ApiException as e:  # 5xx/429 bursts: retry soon, not after kopf's 60 s default
        metrics.RECONCILE_ERRORS.inc()
        raise kopf.TemporaryError(f"reading SpinRun {namespace}/{name} failed: {e.status} {e.reason}", delay=2) from e
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    old_status = dict(body.get("status") or {})
    defaults = res.OperatorDefaults.from_env()
    crd: bool | None = None
    extra: list[dict[str, Any]] = []
    launcher = ((body.get("spec") or {}).get("training") or {}).get("launcher")
    if launcher == "pytorchjob" and defaults.pytorchjob_enabled is not False:  # disabled: no RBAC to list them
        crd, extra = await asyncio.to_thread(list_pytorchjobs, namespace, name)
    observed = indexes.observed(namespace, name, extra, crd)
    decision = reconcile(body, observed, datetime.now(timezone.utc), defaults)
    error: Exception | None = None
    for action in decision.actions:
        creates_job = isinstance(action, Create) and action.kind == "Job"
        if creates_job:
            # Expected before the call: its ADDED event may be handled before the call returns.
            _expected_jobs.setdefault((namespace, name), {})[action.name] = (time.monotonic(), action.obj)
        try:
            await asyncio.to_thread(execute, namespace, action)
            if creates_job:
                # Its ADDED event will bring nothing this reconcile did not already account for.
                _job_seen[(namespace, action.name)] = JobState.from_object(action.obj)
            elif isinstance(action, Delete) and action.kind == "Job":
                settle_expectation((namespace, name), action.name)
        except ApiException as e:
            if creates_job:
                settle_expectation((namespace, name), action.name)
            error = e
            metrics.RECONCILE_ERRORS.inc()
            what = f"{type(action).__name__.lower()} {getattr(action, 'kind', 'Job')} {action.name}"
            msg = f"{what} failed: {e.status} {e.reason}: {(e.body or '')[:300]}"
            logger.warning(msg)
            decision.events.append(("Warning", "ApiError", msg))
            break
    await _write_status(namespace, name, body, old_status, decision, logger)
    if error is not None:
        raise kopf.TemporaryError(f"API error while reconciling {namespace}/{name}: {error}", delay=5)


async def _write_status(
    namespace: str, name: str, body: dict[str, Any], old: dict[str, Any], decision: Decision, logger: Any
) -> None:
    patch = status_patch(old, decision.status)
    if patch:
        try:
            await asyncio.to_thread(patch_status, namespace, name, patch)
        except ApiException as e:
            if e.status == 404:
                return
            raise kopf.TemporaryError(f"status patch of {namespace}/{name} failed: {e.status} {e.reason}", delay=2) from e
        metrics.observe((namespace, name), old, decision.status)
    for etype, reason, message in decision.events:
        kopf.event(body, type=etype, reason=reason, message=message)
        (logger.warning if etype == "Warning" else logger.info)(f"{reason}: {message}")


# --------------------------------------------------------------------------- kopf registrations


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Our own annotation prefix for kopf's bookkeeping; only warnings as kopf's own events.
    Per-process state starts empty (an operator restarted in the same process, as in tests)."""
    _runs.clear()
    _job_seen.clear()
    _expected_jobs.clear()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "spin-operator"
    settings.watching.server_timeout = float(os.environ.get("SPIN_WATCH_TIMEOUT", "300"))
    settings.watching.client_timeout = settings.watching.server_timeout + 30


def _owner_key(namespace: str | None, labels: Mapping[str, str]) -> tuple[str, str] | None:
    run = labels.get(res.LABEL_RUN)
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
# id, and one function stacked under create/resume/update registers three handlers sharing
# the id "spinrun_changed".


@kopf.on.create(*SPINRUNS, id="spinrun-created")
async def spinrun_created(namespace: str, name: str, logger: Any, **kw: Any) -> None:
    """A SpinRun appeared."""
    await reconcile_run(namespace, name, _indexes(kw), logger)


@kopf.on.resume(*SPINRUNS, id="spinrun-resumed")
async def spinrun_resumed(namespace: str, name: str, logger: Any, **kw: Any) -> None:
    """The operator (re)started and found this SpinRun."""
    await reconcile_run(namespace, name, _indexes(kw), logger)


@kopf.on.update(*SPINRUNS, id="spinrun-updated", field="spec")
async def spinrun_updated(namespace: str, name: str, logger: Any, **kw: Any) -> None:
    """The spec changed (suspend, iterations, ...); metadata-only changes need no reconcile."""
    await reconcile_run(namespace, name, _indexes(kw), logger)


#: Kept for callers of the old single handler.
spinrun_changed = spinrun_updated


@kopf.timer(*SPINRUNS, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def spinrun_resync(namespace: str, name: str, status: Mapping[str, Any], spec: Mapping[str, Any], logger: Any, **kw: Any) -> None:
    """Periodic re-check: deadlines, TTLs and anything a missed event left behind. Finished
    runs with nothing left to clean up are skipped."""
    if is_terminal(status):
        has_children = bool(list((kw.get("spin_jobs") or {}).get((namespace, name), [])))
        if spec.get("ttlSecondsAfterFinished") is None or not has_children:
            return
    await reconcile_run(namespace, name, _indexes(kw), logger)


def job_event_is_news(namespace: str, event_type: str | None, body: Mapping[str, Any]) -> bool:
    """Whether a Job event may change a reconcile's outcome: a deletion, or a state (conditions,
    counts, suspension, attempt, ...) other than the one last seen for that Job. The echo of a
    Job we just created, and status updates that change nothing we read, are dropped."""
    key = (namespace, str((body.get("metadata") or {}).get("name")))
    if event_type == "DELETED":
        _job_seen.pop(key, None)
        return True
    state = JobState.from_object(body)
    if _job_seen.get(key) == state:
        return False
    _job_seen[key] = state
    return True


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def owned_job_event(
    namespace: str, labels: Mapping[str, str], logger: Any, body: kopf.Body, type: str | None = None, **kw: Any
) -> None:
    """A Job of a SpinRun changed: re-evaluate its owner (unless nothing it reads changed)."""
    key = _owner_key(namespace, labels)
    if key is None:
        return
    # The watch has now shown this Job: its expectation is met. Settle it here, not at the
    # next reconcile, or a deletion that follows before any reconcile would stay masked.
    settle_expectation(key, str((body.get("metadata") or {}).get("name")))
    if not job_event_is_news(namespace, type, body):
        return
    await reconcile_run(key[0], key[1], _indexes(kw), logger)


@kopf.on.delete(*SPINRUNS, optional=True)
def spinrun_deleted(namespace: str, name: str, **_: Any) -> None:
    """Children go with the SpinRun through their ownerReferences; forget our state."""
    _runs.pop((namespace, name), None)
    for key in [k for k in _job_seen if k[0] == namespace and k[1].startswith(f"{name}-it")]:
        del _job_seen[key]
    metrics.forget((namespace, name))
