"""The operator end to end on the session's real cluster (tests/kube.py): the real operator (kopf, in
a thread of the test process) with the chart's RBAC as its only rights, in a namespace of the
test's own; its Jobs are admitted, run and retried by the real apiserver, Job controller, garbage
collector and scheduler, and their pods by the process kubelet (the instant image by default: steps
that finish at once, steerable through the control file)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from spin_runtime.api.spec import GROUP, PLURAL, VERSION
from tests.kube import INSTANT_IMAGE, Kube, wait
from tests.operator.fixtures import deep_merge, make_body

MERGE = "application/merge-patch+json"


def run_body(name: str = "e2e", spec: dict[str, Any] | None = None, *, instant: bool = True) -> dict[str, Any]:
    """A SpinRun as a user writes it (no uid, generation or resourceVersion); `instant` runs its
    steps in the instant image."""
    base = deep_merge({"images": {"generator": INSTANT_IMAGE, "trainer": INSTANT_IMAGE}}, spec or {}) if instant else spec
    body = make_body(name, base)
    for k in ("uid", "generation", "resourceVersion", "namespace"):
        body["metadata"].pop(k, None)
    return body


class E2E:
    """One test's namespace on the real cluster, with the operator and helpers to drive a SpinRun."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.api = config.new_client_from_config(str(kube.kubeconfig))
        self.api.user_agent = "spin-tests"
        self.custom = client.CustomObjectsApi(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.operator: Any = None
        self.operator_config: Path | None = None
        self._saved_env: dict[str, str | None] = {}

    # ------------------------------------------------------------------ the operator

    def start_operator(self, values: dict[str, Any] | None = None, *, clusterwide: bool = False) -> Any:
        """The operator in a thread, as the chart's ServiceAccount: the chart rendered with `values`
        and, unless `clusterwide`, `watchNamespaces: [this namespace]` (its namespaced mode: a Role
        here and a ClusterRole to watch namespaces), watching what the chart makes it watch."""
        from tests.operator.operator_thread import OperatorThread

        chart_values = dict(values or {})
        if not clusterwide:
            chart_values["watchNamespaces"] = [self.namespace]
        self.operator_config, env = self.kube.operator_identity(chart_values)
        for name, value in env.items():  # the container's environment, as the chart sets it
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value
        self.operator = OperatorThread(self.operator_config, None if clusterwide else self.namespace).start()
        return self.operator

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()
            self.operator = None

    def close(self) -> None:
        self.stop_operator()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.api.close()

    # ------------------------------------------------------------------ SpinRuns

    def create_run(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def get_run(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        """A user's change of the spec (the apiserver raises metadata.generation)."""
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec},
                                                   _content_type=MERGE)

    def delete_run(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def run_exists(self, name: str) -> bool:
        try:
            self.get_run(name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def run_dir(self, name: str = "e2e") -> Path:
        """The run's folder on its claim (the PersistentVolume's host folder)."""
        return self.kube.claim_dir(self.namespace, f"{name}-data") / "runs" / name

    # ------------------------------------------------------------------ waiting

    def wait(self, pred: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
        return wait(pred, timeout, what, errors=(ApiException,), detail=self.describe)

    def wait_phase(self, name: str, phases: tuple[str, ...] | str, timeout: float = 90) -> dict[str, Any]:
        """The SpinRun once its phase is one of `phases` (the object read then: assert on it)."""
        phases = (phases,) if isinstance(phases, str) else phases

        def reached() -> dict[str, Any] | None:
            run = self.get_run(name)
            return run if (run.get("status") or {}).get("phase") in phases else None

        return self.wait(reached, timeout, f"{name} phase in {phases}")

    def wait_reason(self, name: str, reason: str, timeout: float = 60) -> dict[str, Any]:
        """The SpinRun's status once its reason is `reason` (the status read then: assert on it)."""

        def reached() -> dict[str, Any] | None:
            status = self.get_run(name).get("status") or {}
            return status if status.get("reason") == reason else None

        return self.wait(reached, timeout, f"{name} reason {reason}")

    def describe(self) -> str:
        """What a person would look at when a wait times out: the run's status, Jobs and pods."""
        parts = []
        with contextlib.suppress(Exception):
            runs = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)["items"]
            parts += [f"run {r['metadata']['name']}: {json.dumps(r.get('status', {}))[:1500]}" for r in runs]
        with contextlib.suppress(Exception):
            parts.append("jobs: " + ", ".join(f"{n}={_job_state(j)}" for n, j in self.jobs().items()))
        with contextlib.suppress(Exception):
            parts.append("pods: " + ", ".join(f"{n}={p['status'].get('phase')}" for n, p in self.pods().items()))
        return "; ".join(parts)

    # ------------------------------------------------------------------ reading the cluster

    def jobs(self) -> dict[str, dict[str, Any]]:
        out = self.batch.list_namespaced_job(self.namespace, _preload_content=False)
        return {j["metadata"]["name"]: j for j in json.loads(out.data)["items"]}

    def pods(self) -> dict[str, dict[str, Any]]:
        out = self.core.list_namespaced_pod(self.namespace, _preload_content=False)
        return {o["metadata"]["name"]: o for o in json.loads(out.data)["items"]}

    def pvcs(self) -> dict[str, dict[str, Any]]:
        out = self.core.list_namespaced_persistent_volume_claim(self.namespace, _preload_content=False)
        return {o["metadata"]["name"]: o for o in json.loads(out.data)["items"]}

    def events(self, name: str, kind: str = "SpinRun") -> list[tuple[str, str, str]]:
        out = self.core.list_namespaced_event(self.namespace, _preload_content=False)
        return [(e.get("type"), e.get("reason"), e.get("message")) for e in json.loads(out.data)["items"]
                if (e.get("involvedObject") or {}).get("name") == name and (e.get("involvedObject") or {}).get("kind") == kind]

    def job_creations(self) -> list[str]:
        """Names of the Jobs the operator created (the apiserver's audit log: 201s of its ServiceAccount)."""
        return self.kube.creations(self.namespace, "jobs")

    # ------------------------------------------------------------------ the instant steps

    def hold(self, *suffixes: str) -> None:
        """Steps with these Job-name suffixes (`it0-train`) run until released."""
        control = self.kube.current_control()
        control["hold"] = sorted(set(control.get("hold", [])) | set(suffixes))
        self.kube.set_control(**control)

    def release(self, *suffixes: str) -> None:
        """Let held steps finish (all of them without arguments)."""
        control = self.kube.current_control()
        control["hold"] = sorted(set(control.get("hold", [])) - set(suffixes)) if suffixes else []
        self.kube.set_control(**control)

    def starts(self, job: str) -> list[int]:
        """The indexes of `job`'s pods that started a step, in order."""
        return [i for j, i in self.kube.starts() if j == job]


def _job_state(job: dict[str, Any]) -> str:
    st = job.get("status") or {}
    conds = [c["type"] for c in st.get("conditions") or [] if c.get("status") == "True"]
    return f"{','.join(conds) or 'running'}(active={st.get('active', 0)},failed={st.get('failed', 0)})"


def job_done(job: dict[str, Any] | None) -> bool:
    return any(c.get("type") == "Complete" and c.get("status") == "True"
               for c in ((job or {}).get("status") or {}).get("conditions") or [])


@contextlib.contextmanager
def e2e(kube: Kube, **control: Any) -> Iterator[E2E]:
    """A namespace of its own on the session's cluster, the CRD applied, the instant image's control set."""
    kube.ensure_crd()
    kube.control(**control)
    with kube.namespace("e2e") as ns:
        run = E2E(kube, ns)
        try:
            yield run
        finally:
            run.close()
            kube.control()


# --------------------------------------------------------------------------- other projects' controllers
# Kueue (spin_cluster.kueue, installed by the tests that need it) and Kubeflow Trainer v2 with
# JobSet (spin_cluster.trainer) run as their own controllers on this cluster.

TRAINJOBS = ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
JOBSETS = ("jobset.x-k8s.io", "v1alpha2", "jobsets")
#: The label JobSet puts on its Jobs' pods.
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
#: Kueue's Workload API as Kueue v0.17 serves it (v1beta2 stored, v1beta1 converted).
KUEUE = ("kueue.x-k8s.io", "v1beta2")
WORKLOADS = (*KUEUE, "workloads")
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
FLAVOR = "spin-tests"


def true_condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """The condition `kind` of an object when its status is True, else None."""
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or []
                 if c.get("type") == kind and c.get("status") == "True"), None)


class KueueQueues:
    """Kueue's queues for one test: a ResourceFlavor, a ClusterQueue of the test's own that admits
    the test's namespace with a quota counted in pods (Kueue counts `pods` when a ClusterQueue
    covers it; cpu, memory and GPUs are covered generously, so only pods bind), and the LocalQueue
    `name` in the namespace (a SpinRun's spec.queueName)."""

    def __init__(self, e2e: E2E, name: str, pods: int, preemption: dict[str, str] | None = None) -> None:
        self.e2e, self.name = e2e, name
        self.cluster_queue = f"spin-tests-{e2e.namespace}"
        self.preemption = preemption
        custom = e2e.custom
        with contextlib.suppress(ApiException):  # one flavor for every test; a 409 is a second test
            custom.create_cluster_custom_object(*KUEUE, "resourceflavors", {
                "apiVersion": "/".join(KUEUE), "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}})
        custom.create_cluster_custom_object(*KUEUE, "clusterqueues", {
            "apiVersion": "/".join(KUEUE), "kind": "ClusterQueue", "metadata": {"name": self.cluster_queue},
            "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": e2e.namespace}},
                     **({"preemption": preemption} if preemption else {}), **self._groups(pods)}})
        custom.create_namespaced_custom_object(*KUEUE, e2e.namespace, "localqueues", {
            "apiVersion": "/".join(KUEUE), "kind": "LocalQueue", "metadata": {"name": name},
            "spec": {"clusterQueue": self.cluster_queue}})

    @staticmethod
    def _groups(pods: int) -> dict[str, Any]:
        quota = {"cpu": "1000", "memory": "1000Gi", "nvidia.com/gpu": "64", "pods": str(pods)}
        return {"resourceGroups": [{"coveredResources": list(quota), "flavors": [
            {"name": FLAVOR, "resources": [{"name": k, "nominalQuota": v} for k, v in quota.items()]}]}]}

    def set_quota(self, pods: int) -> None:
        """The ClusterQueue's pod quota (a merge patch replaces the resource groups whole)."""
        self.e2e.custom.patch_cluster_custom_object(*KUEUE, "clusterqueues", self.cluster_queue,
                                                    {"spec": self._groups(pods)}, _content_type=MERGE)

    def workload(self, job: str) -> dict[str, Any] | None:
        """The Workload Kueue made for the Job `job` of the namespace (found by the Job's uid)."""
        uid = (self.e2e.jobs().get(job) or {}).get("metadata", {}).get("uid")
        if not uid:
            return None
        items = self.e2e.custom.list_namespaced_custom_object(*WORKLOADS[:2], self.e2e.namespace, WORKLOADS[2],
                                                              label_selector=f"{KUEUE_JOB_UID_LABEL}={uid}")["items"]
        return items[0] if items else None

    def close(self) -> None:
        """The ClusterQueue goes (Kueue keeps it while Workloads use it; the namespace's cleanup
        deletes those); the flavor stays for the next test."""
        with contextlib.suppress(ApiException):
            self.e2e.custom.delete_cluster_custom_object(*KUEUE, "clusterqueues", self.cluster_queue)


class Player:
    """A controller the test plays: `step()` every `poll` seconds in a thread; errors kept."""

    def __init__(self, e2e: E2E, poll: float = 0.1) -> None:
        import threading

        self.e2e, self.poll = e2e, poll
        self.errors: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Any:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.step()
            except Exception as e:
                self.errors.append(repr(e))

    def step(self) -> None:
        raise NotImplementedError


