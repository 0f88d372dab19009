"""`helm install` of the chart into the session's real cluster, as the docs say (images named by
images.registry and images.tag): the operator's Deployment runs as a pod of the process kubelet
with only its ServiceAccount's token (the chart's RBAC is all it has), reaches Ready through its
probes, runs the real steps of a SpinRun on the tiny model to Complete that `kubectl get spinruns`
shows; deleting the SpinRun keeps its claim, and `spin fetch` then copies the run's report and
step logs from it; `helm uninstall` removes the operator."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spin_cluster.api import path
from spin_runtime.cli import main as spin_cli
from tests.chart.rbac import CHART, find_helm
from tests.kube import OPERATOR_NAMESPACE, Kube, wait
from tests.operator.e2e import run_body

HELM = find_helm()
pytestmark = pytest.mark.skipif(HELM is None, reason="helm not found on PATH or in .tools/: run `make tools`")
RELEASE = "spin-operator"
#: The images as `make push-images REGISTRY=... ` names them (the process kubelet runs any image from this checkout).
REGISTRY, TAG = "localhost/spinrun", "test"
#: `helm install --wait` until the operator is Ready: its pod imports kopf and the client on a
#: loaded 2-core machine (seen: over 120 s while other clusters ran beside it).
INSTALL_TIMEOUT = "300s"


def helm(kube: Kube, *args: str, check: bool = True) -> str:
    import subprocess

    assert HELM is not None
    proc = subprocess.run([HELM, "--kubeconfig", str(kube.kubeconfig), *args], capture_output=True, text=True,
                          timeout=360)
    assert proc.returncode == 0 or not check, f"helm {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@pytest.fixture()
def installed(kube: Kube) -> Iterator[str]:
    """The chart installed as the README says (its CRD with it); uninstalled after the test."""
    # the process kubelet runs any image from this checkout; a cluster pulls what make push-images pushed
    out = helm(kube, "install", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--create-namespace", "--wait",
               "--timeout", INSTALL_TIMEOUT, "--set", f"images.registry={REGISTRY}", "--set", f"images.tag={TAG}")
    try:
        yield out
    finally:
        helm(kube, "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "60s")


#: A SpinRun with the local example's steps, sized for a test: the tiny model, two generation shards.
TINY = {
    "iterations": 1,
    "generation": {"shards": 2, "maxNewTokens": 8, "batchSize": 8},
    "training": {"maxLength": 64, "maxPromptLength": 32, "maxSteps": 3, "perDeviceBatchSize": 2, "reportTo": []},
    "evaluation": {"maxSamples": 4},
}


def test_helm_install_runs_a_spinrun_to_complete_under_the_charts_rbac(
    kube: Kube, installed: str, tmp_path: Path
) -> None:
    assert "STATUS: deployed" in installed
    pods = kube.api.get(path("", "v1", "pods", OPERATOR_NAMESPACE),
                        labelSelector="app.kubernetes.io/name=spin-operator")["items"]
    (pod,) = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert pod["spec"]["serviceAccountName"] == RELEASE
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    kube.ensure_crd()  # helm installed it (or an earlier test): Established before the first SpinRun
    with kube.namespace("helm") as ns:
        body = run_body("demo", spec=TINY, instant=False)  # the chart's step images: the real `spin` steps
        body["metadata"]["namespace"] = ns
        kube.apply([body])

        def finished() -> dict[str, Any] | None:
            status = kube.api.get(path("spin.dev", "v1alpha1", "spinruns", ns, "demo")).get("status") or {}
            return status if status.get("phase") in ("Complete", "Failed") else None

        status = wait(finished, 400, "the SpinRun to finish")
        assert status["phase"] == "Complete", kube.kubectl("logs", "-n", OPERATOR_NAMESPACE,
                                                           f"deploy/{RELEASE}").stdout[-3000:]
        assert status["lastCheckpoint"]["path"] == "/data/runs/demo/iter-0/model", status["lastCheckpoint"]
        # the step images are the chart's (the operator read its container's environment), none the run named
        jobs = kube.api.get(path("batch", "v1", "jobs", ns))["items"]
        used = {c["image"] for j in jobs for c in j["spec"]["template"]["spec"]["containers"]}
        assert used == {f"{REGISTRY}/spinrun-generator:{TAG}", f"{REGISTRY}/spinrun-trainer:{TAG}"}, used
        table = kube.kubectl("get", "spinruns", "-n", ns).stdout.splitlines()
        assert table[1].split()[:3] == ["demo", "Complete", "0"], table
        kube.kubectl("delete", "spinrun", "demo", "-n", ns)
        wait(lambda: not kube.api.get(path("batch", "v1", "jobs", ns))["items"], 60, "the garbage collector")
        claims = [c["metadata"]["name"] for c in kube.api.get(path("", "v1", "persistentvolumeclaims", ns))["items"]]
        assert claims == ["demo-data"], "the claim outlives the run"
        # the documented command, after the run is gone: a reader pod with the trainer image the docs name
        fetched = tmp_path / "demo"
        assert spin_cli(["fetch", "demo", "-n", ns, "--to", str(fetched), "--kubeconfig", str(kube.kubeconfig),
                         "--image", f"{REGISTRY}/spinrun-trainer:{TAG}"]) == 0
        assert "# SPIN run `demo`" in (fetched / "report" / "summary.md").read_text()
        assert (fetched / "report" / "index.html").is_file() and (fetched / "iter-0" / "metrics.json").is_file()
        logs = sorted(p.name for p in (fetched / "iter-0" / "logs").glob("*.log"))
        assert logs == ["convert.log", "evaluate.log", "generate-0-of-2.log", "generate-1-of-2.log", "train.log"]
        assert "spin train: iteration 0: saved" in (fetched / "iter-0" / "logs" / "train.log").read_text()
        assert not [p for p in kube.api.get(path("", "v1", "pods", ns))["items"] if "-fetch-" in p["metadata"]["name"]]
    log = kube.kubectl("logs", "-n", OPERATOR_NAMESPACE, f"deploy/{RELEASE}").stdout
    assert "Forbidden" not in log and " 403" not in log, log[-3000:]


def test_helm_uninstall_with_a_run_in_flight_loses_nothing(kube: Kube) -> None:
    """`helm uninstall` while a run trains: it returns at once (no finalizer on SpinRuns, and Helm
    keeps the CRD of crds/, so the run and its status stay), the running step finishes with no
    operator, and `helm install` again takes the run on from there: each Job created once, no step
    run twice, Complete."""
    from tests.operator.e2e import e2e, job_done
    from tests.reliability.real_cluster import JOBS_OF_ONE_ITERATION, failed_pod_logs, reran, running

    install = ("install", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--create-namespace", "--wait", "--timeout",
               INSTALL_TIMEOUT, "--set", f"images.registry={REGISTRY}", "--set", f"images.tag={TAG}")
    with e2e(kube) as c:
        c.hold("it0-train")
        helm(kube, *install)
        try:
            c.create_run(run_body(spec={"iterations": 1}))
            c.wait(lambda: running(c, "e2e-it0-train"), 120, "training running under the installed operator")
            t0 = time.monotonic()
            helm(kube, "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "60s")
            uninstalled = time.monotonic() - t0
            # the Deployment is gone at once; its pod goes with the collector and the grace period
            wait(lambda: not kube.api.get(path("", "v1", "pods", OPERATOR_NAMESPACE),
                                          labelSelector="app.kubernetes.io/name=spin-operator")["items"], 90,
                 "the operator's pod gone")
            assert c.get_run("e2e")["status"]["phase"] == "Training", "the run and its status stay"
            c.release()
            c.wait(lambda: job_done(c.jobs().get("e2e-it0-train")), 60, "training done with no operator installed")
            time.sleep(2.0)
            assert "e2e-it0-eval" not in c.jobs(), "no operator: nothing new starts"
            t0 = time.monotonic()
            helm(kube, *install)
            run = c.wait_phase("e2e", ("Complete", "Failed"), 180)
            if run["status"]["phase"] != "Complete":
                raise AssertionError(f"{run['status']['message']}\n{failed_pod_logs(c)}")
            creations = c.job_creations()
            assert sorted(creations) == JOBS_OF_ONE_ITERATION, creations
            assert not reran(kube), reran(kube)
            print(f"helm uninstall took {uninstalled:.1f}s; install again to Complete {time.monotonic() - t0:.1f}s")
        finally:
            helm(kube, "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "60s", check=False)
