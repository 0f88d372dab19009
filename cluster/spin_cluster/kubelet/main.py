"""The process kubelet: registers its nodes, watches the pods bound to them and runs each as local
processes (pods.py), serves the `kubernetes` Service and cluster DNS to the pods, and serves
container logs to the apiserver. Run as `python -m spin_cluster.kubelet STATE_DIR` (root: it
makes network and mount namespaces). SIGTERM stops every container, then the pod network."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spin_cluster.addresses import DOMAIN
from spin_cluster.api import STRATEGIC, ApiError, Client, path
from spin_cluster.controlplane import DNS_USER, State, node_user
from spin_cluster.kubelet import status as st
from spin_cluster.kubelet.config import KubeletConfig, NodeConfig
from spin_cluster.kubelet.dns import DnsServer, resolver
from spin_cluster.kubelet.network import PodNetwork
from spin_cluster.kubelet.nodes import NodeAgent
from spin_cluster.kubelet.pods import PodWorker, Services, event_sender
from spin_cluster.kubelet.proxy import TcpForwarder
from spin_cluster.kubelet.server import KubeletServer

CONFIG_FILE = "kubelet.json"
#: Seconds the containers get to stop when the kubelet itself stops.
SHUTDOWN_GRACE = 10.0


class Kubelet:
    def __init__(self, state: State, config: KubeletConfig) -> None:
        self.state, self.config = state, config
        self.addresses = state.addresses
        self.network = PodNetwork(self.addresses)
        self.root = state.root / "kubelet"
        self.stop_flag = threading.Event()
        self.workers: dict[str, PodWorker] = {}
        #: (namespace, pod name) → (uid, node) of every pod run here and not yet deleted
        self.index: dict[tuple[str, str], tuple[str, str]] = {}
        self.lock = threading.Lock()
        self.services = Services(str(self.addresses.kubernetes_service), 443, str(self.addresses.dns_service), DOMAIN,
                                 str(self.addresses.gateway))
        self.clients = {n.name: Client(state.endpoint(node_user(n.name)), user_agent=f"spin-kubelet/{n.name}")
                        for n in config.nodes}
        self._stoppers: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ start / stop

    def run(self) -> None:
        self.network.bridge_up()
        self._stoppers.append(self.network.teardown)
        forwarder = TcpForwarder((self.services.api_host, self.services.api_port),
                                 ("127.0.0.1", self.state.ports["apiserver"])).start()
        self._stoppers.append(forwarder.stop)
        dns_api = Client(self.state.endpoint(DNS_USER), user_agent="spin-dns")
        dns = DnsServer(self.services.dns, resolver(dns_api, DOMAIN)).start()
        self._stoppers.append(dns.stop)
        agents = []
        for node in self.config.nodes:
            agent = NodeAgent(self.clients[node.name], node, self.services.host_ip, self.state.version)
            agent.register()
            agents.append(agent)
            pki = self.state.pki
            server = KubeletServer(self.services.host_ip, node.port, pki.kubelet, pki.kubelet_key, pki.ca, self._log_of)
            self._stoppers.append(server.start().stop)
            threading.Thread(target=self._watch, args=(node,), name=f"watch-{node.name}", daemon=True).start()
        print(f"spin-kubelet: nodes {[n.name for n in self.config.nodes]} ready", flush=True)
        while not self.stop_flag.wait(1.0):
            now = time.monotonic()
            for agent in agents:
                try:
                    agent.beat(now)
                except (ApiError, OSError) as e:
                    print(f"spin-kubelet: heartbeat of {agent.cfg.name}: {e}", file=sys.stderr, flush=True)
            with self.lock:
                for uid, worker in list(self.workers.items()):
                    if worker.done.is_set():
                        del self.workers[uid]
        self._shutdown()

    def _shutdown(self) -> None:
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.request_delete(SHUTDOWN_GRACE)
            worker.keep_object = True
        for worker in workers:
            worker.done.wait(SHUTDOWN_GRACE + 10)
        for stop in reversed(self._stoppers):
            with contextlib.suppress(Exception):
                stop()

    # ------------------------------------------------------------------ pods

    def _watch(self, node: NodeConfig) -> None:
        api = self.clients[node.name]
        selector = {"fieldSelector": f"spec.nodeName={node.name}"}
        while not self.stop_flag.is_set():
            try:
                listing = api.get(path("", "v1", "pods"), **selector)
                live = set()
                for pod in listing.get("items") or []:
                    live.add(pod["metadata"]["uid"])
                    self._handle(node, pod)
                self._forget_missing(node.name, live)
                rv = listing["metadata"]["resourceVersion"]
                for event in api.watch(path("", "v1", "pods"), resourceVersion=rv, timeout_seconds=60, **selector):
                    if self.stop_flag.is_set():
                        return
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        break  # e.g. 410 Gone: list again
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        self._deleted(obj)
                    else:
                        self._handle(node, obj)
            except Exception as e:  # the API went away for a moment: list and watch again
                if not self.stop_flag.is_set():
                    print(f"spin-kubelet: watch of {node.name}: {e!r}", file=sys.stderr, flush=True)
                    time.sleep(1.0)

    def _handle(self, node: NodeConfig, pod: dict[str, Any]) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        uid = meta["uid"]
        api = self.clients[node.name]
        with self.lock:
            worker = self.workers.get(uid)
            if worker is not None:
                worker.update(pod)
                if meta.get("deletionTimestamp"):
                    worker.request_delete(float(meta.get("deletionGracePeriodSeconds") or 0))
                return
            if (meta["namespace"], meta["name"]) in self.index and self.index[(meta["namespace"], meta["name"])][0] == uid:
                known = True  # ran here before and has ended
            else:
                known = False
        terminal = status.get("phase") in ("Succeeded", "Failed")
        if meta.get("deletionTimestamp") and (terminal or known or not status.get("startTime")):
            with contextlib.suppress(ApiError):  # nothing runs: the kubelet completes the deletion
                api.delete(path("", "v1", "pods", meta["namespace"], meta["name"]),
                           {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})
            return
        if terminal or known:
            return
        if status.get("startTime") and pod["spec"].get("restartPolicy") != "Always":
            self._lost(api, pod)  # started by an earlier run of this kubelet, whose containers are gone
            return
        folder = self.root / "pods" / uid
        worker = PodWorker(api, pod, node.name, folder, self.config, self.network, self.services,
                           event_sender(api, node.name), allocatable=dict(node.capacity))
        with self.lock:
            self.workers[uid] = worker
            self.index[(meta["namespace"], meta["name"])] = (uid, node.name)
        worker.start()

    def _deleted(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if self.index.get((meta["namespace"], meta["name"]), ("",))[0] == uid:
                del self.index[(meta["namespace"], meta["name"])]
        if worker is not None:
            worker.gone = True
            threading.Thread(target=self._remove_when_done, args=(worker,), daemon=True).start()
        else:
            shutil.rmtree(self.root / "pods" / uid, ignore_errors=True)

    def _remove_when_done(self, worker: PodWorker) -> None:
        worker.done.wait()
        shutil.rmtree(worker.root, ignore_errors=True)

    def _forget_missing(self, node: str, live: set[str]) -> None:
        with self.lock:
            gone = [(key, uid) for key, (uid, n) in self.index.items() if n == node and uid not in live]
        for (ns, name), uid in gone:
            self._deleted({"metadata": {"namespace": ns, "name": name, "uid": uid}})

    def _lost(self, api: Client, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        containers = [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "restartCount": 0,
                       "state": {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown",
                                                "message": "The container could not be located when the pod was "
                                                           "terminated", "finishedAt": st.now()}}}
                      for c in pod["spec"]["containers"]]
        with contextlib.suppress(ApiError):
            api.patch(path("", "v1", "pods", meta["namespace"], meta["name"], "status"),
                      {"metadata": {"uid": meta["uid"]}, "status": {"phase": "Failed", "containerStatuses": containers}},
                      content_type=STRATEGIC)

    def _log_of(self, ns: str, pod: str, container: str, previous: bool) -> tuple[Path, Callable[[], bool]] | None:
        with self.lock:
            uid, _ = self.index.get((ns, pod), (None, None))
            worker = self.workers.get(uid or "")
        if uid is None:
            return None
        folder = self.root / "pods" / uid / "containers" / container
        logs = sorted(folder.glob("*.log"), key=lambda p: int(p.stem)) if folder.is_dir() else []
        if previous:
            logs = logs[:-1]
        if not logs:
            return None
        log = logs[-1]

        def running() -> bool:
            return worker is not None and not worker.done.is_set() and not previous

        return log, running


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m spin_cluster.kubelet STATE_DIR", file=sys.stderr)
        return 2
    root = Path(args[0])
    state = State.load(root)
    kubelet = Kubelet(state, KubeletConfig.load(root / CONFIG_FILE))
    signal.signal(signal.SIGTERM, lambda *_: kubelet.stop_flag.set())
    signal.signal(signal.SIGINT, lambda *_: kubelet.stop_flag.set())
    try:
        kubelet.run()
    except BaseException:
        kubelet.stop_flag.set()
        kubelet._shutdown()
        raise
    return 0
