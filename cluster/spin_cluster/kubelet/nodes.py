"""A node of the process kubelet in the API: its Node object (capacity with `nvidia.com/gpu`,
labels, taints, Ready, addresses, the kubelet endpoint) and the heartbeats a kubelet sends (its
Lease in kube-node-lease every 10 s, the Node's status every minute), under the node's own
identity (Node authorization and NodeRestriction admission apply to it as to a real kubelet)."""

from __future__ import annotations

import platform
from typing import Any

from spin_cluster.api import STRATEGIC, ApiError, Client, path
from spin_cluster.kubelet.config import NODE_LABEL, NodeConfig
from spin_cluster.kubelet.status import now

LEASE_SECONDS = 40
RENEW_SECONDS = 10
STATUS_SECONDS = 60
RUNTIME = "spin-process://0.1"


def node_conditions(previous: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    old = {c["type"]: c for c in previous or []}
    stamp = now()
    out = []
    for kind, status, reason, message in (
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True", "KubeletReady", "spin-kubelet is posting ready status"),
    ):
        before = old.get(kind, {})
        transition = before.get("lastTransitionTime") if before.get("status") == status else stamp
        out.append({"type": kind, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": stamp, "lastTransitionTime": transition or stamp})
    return out


def node_object(cfg: NodeConfig, host_ip: str, version: str) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": cfg.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
              "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64", NODE_LABEL: "true", **cfg.labels}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": cfg.name, "labels": labels,
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"taints": cfg.taints} if cfg.taints else {},
    }


def node_status(cfg: NodeConfig, host_ip: str, version: str, previous: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    uname = platform.uname()
    return {
        "capacity": cfg.capacity, "allocatable": cfg.capacity,
        "conditions": node_conditions(previous),
        "addresses": [{"type": "InternalIP", "address": host_ip}, {"type": "Hostname", "address": cfg.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.port}},
        "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": uname.release,
                     "osImage": "spin-kubelet (the host's root, processes)", "containerRuntimeVersion": RUNTIME,
                     "kubeletVersion": version, "kubeProxyVersion": "", "operatingSystem": "linux",
                     "architecture": "amd64"},
    }


class NodeAgent:
    """Registers one node and keeps its heartbeats going (call `beat` every second or so)."""

    def __init__(self, api: Client, cfg: NodeConfig, host_ip: str, version: str) -> None:
        self.api, self.cfg, self.host_ip, self.version = api, cfg, host_ip, version
        self._last_renew = 0.0
        self._last_status = 0.0

    def register(self) -> None:
        body = node_object(self.cfg, self.host_ip, self.version)
        try:
            self.api.create(path("", "v1", "nodes"), body)
        except ApiError as e:
            if e.status != 409:
                raise
            self.api.patch(path("", "v1", "nodes", name=self.cfg.name), {"metadata": {"labels": body["metadata"]["labels"]}})
        self._post_status()
        self._renew()

    def beat(self, monotonic: float) -> None:
        if monotonic - self._last_renew >= RENEW_SECONDS:
            self._renew()
            self._last_renew = monotonic
        if monotonic - self._last_status >= STATUS_SECONDS:
            self._post_status()
            self._last_status = monotonic

    def _post_status(self) -> None:
        node = self.api.get(path("", "v1", "nodes", name=self.cfg.name))
        status = node_status(self.cfg, self.host_ip, self.version, (node.get("status") or {}).get("conditions"))
        self.api.patch(path("", "v1", "nodes", name=self.cfg.name, subresource="status"), {"status": status},
                       content_type=STRATEGIC)

    def _renew(self) -> None:
        stamp = now().replace("Z", ".000000Z")
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": self.cfg.name, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": self.cfg.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": stamp}}
        where = path("coordination.k8s.io", "v1", "leases", "kube-node-lease", self.cfg.name)
        try:
            self.api.patch(where, {"spec": lease["spec"]})
        except ApiError as e:
            if e.status != 404:
                raise
            node = self.api.get(path("", "v1", "nodes", name=self.cfg.name))
            lease["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": self.cfg.name,
                                                     "uid": node["metadata"]["uid"]}]
            self.api.create(path("coordination.k8s.io", "v1", "leases", "kube-node-lease"), lease)
