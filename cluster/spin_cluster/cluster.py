"""A whole cluster, up and down: the binaries (built once), an index of its own on this machine,
the control plane, the process kubelet with its nodes; `down` stops every process it started (and
whatever its pods left running), removes the pod network and the claims' folders, and the state."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from spin_cluster import build, controlplane, kwok, procs
from spin_cluster.addresses import MAX_CLUSTERS, Addresses
from spin_cluster.components import ETCD, KUBERNETES, KWOK
from spin_cluster.controlplane import STATE_FILE, ClusterError, State
from spin_cluster.kubelet.config import REGISTRY_FILE, ImageConfig, KubeletConfig, NodeConfig
from spin_cluster.kubelet.main import CONFIG_FILE
from spin_cluster.kubelet.network import NETNS_DIR, bridge_exists

CLAIMS = Path("/run/spin-cluster")
HOSTPATH_PV_ROOT = "/tmp/hostpath_pv/"


@dataclass
class Options:
    nodes: int = 2
    gpus_per_node: int = 8
    cpu: str = "32"
    memory: str = "256Gi"
    node_prefix: str = "spin-node"
    images: list[ImageConfig] = field(default_factory=list)
    #: nodes whose pods kwok fakes (Running at once, Job pods Complete after it): no processes
    kwok_nodes: int = 0


def _claimed(index: int) -> bool:
    claim = CLAIMS / str(index)
    if not claim.exists():
        return False
    root = Path(claim.read_text().strip())
    try:
        return any(p.alive() for p in State.load(root).procs)
    except (OSError, ValueError, KeyError):
        return False


def _allocate_index(root: Path) -> int:
    CLAIMS.mkdir(parents=True, exist_ok=True)
    with open(CLAIMS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for i in range(MAX_CLUSTERS):
            if not _claimed(i) and not bridge_exists(Addresses(i)):
                (CLAIMS / str(i)).write_text(str(root.resolve()) + "\n")
                return i
    raise ClusterError(f"{MAX_CLUSTERS} clusters already run on this machine: stop one (spin-cluster down)")


def running(root: Path) -> State | None:
    """The cluster whose state is `root`, when any of its processes still runs."""
    if not (root / STATE_FILE).exists():
        return None
    with contextlib.suppress(OSError, ValueError, KeyError):
        state = State.load(root)
        if state.running():
            return state
    return None


def up(root: Path, options: Options | None = None) -> State:
    """Start a cluster with its state in `root` (made fresh); returns once its nodes are Ready."""
    options = options or Options()
    if os.geteuid() != 0:
        raise ClusterError("the process kubelet makes network and mount namespaces for its pods: run as root "
                           "(e.g. `sudo make cluster`)")
    if running(root) is not None:
        raise ClusterError(f"a cluster already runs with its state in {root}: `spin-cluster down --state {root}` first")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    started = time.monotonic()
    binaries = build.ensure_all([ETCD, KUBERNETES, *([KWOK] if options.kwok_nodes else [])])
    built = time.monotonic()
    index = _allocate_index(root)
    names = [f"{options.node_prefix}-{i}" for i in range(options.nodes)]
    ports = {k: procs.free_port() for k in ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler")}
    state = State(root, index, KUBERNETES.version, ports, names)
    state.save()
    try:
        controlplane.start(state, binaries)
        capacity = {"cpu": options.cpu, "memory": options.memory, "pods": "110", "ephemeral-storage": "200Gi"}
        if options.gpus_per_node:
            capacity["nvidia.com/gpu"] = str(options.gpus_per_node)
        config = KubeletConfig(
            nodes=[NodeConfig(n, capacity=dict(capacity), port=procs.free_port(),
                              labels={"nvidia.com/gpu.present": "true"} if options.gpus_per_node else {})
                   for n in names],
            images=list(options.images), registry=str(root / REGISTRY_FILE))
        config.save(root / CONFIG_FILE)
        start_kubelet(state)
        api = state.client()
        if options.kwok_nodes:
            kwok.start(state, binaries, options.kwok_nodes, capacity)

        def default_account() -> bool:
            try:
                api.get("/api/v1/namespaces/default/serviceaccounts/default")
                return True
            except Exception:
                return False

        controlplane.wait_until(default_account, 60, "the default ServiceAccount", [state.log("kube-controller-manager")])
    except BaseException:
        down(root, remove=False)
        raise
    (root / "timings.json").write_text(json.dumps({"build_seconds": round(built - started, 1),
                                                   "start_seconds": round(time.monotonic() - built, 1)}) + "\n")
    return state


def start_kubelet(state: State) -> procs.Proc:
    """Start the process kubelet (it registers its nodes); returns once they are Ready."""
    kubelet, _ = procs.spawn("spin-kubelet", [sys.executable, "-m", "spin_cluster.kubelet", str(state.root)],
                             state.log("spin-kubelet"), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    state.procs = [p for p in state.procs if p.name != "spin-kubelet"] + [kubelet]
    state.save()
    api = state.client()

    def nodes_ready() -> bool:
        items = api.get("/api/v1/nodes").get("items") or []
        ready = {n["metadata"]["name"] for n in items
                 if any(c["type"] == "Ready" and c["status"] == "True" for c in (n.get("status") or {}).get("conditions") or [])}
        return set(state.nodes) <= ready

    controlplane.wait_until(nodes_ready, 60, "the nodes to be Ready", [state.log("spin-kubelet")], kubelet)
    return kubelet


def restart_kubelet(state: State) -> procs.Proc:
    """Stop the kubelet (its containers first) and start it again: as on a real node, this is how a
    Node object deleted by hand comes back (a kubelet registers its node only when it starts)."""
    procs.stop([p for p in state.procs if p.name == "spin-kubelet"], grace=30)
    return start_kubelet(state)


def down(root: Path, remove: bool = True) -> list[str]:
    """Stop the cluster of `root`; returns what was stopped. With `remove`, its state goes too."""
    if not (root / STATE_FILE).exists():
        if remove and root.exists():
            shutil.rmtree(root)
        return []
    state = State.load(root)
    claims: list[str] = []
    with contextlib.suppress(Exception):  # the claims' folders, while the API can still say which they are
        pvs = state.client().get("/api/v1/persistentvolumes").get("items") or []
        claims = [pv["spec"]["hostPath"]["path"] for pv in pvs if (pv["spec"].get("hostPath") or {}).get("path", "")
                  .startswith(HOSTPATH_PV_ROOT)]
    stopped = [p.name for p in state.running()]
    kubelet = [p for p in state.procs if p.name == "spin-kubelet"]
    procs.stop(kubelet, grace=30)  # it stops its containers first
    addrs = state.addresses
    _kill_pods(addrs)
    for proc in reversed(state.procs):  # one by one: the apiserver stops cleanly only while etcd runs
        if proc.name != "spin-kubelet":
            procs.stop([proc])
    from spin_cluster.kubelet.network import PodNetwork

    PodNetwork(addrs).teardown()
    with contextlib.suppress(OSError):
        claim = CLAIMS / str(state.index)
        if claim.exists() and claim.read_text().strip() == str(root.resolve()):
            claim.unlink()
    if remove:
        for folder in claims:
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    return stopped


def _kill_pods(addrs: Addresses) -> None:
    """SIGKILL every process still inside a pod network namespace of this cluster."""
    if not NETNS_DIR.is_dir():
        return
    for ns in NETNS_DIR.iterdir():
        if ns.name.startswith(addrs.netns_prefix):
            out = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True).stdout
            for pid in out.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
