"""Whether kopf's indexes of the runs' children still match the API. When a watch's resourceVersion
has expired (410 Gone after a gap in the stream), kopf lists the resource again and indexes what it
lists, but never drops what the list no longer has: a child deleted during the gap stays in the
index, and the operator would wait on a Job that is gone or never recreate a deleted Service (seen
on the real control plane through the fault proxy). Every few seconds this module lists each
child resource (by the managed-by label, one request per resource and namespace) and compares uids;
an indexed child missing from two lists in a row is a ghost, and the operator restarts kopf (whose
first listing is then the truth). The decision (`Audit.after`) is pure; the lists are blocking."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from spin_operator.kube.client import REQUEST_TIMEOUT, api_client, count, in_daemon_thread

log = logging.getLogger("spin_operator")

#: An indexed child: (resource plural, namespace, uid).
Child = tuple[str, str, str]


@dataclass(frozen=True)
class Audit:
    """The children missing from the API at the last look (suspects, not yet ghosts)."""

    suspects: frozenset[Child] = field(default_factory=frozenset)

    def after(self, indexed: Iterable[Child], listed: Mapping[tuple[str, str], set[str]]) -> tuple[Audit, frozenset[Child]]:
        """The next audit and the ghosts: indexed children that neither this list nor the last one
        has. One miss is not enough: a child indexed after the list was read, or deleted while its
        DELETED event is on its way, is missing once and then settles."""
        missing = frozenset(c for c in indexed if c[2] not in listed.get((c[0], c[1]), set()))
        return Audit(missing), missing & self.suspects


def indexed_children(indexes: Any) -> set[Child]:
    """Every child in the operator's kopf indexes (driver.Indexes), as (resource, namespace, uid)."""
    out: set[Child] = set()
    for resource, index in (("jobs", indexes.jobs), ("configmaps", indexes.config_maps), ("services", indexes.services),
                            ("persistentvolumeclaims", indexes.pvcs), ("pods", indexes.pods)):
        if index is None:
            continue
        for (namespace, _run), store in list(index.items()):
            for value in list(store):
                uid = value.uid if hasattr(value, "uid") else ((value.get("metadata") or {}).get("uid"))
                if uid:
                    out.add((resource, namespace, uid))
    return out


def list_uids(resources: Iterable[tuple[str, str]], selector: str) -> dict[tuple[str, str], set[str]]:
    """(resource, namespace) → the uids the API lists there with `selector` (blocking)."""
    api = api_client()
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    listers: dict[str, Callable[..., Any]] = {
        "jobs": batch.list_namespaced_job, "configmaps": core.list_namespaced_config_map,
        "services": core.list_namespaced_service, "persistentvolumeclaims": core.list_namespaced_persistent_volume_claim,
        "pods": core.list_namespaced_pod,
    }
    out: dict[tuple[str, str], set[str]] = {}
    for resource, namespace in resources:
        count("list", resource)
        answer = listers[resource](namespace, label_selector=selector, _preload_content=False,
                                   _request_timeout=REQUEST_TIMEOUT)
        out[(resource, namespace)] = {i["metadata"]["uid"] for i in json.loads(answer.data)["items"]}
    return out


async def watch(interval: float, indexes: Callable[[], Any], selector: str,
                restart: Callable[[frozenset[Child]], None]) -> None:
    """Audit every `interval` seconds; call `restart(ghosts)` once ghosts are found, and return."""
    audit = Audit()
    while True:
        await asyncio.sleep(interval)
        current = indexes()
        if current is None:  # no reconcile yet: nothing indexed to doubt
            continue
        children = indexed_children(current)
        places = sorted({(resource, namespace) for resource, namespace, _ in children})
        try:
            listed = await in_daemon_thread(functools.partial(list_uids, places, selector))
        except Exception as e:  # unreachable, 5xx: look again next time (and keep the suspects)
            log.debug("index audit: a list failed: %r", e)
            continue
        audit, ghosts = audit.after(children, listed)
        if ghosts:
            restart(ghosts)
            return
