"""What the fault tests on the real control plane share (test_real_faults.py, test_proxy_faults.py,
test_real_cluster_faults.py, the chart's uninstall test and benchmarks/operator_scale_real.py): the
operator as a process of its own, waiting for a step's pods, counting Jobs, reruns and retries, and
what a failed run's pods said."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from spin_cluster.procs import free_port
from tests.images.buildah import Container, Volume
from tests.kube import REPO, Kube, wait
from tests.operator.e2e import E2E
from tests.reliability.fault_proxy import FaultProxy

#: Where the operator's kubeconfig is mounted in its image (as the chart would mount a Secret).
CONTAINER_KUBECONFIG = "/etc/spin-operator/kubeconfig"
ONE_ITERATION = {"iterations": 1}
JOBS_OF_ONE_ITERATION = sorted(f"e2e-it0-{s}" for s in ("gen", "convert", "train", "eval"))


def iso(t: float | None = None) -> str:
    """Wall-clock time as the audit log writes it (to the second, comparable as text)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))


def pods_of(c: E2E, job: str) -> list[dict[str, Any]]:
    return [p for p in c.pods().values() if (p["metadata"].get("labels") or {}).get("job-name") == job]


def running(c: E2E, job: str, n: int = 1) -> list[dict[str, Any]] | None:
    """The pods of `job` once `n` of them run (their processes started: the instant step is held)."""
    pods = [p for p in pods_of(c, job) if (p.get("status") or {}).get("phase") == "Running"]
    return pods if len(pods) >= n else None


def reran(kube: Kube) -> dict[tuple[str, int], int]:
    """(job, index) of instant steps that started more than once."""
    return {k: n for k, n in Counter(kube.starts()).items() if n > 1}


def duplicates(creations: list[str]) -> dict[str, int]:
    return {n: k for n, k in Counter(creations).items() if k > 1}


def complete(c: E2E, timeout: float = 180) -> dict[str, Any]:
    run = c.wait_phase("e2e", ("Complete", "Failed"), timeout)
    assert run["status"]["phase"] == "Complete", run["status"]
    return run


def retries(run: dict[str, Any]) -> int:
    return sum(s.get("retries", 0) for it in run["status"]["iterations"] for s in it["steps"])


class OperatorProcess:
    """`python -m spin_operator.main -n <namespace>` as the chart's ServiceAccount, with the chart's
    environment, in a process of its own that a test SIGKILLs (no cleanup, no last write) or stops.
    With a `container` (tests/images/buildah.py), `spin-operator` runs from that image's own files
    instead (`buildah run`, its user, a read-only root, the host's network to reach the apiserver on
    loopback), given the same identity (a kubeconfig with the CA inside, mounted) and environment."""

    def __init__(self, kube: Kube, namespace: str, log: Path, env: dict[str, str] | None = None,
                 container: Container | None = None) -> None:
        self.kubeconfig, self.env = kube.operator_identity({"watchNamespaces": [namespace]})
        self.env = {**self.env, **(env or {})}
        self.namespace, self.log, self.container = namespace, log, container
        self.proc: subprocess.Popen[bytes] | None = None

    def _argv(self, port: int) -> tuple[list[str], dict[str, str]]:
        """The command line and the environment of the process to start."""
        args = ["-n", self.namespace, "--metrics-port", "0", "--liveness", f"http://127.0.0.1:{port}/healthz"]
        if self.container is None:
            env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO)])}
            return [sys.executable, "-m", "spin_operator.main", *args], env
        inside = self.log.with_name(f"{self.log.stem}-kubeconfig.yaml")
        config = yaml.safe_load(Path(self.kubeconfig).read_text())
        for cluster in config["clusters"]:
            ca = Path(cluster["cluster"].pop("certificate-authority"))
            cluster["cluster"]["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
        inside.write_text(yaml.safe_dump(config))
        prefix = self.container.argv([], network_host=True, volumes=[Volume(inside, CONTAINER_KUBECONFIG, read_only=True)],
                                     env={**self.env, "KUBECONFIG": CONTAINER_KUBECONFIG, "PYTHONUNBUFFERED": "1"})
        return [*prefix, "spin-operator", *args], dict(os.environ)

    def start(self, timeout: float = 90) -> None:
        port = free_port()
        argv, env = self._argv(port)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        def live() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"the operator exited: {self.tail()}"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)

        try:
            wait(live, timeout, "the operator's liveness endpoint", errors=(OSError,))
        except BaseException:  # never leave an operator (or its container) behind a failed start
            self.kill()
            raise

    def stop(self, grace: float = 30) -> None:
        """SIGTERM, as a kubelet stops a container: to the operator itself, which in a container is
        the innermost process (not `buildah run`, which would SIGKILL it); SIGKILL after `grace` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            targets = leaf_processes(self.proc.pid) if self.container is not None else [self.proc.pid]
            for pid in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL to the operator and whatever runs it (its process group)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def tracebacks(self) -> list[str]:
        return [line for line in self.tail().splitlines() if line.startswith("Traceback")]


def leaf_processes(root: int) -> list[int]:
    """The processes under `root` (itself included) that have no children of their own (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    leaves, todo = [], [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        if not children.get(pid):
            leaves.append(pid)
    return leaves


def through(op: OperatorProcess, proxy: FaultProxy, tmp_path: Path) -> OperatorProcess:
    """The operator's requests go through the proxy (same token, same RBAC)."""
    op.kubeconfig = proxy.kubeconfig(op.kubeconfig, tmp_path / "operator-via-proxy.yaml")
    return op


def failed_pod_logs(c: E2E) -> dict[str, Any]:
    """Each failed pod's container states and the end of its containers' logs (the kubelet's files)."""
    out: dict[str, Any] = {}
    for pod in c.core.list_namespaced_pod(c.namespace).items:
        if pod.status.phase != "Failed":
            continue
        states = [(s.name, s.state.terminated.exit_code, s.state.terminated.reason, s.state.terminated.message)
                  for s in [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]
                  if s.state and s.state.terminated]
        logs = {str(f.relative_to(c.kube.state.root)): f.read_text(errors="replace")[-800:]
                for f in c.kube.state.root.rglob("*.log") if pod.metadata.uid in str(f) or pod.metadata.name in str(f)}
        said = [line for f in (c.kube.state.root / "logs").glob("*.log") if "audit" not in f.name
                for line in f.read_text(errors="replace").splitlines() if pod.metadata.name in line][-5:]
        out[pod.metadata.name] = {"states": states, "logs": logs, "components said": said}
    out["who changed pods and Jobs"] = [
        (e["stageTimestamp"][11:23], e["user"]["username"], e["verb"], e["objectRef"].get("resource"),
         e["objectRef"].get("name"), e["objectRef"].get("subresource"), (e.get("responseStatus") or {}).get("code"))
        for e in c.kube.audit(c.namespace)
        if (e["objectRef"].get("resource") == "pods" and e["verb"] in ("delete", "deletecollection"))
        or (e["objectRef"].get("resource") == "jobs" and e["verb"] in ("patch", "update", "delete", "create")
            and not e["user"]["username"].startswith("system:serviceaccount:kube-system"))]
    return out
