"""Cluster DNS for the pods (what CoreDNS's kubernetes plugin answers), read from the API at each
query: `<svc>.<ns>.svc.<domain>` (a ClusterIP, or a headless Service's ready endpoints),
`<hostname>.<svc>.<ns>.svc.<domain>` (an endpoint's hostname: an Indexed Job's pod with a
subdomain) and `<a-b-c-d>.<ns>.pod.<domain>`. Only A records; everything else is NXDOMAIN at once
(there is no upstream resolver to forward to)."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable

from spin_cluster.api import ApiError, Client, path
from spin_cluster.kubelet.serving import SocketServer

TTL = 5
A, AAAA = 1, 28
NOERROR, NXDOMAIN, FORMERR = 0, 3, 1


def parse_query(packet: bytes) -> tuple[int, str, int, bytes]:
    """(id, name, qtype, the question section) of a one-question query."""
    qid, _flags, qd = struct.unpack("!HHH", packet[:6])
    if qd != 1:
        raise ValueError("one question per query")
    labels, i = [], 12
    while packet[i]:
        n = packet[i]
        labels.append(packet[i + 1 : i + 1 + n].decode("ascii", "replace").lower())
        i += 1 + n
    qtype = struct.unpack("!H", packet[i + 1 : i + 3])[0]
    return qid, ".".join(labels), qtype, packet[12 : i + 5]


def answer(qid: int, question: bytes, rcode: int, addresses: list[str]) -> bytes:
    flags = 0x8180 | rcode  # response, recursion desired + available
    out = struct.pack("!HHHHHH", qid, flags, 1, len(addresses), 0, 0) + question
    for ip in addresses:
        out += struct.pack("!HHHIH", 0xC00C, A, 1, TTL, 4) + socket.inet_aton(ip)
    return out


def resolver(api: Client, domain: str) -> Callable[[str], list[str] | None]:
    """name → its addresses ([] when the name exists without one), or None when it does not exist."""
    svc_suffix = f".svc.{domain}"
    pod_suffix = f".pod.{domain}"

    def endpoints(ns: str, service: str) -> list[dict]:  # type: ignore[type-arg]
        slices = api.get(path("discovery.k8s.io", "v1", "endpointslices", ns),
                         labelSelector=f"kubernetes.io/service-name={service}")
        return [ep for s in slices.get("items") or [] for ep in s.get("endpoints") or []]

    def resolve(name: str) -> list[str] | None:
        try:
            if name.endswith(svc_suffix):
                parts = name[: -len(svc_suffix)].split(".")
                if len(parts) == 2:
                    service, ns = parts
                    svc = api.get(path("", "v1", "services", ns, service))
                    ip = svc["spec"].get("clusterIP")
                    if ip and ip != "None":
                        return [ip]
                    return sorted({a for ep in endpoints(ns, service) if _ready(ep) for a in ep.get("addresses") or []})
                if len(parts) == 3:
                    host, service, ns = parts
                    found = [a for ep in endpoints(ns, service) if ep.get("hostname") == host and _ready(ep)
                             for a in ep.get("addresses") or []]
                    return found or None
                return None
            if name.endswith(pod_suffix):
                parts = name[: -len(pod_suffix)].split(".")
                return [parts[0].replace("-", ".")] if len(parts) == 2 else None
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return None

    return resolve


def _ready(endpoint: dict) -> bool:  # type: ignore[type-arg]
    """CoreDNS serves ready endpoints only (a Service with publishNotReadyAddresses has them all ready)."""
    return bool((endpoint.get("conditions") or {}).get("ready", True))


class DnsServer(SocketServer):
    """A UDP DNS server in a thread."""

    name = "dns"

    def __init__(self, host: str, resolve: Callable[[str], list[str] | None], port: int = 53) -> None:
        self.resolve = resolve
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, port))
        super().__init__(sock)

    def receive(self) -> tuple[bytes, tuple[str, int]]:
        packet, peer = self.sock.recvfrom(4096)
        return packet, peer

    def handle(self, packet: bytes, peer: tuple[str, int]) -> None:  # type: ignore[override]
        self._reply(packet, peer)

    def _reply(self, packet: bytes, peer: tuple[str, int]) -> None:
        try:
            qid, name, qtype, question = parse_query(packet)
        except (ValueError, IndexError, struct.error):
            return
        try:
            found = self.resolve(name)
        except Exception:  # the API is away: the client retries
            return
        if found is None:
            reply = answer(qid, question, NXDOMAIN, [])
        else:
            reply = answer(qid, question, NOERROR, found if qtype == A else [])
        with contextlib.suppress(OSError):
            self.sock.sendto(reply, peer)
