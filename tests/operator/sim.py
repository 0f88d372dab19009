"""A tiny in-memory cluster for driving `reconcile` in tests: applies its actions to a dict of
objects and lets a test complete or fail Jobs, with a controllable clock."""

from __future__ import annotations

import copy
import dataclasses
from datetime import datetime, timedelta, timezone
from typing import Any

from spin_operator import launchers
from spin_operator.kube.objects import Observed, PodState
from spin_operator.kube.timestamps import rfc3339
from spin_operator.reconcile.actions import Create, Delete, PatchJob, SetWorkloadActive
from spin_operator.reconcile.decide import Decision, reconcile

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


class Sim:
    """Holds one SpinRun body and its children; `tick()` runs one reconcile and applies it."""

    def __init__(self, body: dict[str, Any], now: datetime = T0) -> None:
        self.body = body
        self.now = now
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.decisions: list[Decision] = []
        #: Whether the training launcher's custom resource is served (None: not checked).
        self.launcher_served: bool | None = None
        #: The deployment's settings the reconcile gets (e.g. DeploymentSettings(kueue=True)).
        self.settings: Any = None
        #: Kueue Workloads (de)activated: job name → spec.active
        self.workloads_active: dict[str, bool] = {}
        #: Progress records the running pods serve (pod name → record), as the driver polls them.
        self.progress: dict[str, dict[str, Any]] = {}

    # -- cluster view
    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for (k, _), o in sorted(self.objects.items()) if k == kind]

    def job(self, name: str) -> dict[str, Any]:
        return self.objects[("Job", name)]

    def observed(self) -> Observed:
        name = self.body["metadata"]["name"]
        workloads = [o for (k, _), o in sorted(self.objects.items()) if k == "Job" or launchers.by_kind(k)]
        observed = Observed.from_objects(
            name,
            uid=self.body["metadata"].get("uid"),
            jobs=workloads,
            config_maps=self.kind("ConfigMap"),
            services=self.kind("Service"),
            pvcs=self.kind("PersistentVolumeClaim"),
            pods=[PodState.from_pod(o) for o in self.kind("Pod")],
            launcher_served=self.launcher_served,
            read_state=launchers.read_state,
        )
        return dataclasses.replace(observed, progress=dict(self.progress))

    @property
    def status(self) -> dict[str, Any]:
        return self.body.get("status") or {}

    # -- reconcile
    def tick(self, seconds: float = 1.0) -> Decision:
        d = reconcile(self.body, self.observed(), self.now, self.settings)
        for a in d.actions:
            if isinstance(a, Create):
                key = (a.obj["kind"], a.name)
                if key not in self.objects:  # 409 otherwise
                    self.objects[key] = copy.deepcopy(a.obj)
                    self.objects[key]["metadata"].setdefault("uid", f"uid-{a.name}-{len(self.decisions)}")
            elif isinstance(a, Delete):
                self.objects.pop((a.kind, a.name), None)
            elif isinstance(a, PatchJob):
                merge_patch(self.objects[(a.kind, a.name)], a.patch())
            elif isinstance(a, SetWorkloadActive):
                self.workloads_active[a.name] = a.active
                merge_patch(self.objects[(a.kind, a.name)], a.annotation_patch())
        self.body["status"] = d.status_document()
        self.decisions.append(d)
        self.now += timedelta(seconds=seconds)
        return d

    # -- the "kubelet"
    def finish(self, name: str, *, ok: bool = True, failed_indexes: str = "", reason: str = "BackoffLimitExceeded") -> None:
        obj = self.job(name)
        ctype = "Complete" if ok else "Failed"
        status: dict[str, Any] = {
            "startTime": rfc3339(self.now),
            "conditions": [{"type": ctype, "status": "True", "reason": "" if ok else reason, "message": "" if ok else "pod failed"}],
        }
        if ok:
            status["completionTime"] = rfc3339(self.now)
            status["succeeded"] = obj["spec"].get("completions", 1)
        else:
            status["failed"] = 1
            if failed_indexes:
                status["failedIndexes"] = failed_indexes
        obj["status"] = status

    def running(self, name: str) -> None:
        self.job(name)["status"] = {"active": 1, "startTime": rfc3339(self.now)}

    def pod(
        self,
        job: str,
        index: int = 0,
        *,
        phase: str = "Pending",
        waiting: str | None = None,
        unschedulable: str | None = None,
        created: datetime | None = None,
        ip: str | None = None,
    ) -> dict[str, Any]:
        """A pod of a Job as the Job controller and kubelet report it: Running, or Pending with a
        container waiting reason, or unschedulable with the scheduler's message."""
        owner = self.job(job)
        t = rfc3339(created or self.now)
        status: dict[str, Any] = {"phase": phase, "conditions": []}
        if unschedulable is not None:
            status["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                         "message": unschedulable, "lastTransitionTime": t})
        if waiting is not None:
            status["containerStatuses"] = [{"name": "step", "state": {"waiting": {"reason": waiting, "message": f"{waiting} (sim)"}}}]
        container = owner["spec"]["template"]["spec"]["containers"][0]
        if ip is not None:
            status["podIP"] = ip
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "spec": {"containers": [{"name": "step", "env": container["env"], "ports": container.get("ports") or []}]},
            "metadata": {"name": f"{job}-{index}-abcde", "creationTimestamp": t,
                         "labels": dict(owner["spec"]["template"]["metadata"]["labels"]),
                         "ownerReferences": [{"kind": "Job", "name": job, "uid": owner["metadata"]["uid"], "controller": True}]},
            "status": status,
        }
        self.objects[("Pod", pod["metadata"]["name"])] = pod
        return pod

    def set_spec(self, patch: dict[str, Any]) -> None:
        from tests.operator.fixtures import deep_merge

        self.body["spec"] = deep_merge(self.body["spec"], patch)
        self.body["metadata"]["generation"] = int(self.body["metadata"].get("generation", 1)) + 1

    def jobs(self) -> list[str]:
        return [o["metadata"]["name"] for o in self.kind("Job")]

    def run_to_end(self, limit: int = 200) -> None:
        """Complete whatever Job is unfinished until the run is terminal."""
        for _ in range(limit):
            if self.status.get("phase") in ("Complete", "Failed"):
                return
            for o in self.kind("Job"):
                if not o.get("status", {}).get("conditions"):
                    self.finish(o["metadata"]["name"])
            self.tick()
        raise AssertionError(f"run did not finish: {self.status}")


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Apply a JSON merge patch (RFC 7386) in place: null removes a key."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict):
            if not isinstance(target.get(k), dict):
                target[k] = {}
            merge_patch(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


def annotation(obj: dict[str, Any], key: str) -> str | None:
    return (obj["metadata"].get("annotations") or {}).get(key)


__all__ = ["T0", "Sim", "annotation"]
