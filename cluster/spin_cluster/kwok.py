"""kwok on the cluster: nodes whose pods need no process (scale tests). kwok fakes only the nodes
annotated for it, with its own default stages (printed by our kwok-stages from kwok's module):
nodes become Ready and keep a Lease, pods become Ready at once, Job pods complete, deleted pods go."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from spin_cluster import procs
from spin_cluster.api import ApiError, path
from spin_cluster.controlplane import State, wait_until

ANNOTATION = "kwok.x-k8s.io/node"
#: Label of kwok's nodes (select or avoid them with it).
LABEL = "spin.dev/kwok"


def node_object(name: str, capacity: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": "amd64", "type": "kwok", LABEL: "true"}},
            "spec": {}, "status": {"capacity": capacity, "allocatable": capacity}}


def start(state: State, binaries: dict[str, Path], count: int, capacity: dict[str, str]) -> list[str]:
    """Register `count` kwok nodes and start kwok for them; returns their names once Ready."""
    stages = state.root / "kwok-stages.yaml"
    stages.write_text(subprocess.run([str(binaries["kwok-stages"])], capture_output=True, text=True, check=True).stdout)
    api = state.client()
    names = [f"kwok-node-{i}" for i in range(count)]
    for name in names:
        try:
            api.create(path("", "v1", "nodes"), node_object(name, capacity))
        except ApiError as e:
            if e.status != 409:
                raise
    proc, _ = procs.spawn("kwok", [
        str(binaries["kwok"]), "--kubeconfig", str(state.kubeconfig), "--config", str(stages),
        "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={ANNOTATION}=fake",
        "--cidr", "10.250.0.0/16", "--node-ip", "10.250.255.254",
    ], state.log("kwok"))
    state.procs.append(proc)
    state.save()

    def ready() -> bool:
        items = api.get(path("", "v1", "nodes"), labelSelector=f"{LABEL}=true").get("items") or []
        return sum(any(c["type"] == "Ready" and c["status"] == "True" for c in (n.get("status") or {}).get("conditions") or [])
                   for n in items) == count

    wait_until(ready, 60, "kwok's nodes to be Ready", [state.log("kwok")], proc)
    return names
