"""The one module of the tests that uses kmock's private parts (kmock 0.8: pyproject's dev extra
pins kmock>=0.8,<0.9, and importing this module checks it): `KmockEmulator`, kmock's
KubernetesEmulator with the fixes the harness needs made through kmock's private hooks (reactions
matched in O(1), stored objects looked up by key, labelSelector honoured on list and watch) and a
public seam, `respond`, over its private `_handle`; and readers of its request log, reactions and
connections. Everything else in tests/ uses kmock's public names only (tests/operator/harness.py
builds the emulator the operator talks to on `KmockEmulator`). A new kmock: re-check every name
here against its source, then move the pin."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import attrs
import kmock
from packaging.specifiers import SpecifierSet
from typing_extensions import override

#: The kmock versions this adapter was written against (pyproject.toml's dev extra says the same).
KMOCK_VERSIONS = SpecifierSet(">=0.8,<0.9")
if version("kmock") not in KMOCK_VERSIONS:
    raise ImportError(
        f"kmock {version('kmock')} is installed; tests/operator/kmock_internals.py uses kmock {KMOCK_VERSIONS}'s "
        "private RawHandler._handle, _payloads, _requests and _serve_* hooks: install a kmock the pin allows, "
        "or port this module to the new kmock and move the pin in pyproject.toml"
    )


def request_log(mock: Any) -> list[Any]:
    """Every request the emulator has served so far, oldest first."""
    return list(mock._requests)


def reaction_sources(mock: Any) -> list[Any]:
    """The view (filter chain) each reaction of the emulator matches requests against."""
    return [payload._source for payload in mock._payloads]


def request_transport(request: Any) -> Any:
    """The connection a request came on (None when unknown): closing it cuts the client off."""
    return getattr(request._raw_request, "transport", None)


def filter_chain_contains(view: Any, request: Any) -> bool | None:
    """Whether `request` (the newest in the log) is in `view`, decided from the view's chain
    alone: True/False for chains of plain Filters and Priorities down to a Root, None when
    the chain holds anything whose membership depends on the request history (slices,
    exclusions, groups, streams, callables of the history), so the caller must scan."""
    while True:
        if isinstance(view, kmock.Root):
            return True
        if type(view) is kmock.Priority:
            view = view._source
            continue
        if type(view) is kmock.Filter:
            if not view.criteria(request):
                return False
            view = view._source
            continue
        return None


class FastMatching(kmock.RawHandler):
    """kmock 0.8's `RawHandler._handle` decides which reaction serves a request with
    `request in payload._source`, which walks the *whole request log* for every reaction (the
    emulator's own 14 fallbacks included): request n costs O(n), a run of R requests O(R²).
    With a few thousand requests every response took hundreds of milliseconds and the
    emulator, not the operator, set the pace of the scale benchmark. This mixin decides the
    same membership from the filter chain itself when that is exact (plain Filter/Priority
    chains, i.e. every built-in reaction and `kmock['get /x'] << ...`), and falls back to
    kmock's scan for slices, groups and exclusions, so test-added reactions keep their meaning."""

    __slots__ = ()

    @override
    async def _handle(self, request: Any) -> Any:
        priorities = [payload.priorities for payload in self._payloads]
        width = max((len(p) for p in priorities), default=0)
        keys = [tuple(-x for x in p) + (0,) * (width - len(p)) for p in priorities]
        order = sorted(range(len(keys)), key=lambda i: keys[i])
        for payload in [self._payloads[i] for i in order]:
            if payload._disabled.is_set():
                continue
            member = filter_chain_contains(payload._source, request)
            if member is None:
                member = request in payload._source
            if not member:
                continue
            try:
                return await payload(request)
            except kmock.ReactionMismatchError:  # either mismatch or depletion
                payload._disabled.set()
            except NotImplementedError:  # matched, but nothing to respond with
                pass
        raise NotImplementedError("Undefined server behaviour: no reaction matching the request is defined.")


@attrs.define(kw_only=True)
class KmockEmulator(kmock.KubernetesEmulator, FastMatching):
    """kmock's KubernetesEmulator with reactions matched in O(1) per request (`FastMatching`),
    stored objects found by key, and labelSelector honoured on list and watch. Subclasses change
    how requests are answered by overriding `respond` (and calling `super().respond`)."""

    @override
    async def _handle(self, request: Any) -> Any:
        return await self.respond(request)

    async def respond(self, request: Any) -> Any:
        """Answer one request (kmock's own handling, after the subclasses' overrides)."""
        return await super()._handle(request)

    # kmock 0.8 finds the object of a fetch/create/update/delete by scanning every stored object
    # (O(objects) per request; thousands of Jobs and Events at scale). The store is a dict keyed
    # by (resource, namespace, name), the key kmock's own `_handle` writes: look it up directly,
    # and defer to kmock on a miss (404s and anything unusual keep kmock's exact behaviour).
    def _stored(self, request: Any, namespace: str | None, name: str | None) -> Any:
        if request.resource is None or name is None:
            return None
        return self._objects._objects.get((request.resource, namespace, name))

    @override
    async def _serve_fetch(self, request: Any) -> Any:
        async with self._lock:
            obj = self._stored(request, request.namespace, request.name)
        if obj is None or obj.deleted:
            return await super()._serve_fetch(request)
        return obj.raw

    @override
    async def _serve_create(self, request: Any) -> Any:
        meta = (request.data or {}).get("metadata", {}) if isinstance(request.data, dict) else {}
        async with self._lock:
            obj = self._stored(request, request.namespace or meta.get("namespace"), request.name or meta.get("name"))
        if obj is None:
            return await super()._serve_create(request)
        return obj.raw

    @override
    async def _serve_update(self, request: Any) -> Any:
        async with self._lock:
            obj = self._stored(request, request.namespace, request.name)
        if obj is None:
            return await super()._serve_update(request)
        return obj.last.raw

    @override
    async def _serve_delete(self, request: Any) -> Any:
        async with self._lock:
            obj = self._stored(request, request.namespace, request.name)
        if obj is None:
            return await super()._serve_delete(request)
        return obj.last.raw

    # kmock 0.8 ignores `labelSelector` on list and watch; a real API server filters there, and
    # the operator's server-side filter (and its benchmark) depends on it.
    @override
    async def _serve_list(self, request: Any) -> Any:
        result = await super()._serve_list(request)
        selector = parse_label_selector((request.params or {}).get("labelSelector", ""))
        if selector and isinstance(result, dict):
            result = {**result, "items": [o for o in result["items"] if labels_match(o, selector)]}
        return result

    @override
    async def _serve_watch(self, request: Any) -> Any:
        selector = parse_label_selector((request.params or {}).get("labelSelector", ""))
        async for event in super()._serve_watch(request):
            if not selector or not isinstance(event, dict) or labels_match(event.get("object") or {}, selector):
                yield event


def parse_label_selector(text: str) -> list[tuple[str, str, str]]:
    """`a=b,c!=d,e,!f` → [(key, op, value)] with op in =, !=, exists, !exists (equality-based
    selectors, what kopf and kubectl -l send)."""
    out: list[tuple[str, str, str]] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "!=" in part:
            k, v = part.split("!=", 1)
            out.append((k.strip(), "!=", v.strip()))
        elif "=" in part:
            k, v = part.split("==", 1) if "==" in part else part.split("=", 1)
            out.append((k.strip(), "=", v.strip()))
        elif part.startswith("!"):
            out.append((part[1:].strip(), "!exists", ""))
        else:
            out.append((part, "exists", ""))
    return out


def labels_match(obj: dict[str, Any], selector: list[tuple[str, str, str]]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for key, op, value in selector:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!exists" and key in labels:
            return False
    return True
