"""The addresses of one cluster, all derived from its index (so that several clusters, e.g. `make
cluster` and a test session, live side by side on one machine): the pod network on a bridge of its
own, the Service network, the `kubernetes` Service and cluster DNS addresses, the DNS domain."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

#: Clusters on one machine at most (indexes 0..MAX_CLUSTERS-1).
MAX_CLUSTERS = 50
DOMAIN = "cluster.local"


@dataclass(frozen=True)
class Addresses:
    index: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < MAX_CLUSTERS:
            raise ValueError(f"cluster index {self.index} outside 0..{MAX_CLUSTERS - 1}")

    @property
    def pod_cidr(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{200 + self.index}.0.0/16")

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The bridge's address: the pods' default route, where the host answers them."""
        return self.pod_cidr.network_address + 1

    @property
    def service_cidr(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{100 + self.index}.0.0/16")

    @property
    def kubernetes_service(self) -> ipaddress.IPv4Address:
        """The ClusterIP the apiserver gives the `kubernetes` Service (the first of the range)."""
        return self.service_cidr.network_address + 1

    @property
    def dns_service(self) -> ipaddress.IPv4Address:
        """Where pods send DNS queries (the conventional .10 of the Service range)."""
        return self.service_cidr.network_address + 10

    @property
    def bridge(self) -> str:
        return f"spinbr{self.index}"

    @property
    def netns_prefix(self) -> str:
        return f"spin{self.index}-"

    def pod_ip(self, n: int) -> ipaddress.IPv4Address:
        """The n-th pod address (n >= 1); .0.1 is the gateway."""
        if not 1 <= n < self.pod_cidr.num_addresses - 2:
            raise ValueError(f"pod address {n} outside the pod network {self.pod_cidr}")
        return self.gateway + n

    def apiserver_names(self) -> list[str]:
        """Subject alternative names of the apiserver's serving certificate."""
        return ["127.0.0.1", "localhost", str(self.kubernetes_service), str(self.gateway), "kubernetes",
                "kubernetes.default", "kubernetes.default.svc", f"kubernetes.default.svc.{DOMAIN}"]
