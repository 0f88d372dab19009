"""Starts and stops the control plane of one cluster: etcd, kube-apiserver (RBAC + Node
authorization, token authentication, service-account tokens, an audit log), kube-controller-manager
(every default controller, upstream's host-path provisioner) and kube-scheduler, all on loopback,
with certificates and tokens made fresh in the cluster's state folder."""

from __future__ import annotations

import contextlib
import json
import secrets
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spin_cluster import pki as pki_mod
from spin_cluster import procs
from spin_cluster.addresses import Addresses
from spin_cluster.api import ApiError, Client, Endpoint

STATE_FILE = "cluster.json"
ADMIN_USER = "spin-admin"
#: The cluster DNS's identity (bound to a ClusterRole like CoreDNS's).
DNS_USER = "spin-dns"
#: The default StorageClass: upstream's testing provisioner (kube-controller-manager
#: --enable-hostpath-provisioner), one folder under /tmp/hostpath_pv per claim.
STORAGE_CLASS = "standard"
HOSTPATH_PROVISIONER = "kubernetes.io/host-path"

#: What the audit log keeps: every request of users and service accounts other than the
#: control plane's own components and nodes (tests read who created what, and what was refused).
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "users": ["system:kube-controller-manager", "system:kube-scheduler", "system:apiserver"]},
        {"level": "None", "userGroups": ["system:nodes", "system:serviceaccounts:kube-system"]},
        {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
        {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*", "/version"]},
        {"level": "Metadata"},
    ],
}


def node_user(node: str) -> str:
    """A node's identity: Node authorization and NodeRestriction admission apply to it."""
    return f"system:node:{node}"


class ClusterError(RuntimeError):
    """The cluster could not be started or reached; the message says what to look at."""


@dataclass
class Identity:
    """A user of the token file."""

    user: str
    groups: tuple[str, ...] = ()
    token: str = field(default_factory=lambda: secrets.token_hex(24))


@dataclass
class State:
    """What `down` and every client need to know of a running cluster (state/cluster.json)."""

    root: Path
    index: int
    version: str
    ports: dict[str, int]
    nodes: list[str]
    procs: list[procs.Proc] = field(default_factory=list)

    @property
    def addresses(self) -> Addresses:
        return Addresses(self.index)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def kubeconfig(self) -> Path:
        """The admin's kubeconfig (system:masters)."""
        return self.root / "kubeconfig"

    @property
    def pki(self) -> pki_mod.Pki:
        return pki_mod.Pki(self.root / "pki")

    @property
    def audit_log(self) -> Path:
        return self.root / "logs" / "audit.log"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def token(self, user: str) -> str:
        for line in (self.root / "tokens.csv").read_text().splitlines():
            token, name, *_ = line.split(",")
            if name == user:
                return token
        raise KeyError(f"no token for {user}")

    def endpoint(self, user: str = ADMIN_USER) -> Endpoint:
        return Endpoint(self.server, self.token(user), str(self.pki.ca))

    def client(self, user: str = ADMIN_USER, agent: str = "spin-cluster") -> Client:
        return Client(self.endpoint(user), user_agent=agent)

    def save(self) -> None:
        doc = {"index": self.index, "version": self.version, "ports": self.ports, "nodes": self.nodes,
               "procs": [p.to_json() for p in self.procs]}
        tmp = self.root / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.rename(self.root / STATE_FILE)

    @classmethod
    def load(cls, root: Path) -> State:
        doc = json.loads((root / STATE_FILE).read_text())
        return cls(root, doc["index"], doc["version"], doc["ports"], doc["nodes"],
                   [procs.Proc(**p) for p in doc["procs"]])

    def running(self) -> list[procs.Proc]:
        return [p for p in self.procs if p.alive()]


def kubeconfig(server: str, ca: Path, user: str, token: str, name: str = "spin-cluster") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
        "current-context": name,
    }


def write_kubeconfig(path: Path, state: State, user: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(kubeconfig(state.server, state.pki.ca, user, state.token(user))))
    path.chmod(0o600)
    return path


