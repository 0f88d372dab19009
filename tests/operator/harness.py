"""The emulator harness: kmock's Kubernetes emulator in a thread, the real operator (kopf) in a
thread (or a subprocess), and a fake kubelet + Job controller that runs Jobs. The operator's e2e
suite runs on a real control plane (tests/operator/e2e.py); this harness remains for what still
needs faults a real control plane cannot make on request (tests/reliability, until the fault
suite moves there), the operator image test and the scale benchmark.

The kubelet has two modes:
- `instant`: every pod "succeeds" at once; it stores the spec like the init container would
  (`spin init-run`, from the Job's ConfigMap) and writes the step's markers itself;
- `real`: it runs each pod's init container and container argv as local processes (`spin` /
  `torchrun` from this venv, /data mapped to a temp dir, one process per index with
  JOB_COMPLETION_INDEX set) and reports their exit codes.
Either way it writes Job status back (active/succeeded/failed, completedIndexes,
failedIndexes, conditions) honouring suspend, backoffLimit and backoffLimitPerIndex, and can
inject failures per (job suffix, index).

Every request the operator makes is recorded (method, path, verb, resource, subresource) from
kmock's request log, told apart from the harness's by User-Agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import jsonpatch
import kmock
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from typing_extensions import Self, override

from spin_runtime.api.spec import GROUP, PLURAL, VERSION
from spin_runtime.launch import PROGRESS_PORT_ENV, PROGRESS_PORT_NAME
from tests.operator.kmock_internals import KmockEmulator, request_log
from tests.operator.operator_thread import OperatorThread

HARNESS_AGENT = "spin-e2e-harness"
VENV_BIN = Path(sys.executable).parent
MERGE = "application/merge-patch+json"


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- emulator


@attrs.frozen
class PatchRejected(kmock.KubernetesError):
    """A JSON patch whose `test` op failed (a stale resourceVersion): 422, as an API server says."""

    status: int = 422
    reason: str = "Invalid"
    message: str = "the JSON patch test failed"


@attrs.define(kw_only=True)
class SpinEmulator(KmockEmulator):
    """kmock's emulator (through the adapter, tests/operator/kmock_internals.py) plus the bits of
    API-server behaviour the operator relies on: `generateName` (kopf's events) and
    uid/resourceVersion/creationTimestamp on create, a new resourceVersion on every write, 422 for
    a JSON patch whose test fails."""

    @override
    async def respond(self, request: Any) -> Any:
        try:
            return await self._respond(request)
        except jsonpatch.JsonPatchException as e:  # kmock answers 500; an API server 422 Invalid
            raise PatchRejected(message=str(e)) from None

    async def _respond(self, request: Any) -> Any:
        if request.action is not None and request.action.value == "CREATE" and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:10]}"
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("resourceVersion", "1")
            meta.setdefault("creationTimestamp", now_iso())
        elif request.action is not None and request.action.value == "UPDATE" and isinstance(request.data, dict):
            # every write gets a new resourceVersion, as on a real API server (kopf relies on it)
            request.data.setdefault("metadata", {})["resourceVersion"] = str(next(_rv))
        elif request.action is not None and request.action.value == "UPDATE" and isinstance(request.data, list):
            # a JSON patch (kopf removing its finalizer): after its own ops, as the server would
            request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": str(next(_rv))})
        return await super().respond(request)


_rv = itertools.count(1000)


class Emulator:
    """kmock's KubernetesEmulator served on a local port from its own thread and loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stopping: asyncio.Event | None = None
        self.mock: SpinEmulator | None = None
        self.url = ""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as e:  # surfaced by start()
            self.error = e
            self.ready.set()

    async def _serve(self) -> None:
        self.stopping = asyncio.Event()
        mock = SpinEmulator()
        mock.resources.load_bundled()
        mock.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
            kind="SpinRun", singular="spinrun", namespaced=True, shortnames={"spin"}, subresources={"status"},
            verbs={"list", "watch", "get", "create", "update", "patch", "delete"},
        )
        async with mock, kmock.Server(mock) as server:
            self.mock = mock
            self.url = str(server.url).rstrip("/")
            self.ready.set()
            await self.stopping.wait()

    def start(self) -> Emulator:
        self.thread.start()
        self.ready.wait(30)
        if self.error or not self.url:
            raise RuntimeError(f"kmock did not start: {self.error!r}")
        return self

    def stop(self) -> None:
        if self.stopping is not None:
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)

    def kubeconfig(self, path: Path) -> Path:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {"token": "kmock"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
            "current-context": "kmock",
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    def requests(self, exclude_agent: str = HARNESS_AGENT) -> list[dict[str, Any]]:
        """The requests not made by the harness: {method, path, verb, resource, subresource, agent}."""
        assert self.mock is not None
        out = []
        for r in request_log(self.mock):
            agent = r.headers.get("User-Agent", "")
            if agent.startswith(exclude_agent):
                continue
            res = r.resource
            verb = _verb(r)
            out.append({
                "method": str(r.method.value if hasattr(r.method, "value") else r.method),
                "path": r.url.path,
                "verb": verb,
                "group": getattr(res, "group", None),
                "resource": getattr(res, "plural", None),
                "subresource": r.subresource,
                "namespace": r.namespace,
                "agent": agent.split("/")[0],
            })
        return out


def _verb(r: Any) -> str:
    """The RBAC verb of a request (get for non-resource URLs such as discovery)."""
    if getattr(r.resource, "plural", None) is None:
        return str(getattr(r.method, "value", r.method)).lower()
    action = r.action.value.lower() if r.action is not None else ""
    return {"fetch": "get", "update": "patch"}.get(action, action or str(getattr(r.method, "value", r.method)).lower())


def harness_client(url: str) -> client.ApiClient:
    cfg = client.Configuration(host=url)
    cfg.api_key = {"authorization": "Bearer kmock"}
    api = client.ApiClient(cfg)
    api.user_agent = HARNESS_AGENT
    return api


# --------------------------------------------------------------------------- operator


#: Arguments of an `OperatorCommand`: every namespace, no metrics or liveness ports.
OPERATOR_ARGS = ["--all-namespaces", "--metrics-port", "0", "--liveness", ""]


class OperatorCommand:
    """The operator as a process of its own, started through a command prefix: `[*prefix,
    "spin-operator", *OPERATOR_ARGS]` (an empty prefix runs this venv's console script; e.g.
    `buildah run ... CONTAINER --` runs it inside its image, and passes KUBECONFIG itself).
    KUBECONFIG is set to the emulator's kubeconfig, the output goes to `log`. Ready once it
    watches SpinRuns; stopped with SIGTERM to its process group, SIGKILL after 30 s."""

    def __init__(self, prefix: Sequence[str], kubeconfig: Path, emulator: Emulator, log: Path) -> None:
        self.argv = [*prefix, "spin-operator", *OPERATOR_ARGS] if prefix else [str(VENV_BIN / "spin-operator"), *OPERATOR_ARGS]
        self.kubeconfig = kubeconfig
        self.emulator = emulator
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def _spinrun_watches(self) -> int:
        return sum(1 for r in self.emulator.requests() if r["resource"] == "spinruns" and r["verb"] == "watch")

    def start(self, timeout: float = 120) -> OperatorCommand:
        before = self._spinrun_watches()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self._spinrun_watches() <= before:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"operator not watching SpinRuns after {timeout}s: {self.tail()}")
            time.sleep(0.1)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 30) -> None:
        """SIGTERM to the innermost processes (the operator itself, not a wrapper such as
        `buildah run`, which would SIGKILL it), as a kubelet stops a container; then SIGKILL."""
        if not self.alive():
            return
        assert self.proc is not None
        for pid in _leaf_processes(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def _leaf_processes(root: int) -> list[int]:
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


# --------------------------------------------------------------------------- kubelet


@dataclass
class PodRun:
    """One index of one Job attempt."""

    index: int
    failures: int = 0
    proc: subprocess.Popen[bytes] | None = None
    #: pending → running → succeeded | retry; stuck (cannot start: a trouble is injected);
    #: failed-index (podFailurePolicy FailIndex)
    phase: str = "pending"
    log: Path | None = None
    #: the Pod object shown in the API for the current incarnation (Kubelet(pods=True))
    pod_name: str | None = None
    incarnation: int = 0
    stuck: bool = False  # the current Pod object is one that could not start
    #: real mode: the local port this incarnation serves its progress on (every pod of a real
    #: cluster has its own IP; here they share 127.0.0.1, so each gets its own port)
    progress_port: int | None = None


@dataclass
class JobRun:
    name: str
    namespace: str
    uid: str
    pods: dict[int, PodRun] = field(default_factory=dict)
    start: str = ""
    #: set when podFailurePolicy's FailJob rule matched (the Job controller's message)
    policy_failure: str | None = None


#: Scheduler and kubelet messages of the pod troubles the kubelet can inject.
POD_TROUBLES: dict[str, dict[str, Any]] = {
    "Unschedulable": {"scheduled": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are "
                                   "available: 4 No preemption victims found for incoming pod."},
    "ClaimPending": {"scheduled": "0/4 nodes are available: pod has unbound immediate PersistentVolumeClaims. "
                                  "preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling."},
    "ImagePullBackOff": {"waiting": ("ImagePullBackOff", 'Back-off pulling image "registry.example.com/spinrun-trainer:0.1.0"')},
    "ErrImagePull": {"waiting": ("ErrImagePull", "rpc error: code = NotFound desc = failed to pull and unpack image")},
    "CreateContainerConfigError": {"waiting": ("CreateContainerConfigError", 'secret "hf-token" not found')},
    # not a trouble: scheduled, still pulling or creating (counts as waiting, not as failing)
    "ContainerCreating": {"waiting": ("ContainerCreating", "")},
}


def pod_failure_action(job: dict[str, Any], exit_code: int, disrupted: bool) -> tuple[str, int | None]:
    """What the Job controller does with a failed pod under the Job's podFailurePolicy (rules in
    order, first match wins): ("Ignore" | "FailJob" | "FailIndex" | "Count", rule index)."""
    rules = ((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or []
    for i, rule in enumerate(rules):
        on_codes = rule.get("onExitCodes")
        if on_codes is not None and not disrupted:
            values = set(on_codes.get("values") or [])
            hit = exit_code in values if on_codes.get("operator") == "In" else exit_code not in values and exit_code != 0
            if hit:
                return str(rule["action"]), i
        for pattern in rule.get("onPodConditions") or []:
            if disrupted and pattern.get("type") == "DisruptionTarget" and pattern.get("status", "True") == "True":
                return str(rule["action"]), i
    return "Count", None


class Kubelet:
    """Plays kubelet + Job controller for every Job in the emulator."""

    def __init__(
        self,
        url: str,
        data_root: Path,
        *,
        mode: str = "instant",
        markers: bool = True,
        poll: float = 0.05,
        failures: dict[tuple[str, int], int] | None = None,
        step_seconds: float = 0.0,
        pods: bool = False,
        honour_pod_failure_policy: bool = True,
    ) -> None:
        self.api = harness_client(url)
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.data_root = Path(data_root)
        self.mode = mode
        self.markers = markers
        self.poll = poll
        #: (job-name suffix like "it0-gen", index) → how many times that pod fails first.
        self.failures = dict(failures or {})
        self.step_seconds = step_seconds
        self.jobs: dict[str, JobRun] = {}
        #: Job-name suffixes (e.g. "it0-train") whose pods stay running until removed.
        self.hold: set[str] = set()
        self.done_at: dict[str, float] = {}  # job name → monotonic time its terminal status was written
        self.created_at: dict[str, float] = {}  # job name → monotonic time first seen
        self.pod_starts: list[tuple[str, int]] = []  # (job, index) for each pod start
        #: Show each pod as a Pod object (created, Running, Succeeded/Failed, deleted on suspend).
        self.pods = pods
        #: Apply a Job's podFailurePolicy as the Job controller does (False: as before it existed).
        self.honour_pod_failure_policy = honour_pod_failure_policy
        #: (suffix, index) → trouble name (POD_TROUBLES): that pod cannot start while it is set.
        self.troubles: dict[tuple[str, int], str] = {}
        #: (suffix, index) → how many times that pod is preempted (DisruptionTarget) once running.
        self.disruptions: dict[tuple[str, int], int] = {}
        #: (suffix, index) → exit code of every run of that pod while it is set.
        self.exit_codes: dict[tuple[str, int], int] = {}
        self.disrupted: list[tuple[str, int]] = []  # (job, index) of each preemption injected
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="kubelet", daemon=True)
        self.errors: list[str] = []

    def start(self, watch: bool = False) -> Kubelet:
        """Start polling Jobs (or, with `watch`, following a watch stream: cheaper at scale)."""
        if watch:
            self._wloop = asyncio.new_event_loop()
            self._wtask = self._wloop.create_task(self._watch())
            self.thread = threading.Thread(target=self._watch_loop, name="kubelet", daemon=True)
        self.thread.start()
        return self

    _wloop: asyncio.AbstractEventLoop | None = None
    _wtask: asyncio.Task[None] | None = None

    def _watch_loop(self) -> None:
        assert self._wloop is not None and self._wtask is not None
        with contextlib.suppress(asyncio.CancelledError):
            self._wloop.run_until_complete(self._wtask)
        self._wloop.close()

    async def _watch(self) -> None:
        """Follow `GET /apis/batch/v1/jobs?watch=true` line by line (aiohttp, like kopf). Every
        (re)start replays all Jobs, so the stream is kept open (stop() cancels it) rather than
        restarted on a short read timeout: at scale a replay costs thousands of events."""
        import aiohttp

        url = f"{self.api.configuration.host}/apis/batch/v1/jobs"
        async with aiohttp.ClientSession(headers={"User-Agent": HARNESS_AGENT}) as session:
            while not self._stop.is_set():
                try:
                    async with session.get(url, params={"watch": "true"}, timeout=aiohttp.ClientTimeout(sock_read=300)) as resp:
                        async for line in resp.content:
                            if self._stop.is_set():
                                return
                            if not line.strip():
                                continue
                            ev = json.loads(line)
                            if ev.get("type") in ("ADDED", "MODIFIED"):
                                self._tick(ev["object"])
                except (asyncio.TimeoutError, aiohttp.ClientError):
                    await asyncio.sleep(0.05)
                except Exception as e:
                    self.errors.append(repr(e))
                    await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        if self._wloop is not None and self._wtask is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._wloop.call_soon_threadsafe(self._wtask.cancel)
        self.thread.join(30)
        for jr in self.jobs.values():
            for p in jr.pods.values():
                if p.proc and p.proc.poll() is None:
                    p.proc.kill()

    # -- loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                items = self.batch.list_job_for_all_namespaces(_preload_content=False)
                jobs = json.loads(items.data).get("items") or []
                for job in jobs:
                    self._tick(job)
            except Exception as e:  # keep playing; tests assert on errors
                self.errors.append(repr(e))
            self._stop.wait(self.poll)

    def _tick(self, job: dict[str, Any]) -> None:
        meta, spec, status = job["metadata"], job["spec"], job.get("status") or {}
        name, ns = meta["name"], meta["namespace"]
        if any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in status.get("conditions") or []):
            return
        key = f"{ns}/{name}"
        jr = self.jobs.get(key)
        uid = meta.get("uid") or ""
        if jr is None or jr.uid != uid:  # new Job, or recreated under the same name
            if jr is not None:
                self._delete_pods(jr)  # the old Job's pods (the garbage collector's work)
            jr = self.jobs[key] = JobRun(name, ns, uid, start=now_iso())
            self.created_at.setdefault(name, time.monotonic())
        if spec.get("suspend"):
            self._suspend(jr, status)
            return
        if self._suffix(name) in self.hold:  # the test keeps this Job "running"
            if self.pods:  # its pods run (or cannot start, as injected) and never finish
                for i in range(int(spec.get("completions") or 1)):
                    pod = jr.pods.setdefault(i, PodRun(i))
                    if pod.pod_name is None:
                        trouble = self.troubles.get((self._suffix(name), i))
                        pod.phase = "stuck" if trouble else "running"
                        self._show_pod(job, jr, pod, "Pending" if trouble else "Running", trouble=trouble)
            if not status.get("active"):
                self._patch(name, ns, {"status": {"startTime": jr.start, "active": 1}})
            return
        n = int(spec.get("completions") or 1)
        indexed = spec.get("completionMode") == "Indexed"
        per_index = spec.get("backoffLimitPerIndex")
        job_limit = spec.get("backoffLimit", 6 if per_index is None else None)
        parallelism = int(spec.get("parallelism") or n)
        for i in range(n):
            jr.pods.setdefault(i, PodRun(i))
        # advance pods
        for pod in jr.pods.values():
            if pod.phase == "running":
                self._poll(job, jr, pod)
            elif pod.phase == "stuck" and (self._suffix(name), pod.index) not in self.troubles:
                pod.phase = "pending"  # the trouble was fixed (image pushed, Secret created, node added)
        running = sum(p.phase in ("running", "stuck") for p in jr.pods.values())
        for pod in sorted(jr.pods.values(), key=lambda p: p.index):
            if running >= parallelism:
                break
            if pod.phase in ("pending", "retry") and jr.policy_failure is None:
                over = per_index is not None and pod.failures > int(per_index)
                if not over:
                    self._start(job, jr, pod)
                    running += 1
                    if pod.phase == "running":
                        self._poll(job, jr, pod)
        # status
        succeeded = [p.index for p in jr.pods.values() if p.phase == "succeeded"]
        failed_idx = [p.index for p in jr.pods.values()
                      if per_index is not None and (p.failures > int(per_index) or p.phase == "failed-index")]
        total_failures = sum(p.failures for p in jr.pods.values())
        active = sum(p.phase in ("running", "stuck") for p in jr.pods.values())
        st: dict[str, Any] = {"startTime": jr.start, "active": active, "succeeded": len(succeeded), "failed": total_failures}
        if indexed:
            st["completedIndexes"] = _ranges(succeeded)
            if per_index is not None:
                st["failedIndexes"] = _ranges(failed_idx)
        conds: list[dict[str, Any]] = []
        if jr.policy_failure is not None:
            conds = [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": jr.policy_failure,
                      "lastTransitionTime": now_iso()}]
        elif failed_idx and per_index is not None:
            conds = [{"type": "Failed", "status": "True", "reason": "FailedIndexes", "message": "Job has failed indexes",
                      "lastTransitionTime": now_iso()}]
        elif per_index is None and job_limit is not None and total_failures > int(job_limit):
            conds = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                      "message": "Job has reached the specified backoff limit", "lastTransitionTime": now_iso()}]
        elif len(succeeded) == n:
            conds = [{"type": "Complete", "status": "True", "reason": "", "message": "", "lastTransitionTime": now_iso()}]
            st["completionTime"] = now_iso()
        if conds:
            st["conditions"] = conds
            st["active"] = 0
            for p in jr.pods.values():
                if p.proc and p.proc.poll() is None:
                    p.proc.kill()
        if st != job.get("status"):
            self._patch(name, ns, {"status": st})
        if conds:
            self.done_at[name] = time.monotonic()

    def _patch(self, name: str, ns: str, body: dict[str, Any]) -> None:
        try:
            self.batch.patch_namespaced_job_status(name, ns, body, _content_type=MERGE, _preload_content=False)
        except ApiException as e:
            if e.status != 404:
                raise

    def _suspend(self, jr: JobRun, status: dict[str, Any]) -> None:
        for p in jr.pods.values():
            if p.phase in ("running", "stuck"):
                if p.proc and p.proc.poll() is None:
                    p.proc.kill()
                p.phase = "pending"  # a suspended Job's pods are deleted; they start over on resume
                self._delete_pod(jr, p)
        if status.get("active") or not any(c.get("type") == "Suspended" for c in status.get("conditions") or []):
            self._patch(jr.name, jr.namespace, {"status": {"active": 0, "conditions": [
                {"type": "Suspended", "status": "True", "reason": "JobSuspended", "lastTransitionTime": now_iso()}]}})

    # -- pods
    def _suffix(self, name: str) -> str:
        parts = name.split("-")
        return "-".join(parts[-2:])

    def _start(self, job: dict[str, Any], jr: JobRun, pod: PodRun) -> None:
        key = (self._suffix(jr.name), pod.index)
        if key in self.troubles:  # the pod exists but cannot start: the scheduler or kubelet says why
            pod.phase = "stuck"
            if not pod.stuck or pod.pod_name is None:
                self._show_pod(job, jr, pod, "Pending", trouble=self.troubles[key])
            return
        self.pod_starts.append((jr.name, pod.index))
        if self.disruptions.get(key, 0) > 0:  # preempted or evicted while running
            self.disruptions[key] -= 1
            self.disrupted.append((jr.name, pod.index))
            self._show_pod(job, jr, pod, "Running")
            self._pod_failed(job, jr, pod, exit_code=137, disrupted=True)
            return
        if key in self.exit_codes:
            self._show_pod(job, jr, pod, "Running")
            self._pod_failed(job, jr, pod, exit_code=self.exit_codes[key])
            return
        inject = self.failures.get(key, 0)
        if inject > 0:
            self.failures[key] = inject - 1
            self._show_pod(job, jr, pod, "Running")
            self._pod_failed(job, jr, pod, exit_code=1)
            return
        if self.mode == "instant":
            if self.step_seconds:
                time.sleep(self.step_seconds)
            self._instant(job, pod.index)
            pod.phase = "succeeded"
            self._show_pod(job, jr, pod, "Running")
            self._show_pod(job, jr, pod, "Succeeded", exit_code=0)
            return
        pod.phase = "running"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            pod.progress_port = sock.getsockname()[1]
        self._show_pod(job, jr, pod, "Running")
        pod.proc, pod.log = self._spawn(job, pod.index, pod.progress_port)

    def _poll(self, job: dict[str, Any], jr: JobRun, pod: PodRun) -> None:
        if pod.proc is None:
            return
        rc = pod.proc.poll()
        if rc is None:
            return
        if rc == 0:
            pod.phase = "succeeded"
            self._show_pod(job, jr, pod, "Succeeded", exit_code=0)
        else:
            if pod.log is not None:
                self.errors.append(f"{jr.name}[{pod.index}] exited {rc}: {pod.log.read_text()[-2000:]}")
            self._pod_failed(job, jr, pod, exit_code=rc)

    def _pod_failed(self, job: dict[str, Any], jr: JobRun, pod: PodRun, *, exit_code: int, disrupted: bool = False) -> None:
        """A pod failed: the Job controller applies the podFailurePolicy (if honoured), else
        counts the failure against backoffLimit(PerIndex)."""
        action, rule = pod_failure_action(job, exit_code, disrupted) if self.honour_pod_failure_policy else ("Count", None)
        self._show_pod(job, jr, pod, "Failed", exit_code=exit_code, disrupted=disrupted)
        if action == "Ignore":
            pod.phase = "retry"  # replaced; not counted
        elif action == "FailJob":
            container = job["spec"]["template"]["spec"]["containers"][0]["name"]
            jr.policy_failure = (f"Container {container} for pod {jr.namespace}/{pod.pod_name} failed with exit code "
                                 f"{exit_code} matching FailJob rule at index {rule}")
            pod.phase = "failed-index"
            pod.failures += 1
        elif action == "FailIndex":
            pod.phase = "failed-index"
            pod.failures += 1
        else:
            pod.failures += 1
            pod.phase = "retry"

    # -- pod objects
    def _show_pod(self, job: dict[str, Any], jr: JobRun, pod: PodRun, phase: str, *, trouble: str | None = None,
                  exit_code: int | None = None, disrupted: bool = False) -> None:
        """Report this incarnation's Pod object as the kubelet would: a new pod when it starts
        (Pending with `trouble`, or Running), its status patched when it ends."""
        if not self.pods:
            return
        container = job["spec"]["template"]["spec"]["containers"][0]
        status: dict[str, Any] = {"phase": phase, "conditions": []}
        if trouble is not None:
            t = POD_TROUBLES[trouble]
            if "scheduled" in t:
                status["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                             "message": t["scheduled"], "lastTransitionTime": now_iso()})
            else:
                reason, message = t["waiting"]
                status["containerStatuses"] = [{"name": container["name"], "ready": False, "restartCount": 0,
                                                "image": container.get("image") or "", "imageID": "",
                                                "state": {"waiting": {"reason": reason, "message": message}}}]
        if exit_code is not None:
            status["containerStatuses"] = [{"name": container["name"], "ready": False, "restartCount": 0,
                                            "image": container.get("image") or "", "imageID": "", "state": {
                "terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error"}}}]
        if disrupted:
            status["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                                         "message": "Preempted in order to admit critical pod", "lastTransitionTime": now_iso()})
        starting = phase in ("Pending", "Running") or pod.pod_name is None
        if not starting:
            try:
                self.core.patch_namespaced_pod(pod.pod_name, jr.namespace, {"status": status}, _content_type=MERGE,
                                               _preload_content=False)
            except ApiException as e:
                if e.status != 404:
                    raise
            return
        if pod.pod_name is not None and pod.stuck:
            self._delete_pod(jr, pod)  # the pod that could not start gives way to one that does
        pod.incarnation += 1
        pod.stuck = trouble is not None
        pod.pod_name = f"{jr.name}-{pod.index}-{pod.incarnation}{uuid.uuid4().hex[:4]}"
        labels = {**job["spec"]["template"]["metadata"]["labels"], "batch.kubernetes.io/job-name": jr.name,
                  "batch.kubernetes.io/job-completion-index": str(pod.index)}
        body = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.pod_name, "namespace": jr.namespace, "labels": labels, "creationTimestamp": now_iso(),
                         "annotations": {"batch.kubernetes.io/job-completion-index": str(pod.index)},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": jr.name, "uid": jr.uid,
                                              "controller": True, "blockOwnerDeletion": True}]},
            "spec": {"containers": [{"name": container["name"], "image": container.get("image"),
                                     "env": [e for e in container.get("env") or [] if "value" in e],
                                     "ports": self._ports_of(container, pod)}]},
            "status": status,
        }
        if phase == "Running" and self.mode == "real":
            body["status"]["podIP"] = "127.0.0.1"
        self.core.create_namespaced_pod(jr.namespace, body, _preload_content=False)

    @staticmethod
    def _ports_of(container: dict[str, Any], pod: PodRun) -> list[dict[str, Any]]:
        """The container's ports, the progress port moved to where this incarnation listens."""
        ports = [dict(p) for p in container.get("ports") or []]
        for p in ports:
            if p.get("name") == PROGRESS_PORT_NAME and pod.progress_port is not None:
                p["containerPort"] = pod.progress_port
        return ports

    def _delete_pod(self, jr: JobRun, pod: PodRun) -> None:
        if not self.pods or pod.pod_name is None:
            return
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(pod.pod_name, jr.namespace, _preload_content=False)
        pod.pod_name, pod.stuck = None, False

    def _delete_pods(self, jr: JobRun) -> None:
        for p in jr.pods.values():
            if p.proc and p.proc.poll() is None:
                p.proc.kill()
            self._delete_pod(jr, p)

    # -- instant mode
    def _spec_of(self, job: dict[str, Any]) -> tuple[dict[str, Any], str]:
        pod = job["spec"]["template"]["spec"]
        cm_name = next(v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v)
        cm = self.core.read_namespaced_config_map(cm_name, job["metadata"]["namespace"], _preload_content=False)
        data = json.loads(json.loads(cm.data)["data"]["spec.json"])
        cmd = pod["containers"][0]["command"]
        run_dir = cmd[cmd.index("--run-dir") + 1]
        return data, run_dir

    def local_path(self, path: str) -> Path:
        return self.data_root / path.removeprefix("/data/").lstrip("/")

    def _instant(self, job: dict[str, Any], index: int) -> None:
        if not self.markers:
            return
        from spin_runtime.api.spec import SpinRun
        from spin_runtime.plan import stages
        from spin_runtime.store import rundir

        data, run_dir = self._spec_of(job)
        local = self.local_path(run_dir)
        run = SpinRun.model_validate(data)
        rundir.init_run(local, run)
        lab = job["metadata"]["labels"]
        k, step = int(lab["spin.dev/iteration"]), lab["spin.dev/step"]
        shards = run.spec.generation.shards
        s = stages.Step(k, "generate", index, shards) if step == "generate" else stages.Step(k, step)  # type: ignore[arg-type]
        if step == "train" and index != 0:
            return
        rundir.mark_done(local, run, s, {"by": "harness"})

    # -- real mode
    def _spawn(self, job: dict[str, Any], index: int, progress_port: int | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        pod = job["spec"]["template"]["spec"]
        data, _ = self._spec_of(job)
        work = Path(tempfile.mkdtemp(prefix=f"{job['metadata']['name']}-{index}-", dir=self.data_root))
        spec_file = work / "spec.json"
        spec_file.write_text(json.dumps(data))
        log = work / "log.txt"
        port = _free_port_for(job["metadata"]["name"])
        cmds = [self._argv(c["command"], spec_file, port) for c in pod.get("initContainers", []) + pod["containers"]]
        env = dict(os.environ)
        for c in pod["containers"]:
            for e in c.get("env") or []:
                if "value" in e:
                    env[e["name"]] = self._map(e["value"])
                elif "fieldRef" in (e.get("valueFrom") or {}):
                    env[e["name"]] = str(index)
        env["HOME"] = str(work)
        env["XDG_CACHE_HOME"] = str(work / ".cache")
        env.pop("HF_HOME", None)
        env["JOB_COMPLETION_INDEX"] = str(index)
        if progress_port is not None:
            env[PROGRESS_PORT_ENV] = str(progress_port)
        script = " && ".join(" ".join(_quote(a) for a in cmd) for cmd in cmds)
        with open(log, "wb") as out:
            proc = subprocess.Popen(["/bin/sh", "-c", script], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=work)
        return proc, log

    def _map(self, value: str) -> str:
        return str(self.local_path(value)) if value.startswith("/data") else value

    def _argv(self, cmd: list[str], spec_file: Path, port: int) -> list[str]:
        out = []
        for a in cmd:
            if a == "/etc/spin/spec.json":
                a = str(spec_file)
            out.append(self._map(a))
        if out[:2] == ["spin", "init-run"]:
            return [sys.executable, "-m", "spin_runtime.cli", "init-run", *out[2:]]
        if out[0] == "spin":
            return [str(VENV_BIN / "spin"), *out[1:]]
        if out[0] == "torchrun":
            out = [str(VENV_BIN / "torchrun"), *out[1:]]
            if "--master-addr" in out:
                out[out.index("--master-addr") + 1] = "127.0.0.1"
                out[out.index("--master-port") + 1] = str(port)
        return out


_ports: dict[str, int] = {}


def _free_port_for(name: str) -> int:
    if name not in _ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            _ports[name] = s.getsockname()[1]
    return _ports[name]


def _quote(a: str) -> str:
    import shlex

    return shlex.quote(a)


def _ranges(idx: list[int]) -> str:
    """Kubernetes' compressed index list, e.g. [0,1,2,5] → "0-2,5"."""
    out = []
    for _, grp in itertools.groupby(enumerate(sorted(idx)), lambda t: t[1] - t[0]):
        g = [v for _, v in grp]
        out.append(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]))
    return ",".join(out)


