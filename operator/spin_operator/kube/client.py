"""The operator's Kubernetes API client: one ApiClient (in-cluster config, else the kubeconfig),
reading and patching SpinRuns, and the discovery of Kueue's Workload version. Every request is
counted in the metrics; blocking calls (run them in a thread). What the decision asks for is
carried out by executor.py over this client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from spin_operator import metrics
from spin_runtime.api.spec import GROUP, PLURAL, VERSION

USER_AGENT = "spin-operator/0.1"
MERGE_PATCH = "application/merge-patch+json"
#: Kueue's Workload API and the label that ties a Workload to its job (pkg/controller/constants:
#: JobUIDLabel). Kueue stores v1beta2 and is removing v1beta1: the version is discovered.
KUEUE_GROUP, KUEUE_WORKLOADS = "kueue.x-k8s.io", "workloads"
#: The Workload versions spinrun can patch (`spec.active` in both), most recent first.
KUEUE_VERSIONS = ("v1beta2", "v1beta1")
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"

log = logging.getLogger("spin_operator")

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
    """Forget the cached client and what it discovered (tests point the operator at a new server)."""
    global _api, _workload_version
    _api = None
    _workload_version = None


def count(verb: str, resource: str) -> None:
    """Count one API request in the metrics."""
    metrics.API_REQUESTS.labels(verb=verb, resource=resource).inc()


def get_spinrun(namespace: str, name: str) -> dict[str, Any] | None:
    """The SpinRun, or None when it is gone."""
    count("get", "spinruns")
    try:
        obj = client.CustomObjectsApi(api_client()).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return dict(obj)


def patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch the status subresource."""
    count("patch", "spinruns/status")
    client.CustomObjectsApi(api_client()).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _content_type=MERGE_PATCH
    )


_workload_version: str | None = None


def workload_version() -> str:
    """The Kueue Workload version this cluster serves (discovered once, again after a 404); an
    ApiException 404 naming what to install when it serves none spinrun can patch."""
    global _workload_version
    if _workload_version is None:
        count("get", "discovery")
        groups = client.ApisApi(api_client()).get_api_versions().groups or []
        served = {v.version for g in groups if g.name == KUEUE_GROUP for v in g.versions or []}
        version = next((v for v in KUEUE_VERSIONS if v in served), None)
        if version is None:
            raise ApiException(status=404, reason=(
                f"Kueue's Workload API is not served ({KUEUE_GROUP} {'/'.join(KUEUE_VERSIONS)}; served: "
                f"{', '.join(sorted(served)) or 'none'}): a queued job cannot be stopped or resumed; install Kueue "
                "v0.9 or later, or set the Helm value kueue.enabled=false"))
        _workload_version = version
    return _workload_version


def forget_workload_version() -> None:
    """Discover the Workload version again at the next use (Kueue upgraded or removed)."""
    global _workload_version
    _workload_version = None


#: Seconds (connect, read) a background look of the operator's watchdogs may take: it must never
#: hang on a server that does not answer.
REQUEST_TIMEOUT = (5, 10)

T = TypeVar("T")


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """`fn()` in a daemon thread of its own, awaited. Not the loop's executor: kopf and asyncio wait
    for the executor's threads when the operator stops, and a background look must never delay a stop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(setter: Callable[[Any], None], value: Any) -> None:
        if not done.done():
            setter(value)

    def run() -> None:
        try:
            result: Any = fn()
        except BaseException as e:  # handed to the awaiting task
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(settle, done.set_exception, e)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, done.set_result, result)

    threading.Thread(target=run, name="spin-watchdog-look", daemon=True).start()
    return await done  # type: ignore[no-any-return]
