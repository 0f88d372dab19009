"""The kubelet's API for the apiserver (what `kubectl logs` reaches through it): HTTPS with the
kubelet's serving certificate, clients verified against the cluster CA, `GET /containerLogs/
<ns>/<pod>/<container>` with follow, tailLines, limitBytes and previous, and `/healthz`."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

#: (namespace, pod, container, previous) → (the log file, whether the container still runs), or None
LogLookup = Callable[[str, str, str, bool], tuple[Path, Callable[[], bool]] | None]


class KubeletServer:
    def __init__(self, host: str, port: int, cert: Path, key: Path, ca: Path, logs: LogLookup) -> None:
        lookup = logs

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/healthz":
                    self._send(200, b"ok")
                    return
                parts = [unquote(p) for p in url.path.split("/") if p]
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self._send(404, b"not found")
                    return
                q = {k: v[-1] for k, v in parse_qs(url.query).items()}
                found = lookup(parts[1], parts[2], parts[3], q.get("previous") == "true")
                if found is None:
                    self._send(404, f"container {parts[3]} of pod {parts[1]}/{parts[2]} has no log here".encode())
                    return
                log, running = found
                data = log.read_bytes() if log.exists() else b""
                if "tailLines" in q:
                    lines = data.splitlines(keepends=True)
                    data = b"".join(lines[-int(q["tailLines"]):]) if int(q["tailLines"]) > 0 else b""
                if "limitBytes" in q:
                    data = data[: int(q["limitBytes"])]
                if q.get("follow") != "true":
                    self._send(200, data)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                offset = log.stat().st_size if log.exists() else 0
                try:
                    self._chunk(data)
                    while True:
                        alive = running()
                        size = log.stat().st_size if log.exists() else 0
                        if size > offset:
                            with open(log, "rb") as f:
                                f.seek(offset)
                                chunk = f.read(size - offset)
                            offset = size
                            self._chunk(chunk)
                        elif not alive:
                            break
                        time.sleep(0.2)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _chunk(self, data: bytes) -> None:
                if data:
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED  # only the apiserver (its kubelet client certificate) gets in
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=f"kubelet-api-{port}", daemon=True)

    def start(self) -> KubeletServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
