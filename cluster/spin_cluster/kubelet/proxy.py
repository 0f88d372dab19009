"""The `kubernetes` Service for pods (kube-proxy's part for that one Service): a TCP forwarder on
the Service's ClusterIP and port, to the apiserver on the host's loopback. TLS passes through
untouched, so pods verify the apiserver's certificate and authenticate with their tokens."""

from __future__ import annotations

import contextlib
import socket
import threading

from spin_cluster.kubelet.serving import SocketServer


class TcpForwarder(SocketServer):
    name = "service-proxy"

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        super().__init__(socket.create_server(listen, reuse_port=False))

    def receive(self) -> tuple[socket.socket]:
        client, _ = self.sock.accept()
        return (client,)

    def handle(self, client: socket.socket) -> None:  # type: ignore[override]
        self._pair(client)

    def _pair(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        client.settimeout(None)
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        src.close()
