"""Fault injection for the operator e2e harness (tests/operator/harness.py), kept out of the
harness itself:

- `FaultyEmulator`: the harness's kmock emulator, answering the operator's requests that
  match a `Fault` with an API error (before or after the write lands), holding them until
  released, or cutting/expiring watch streams; it also records the status of every answer
  the operator got, so tests count admitted creates per name;
- `OperatorProcess`: the real `spin-operator` console script in a subprocess that a test
  can SIGKILL (a process kill, not a graceful stop);
- `run_dir_snapshot`: content hash + mtime of every file of a run directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
from kmock import KubernetesError
from typing_extensions import override

from tests.operator import harness
from tests.operator.harness import HARNESS_AGENT, VENV_BIN, Cluster, SpinEmulator
from tests.operator.kmock_internals import request_transport

OPERATOR_AGENTS = ("spin-operator", "kopf")


# --------------------------------------------------------------------------- faults


@attrs.frozen
class InjectedError(KubernetesError):
    """An API error answered instead of (or after) serving a request."""

    status: int = 500
    reason: str = "InternalError"
    message: str = "injected by tests/reliability/faulty.py"


@dataclass
class Fault:
    """Answer the first `times` operator requests matching (action, resource, subresource, name)
    with `kind`:

    - "error":  the status code, the write NOT applied (the server refused it);
    - "error-after": the write applied, then the status code (the client cannot tell);
    - "hang":   held until `release()`, then 503 and NOT applied (a request the server never
                finished; the client may die meanwhile);
    - "drop":   a watch stream served for `after` seconds, then its TCP connection closed;
    - "expire": a watch answered with one ERROR 410 Gone event, then closed (what an API server
                sends when the client's resourceVersion is too old).
    """

    kind: str
    action: str | None = None  # create, update, fetch, list, watch, delete (kmock's actions)
    resource: str | None = None  # plural, e.g. jobs, spinruns
    subresource: str | None = "*"  # "*" = any; None = the object itself
    name: Callable[[str], bool] | None = None
    agent: str | None = None  # User-Agent prefix: spin-operator (its client) or kopf; None = both
    status: int = 500
    times: int = 1
    after: float = 0.5
    injected: int = 0
    released: threading.Event = field(default_factory=threading.Event)

    def matches(self, agent: str, action: str, resource: str | None, subresource: str | None, name: str) -> bool:
        if self.injected >= self.times:
            return False
        if self.agent is not None and not agent.startswith(self.agent):
            return False
        if self.action is not None and action != self.action:
            return False
        if self.resource is not None and resource != self.resource:
            return False
        if self.subresource != "*" and subresource != self.subresource:
            return False
        return self.name is None or self.name(name)

    def release(self) -> None:
        self.released.set()


@dataclass
class Answer:
    """One operator request and how it was answered."""

    action: str
    resource: str | None
    subresource: str | None
    name: str
    status: int
    fault: str | None = None
    applied: bool = False  # the server stored the write (whatever the client was told)


@dataclass
class FaultPlan:
    faults: list[Fault] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def injected(self) -> int:
        return sum(f.injected for f in self.faults)

    def admitted_creates(self, resource: str = "jobs") -> list[str]:
        """Names of objects the server really created for the operator (2xx answers)."""
        return [a.name for a in self.answers if a.action == "create" and a.resource == resource and a.applied]

    def create_attempts(self, resource: str = "jobs") -> list[str]:
        return [a.name for a in self.answers if a.action == "create" and a.resource == resource]

    def hanging(self) -> int:
        return sum(1 for f in self.faults if f.kind == "hang" and f.injected and not f.released.is_set())


def _name_of(request: Any) -> str:
    if request.name:
        return str(request.name)
    data = request.data if isinstance(request.data, dict) else {}
    return str((data.get("metadata") or {}).get("name") or "")


@attrs.define(kw_only=True)
class FaultyEmulator(SpinEmulator):
    """SpinEmulator answering the operator's requests as its `plan` says."""

    plan: FaultPlan | None = None

    @override
    async def respond(self, request: Any) -> Any:
        agent = request.headers.get("User-Agent", "")
        if self.plan is None or agent.startswith(HARNESS_AGENT) or request.resource is None:
            return await super().respond(request)
        plan = self.plan
        action = request.action.value.lower() if request.action is not None else ""
        resource = getattr(request.resource, "plural", None)
        name = _name_of(request)
        fault = next((f for f in plan.faults if f.matches(agent, action, resource, request.subresource, name)), None)

        def answer(status: int, applied: bool = False) -> None:
            plan.answers.append(Answer(action, resource, request.subresource, name, status, fault.kind if fault else None, applied))

        if fault is not None:
            fault.injected += 1
            if fault.kind == "error":
                answer(fault.status)
                raise InjectedError(status=fault.status, reason=_REASONS.get(fault.status, "InternalError"))
            if fault.kind == "hang":
                while not fault.released.is_set():
                    await asyncio.sleep(0.02)
                answer(503)
                raise InjectedError(status=503, reason="ServiceUnavailable")
            if fault.kind == "expire":
                answer(200)
                gone = {"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 410,
                                                    "reason": "Expired", "message": "too old resource version (injected)"}}
                return aiohttp.web.Response(status=200, body=json.dumps(gone).encode() + b"\n",
                                            content_type="application/json")
            if fault.kind == "drop":
                answer(200)
                task = asyncio.ensure_future(super().respond(request))
                done, _ = await asyncio.wait({task}, timeout=fault.after)
                if task in done:
                    return task.result()
                transport = request_transport(request)
                if transport is not None:
                    transport.close()
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                raise asyncio.CancelledError  # the connection is gone: nothing to answer
        try:
            result = await super().respond(request)
        except KubernetesError as e:
            answer(e.status)
            raise
        if fault is not None and fault.kind == "error-after":
            answer(fault.status, applied=True)
            raise InjectedError(status=fault.status, reason=_REASONS.get(fault.status, "InternalError"))
        status = int(getattr(result, "status", 200))
        answer(status, applied=status < 300)
        return result


