"""A socket served from a thread of its own: `receive()` waits (with a short timeout, so `stop`
is noticed) for the next request and hands it to `handle` in a thread per request."""

from __future__ import annotations

import socket
import threading
from typing import Any


class SocketServer:
    name = "server"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(0.5)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name=self.name, daemon=True)

    def start(self) -> Any:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()

    def receive(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def handle(self, *request: Any) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                request = self.receive()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self.handle, args=request, daemon=True).start()
