"""A small HTTPS proxy in front of the real kube-apiserver, for faults the control plane cannot make
by itself: 5xx storms, slow answers, an answer lost after the write, a watch cut, a watch gap that
ends in 410 Gone (an expired resourceVersion: the client lists again). Only the client given the
proxy's kubeconfig (the operator) goes through it; everything else talks to the apiserver directly.
It forwards the client's bearer token, so the apiserver still authorizes the operator by its own RBAC.
This is an imitation of a network and of an overloaded server, nothing that decides."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import yaml
from aiohttp import web

#: /api/v1/[namespaces/NS/]RESOURCE[/NAME[/SUB]] and /apis/GROUP/VERSION/[namespaces/NS/]RESOURCE[/NAME[/SUB]]
_PATH = re.compile(r"^/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?(?:/(?P<rest>.*))?$")
_DROP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass(frozen=True)
class Call:
    """What a request asks for, in the apiserver's verbs."""

    verb: str  # get, list, watch, create, update, patch, delete
    resource: str  # plural ("" for discovery and other paths)
    subresource: str | None
    namespace: str | None
    name: str | None

    @classmethod
    def of(cls, method: str, url: str) -> Call:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        m = _PATH.match(parts.path)
        rest = (m.group("rest") or "").split("/") if m else []
        if m and m.group("ns") and not rest[0:1]:  # the namespace object itself
            rest = ["namespaces", m.group("ns")]
        resource = rest[0] if rest else ""
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        watching = query.get("watch", [""])[0] in ("true", "1")
        verb = {"GET": "watch" if watching else ("get" if name else "list"), "POST": "create", "PUT": "update",
                "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())
        return cls(verb, resource, sub, m.group("ns") if m else None, name)


@dataclass
class Fault:
    """What to do to matching requests: `error` answers `status` without forwarding; `error-after`
    forwards, then answers `status` (the write happened, the client is told it did not); `slow`
    waits `delay` seconds first; `cut` ends a watch stream after `after` seconds; `gap` holds each
    watch that starts (no event) until `release()`, then answers it 410 Gone, so the client lists
    again; `expire` answers a watch 410 Gone at once; `hang` holds the request unanswered and unforwarded until `release()` (then 503): a
    write that never lands, e.g. while the operator is killed (it also blocks the operator's pass that
    sent it, so it cannot stand for a lost write that comes after a create in the same pass: answer
    such writes `error` instead). `agent` matches a part of the
    User-Agent (kopf's own requests say "kopf", the operator's client "spin-operator"). `times`
    bounds how often it fires (None: until removed), `probability` fires it on a share of the matches."""

    kind: str
    verbs: tuple[str, ...] = ()
    resource: str | None = None
    subresource: str | None = None
    agent: str | None = None
    status: int = 503
    times: int | None = 1
    probability: float = 1.0
    delay: float = 0.0
    after: float = 1.0
    fired: int = 0
    released: threading.Event = field(default_factory=threading.Event)

    def matches(self, call: Call, agent: str = "") -> bool:
        return ((not self.verbs or call.verb in self.verbs) and (self.resource is None or call.resource == self.resource)
                and (self.subresource is None or call.subresource == self.subresource)
                and (self.agent is None or self.agent in agent))

    def release(self) -> None:
        self.released.set()


@dataclass(frozen=True)
class Answer:
    """One request through the proxy: what it asked, the status the client got, the fault (if any)."""

    call: Call
    status: int
    fault: str | None
    at: float


class FaultProxy:
    """The proxy on 127.0.0.1 (its own event loop in a thread), with the apiserver's certificate."""

    def __init__(self, upstream: str, ca: Path, cert: Path, key: Path, seed: int = 0) -> None:
        self.upstream, self.ca, self.cert, self.key = upstream.rstrip("/"), ca, cert, key
        self.faults: list[Fault] = []
        self.answers: list[Answer] = []
        self.random = random.Random(seed)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._streams: list[tuple[Call, asyncio.Event]] = []
        self.port = 0

    # ------------------------------------------------------------------ faults

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        fault.release()
        with self._lock:
            if fault in self.faults:
                self.faults.remove(fault)

    def _pick(self, call: Call, agent: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.kind in ("gap", "hang") and fault.released.is_set():
                    continue  # over: requests go through again
                if fault.matches(call, agent) and (fault.times is None or fault.fired < fault.times):
                    if fault.probability < 1.0 and self.random.random() >= fault.probability:
                        continue
                    fault.fired += 1
                    return fault
        return None

    def cut_watches(self, resource: str) -> int:
        """End every open watch of `resource` now (the client watches again); how many were open."""
        open_ = [(call, ended) for call, ended in list(self._streams) if call.resource == resource]
        for _, ended in open_:
            self._loop.call_soon_threadsafe(ended.set)
        return len(open_)

    def injected(self, kind: str | None = None) -> list[Answer]:
        return [a for a in self.answers if a.fault and (kind is None or a.fault == kind)]

    # ------------------------------------------------------------------ serving

    def start(self) -> FaultProxy:
        self._thread.start()

        async def setup() -> int:
            upstream_ssl = ssl.create_default_context(cafile=str(self.ca))
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=upstream_ssl, limit=0),
                                                  timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ssl.load_cert_chain(str(self.cert), str(self.key))
            site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=server_ssl)
            await site.start()
            return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        self.port = asyncio.run_coroutine_threadsafe(setup(), self._loop).result(30)
        return self

    def stop(self) -> None:
        for fault in list(self.faults):
            fault.release()

        async def teardown() -> None:
            for _, ended in list(self._streams):
                ended.set()
            await asyncio.sleep(0.1)  # the streams end before the server stops
            await self._runner.shutdown()
            await self._runner.cleanup()
            await self._session.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(teardown(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kubeconfig(self, through: Path, target: Path) -> Path:
        """A copy of the kubeconfig `through` whose server is this proxy (same CA, same token)."""
        config = yaml.safe_load(through.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = self.url
        target.write_text(yaml.safe_dump(config))
        return target

    def _record(self, call: Call, status: int, fault: Fault | None) -> None:
        with self._lock:
            self.answers.append(Answer(call, status, fault.kind if fault else None, time.monotonic()))

    @staticmethod
    def _status(code: int, reason: str, message: str) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                "reason": reason, "code": code}

    async def _handle(self, request: Any) -> Any:
        call = Call.of(request.method, str(request.rel_url))
        fault = self._pick(call, request.headers.get("User-Agent", ""))
        reasons = {500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout", 429: "TooManyRequests", 409: "Conflict"}
        if fault is not None and fault.kind == "error":
            self._record(call, fault.status, fault)
            return web.json_response(self._status(fault.status, reasons.get(fault.status, "InternalError"),
                                                  f"fault proxy: {fault.status} injected"), status=fault.status)
        if fault is not None and fault.kind == "hang":
            await asyncio.to_thread(fault.released.wait)
            self._record(call, 503, fault)
            return web.json_response(self._status(503, "ServiceUnavailable", "fault proxy: held, never forwarded"),
                                     status=503)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.kind in ("gap", "expire") and call.verb == "watch":
            if fault.kind == "gap":
                await asyncio.to_thread(fault.released.wait)
            return await self._expired(request, call, fault)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP | {"content-type"}}
        # a bytes body would go out as application/octet-stream (the apiserver answers 415)
        data = aiohttp.BytesPayload(body, content_type=request.headers.get("Content-Type", "application/json")) if body else None
        async with self._session.request(request.method, self.upstream + str(request.rel_url), data=data,
                                         headers=headers) as upstream:
            if fault is not None and fault.kind == "error-after":
                await upstream.read()
                self._record(call, fault.status, fault)
                return web.json_response(self._status(fault.status, reasons.get(fault.status, "InternalError"),
                                                      f"fault proxy: {fault.status} injected after the request was served"),
                                         status=fault.status)
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP | {"content-encoding"}}
            if call.verb != "watch":
                data = await upstream.read()
                self._record(call, upstream.status, fault)
                return web.Response(status=upstream.status, body=data, headers=out_headers)
            response = web.StreamResponse(status=upstream.status, headers=out_headers)
            await response.prepare(request)
            self._record(call, upstream.status, fault)
            ended = asyncio.Event()
            if fault is not None and fault.kind == "cut":
                self._loop.call_later(fault.after, ended.set)
            entry = (call, ended)
            self._streams.append(entry)
            cut = asyncio.ensure_future(ended.wait())
            try:
                while True:
                    read = asyncio.ensure_future(upstream.content.readany())
                    await asyncio.wait({read, cut}, return_when=asyncio.FIRST_COMPLETED)
                    if not read.done():
                        read.cancel()
                        break
                    chunk = read.result()
                    if not chunk:
                        break
                    await response.write(chunk)
            except Exception:  # the client went away, or the upstream stream broke: end it here too
                pass
            finally:
                cut.cancel()
                self._streams.remove(entry)
            with contextlib.suppress(Exception):
                await response.write_eof()
            return response

    async def _expired(self, request: Any, call: Call, fault: Fault) -> Any:
        """What the apiserver answers a watch from a compacted resourceVersion: one ERROR event, 410."""
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        event = {"type": "ERROR", "object": self._status(410, "Expired", "too old resource version (fault proxy)")}
        await response.write(json.dumps(event).encode() + b"\n")
        await response.write_eof()
        self._record(call, 410, fault)
        return response


@contextlib.contextmanager
def fault_proxy(state: Any) -> Iterator[FaultProxy]:
    """A proxy in front of `state`'s apiserver (spin_cluster's State), stopped afterwards."""
    proxy = FaultProxy(state.server, state.pki.ca, state.pki.apiserver, state.pki.apiserver_key).start()
    try:
        yield proxy
    finally:
        proxy.stop()
