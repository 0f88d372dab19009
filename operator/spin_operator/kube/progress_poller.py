"""Polls the progress records running step pods serve (`GET /progress` on the pod's IP and
progress port, see spin_runtime.steps.progress_server): a short timeout, at most one poll per
run per interval, and the last good record of a pod kept for a while so one missed poll does
not blank the status. Never raises: progress is a courtesy, the decision never waits on it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from spin_operator.kube.expectations import RunKey
from spin_operator.kube.objects import PodState
from spin_operator.settings import DEFAULT_PROGRESS_SECONDS
from spin_runtime.launch import PROGRESS_HTTP_PATH

log = logging.getLogger("spin_operator")

#: Seconds one poll of one pod may take.
TIMEOUT_SECONDS = 2.0
#: Seconds a pod's last record is shown when polls of it fail.
KEEP_SECONDS = 120.0
#: Largest record accepted (a record is a few hundred bytes).
MAX_BYTES = 64 * 1024


def url(pod: PodState) -> str:
    """Where a pod serves its progress (IPv6 addresses in brackets)."""
    host = f"[{pod.ip}]" if pod.ip and ":" in pod.ip else pod.ip
    return f"http://{host}:{pod.progress_port}{PROGRESS_HTTP_PATH}"


async def fetch(session: aiohttp.ClientSession, pod: PodState) -> dict[str, Any] | None:
    """One pod's record, or None (not listening yet, not rank 0, slow, or not a record)."""
    try:
        async with session.get(url(pod)) as resp:
            if resp.status != 200:
                return None
            raw = await resp.content.read(MAX_BYTES + 1)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
        return None
    if len(raw) > MAX_BYTES:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


@dataclass
class ProgressPoller:
    """The per-process cache of progress records: run → (monotonic time of the last poll,
    pod name → (time of its last good record, record)). `interval`: the deployment's
    progress_seconds (0 or less turns polling off)."""

    interval: float = DEFAULT_PROGRESS_SECONDS
    timeout: float = TIMEOUT_SECONDS
    keep: float = KEEP_SECONDS
    clock: Callable[[], float] = time.monotonic
    polls: int = 0
    _runs: dict[RunKey, tuple[float, dict[str, tuple[float, dict[str, Any]]]]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    async def records(self, key: RunKey, pods: Sequence[PodState]) -> dict[str, dict[str, Any]]:
        """The records of the run's pods that serve progress: polled when the last poll is older
        than the interval, else the cached ones."""
        targets = [p for p in pods if p.serves_progress] if self.enabled else []
        if not targets:
            self._runs.pop(key, None)
            return {}
        now = self.clock()
        last, cached = self._runs.get(key, (float("-inf"), {}))
        if now - last >= self.interval:
            last = now
            self.polls += 1
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
                got = await asyncio.gather(*(fetch(session, p) for p in targets))
            for pod, record in zip(targets, got, strict=True):
                if record is not None:
                    cached[pod.name] = (now, record)
        live = {p.name for p in targets}
        cached = {name: v for name, v in cached.items() if name in live and now - v[0] <= self.keep}
        self._runs[key] = (last, cached)
        return {name: record for name, (_, record) in cached.items()}

    def forget(self, key: RunKey) -> None:
        self._runs.pop(key, None)