_REASONS = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 502: "BadGateway", 503: "ServiceUnavailable",
            504: "Timeout"}


@contextlib.contextmanager
def faulty_cluster(tmp: Path, plan: FaultPlan | None = None, **kw: Any) -> Iterator[Cluster]:
    """`harness.cluster` whose emulator is a FaultyEmulator following `plan` (none: record only)."""
    original = harness.SpinEmulator
    harness.SpinEmulator = FaultyEmulator  # type: ignore[misc]  # read by Emulator._serve at start
    try:
        c = Cluster(tmp, **kw)
    finally:
        harness.SpinEmulator = original  # type: ignore[misc]
    try:
        assert isinstance(c.emulator.mock, FaultyEmulator), "the harness no longer builds its emulator from SpinEmulator"
        c.emulator.mock.plan = plan if plan is not None else FaultPlan()
        yield c
    finally:
        c.close()


def plan_of(c: Cluster) -> FaultPlan:
    assert isinstance(c.emulator.mock, FaultyEmulator) and c.emulator.mock.plan is not None
    return c.emulator.mock.plan


# --------------------------------------------------------------------------- operator process


class Zygote:
    """tests/reliability/zygote.py in a subprocess: forks warmed-up operator processes."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen([str(VENV_BIN / "python"), "-m", "tests.reliability.zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=Path(__file__).resolve().parents[2])
        ready = self._read()
        assert ready.get("ready"), ready

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the operator zygote exited ({self.proc.poll()})")
        return dict(json.loads(line))

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class OperatorProcess:
    """`spin-operator --all-namespaces` in a process of its own, pointed at the emulator: a
    fresh subprocess, or a fork of a warmed-up `Zygote` (same program, no import time)."""

    def __init__(self, c: Cluster, log: Path, env: dict[str, str] | None = None, zygote: Zygote | None = None) -> None:
        self.c = c
        self.log = log
        self.env = env or {}
        self.zygote = zygote
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.returncode: int | None = None
        self.starts = 0

    def _spinrun_watches(self) -> int:
        return sum(1 for r in self.c.emulator.requests() if r["resource"] == "spinruns" and r["verb"] == "watch")

    def _argv(self) -> list[str]:
        return ["--all-namespaces", "--metrics-port", "0", "--liveness", "",
                *(["--verbose"] if os.environ.get("SPIN_RELIABILITY_DEBUG") else [])]

    def start(self, timeout: float = 60) -> OperatorProcess:
        assert not self.alive(), "already running"
        env = {"KUBECONFIG": str(self.c.kubeconfig), "SPIN_METRICS_PORT": "0", "SPIN_LIVENESS": "", "PYTHONUNBUFFERED": "1",
               **self.env}
        before = self._spinrun_watches()
        with open(self.log, "ab") as out:
            out.write(f"\n===== start {self.starts} =====\n".encode())
        self.returncode = None
        if self.zygote is not None:
            self.proc = None
            self.pid = int(self.zygote.ask(op="start", argv=self._argv(), env=env, log=str(self.log))["pid"])
        else:
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen([str(VENV_BIN / "spin-operator"), *self._argv()],
                                             stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
            self.pid = self.proc.pid
        self.starts += 1
        deadline = time.monotonic() + timeout
        while self._spinrun_watches() <= before:
            if not self.alive():
                raise AssertionError(f"operator exited {self.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"operator not watching SpinRuns after {timeout}s: {self.tail()}")
            time.sleep(0.05)
        return self

    def _wait(self, timeout: float) -> int | None:
        if self.pid is None:
            return self.returncode
        if self.returncode is None:
            if self.proc is not None:
                try:
                    self.returncode = self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    return None
            else:
                assert self.zygote is not None
                self.returncode = self.zygote.ask(op="wait", pid=self.pid, timeout=timeout)["exit"]
        return self.returncode

    def alive(self) -> bool:
        return self.pid is not None and self._wait(0) is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last status write."""
        if self.alive():
            assert self.pid is not None
            os.kill(self.pid, signal.SIGKILL)
            self._wait(10)

    def stop(self) -> None:
        """SIGTERM, as Kubernetes stops a pod; SIGKILL after 20 s."""
        if self.alive():
            assert self.pid is not None
            os.kill(self.pid, signal.SIGTERM)
            if self._wait(20) is None:
                self.kill()

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def errors(self) -> list[str]:
        """Log lines at ERROR level or with a traceback."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if " ERROR " in line or line.startswith("Traceback")]


@contextlib.contextmanager
def operator_process(c: Cluster, log: Path, env: dict[str, str] | None = None,
                     zygote: Zygote | None = None) -> Iterator[OperatorProcess]:
    op = OperatorProcess(c, log, env, zygote)
    try:
        yield op
    finally:
        op.kill()


# --------------------------------------------------------------------------- run directory


def run_dir_snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mtime_ns)} of every file under `root`."""
    out: dict[str, tuple[str, int]] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp")):  # a write in flight
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def changed_files(before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]],
                  rewritten_ok: tuple[str, ...] = ()) -> list[str]:
    """Files of `before` that changed or vanished in `after`. Paths in `rewritten_ok` may be
    rewritten with the same content (a new mtime), never with other content."""
    out = []
    for rel, (digest, mtime) in before.items():
        now = after.get(rel)
        if now is None:
            out.append(f"{rel}: removed")
        elif now[0] != digest:
            out.append(f"{rel}: content changed")
        elif now[1] != mtime and rel not in rewritten_ok:
            out.append(f"{rel}: rewritten (mtime changed)")
    return out