def write_tokens(root: Path, identities: Sequence[Identity]) -> None:
    lines = [f'{i.token},{i.user},{i.user},"{",".join(i.groups)}"' for i in identities]
    path = root / "tokens.csv"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def wait_until(check: Callable[[], bool], timeout: float, what: str, logs: Sequence[Path] = (),
               proc: procs.Proc | None = None) -> None:
    """Poll `check` until it holds; fail at once when `proc` (the process awaited) has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.alive():
            raise ClusterError(f"{proc.name} exited while waiting for {what}{_tails(logs)}")
        time.sleep(0.1)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{_tails(logs)}")


def _tails(logs: Sequence[Path]) -> str:
    return "".join(f"\n--- {p} (last lines)\n{_tail(p)}" for p in logs)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _https_ok(url: str, token: str | None = None, ca: Path | None = None) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def healthy(state: State, name: str) -> Callable[[], bool]:
    """Whether the control-plane process `name` answers its health endpoint."""
    p = state.ports
    checks: dict[str, Callable[[], bool]] = {
        "etcd": lambda: http_ok(f"http://127.0.0.1:{p['etcd']}/health"),
        "kube-apiserver": lambda: _https_ok(f"{state.server}/readyz", state.token(ADMIN_USER), state.pki.ca),
        "kube-controller-manager": lambda: _https_ok(f"https://127.0.0.1:{p['controller_manager']}/healthz"),
        "kube-scheduler": lambda: _https_ok(f"https://127.0.0.1:{p['scheduler']}/healthz"),
    }
    if name not in checks:
        raise ClusterError(f"no control-plane process named {name!r}: one of {sorted(checks)}")
    return checks[name]


@contextlib.contextmanager
def crashed(state: State, name: str, timeout: float = 120) -> Iterator[None]:
    """The control-plane process `name` SIGKILLed (a crash: no shutdown) for the body of the
    `with`, then started again with the same command line, its log appended to, and awaited
    until healthy (etcd keeps its data folder). For tests of what a component's crash costs."""
    check = healthy(state, name)
    old = next((p for p in state.procs if p.name == name and p.alive()), None)
    if old is None or not old.argv:
        raise ClusterError(f"{name} is not running (or was started without its command line recorded)")
    procs.kill([old])
    try:
        yield
    finally:
        new, _ = procs.spawn(name, old.argv, state.log(name))
        state.procs[state.procs.index(old)] = new
        state.save()
        wait_until(check, timeout, f"{name} healthy again", [state.log(name)], new)


def restart(state: State, name: str, timeout: float = 120) -> None:
    """SIGKILL the control-plane process `name` and start it again at once (see `crashed`)."""
    with crashed(state, name, timeout):
        pass


