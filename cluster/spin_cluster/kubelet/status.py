"""A pod's status as the kubelet reports it (pure): phase from the containers' states and the
restart policy, the standard conditions, and container statuses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerState:
    """What the kubelet knows of one container (init or regular)."""

    name: str
    image: str
    init: bool = False
    #: {"waiting": {reason, message}} | {"running": {startedAt}} | {"terminated": {...}}
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "PodInitializing"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False

    @property
    def terminated(self) -> dict[str, Any] | None:
        return self.state.get("terminated")

    @property
    def running(self) -> bool:
        return "running" in self.state

    def to_status(self) -> dict[str, Any]:
        return {"name": self.name, "image": self.image, "imageID": f"spin-process://{self.image}",
                "containerID": f"spin-process://{self.name}-{self.restart_count}", "state": self.state,
                "lastState": self.last_state, "ready": self.ready, "restartCount": self.restart_count,
                "started": self.running or self.started}


def phase(restart_policy: str, init: Sequence[ContainerState], main: Sequence[ContainerState], initialized: bool) -> str:
    """Pending until the init containers are done and a container runs; Succeeded/Failed once every
    container has ended for good under the restart policy; Running otherwise."""
    failed_init = next((c for c in init if c.terminated and c.terminated["exitCode"] != 0), None)
    if failed_init is not None and restart_policy == "Never":
        return "Failed"
    if not initialized:
        return "Pending"
    if any(c.running for c in main):
        return "Running"
    ended = [c.terminated for c in main]
    if not all(ended):
        return "Running" if any(c.started for c in main) else "Pending"
    if restart_policy == "Always":
        return "Running"
    codes = [t["exitCode"] for t in ended if t is not None]
    if all(code == 0 for code in codes):
        return "Succeeded"
    return "Failed" if restart_policy == "Never" else "Running"


def conditions(previous: Sequence[dict[str, Any]], *, sandbox: bool, initialized: bool, ready: bool,
               scheduled: bool = True) -> list[dict[str, Any]]:
    """The kubelet's conditions, keeping each one's lastTransitionTime while its status holds, and
    every condition the kubelet does not own (DisruptionTarget, readiness gates, ...)."""
    mine = {"PodReadyToStartContainers": sandbox, "Initialized": initialized, "ContainersReady": ready, "Ready": ready}
    if scheduled:
        mine["PodScheduled"] = True
    old = {c["type"]: c for c in previous}
    out = [c for c in previous if c["type"] not in mine]
    for kind, value in mine.items():
        status = "True" if value else "False"
        before = old.get(kind)
        if before is not None and before.get("status") == status:
            out.append(before)
        else:
            out.append({"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": now()})
    return out


def terminated(exit_code: int, started_at: str, *, reason: str | None = None, message: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                           "startedAt": started_at, "finishedAt": now(), "containerID": ""}
    if message:
        out["message"] = message
    return out
