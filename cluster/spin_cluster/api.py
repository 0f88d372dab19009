"""A small JSON client of the Kubernetes API for the cluster's own components (bootstrap, the process
kubelet): raw dicts in and out, bearer-token auth, the cluster CA, and watch streams."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer: `status` and the API's Status message."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.message, self.reason = status, message, reason

    @property
    def passing(self) -> bool:
        """An answer that asks to try again (5xx: e.g. the apiserver starting or etcd gone; 429)."""
        return self.status >= 500 or self.status == 429


class Unreachable(ConnectionError):
    """No answer from the apiserver at all (refused, reset, timed out): it is restarting or gone.
    An OSError, so that callers that already survive a broken socket survive this too."""


@dataclass(frozen=True)
class Endpoint:
    """Where the apiserver is and who we are to it."""

    server: str
    token: str
    ca_file: str


def path(group: str, version: str, plural: str, namespace: str | None = None, name: str | None = None,
         subresource: str | None = None) -> str:
    """`/api/v1/...` or `/apis/<group>/<version>/...` for a resource, namespaced or not."""
    out = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace is not None:
        out += f"/namespaces/{quote(namespace)}"
    out += f"/{plural}"
    if name is not None:
        out += f"/{quote(name)}"
    if subresource:
        out += f"/{subresource}"
    return out


class Client:
    def __init__(self, endpoint: Endpoint, user_agent: str = "spin-cluster", timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        ctx = ssl.create_default_context(cafile=endpoint.ca_file)
        self.pool = urllib3.PoolManager(ssl_context=ctx, maxsize=8, retries=False)
        self.headers = {"Authorization": f"Bearer {endpoint.token}", "User-Agent": user_agent,
                        "Accept": "application/json"}
        self.timeout = timeout

    def request(self, method: str, url_path: str, body: Any = None, params: Mapping[str, Any] | None = None,
                content_type: str = "application/json") -> Any:
        url = self.endpoint.server + url_path + (f"?{urlencode(params)}" if params else "")
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            resp = self.pool.request(method, url, body=data, headers=headers, timeout=self.timeout)
        except urllib3.exceptions.HTTPError as e:
            raise Unreachable(f"{method} {url_path}: no answer from {self.endpoint.server}: {e}") from e
        return _decode(resp.status, resp.data)

    def get(self, url_path: str, **params: Any) -> Any:
        return self.request("GET", url_path, params=params or None)

    def create(self, url_path: str, body: Any, **params: Any) -> Any:
        return self.request("POST", url_path, body, params=params or None)

    def patch(self, url_path: str, body: Any, content_type: str = MERGE) -> Any:
        return self.request("PATCH", url_path, body, content_type=content_type)

    def put(self, url_path: str, body: Any) -> Any:
        return self.request("PUT", url_path, body)

    def delete(self, url_path: str, body: Any = None) -> Any:
        return self.request("DELETE", url_path, body)

    def watch(self, url_path: str, timeout_seconds: int = 60, **params: Any) -> Iterator[dict[str, Any]]:
        """The events of one watch request (until the server ends it after `timeout_seconds`)."""
        query = {"watch": "true", "timeoutSeconds": timeout_seconds, "allowWatchBookmarks": "true", **params}
        url = f"{self.endpoint.server}{url_path}?{urlencode(query)}"
        try:
            resp = self.pool.request("GET", url, headers=self.headers, preload_content=False,
                                     timeout=urllib3.Timeout(connect=10, read=timeout_seconds + 30))
        except urllib3.exceptions.HTTPError as e:
            raise Unreachable(f"watch {url_path}: no answer from {self.endpoint.server}: {e}") from e
        try:
            if resp.status >= 300:
                _decode(resp.status, resp.read())
            buf = b""
            for chunk in resp.stream(65536):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()


def _decode(status: int, data: bytes) -> Any:
    try:
        doc = json.loads(data) if data else None
    except json.JSONDecodeError:
        doc = None
    if status >= 300:
        if isinstance(doc, dict):
            raise ApiError(status, str(doc.get("message", data[:500])), str(doc.get("reason", "")))
        raise ApiError(status, data[:500].decode(errors="replace"))
    return doc