def start(state: State, binaries: dict[str, Path]) -> None:
    """Start etcd, the apiserver, the controller manager and the scheduler (in that order, each
    ready before the next), recording each process in `state` as soon as it runs."""
    root = state.root
    addrs = state.addresses
    pki = pki_mod.create(root / "pki", addrs.apiserver_names(), ["127.0.0.1", str(addrs.gateway), "localhost"])
    identities = [Identity(ADMIN_USER, ("system:masters",)), Identity("system:kube-controller-manager"),
                  Identity("system:kube-scheduler"), Identity(DNS_USER),
                  *(Identity(node_user(n), ("system:nodes",)) for n in state.nodes)]
    write_tokens(root, identities)
    write_kubeconfig(state.kubeconfig, state, ADMIN_USER)
    kcm_config = write_kubeconfig(root / "kubeconfigs" / "controller-manager.yaml", state, "system:kube-controller-manager")
    sched_config = write_kubeconfig(root / "kubeconfigs" / "scheduler.yaml", state, "system:kube-scheduler")
    (root / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
    p = state.ports

    def launch(name: str, argv: list[str]) -> procs.Proc:
        proc, _ = procs.spawn(name, argv, state.log(name))
        state.procs.append(proc)
        state.save()
        return proc

    etcd = launch("etcd", [
        str(binaries["etcd"]), "--name", "spin-cluster", "--data-dir", str(root / "etcd"),
        "--listen-client-urls", f"http://127.0.0.1:{p['etcd']}", "--advertise-client-urls", f"http://127.0.0.1:{p['etcd']}",
        "--listen-peer-urls", f"http://127.0.0.1:{p['etcd_peer']}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{p['etcd_peer']}",
        "--initial-cluster", f"spin-cluster=http://127.0.0.1:{p['etcd_peer']}",
        "--unsafe-no-fsync",  # a test cluster: speed over durability across power loss
        "--quota-backend-bytes", str(2 * 1024**3), "--log-level", "warn",
    ])
    wait_until(healthy(state, "etcd"), 30, "etcd", [state.log("etcd")], etcd)
    apiserver = launch("kube-apiserver", [
        str(binaries["kube-apiserver"]), f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
        "--bind-address=127.0.0.1", f"--secure-port={p['apiserver']}",
        # pods reach the host (and through it the apiserver) at the pod bridge's address
        f"--advertise-address={addrs.gateway}",
        f"--tls-cert-file={pki.apiserver}", f"--tls-private-key-file={pki.apiserver_key}",
        f"--client-ca-file={pki.ca}", f"--token-auth-file={root / 'tokens.csv'}",
        "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
        f"--service-cluster-ip-range={addrs.service_cidr}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
        f"--kubelet-client-certificate={pki.kubelet_client}", f"--kubelet-client-key={pki.kubelet_client_key}",
        f"--kubelet-certificate-authority={pki.ca}", "--kubelet-preferred-address-types=InternalIP",
        f"--requestheader-client-ca-file={pki.front_proxy_ca}", "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_client}", f"--proxy-client-key-file={pki.front_proxy_client_key}",
        f"--audit-policy-file={root / 'audit-policy.yaml'}", f"--audit-log-path={state.audit_log}",
        "--audit-log-maxsize=200", "--audit-log-maxbackup=1",
        "--profiling=false", "--v=1",
    ])
    wait_until(healthy(state, "kube-apiserver"), 90, "kube-apiserver /readyz",
               [state.log("kube-apiserver"), state.log("etcd")], apiserver)
    bootstrap(state.client())
    kcm = launch("kube-controller-manager", [
        str(binaries["kube-controller-manager"]), f"--kubeconfig={kcm_config}",
        f"--authentication-kubeconfig={kcm_config}", f"--authorization-kubeconfig={kcm_config}",
        "--bind-address=127.0.0.1", f"--secure-port={p['controller_manager']}", "--leader-elect=false",
        f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca}",
        "--use-service-account-credentials=true", "--enable-hostpath-provisioner=true",
        f"--cluster-signing-cert-file={pki.ca}", f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={addrs.service_cidr}", "--profiling=false", "--v=1",
    ])
    scheduler = launch("kube-scheduler", [
        str(binaries["kube-scheduler"]), f"--kubeconfig={sched_config}",
        f"--authentication-kubeconfig={sched_config}", f"--authorization-kubeconfig={sched_config}",
        "--bind-address=127.0.0.1", f"--secure-port={p['scheduler']}", "--leader-elect=false",
        "--profiling=false", "--v=1",
    ])
    wait_until(healthy(state, "kube-controller-manager"), 60,
               "kube-controller-manager /healthz", [state.log("kube-controller-manager")], kcm)
    wait_until(healthy(state, "kube-scheduler"), 60, "kube-scheduler /healthz",
               [state.log("kube-scheduler")], scheduler)


DNS_RULES = [
    {"apiGroups": [""], "resources": ["services", "endpoints", "pods", "namespaces"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
]


def _ensure(api: Client, url: str, body: dict[str, Any]) -> None:
    try:
        api.create(url, body)
    except ApiError as e:
        if e.status != 409:
            raise


def bootstrap(api: Client) -> None:
    """What a cluster installer adds: the default StorageClass and the cluster DNS's RBAC."""
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    _ensure(api, f"{rbac}/clusterroles", {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                                          "metadata": {"name": "spin:dns"}, "rules": DNS_RULES})
    _ensure(api, f"{rbac}/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "spin:dns"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "spin:dns"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": DNS_USER}]})
    sc = {
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": HOSTPATH_PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate",
    }
    _ensure(api, "/apis/storage.k8s.io/v1/storageclasses", sc)
