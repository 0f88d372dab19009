"""Cluster DNS: the wire format and the names it answers."""

from __future__ import annotations

import socket
import struct
from typing import Any

from spin_cluster.api import ApiError
from spin_cluster.kubelet.dns import NXDOMAIN, answer, parse_query, resolver


def query(name: str, qtype: int = 1) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", qtype, 1)
    return struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + q


def test_a_query_parses_and_its_answer_carries_the_addresses() -> None:
    qid, name, qtype, question = parse_query(query("Job-0.Svc.ns.svc.cluster.local"))
    assert (qid, name, qtype) == (0x1234, "job-0.svc.ns.svc.cluster.local", 1)
    reply = answer(qid, question, 0, ["10.200.0.7"])
    assert struct.unpack("!HHHH", reply[:8]) == (0x1234, 0x8180, 1, 1)
    assert reply.endswith(socket.inet_aton("10.200.0.7"))
    assert struct.unpack("!H", answer(qid, question, NXDOMAIN, [])[2:4])[0] & 0xF == NXDOMAIN


class FakeApi:
    def __init__(self, objects: dict[str, Any]) -> None:
        self.objects = objects

    def get(self, url: str, **params: Any) -> Any:
        key = url + ("?" + params["labelSelector"] if params else "")
        if key not in self.objects:
            raise ApiError(404, "not found")
        return self.objects[key]


def test_names_resolve_from_services_and_endpoint_slices() -> None:
    slices = {"items": [{"endpoints": [{"addresses": ["10.200.0.5"], "hostname": "train-0", "conditions": {"ready": True}},
                                       {"addresses": ["10.200.0.6"], "hostname": "train-1", "conditions": {"ready": False}}]}]}
    api = FakeApi({
        "/api/v1/namespaces/ns/services/train": {"spec": {"clusterIP": "None"}},
        "/api/v1/namespaces/ns/services/web": {"spec": {"clusterIP": "10.100.0.20"}},
        "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices?kubernetes.io/service-name=train": slices,
    })
    resolve = resolver(api, "cluster.local")  # type: ignore[arg-type]
    assert resolve("web.ns.svc.cluster.local") == ["10.100.0.20"]
    assert resolve("train.ns.svc.cluster.local") == ["10.200.0.5"]
    assert resolve("train-1.train.ns.svc.cluster.local") is None  # not ready yet: CoreDNS does not serve it
    assert resolve("train-9.train.ns.svc.cluster.local") is None
    assert resolve("nope.ns.svc.cluster.local") is None
    assert resolve("10-200-0-9.ns.pod.cluster.local") == ["10.200.0.9"]
    assert resolve("example.com") is None
