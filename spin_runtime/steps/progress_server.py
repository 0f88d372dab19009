"""Serves a step's live progress record over HTTP (`GET /progress` on the pod contract's
port), so the operator can show it in the SpinRun status: the step pod needs no Kubernetes API
access, only a listening socket. Started once per process when `SPIN_PROGRESS_PORT` is set
(the operator sets it on every step pod); a port that cannot be bound costs a warning, never
the step."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from spin_runtime.launch import PROGRESS_HTTP_PATH, PROGRESS_PORT_ENV


class ProgressServer:
    """One listening socket serving the newest published record (bytes swapped atomically, so
    the serving thread never reads a record being changed)."""

    def __init__(self, port: int, host: str = "") -> None:
        self._body = b"{}"
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != PROGRESS_HTTP_PATH:
                    self.send_error(404, f"only {PROGRESS_HTTP_PATH} is served")
                    return
                body = owner._body
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # the operator polls: no log line each time
                return

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="spin-progress", daemon=True)
        self._thread.start()

    def publish(self, record: Mapping[str, Any]) -> None:
        """Serve `record` from now on."""
        self._body = json.dumps(record, default=str).encode()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


_server: ProgressServer | None = None
_lock = threading.Lock()


def port_from_env(env: Mapping[str, str] | None = None) -> int | None:
    """The port `SPIN_PROGRESS_PORT` names (None when unset, empty or not a port number)."""
    raw = (os.environ if env is None else env).get(PROGRESS_PORT_ENV, "").strip()
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        print(f"warning: {PROGRESS_PORT_ENV}={raw!r} is not a port number; progress is not served", file=sys.stderr)
        return None
    return port


def shared_server(env: Mapping[str, str] | None = None) -> ProgressServer | None:
    """This process's progress server, started on first use when the environment asks for one."""
    global _server
    port = port_from_env(env)
    if port is None:
        return None
    with _lock:
        if _server is None:
            try:
                _server = ProgressServer(port)
            except OSError as e:
                print(f"warning: cannot serve progress on port {port}: {e}", file=sys.stderr)
                return None
        return _server
