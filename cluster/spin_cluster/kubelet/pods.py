"""One pod's life on the process kubelet, in a thread of its own: the sandbox (a network namespace
and an address), the volumes, the init containers one after the other, then the containers as
local processes (enter.py) once their images are pulled (ErrImagePull and ImagePullBackOff for a
tag the registry lacks), restarts by the restart policy with back-off, readiness and liveness
probes, the status written back to the API, and deletion with the grace period (SIGTERM, then
SIGKILL), after which the kubelet removes the pod object, as a kubelet does."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spin_cluster.api import STRATEGIC, ApiError, Client, Unreachable, path
from spin_cluster.kubelet import env as env_mod
from spin_cluster.kubelet import status as st
from spin_cluster.kubelet.config import KubeletConfig
from spin_cluster.kubelet.network import PodNetwork
from spin_cluster.kubelet.volumes import PodVolumes, VolumeNotReady

ENTER = Path(__file__).with_name("enter.py")
#: Restart back-off of restartPolicy Always/OnFailure: 10 s doubling to 5 min (the kubelet's).
BACKOFF_START, BACKOFF_MAX = 10.0, 300.0
TERMINATION_LOG = "/dev/termination-log"
POLL = 0.1


@dataclass
class Services:
    """What every pod of the node is given: the `kubernetes` Service and the cluster DNS."""

    api_host: str
    api_port: int
    dns: str
    domain: str
    host_ip: str


@dataclass
class Probe:
    spec: dict[str, Any]
    started: float
    last: float = 0.0
    failures: int = 0
    successes: int = 0

    def due(self, now: float) -> bool:
        return (now - self.started >= self.spec.get("initialDelaySeconds", 0)
                and now - self.last >= self.spec.get("periodSeconds", 10))


@dataclass
class Running:
    """A container process."""

    state: st.ContainerState
    spec: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    started_mono: float = 0.0
    log: Path | None = None
    status_file: Path | None = None
    message_file: Path | None = None
    backoff: float = 0.0
    next_start: float = 0.0
    readiness: Probe | None = None
    liveness: Probe | None = None
    killed_reason: str | None = None
    #: the image pull's back-off (0: the image was pulled, or no pull failed yet)
    pull_backoff: float = 0.0


@dataclass
class PodWorker:
    api: Client
    pod: dict[str, Any]
    node: str
    root: Path
    config: KubeletConfig
    network: PodNetwork
    services: Services
    event: Callable[[dict[str, Any], str, str, str], None]
    allocatable: dict[str, str] = field(default_factory=dict)
    #: set by the watch: deletion requested, with this grace period (seconds)
    delete_grace: float | None = None
    gone: bool = False  # the pod object no longer exists
    #: the kubelet stops: containers are stopped, the pod object is left as it is
    keep_object: bool = False
    pod_ip: str = ""
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    init: list[Running] = field(default_factory=list)
    main: list[Running] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    volumes: PodVolumes | None = None
    host_paths: dict[str, Path] = field(default_factory=dict)
    start_time: str = ""
    errors: list[str] = field(default_factory=list)
    _last_status: dict[str, Any] | None = None
    #: the last status computed has not reached the API yet (it was unreachable)
    _unwritten: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def name(self) -> str:
        return f"{self.pod['metadata']['namespace']}/{self.pod['metadata']['name']}"

    @property
    def restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy", "Always"))

    def start(self) -> PodWorker:
        spec = self.pod["spec"]
        self.init = [Running(st.ContainerState(c["name"], c.get("image", ""), init=True), c)
                     for c in spec.get("initContainers") or []]
        self.main = [Running(st.ContainerState(c["name"], c.get("image", "")), c) for c in spec["containers"]]
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)
        self.thread.start()
        return self

    def request_delete(self, grace: float) -> None:
        with self._lock:
            self.delete_grace = grace if self.delete_grace is None else min(grace, self.delete_grace)

    def update(self, pod: dict[str, Any]) -> None:
        """A newer version of the pod from the watch (conditions others added, deletion)."""
        with self._lock:
            self.pod = pod

    # ------------------------------------------------------------------ the life of the pod

    def _run(self) -> None:
        try:
            self._live()
        except Exception as e:  # a kubelet bug must not take the node down; it shows in the pod's status
            import traceback

            self.errors.append(traceback.format_exc())
            print(f"spin-kubelet: pod {self.name}: {e!r}", file=sys.stderr, flush=True)
            with contextlib.suppress(Exception):
                self._kill_all(0)
        finally:
            self._finish()

    def _live(self) -> None:
        self.start_time = st.now()
        self.pod_ip = str(self.network.add_pod(self.uid))
        self.conditions = st.conditions(self.pod.get("status", {}).get("conditions") or [], sandbox=True,
                                        initialized=not self.init, ready=False)
        self._write_status()
        if not self._prepare_volumes():
            return
        self._write_pod_files()
        for run in self.init:
            if not self._run_init(run):
                return
        self.conditions = st.conditions(self.conditions, sandbox=True, initialized=True, ready=False)
        for run in self.main:
            self._start(run)
        self._write_status()
        self._supervise()

    def _deleting(self) -> bool:
        return self.delete_grace is not None or self.gone

    def _prepare_volumes(self) -> bool:
        self.volumes = PodVolumes(self.api, self.pod, self.root / "volumes", self.pod_ip, self.services.host_ip,
                                  self.allocatable)
        warned = ""
        while not self._deleting():
            try:
                self.host_paths = self.volumes.prepare()
                return True
            except (VolumeNotReady, env_mod.ConfigError, Unreachable) as e:
                if str(e) != warned:
                    warned = str(e)
                    self.event(self.pod, "Warning", "FailedMount", f"MountVolume.SetUp failed: {e}")
                    for run in self.init + self.main:
                        run.state.state = {"waiting": {"reason": "ContainerCreating", "message": str(e)}}
                    self._write_status()
                time.sleep(1.0)
        return False

    def _write_pod_files(self) -> None:
        """/etc/hosts, /etc/resolv.conf and /etc/hostname of the pod (the kubelet manages them)."""
        meta, spec = self.pod["metadata"], self.pod["spec"]
        hostname = spec.get("hostname") or meta["name"]
        etc = self.root / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        names = hostname
        if spec.get("subdomain"):
            names = f"{hostname}.{spec['subdomain']}.{meta['namespace']}.svc.{self.services.domain} {hostname}"
        hosts = ["# Kubernetes-managed hosts file (spin-kubelet).", "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost",
                 f"{self.pod_ip}\t{names}"]
        hosts += [f"{ip}\t{' '.join(h['hostnames'])}" for h in spec.get("hostAliases") or [] for ip in [h["ip"]]]
        (etc / "hosts").write_text("\n".join(hosts) + "\n")
        ns = meta["namespace"]
        d = self.services.domain
        policy = spec.get("dnsPolicy", "ClusterFirst")
        if policy == "Default":
            (etc / "resolv.conf").write_bytes(Path("/etc/resolv.conf").read_bytes())
        else:
            (etc / "resolv.conf").write_text(
                f"search {ns}.svc.{d} svc.{d} {d}\nnameserver {self.services.dns}\noptions ndots:5\n")
        (etc / "hostname").write_text(hostname + "\n")

    def _run_init(self, run: Running) -> bool:
        """Run an init container to success (restarting it unless the policy is Never)."""
        while True:
            if self._deleting():
                return False
            now = time.monotonic()
            if run.proc is None and now >= run.next_start:
                self._start(run)
                self._write_status()
            if run.proc is not None and run.proc.poll() is not None:
                self._ended(run)
                code = (run.state.terminated or {}).get("exitCode", 1)
                self._write_status()
                if code == 0:
                    return True
                if self.restart_policy == "Never":
                    return False
                self._schedule_restart(run)
            time.sleep(POLL)

    def _supervise(self) -> None:
        last_token_check = time.monotonic()
        while True:
            if self._deleting():
                self._kill_all(self.delete_grace if self.delete_grace is not None else 0)
                return
            changed = False
            now = time.monotonic()
            for run in self.main:
                if run.proc is not None and run.proc.poll() is not None:
                    self._ended(run)
                    changed = True
                    code = (run.state.terminated or {}).get("exitCode", 1)
                    if self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0):
                        self._schedule_restart(run)
                elif run.proc is None and run.next_start and now >= run.next_start:
                    self._start(run)
                    changed = True
                elif run.proc is not None:
                    changed |= self._probe(run, now)
            ready = all(r.state.ready for r in self.main)
            before = [c.get("status") for c in self.conditions]
            self.conditions = st.conditions(self.conditions, sandbox=True, initialized=True, ready=ready)
            changed |= before != [c.get("status") for c in self.conditions]
            if changed or self._unwritten:
                self._write_status()
            if self._phase() in ("Succeeded", "Failed"):
                return
            if now - last_token_check > 30 and self.volumes is not None:
                last_token_check = now
                with contextlib.suppress(ApiError, OSError):
                    self.volumes.refresh_tokens()
            time.sleep(POLL)

    def _finish(self) -> None:
        """Write the final status; on deletion, remove the pod object; free the sandbox."""
        with contextlib.suppress(Exception):
            self._kill_all(0)
        while not self.gone and not self.keep_object:  # a pod that ended while the apiserver was down
            try:  # is reported once it is back
                self._write_status(final=True)
            except Exception:
                break
            if not self._unwritten:
                break
            time.sleep(1.0)
        while self._deleting() and not self.gone and not self.keep_object:
            meta = self.pod["metadata"]
            try:
                self.api.delete(path("", "v1", "pods", meta["namespace"], meta["name"]),
                                {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                                 "preconditions": {"uid": meta["uid"]}})
                break
            except Unreachable:
                time.sleep(1.0)
            except ApiError as e:
                if not e.passing:
                    break
                time.sleep(1.0)
        self.network.remove_pod(self.uid)
        if self.volumes is not None:
            self.volumes.teardown()
        for run in self.init + self.main:
            if run.log is not None:  # the containers' folders go; their logs stay for `kubectl logs`
                shutil.rmtree(run.log.parent / "rootfs", ignore_errors=True)
        self.done.set()

    # ------------------------------------------------------------------ containers

    def _security(self, container: dict[str, Any]) -> tuple[int, int, list[int], bool, bool]:
        """uid, gid, supplementary groups, read-only root, no_new_privs (pod context, then container's)."""
        pod_sc = self.pod["spec"].get("securityContext") or {}
        sc = container.get("securityContext") or {}
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))) and not uid:
            raise env_mod.ConfigError("container has runAsNonRoot and image will run as root")
        uid = int(uid or 0)
        gid = int(sc.get("runAsGroup", pod_sc.get("runAsGroup", 0)) or 0)
        groups = [gid]
        if pod_sc.get("fsGroup") is not None:
            groups.append(int(pod_sc["fsGroup"]))
        groups += [int(g) for g in pod_sc.get("supplementalGroups") or []]
        return (uid, gid, sorted(set(groups)), bool(sc.get("readOnlyRootFilesystem")),
                sc.get("allowPrivilegeEscalation") is False)

    def _lookup(self, kind: str, name: str) -> dict[str, str] | None:
        plural = "configmaps" if kind == "configmap" else "secrets"
        try:
            obj = self.api.get(path("", "v1", plural, self.pod["metadata"]["namespace"], name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return env_mod.secret_data(obj) if kind == "secret" else dict(obj.get("data") or {})

    def _pulled(self, run: Running) -> bool:
        """Pull the container's image, as a kubelet does before creating the container. A tag the
        registry lacks leaves it waiting: ErrImagePull, then ImagePullBackOff, tried again with the
        kubelet's image back-off (10 s doubling to 5 min) until the tag is pushed."""
        image = str(run.spec.get("image", ""))
        if image not in self.config.unpushed():
            run.pull_backoff = 0.0
            return True
        first = not run.pull_backoff
        run.pull_backoff = BACKOFF_START if first else min(run.pull_backoff * 2, BACKOFF_MAX)
        run.next_start = time.monotonic() + run.pull_backoff
        if first:
            failed = f'Failed to pull image "{image}": {image}: not found'
            self.event(self.pod, "Warning", "Failed", failed)
            run.state.state = {"waiting": {"reason": "ErrImagePull", "message": failed}}
            self._write_status()
        backoff = f'Back-off pulling image "{image}"'
        self.event(self.pod, "Normal", "BackOff", backoff)
        run.state.state = {"waiting": {"reason": "ImagePullBackOff", "message": backoff}}
        self._write_status()
        return False

    def _start(self, run: Running) -> None:
        spec = run.spec
        folder = self.root / "containers" / spec["name"]
        if not self._pulled(run):
            return
        try:
            uid, gid, groups, readonly, no_new_privs = self._security(spec)
            image = spec.get("image", "")
            environment = env_mod.container_env(
                self.pod, spec, image_env=self.config.image_env(image),
                services=env_mod.service_env(self.services.api_host, self.services.api_port), lookup=self._lookup,
                pod_ip=self.pod_ip, host_ip=self.services.host_ip, node_allocatable=self.allocatable)
            environment.setdefault("HOME", "/root" if uid == 0 else "/")
            argv = env_mod.command_line(spec, environment)
        except (env_mod.ConfigError, ApiError, Unreachable) as e:
            run.state.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            run.next_start = time.monotonic() + 2.0
            self._write_status()
            self.event(self.pod, "Warning", "Failed", f"Error: {e}")
            return
        rootfs = folder / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        for sub in ("upper", "work", "merged"):
            (rootfs / sub).mkdir(parents=True)
        message_file = folder / f"termination-log.{run.state.restart_count}"
        message_file.write_bytes(b"")
        message_file.chmod(0o666)
        mounts = [{"source": str(self.root / "etc" / f), "target": f"/etc/{f}", "readonly": False}
                  for f in ("hosts", "resolv.conf", "hostname")]
        mounts.append({"source": str(message_file), "target": spec.get("terminationMessagePath") or TERMINATION_LOG})
        mounts += [{"source": m["source"], "target": m["target"], "readonly": False}
                   for m in self.config.image_mounts(spec.get("image", ""))]
        for vm in spec.get("volumeMounts") or []:
            source = self.host_paths.get(vm["name"])
            if source is None:
                continue
            if vm.get("subPath"):
                source = source / vm["subPath"]
                source.mkdir(parents=True, exist_ok=True)
            mounts.append({"source": str(source), "target": vm["mountPath"], "readonly": bool(vm.get("readOnly"))})
        status_file = folder / "start-status.json"
        status_file.unlink(missing_ok=True)
        cfg = {"netns": str(self.network.netns_path(self.uid)),
               "hostname": self.pod["spec"].get("hostname") or self.pod["metadata"]["name"], "upper": str(rootfs / "upper"),
               "work": str(rootfs / "work"), "merged": str(rootfs / "merged"), "readonly": readonly,
               "traversable": self.config.traversable(), "mounts": mounts,
               "image_paths": [*self.config.image_paths, *(m["source"] for m in self.config.image_mounts(spec.get("image", "")))], "uid": uid, "gid": gid, "groups": groups,
               "no_new_privs": no_new_privs, "cwd": spec.get("workingDir") or "/", "argv": argv, "env": environment,
               "status": str(status_file)}
        (folder / "config.json").write_text(json.dumps(cfg))
        log = folder / f"{run.state.restart_count}.log"
        with open(log, "ab") as out:
            run.proc = subprocess.Popen([sys.executable, "-I", str(ENTER), str(folder / "config.json")], stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        run.log, run.status_file, run.message_file = log, status_file, message_file
        run.started_at, run.started_mono, run.killed_reason = st.now(), time.monotonic(), None
        run.state.state = {"running": {"startedAt": run.started_at}}
        run.state.started = True
        run.state.ready = "readinessProbe" not in spec and not run.state.init
        run.readiness = Probe(spec["readinessProbe"], time.monotonic()) if "readinessProbe" in spec else None
        run.liveness = Probe(spec["livenessProbe"], time.monotonic()) if "livenessProbe" in spec else None
        self.event(self.pod, "Normal", "Started", f"Started container {spec['name']}")

    def _ended(self, run: Running) -> None:
        assert run.proc is not None
        code = run.proc.returncode
        if code < 0:  # killed by a signal: the runtime's 128 + signal
            code = 128 - code
        reason, message = run.killed_reason, ""
        if run.status_file is not None and run.status_file.exists():
            with contextlib.suppress(ValueError, OSError):
                doc = json.loads(run.status_file.read_text() or "{}")
                reason, message = doc.get("reason", reason), doc.get("message", "")
        if not message and run.message_file is not None:
            with contextlib.suppress(OSError):
                message = run.message_file.read_bytes()[:4096].decode(errors="replace")
        if (not message and code != 0 and run.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
                and run.log is not None):
            message = "\n".join(run.log.read_text(errors="replace").splitlines()[-80:])[-2048:]
        run.state.state = {"terminated": st.terminated(code, run.started_at, reason=reason, message=message)}
        run.state.ready = False
        run.proc = None

    def _schedule_restart(self, run: Running) -> None:
        ran = time.monotonic() - run.started_mono
        run.backoff = BACKOFF_START if ran > 600 or not run.backoff else min(run.backoff * 2, BACKOFF_MAX)
        run.next_start = time.monotonic() + run.backoff
        run.state.last_state = dict(run.state.state)
        run.state.restart_count += 1
        run.state.state = {"waiting": {"reason": "CrashLoopBackOff",
                                       "message": f"back-off {run.backoff:.0f}s restarting failed container="
                                                  f"{run.spec['name']} pod={self.pod['metadata']['name']}"}}
        self.event(self.pod, "Warning", "BackOff", "Back-off restarting failed container")

    def _probe(self, run: Running, now: float) -> bool:
        changed = False
        for kind in ("readiness", "liveness"):
            probe: Probe | None = getattr(run, kind)
            if probe is None or not probe.due(now):
                continue
            probe.last = now
            ok = self._check(run.spec, probe.spec)
            if ok:
                probe.successes += 1
                probe.failures = 0
            else:
                probe.failures += 1
                probe.successes = 0
            if kind == "readiness":
                ready = run.state.ready
                if ok and probe.successes >= probe.spec.get("successThreshold", 1):
                    ready = True
                elif not ok and probe.failures >= probe.spec.get("failureThreshold", 3):
                    ready = False
                changed |= ready != run.state.ready
                run.state.ready = ready
            elif not ok and probe.failures >= probe.spec.get("failureThreshold", 3):
                self.event(self.pod, "Warning", "Unhealthy", f"Liveness probe failed for {run.spec['name']}")
                run.killed_reason = "Error"
                self._kill(run, float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)))
                probe.failures = 0
                changed = True
        return changed

    def _check(self, container: dict[str, Any], probe: dict[str, Any]) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        if "httpGet" in probe:
            h = probe["httpGet"]
            port = self._port(container, h["port"])
            url = f"{h.get('scheme', 'HTTP').lower()}://{h.get('host') or self.pod_ip}:{port}{h.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    return 200 <= resp.status < 400
            except OSError:
                return False
        if "tcpSocket" in probe:
            try:
                with socket.create_connection((self.pod_ip, self._port(container, probe["tcpSocket"]["port"])), timeout):
                    return True
            except OSError:
                return False
        return True  # exec and grpc probes: not run by the process kubelet (counted as passing)

    @staticmethod
    def _port(container: dict[str, Any], port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in container.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise env_mod.ConfigError(f"no container port named {port!r}")

    def _kill(self, run: Running, grace: float) -> None:
        proc = run.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(grace, 0))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the whole container, whatever its main process left
        proc.wait()
        self._ended(run)

    def _kill_all(self, grace: float) -> None:
        live = [r for r in self.init + self.main if r.proc is not None]
        if not live:
            return
        for run in live:
            self.event(self.pod, "Normal", "Killing", f"Stopping container {run.spec['name']}")
            assert run.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + max(grace, 0)
        while time.monotonic() < deadline and any(r.proc is not None and r.proc.poll() is None for r in live):
            time.sleep(0.05)
        for run in live:
            self._kill(run, 0)

    # ------------------------------------------------------------------ status

    def _phase(self) -> str:
        initialized = all((r.state.terminated or {}).get("exitCode") == 0 for r in self.init)
        return st.phase(self.restart_policy, [r.state for r in self.init], [r.state for r in self.main], initialized)

    def _write_status(self, final: bool = False) -> None:
        phase = self._phase()
        if final and phase not in ("Succeeded", "Failed"):
            # stopped for good (deleted, or the node stopped): a container that never ended is
            # reported as the kubelet does when it cannot find it; the phase becomes terminal
            for run in self.main + self.init:
                if not run.state.terminated:
                    run.state.state = {"terminated": st.terminated(
                        137, run.started_at or st.now(), reason="ContainerStatusUnknown",
                        message="The container could not be located when the pod was terminated")}
            codes = [(r.state.terminated or {}).get("exitCode") for r in self.main]
            phase = "Succeeded" if codes and all(c == 0 for c in codes) else "Failed"
        ready = phase == "Running" and all(r.state.ready for r in self.main)
        conds = st.conditions(self.conditions, sandbox=phase in ("Pending", "Running"),
                              initialized=all((r.state.terminated or {}).get("exitCode") == 0 for r in self.init),
                              ready=ready)
        self.conditions = conds
        status: dict[str, Any] = {
            "phase": phase, "conditions": conds, "hostIP": self.services.host_ip,
            "hostIPs": [{"ip": self.services.host_ip}], "startTime": self.start_time,
            "containerStatuses": [r.state.to_status() for r in self.main],
        }
        if self.pod_ip:
            status["podIP"], status["podIPs"] = self.pod_ip, [{"ip": self.pod_ip}]
        if self.init:
            status["initContainerStatuses"] = [r.state.to_status() for r in self.init]
        if status == self._last_status:
            self._unwritten = False
            return
        meta = self.pod["metadata"]
        try:
            self.api.patch(path("", "v1", "pods", meta["namespace"], meta["name"], "status"),
                           {"metadata": {"uid": meta["uid"]}, "status": status}, content_type=STRATEGIC)
            self._last_status = status
            self._unwritten = False
        except Unreachable:
            self._unwritten = True  # the apiserver restarts: written on a later pass, as a kubelet's status manager does
        except ApiError as e:
            self._unwritten = False
            if e.status == 404:
                self.gone = True
            elif e.passing:
                self._unwritten = True
            elif e.status != 409:
                raise


def event_sender(api: Client, node: str) -> Callable[[dict[str, Any], str, str, str], None]:
    """A function posting a core/v1 Event about a pod, from this node's kubelet."""

    def send(pod: dict[str, Any], kind: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        now = st.now()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta["uid"]},
            "reason": reason, "message": message, "type": kind, "count": 1, "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "kubelet", "host": node}, "reportingComponent": "kubelet", "reportingInstance": node,
        }
        with contextlib.suppress(ApiError, OSError):
            api.create(path("", "v1", "events", meta["namespace"]), body)

    return send