# --------------------------------------------------------------------------- controllers the harness plays


class PollingController:
    """A cluster controller the harness plays: `step()` every `poll` seconds in a daemon thread
    until `stop()`; what a step raises is kept in `errors` (tests assert on them)."""

    thread_name = "controller"

    def __init__(self, poll: float) -> None:
        self.poll = poll
        self.errors: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)

    def start(self) -> Self:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as e:  # keep playing; tests assert on errors
                self.errors.append(repr(e))
            self._stop.wait(self.poll)

    def step(self) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- garbage collector


class GarbageCollector(PollingController):
    """Plays Kubernetes' garbage collector in one namespace: an object whose ownerReferences all
    point at uids that no longer exist (a deleted SpinRun, a deleted Job) is deleted `delay`
    seconds after its owner went, as the real collector does some time after the owner's delete."""

    thread_name = "gc"

    def __init__(self, url: str, namespace: str, delay: float = 0.5, poll: float = 0.1) -> None:
        super().__init__(poll)
        self.api = harness_client(url)
        self.namespace = namespace
        self.delay = delay
        self.orphaned_at: dict[tuple[str, str], float] = {}
        #: (kind, name, seconds after its owner went) of everything collected
        self.collected: list[tuple[str, str, float]] = []
        core, batch = client.CoreV1Api(self.api), client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.kinds = {
            "job": (batch.list_namespaced_job, batch.delete_namespaced_job),
            "configmap": (core.list_namespaced_config_map, core.delete_namespaced_config_map),
            "service": (core.list_namespaced_service, core.delete_namespaced_service),
            "pvc": (core.list_namespaced_persistent_volume_claim, core.delete_namespaced_persistent_volume_claim),
            "pod": (core.list_namespaced_pod, core.delete_namespaced_pod),
        }

    def step(self) -> None:
        ns, kinds = self.namespace, self.kinds
        objects = {kind: json.loads(lister(ns, _preload_content=False).data)["items"] for kind, (lister, _) in kinds.items()}
        runs = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        alive = {o["metadata"].get("uid") for o in runs} | {o["metadata"].get("uid") for o in objects["job"]}
        now = time.monotonic()
        for kind, items in objects.items():
            for o in items:
                refs = o["metadata"].get("ownerReferences") or []
                key = (kind, o["metadata"]["name"])
                if not refs or any(r.get("uid") in alive for r in refs):
                    self.orphaned_at.pop(key, None)
                    continue
                since = self.orphaned_at.setdefault(key, now)
                if now - since >= self.delay:
                    with contextlib.suppress(ApiException):
                        kinds[kind][1](key[1], ns, _preload_content=False)
                    self.collected.append((kind, key[1], now - since))
                    self.orphaned_at.pop(key, None)


