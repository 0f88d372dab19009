"""Whether the SpinRun CRD is still the one this process started with. kopf resolves SpinRuns by
rescanning the API group on each CRD watch event; a CRD deleted and applied again can send its last
event before discovery serves `spinruns` again, and kopf then never watches SpinRuns again (seen on
the real control plane: 2 runs in 7). This module looks at the CRD every few seconds and asks for a
restart once a new one (a new uid) is established and served: a fresh kopf resolves it on its first
scan. The decision (`CrdIdentity.recreated`) is pure; the reads are blocking (run them in a thread)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client

from spin_operator.kube.client import REQUEST_TIMEOUT, api_client, count, in_daemon_thread
from spin_runtime.api.spec import GROUP, PLURAL, VERSION

CRD_NAME = f"{PLURAL}.{GROUP}"

log = logging.getLogger("spin_operator")



@dataclass(frozen=True)
class Seen:
    """One look at the CRD: its uid (None: absent) and whether SpinRuns are served."""

    uid: str | None
    served: bool


@dataclass(frozen=True)
class CrdIdentity:
    """The CRD the process started with (uid None: it was absent)."""

    started_with: str | None

    def recreated(self, now: Seen) -> bool:
        """A different CRD than at start is there and discovery serves SpinRuns: restart now.
        An absent CRD waits (nothing to watch yet); a new one not yet served waits too, or the
        restarted kopf could miss it the same way."""
        return now.uid is not None and now.uid != self.started_with and now.served


def look() -> Seen:
    """The CRD's uid (listed by name: the chart grants list, not get) and, if it is there and
    Established, whether discovery lists SpinRuns in the group's version."""
    api = api_client()
    count("list", "customresourcedefinitions")
    items = client.ApiextensionsV1Api(api).list_custom_resource_definition(
        field_selector=f"metadata.name={CRD_NAME}", _request_timeout=REQUEST_TIMEOUT).items
    if not items:
        return Seen(None, False)
    crd = items[0]
    established = any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))
    served = False
    if established:
        count("get", "discovery")
        resources = client.CustomObjectsApi(api).get_api_resources(GROUP, VERSION, _request_timeout=REQUEST_TIMEOUT)
        served = any(r.name == PLURAL for r in (resources.resources if resources else []) or [])
    return Seen(crd.metadata.uid, served)


async def watch(interval: float, restart: Callable[[str | None, str], None]) -> None:
    """Look every `interval` seconds until a re-created CRD is served, then call `restart(old, new)`
    once and return. The first successful look is the CRD the process started with; a failed look
    (API unreachable, 404 discovery) is tried again next time."""
    identity: CrdIdentity | None = None
    while True:
        try:
            now = await in_daemon_thread(look)
        except Exception as e:
            log.debug("SpinRun CRD look failed: %r", e)
        else:
            if identity is None:
                identity = CrdIdentity(now.uid)
            elif identity.recreated(now) and now.uid is not None:
                restart(identity.started_with, now.uid)
                return
        await asyncio.sleep(interval)
