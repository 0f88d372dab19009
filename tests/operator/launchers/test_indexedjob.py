"""The default training launcher (launchers/indexedjob.py): golden files and the torchrun wiring
of multi-node training to pod 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from spin_operator.builders.context import BuildContext
from spin_operator.launchers.indexedjob import train_command
from tests.operator.builders.cases import check_golden, objects, run_of, stage_objects

GOLDEN = Path(__file__).parent / "golden" / "indexedjob"
INDEXEDJOB_CASES = ("cpu-single-node", "gpu-multi-node", "synthetic-no-eval")


@pytest.mark.parametrize("case", INDEXEDJOB_CASES)
def test_training_objects_match_golden_files(case: str) -> None:
    check_golden(GOLDEN / f"{case}.yaml", stage_objects(case, training=True))


def test_multi_node_training_wires_torchrun_to_pod_zero() -> None:
    objs = objects("gpu-multi-node")
    svc = next(o for o in objs if o["kind"] == "Service")
    train = next(o for o in objs if o["kind"] == "Job" and o["metadata"]["name"].endswith("-train"))
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert train["spec"]["template"]["spec"]["subdomain"] == svc["metadata"]["name"]
    assert (train["spec"]["completions"], train["spec"]["parallelism"]) == (2, 2)
    assert train["spec"]["backoffLimit"] == 0
    cmd = train["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:8] == ["spin", "torchrun", "--nnodes", "2", "--nproc_per_node", "8", "--master_addr",
                       "demo-it0-train-0.demo-it0-train"]
    assert cmd[cmd.index("-m") + 1 : cmd.index("-m") + 3] == ["spin_runtime.cli", "train"]
    env = train["spec"]["template"]["spec"]["containers"][0]["env"]
    rank = next(e for e in env if e["name"] == "PET_NODE_RANK")
    assert "job-completion-index" in rank["valueFrom"]["fieldRef"]["fieldPath"]
    # every node waits rendezvousTimeoutSeconds (default 1800 s) for the others, DNS of node 0 included
    assert {"name": "PET_RDZV_CONF", "value": "timeout=1800"} in env
    # the selector matches the pod labels
    assert svc["spec"]["selector"].items() <= train["spec"]["template"]["metadata"]["labels"].items()


def test_single_cpu_node_trains_without_torchrun() -> None:
    run, ref = run_of("cpu-single-node")
    assert train_command(BuildContext(ref, run.spec, 0), "train") == ["spin", "train", "--run-dir", "/data/runs/demo", "--iteration", "0"]


def test_gang_scheduled_training_gets_a_pod_group_of_all_its_nodes() -> None:
    from spin_operator.builders.gang import POD_GROUP_LABEL
    from spin_operator.launchers.indexedjob import IndexedJobLauncher

    run, ref = run_of("gpu-multi-node")
    spec = run.spec.model_copy(deep=True)
    spec.training.gang_scheduling.enabled = True
    objs = IndexedJobLauncher().objects(BuildContext(ref, spec, 0), "train")
    assert [o["kind"] for o in objs] == ["Service", "PodGroup", "Job"]
    pg, job = objs[1], objs[2]
    assert pg["apiVersion"] == "scheduling.x-k8s.io/v1alpha1"
    assert pg["spec"] == {"minMember": 2, "scheduleTimeoutSeconds": 600}
    assert pg["metadata"]["ownerReferences"][0]["uid"] == ref.uid
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"][POD_GROUP_LABEL] == pg["metadata"]["name"] == "demo-it0-train"
    assert pod["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
    single = spec.model_copy(deep=True)
    single.training.nodes = 1
    assert [o["kind"] for o in IndexedJobLauncher().objects(BuildContext(ref, single, 0), "train")] == ["Job"]  # nothing to gang