# --------------------------------------------------------------------------- cluster helper


class Cluster:
    """Emulator + kubelet + operator, with helpers to create and watch SpinRuns."""

    def __init__(self, tmp: Path, *, mode: str = "instant", failures: dict[tuple[str, int], int] | None = None,
                 namespace: str = "e2e", markers: bool = True, pods: bool = False, gc_delay: float | None = None,
) -> None:
        self.tmp = Path(tmp)
        self.namespace = namespace
        self.emulator = Emulator().start()
        self.kubeconfig = self.emulator.kubeconfig(self.tmp / "kubeconfig.yaml")
        self.api = harness_client(self.emulator.url)
        self.custom = client.CustomObjectsApi(self.api)
        (self.tmp / "data").mkdir(exist_ok=True)
        self.kubelet = Kubelet(self.emulator.url, self.tmp / "data", mode=mode, failures=failures, markers=markers,
                               pods=pods).start()
        #: The garbage collector, when `gc_delay` is given (otherwise tests call collect_garbage).
        self.gc = GarbageCollector(self.emulator.url, namespace, gc_delay).start() if gc_delay is not None else None
        self.operator: OperatorThread | OperatorCommand | None = None

    def start_operator(self, command: Sequence[str] | None = None) -> OperatorThread | OperatorCommand:
        """The operator in a thread of this process, or with `command` (a prefix, possibly empty)
        as a process of its own (`OperatorCommand`, logging to operator.log)."""
        if command is None:
            self.operator = OperatorThread(self.kubeconfig).start()
        else:
            self.operator = OperatorCommand(command, self.kubeconfig, self.emulator, self.tmp / "operator.log").start()
        return self.operator

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()
            self.operator = None

    def close(self) -> None:
        self.stop_operator()
        if self.gc is not None:
            self.gc.stop()
        self.kubelet.stop()
        self.emulator.stop()

    # -- SpinRuns
    def create_run(self, body: dict[str, Any]) -> dict[str, Any]:
        body = json.loads(json.dumps(body))
        meta = body["metadata"]
        meta["namespace"] = self.namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta.setdefault("resourceVersion", "1")
        meta.setdefault("creationTimestamp", now_iso())
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def get_run(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        """A spec change as the API server applies it: generation + 1."""
        gen = int(self.get_run(name)["metadata"].get("generation") or 1)
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name,
            {"metadata": {"generation": gen + 1, "resourceVersion": str(gen + 1)}, "spec": spec}, _content_type=MERGE,
        )

    def delete_run(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def collect_garbage(self, owner_uid: str) -> list[str]:
        """Delete what the garbage collector would: objects owned by `owner_uid` (kmock has no GC)."""
        core, batch = client.CoreV1Api(self.api), client.BatchV1Api(self.api)
        gone = []
        kinds = [
            (batch.list_namespaced_job, batch.delete_namespaced_job),
            (core.list_namespaced_config_map, core.delete_namespaced_config_map),
            (core.list_namespaced_service, core.delete_namespaced_service),
            (core.list_namespaced_persistent_volume_claim, core.delete_namespaced_persistent_volume_claim),
        ]
        for lister, deleter in kinds:
            items = json.loads(lister(self.namespace, _preload_content=False).data)["items"]
            for o in items:
                if any(r.get("uid") == owner_uid for r in o["metadata"].get("ownerReferences") or []):
                    deleter(o["metadata"]["name"], self.namespace, _preload_content=False)
                    gone.append(o["metadata"]["name"])
        return gone

    def wait(self, pred: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = pred()
            except ApiException:
                last = None
            if last:
                return last
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; kubelet errors: {self.kubelet.errors[-3:]}")

    def wait_phase(self, name: str, phases: tuple[str, ...] | str, timeout: float = 60) -> dict[str, Any]:
        phases = (phases,) if isinstance(phases, str) else phases
        return self.wait(lambda: (r := self.get_run(name)) and (r.get("status") or {}).get("phase") in phases and r,
                         timeout, f"{name} phase in {phases}")

    def jobs(self) -> dict[str, dict[str, Any]]:
        out = client.BatchV1Api(self.api).list_namespaced_job(self.namespace, _preload_content=False)
        return {j["metadata"]["name"]: j for j in json.loads(out.data)["items"]}

    def pvcs(self) -> dict[str, dict[str, Any]]:
        out = client.CoreV1Api(self.api).list_namespaced_persistent_volume_claim(self.namespace, _preload_content=False)
        return {o["metadata"]["name"]: o for o in json.loads(out.data)["items"]}

    def pods(self) -> dict[str, dict[str, Any]]:
        out = client.CoreV1Api(self.api).list_namespaced_pod(self.namespace, _preload_content=False)
        return {o["metadata"]["name"]: o for o in json.loads(out.data)["items"]}

    def run_exists(self, name: str) -> bool:
        try:
            self.get_run(name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def events(self, name: str) -> list[tuple[str, str, str]]:
        out = client.CoreV1Api(self.api).list_namespaced_event(self.namespace, _preload_content=False)
        items = json.loads(out.data)["items"]
        return [(e.get("type"), e.get("reason"), e.get("message")) for e in items
                if (e.get("involvedObject") or {}).get("name") == name and (e.get("involvedObject") or {}).get("kind") == "SpinRun"]

    def job_creations(self) -> list[str]:
        """Names of Jobs in every successful-looking operator create request, in order."""
        assert self.emulator.mock is not None
        out = []
        for r in request_log(self.emulator.mock):
            if r.headers.get("User-Agent", "").startswith(HARNESS_AGENT):
                continue
            if r.action is not None and r.action.value == "CREATE" and getattr(r.resource, "plural", None) == "jobs":
                out.append((r.data or {}).get("metadata", {}).get("name"))
        return out


@contextlib.contextmanager
def cluster(tmp: Path, **kw: Any) -> Iterator[Cluster]:
    c = Cluster(tmp, **kw)
    try:
        yield c
    finally:
        c.close()
