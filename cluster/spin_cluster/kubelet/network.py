"""The pod network of the process kubelet (what a CNI plugin does): a bridge on the host holding the
pods' gateway, the `kubernetes` Service and the cluster DNS addresses, and per pod a network
namespace with its own loopback and an eth0 on the bridge, so every pod has an address and ports of
its own, as on a cluster."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import threading
from pathlib import Path

from spin_cluster.addresses import Addresses

NETNS_DIR = Path("/run/netns")


class NetworkError(RuntimeError):
    pass


def _ip(*args: str, batch: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *args] + (["-batch", "-"] if batch is not None else [])
    proc = subprocess.run(cmd, input="\n".join(batch) + "\n" if batch is not None else None, capture_output=True,
                          text=True)
    if check and proc.returncode != 0:
        raise NetworkError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()} {batch or ''}")
    return proc


class PodNetwork:
    """The bridge and the pods' namespaces of one cluster; addresses are handed out and returned."""

    def __init__(self, addresses: Addresses) -> None:
        self.addresses = addresses
        self._lock = threading.Lock()
        self._used: dict[int, str] = {}  # address number → pod uid

    def bridge_up(self) -> None:
        a = self.addresses
        self.teardown()  # leftovers of a kubelet that did not stop cleanly
        prefix = a.pod_cidr.prefixlen
        _ip(batch=[
            f"link add {a.bridge} type bridge",
            f"addr add {a.gateway}/{prefix} dev {a.bridge}",
            f"addr add {a.kubernetes_service}/32 dev {a.bridge}",
            f"addr add {a.dns_service}/32 dev {a.bridge}",
            f"link set {a.bridge} up",
        ])

    def netns_path(self, uid: str) -> Path:
        return NETNS_DIR / self.netns_name(uid)

    def netns_name(self, uid: str) -> str:
        return f"{self.addresses.netns_prefix}{uid[:13]}"

    def add_pod(self, uid: str) -> ipaddress.IPv4Address:
        """A network namespace for pod `uid` with an address on the bridge; returns the address."""
        with self._lock:
            n = next(i for i in range(2, self.addresses.pod_cidr.num_addresses - 2) if i not in self._used)
            self._used[n] = uid
        a = self.addresses
        ip = a.pod_ip(n)
        ns = self.netns_name(uid)
        host_if = host_veth(a, n)
        if Path(f"/sys/class/net/{host_if}").exists():  # left by a pod whose namespace a process still held
            _ip("link", "del", host_if, check=False)
        try:
            _ip(batch=[
                f"netns add {ns}",
                f"link add {host_if} type veth peer name eth0 netns {ns}",
                f"link set {host_if} master {a.bridge} up",
            ])
            _ip("-n", ns, batch=[
                "link set lo up",
                f"addr add {ip}/{a.pod_cidr.prefixlen} dev eth0",
                "link set eth0 up",
                f"route add default via {a.gateway}",
            ])
        except NetworkError:
            self.remove_pod(uid)
            raise
        return ip

    def remove_pod(self, uid: str) -> None:
        """The pod's namespace and its veth pair. Deleting the namespace takes the pair along only
        if no process still holds the namespace; the host end is deleted by name too, or the next
        pod given this address number would fail with `RTNETLINK answers: File exists`."""
        _ip("netns", "del", self.netns_name(uid), check=False)
        with self._lock:
            numbers = [n for n, owner in self._used.items() if owner == uid]
        for n in numbers:
            if Path(f"/sys/class/net/{host_veth(self.addresses, n)}").exists():
                _ip("link", "del", host_veth(self.addresses, n), check=False)
        with self._lock:
            for n in numbers:
                if self._used.get(n) == uid:
                    del self._used[n]

    def teardown(self) -> None:
        """Every namespace of this cluster's pods, and the bridge."""
        prefix = self.addresses.netns_prefix
        if NETNS_DIR.is_dir():
            for ns in NETNS_DIR.iterdir():
                if ns.name.startswith(prefix):
                    _ip("netns", "del", ns.name, check=False)
        # A namespace deleted while a process still holds it lives on with its veth pair: the host
        # end (named after this cluster's index) would refuse the next pod of that number.
        for link in stale_veths(self.addresses):
            _ip("link", "del", link, check=False)
        if Path(f"/sys/class/net/{self.addresses.bridge}").exists():
            _ip("link", "del", self.addresses.bridge, check=False)
        with self._lock:
            self._used.clear()


def host_veth(addresses: Addresses, n: int) -> str:
    """The host end of pod address number `n`'s veth pair."""
    return f"vs{addresses.index}p{n}"


def stale_veths(addresses: Addresses) -> list[str]:
    """The host ends of this cluster index's veth pairs that exist on the host."""
    net = Path("/sys/class/net")
    pattern = re.compile(rf"vs{addresses.index}p\d+")
    return sorted(d.name for d in net.iterdir() if pattern.fullmatch(d.name)) if net.is_dir() else []


def bridge_exists(addresses: Addresses) -> bool:
    return Path(f"/sys/class/net/{addresses.bridge}").exists()
