"""Operator end-to-end: real kopf + kubernetes client against kmock's emulator, with the
harness playing kubelet and Job controller (see harness.py). Most scenarios use the
`instant` kubelet (steps succeed at once after writing their markers); one runs the real
`spin` steps on the tiny random model.

Set SPIN_E2E_KUBECONFIG to also run the main scenario against a real cluster.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.operator.fixtures import make_body
from tests.operator.harness import Cluster, cluster, summarize_requests

pytestmark = pytest.mark.e2e

RECORDED = Path(__file__).parent / ".recorded_requests.json"
_recorded: list[dict[str, Any]] = []


@pytest.fixture(scope="module", autouse=True)
def _record_requests() -> Any:
    """Write every API request the operator made in this module (for the chart's RBAC test)."""
    yield
    if _recorded:
        RECORDED.write_text(json.dumps(summarize_requests(_recorded), indent=2) + "\n")


def _close(c: Cluster) -> None:
    _recorded.extend(r for r in c.emulator.requests() if r["agent"] in ("kopf", "spin-operator"))


def run_body(name: str = "e2e", spec: dict[str, Any] | None = None) -> dict[str, Any]:
    body = make_body(name, spec)
    for k in ("uid", "generation", "resourceVersion"):
        body["metadata"].pop(k)
    return body


def test_two_iterations_complete_with_status_events_and_columns(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        c.start_operator()
        c.create_run(run_body())
        run = c.wait_phase("e2e", ("Complete", "Failed"), timeout=60)
        st = run["status"]
        assert st["phase"] == "Complete", st
        assert st["completedIterations"] == 2
        assert st["lastCheckpoint"]["path"] == "/data/runs/e2e/iter-1/model"
        assert [it["iteration"] for it in st["iterations"]] == [0, 1]
        assert all(s["completionTime"] for it in st["iterations"] for s in it["steps"])
        assert sorted(c.jobs()) == sorted(f"e2e-it{k}-{s}" for k in range(2) for s in ("gen", "convert", "train", "eval"))
        creations = c.job_creations()
        assert len(creations) == len(set(creations)) == 8, creations
        run_dir = tmp_path / "data" / "runs" / "e2e"
        assert (run_dir / "spec.json").exists() and (run_dir / "iter-1" / "DONE").exists()
        reasons = wait_event(c, "e2e", "RunCompleted")
        for expected in ("Started", "IterationStarted", "StepStarted", "StepSucceeded", "IterationCompleted", "RunCompleted"):
            assert expected in reasons
        _check_printer_columns(run)
        _close(c)


def wait_event(c: Cluster, name: str, reason: str, timeout: float = 10) -> list[str]:
    """The event reasons of a SpinRun once `reason` is among them (kopf posts events async)."""

    def seen() -> list[str] | None:
        reasons = [r for _, r, _ in c.events(name)]
        return reasons if reason in reasons else None

    return c.wait(seen, timeout, f"event {reason}")


def _check_printer_columns(run: dict[str, Any]) -> None:
    try:
        from spin_runtime.api.crd import crd_dict
    except ImportError as e:  # pragma: no cover - colleague's module
        pytest.skip(f"spin_runtime.crd.crd_dict not available yet: {e}")
    crd = crd_dict()
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    values = {col["name"]: _jsonpath(run, col["jsonPath"]) for col in version.get("additionalPrinterColumns", [])}
    assert values.get("Phase") == "Complete", values
    if "Iteration" in values:
        assert values["Iteration"] == 1
    if "Checkpoint" in values:
        assert values["Checkpoint"] == "/data/runs/e2e/iter-1/model"
    for col in version.get("additionalPrinterColumns", []):
        assert "[-1:]" not in col["jsonPath"], "printer columns must not use conditions[-1:]"


def _jsonpath(obj: Any, path: str) -> Any:
    """The simple `.a.b` JSONPaths printer columns use (no filters)."""
    cur = obj
    for part in path.strip(".").split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _job_done(c: Cluster, name: str) -> bool:
    job = c.jobs().get(name) or {}
    return any(x.get("type") == "Complete" and x.get("status") == "True" for x in (job.get("status") or {}).get("conditions") or [])


def test_operator_restarts_mid_step_and_at_a_phase_boundary_create_no_duplicates(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        c.kubelet.hold |= {"it0-train", "it1-gen"}
        c.start_operator()
        c.create_run(run_body())
        c.wait(lambda: "e2e-it0-train" in c.jobs(), 30, "it0 train Job")
        c.stop_operator()  # mid-step: training "runs"
        c.kubelet.hold.discard("it0-train")
        c.wait(lambda: _job_done(c, "e2e-it0-train"), 30, "training done while the operator is down")
        c.start_operator()  # the phase boundary passed while it was down
        c.wait(lambda: "e2e-it1-gen" in c.jobs(), 30, "it1 generation Job")
        c.stop_operator()
        c.start_operator()  # restart with a step in flight and nothing changed
        c.kubelet.hold.clear()
        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        assert run["status"]["phase"] == "Complete"
        creations = c.job_creations()
        assert sorted(creations) == sorted(set(creations)) and len(creations) == 8, creations
        _close(c)


def test_one_failing_generation_shard_reruns_alone(tmp_path: Path) -> None:
    with cluster(tmp_path, failures={("it0-gen", 1): 1}) as c:
        c.start_operator()
        c.create_run(run_body(spec={"generation": {"shards": 3}, "iterations": 1}))
        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        assert run["status"]["phase"] == "Complete", run["status"]
        starts = [i for job, i in c.kubelet.pod_starts if job == "e2e-it0-gen"]
        assert sorted(starts) == [0, 1, 1, 2]
        gen = c.jobs()["e2e-it0-gen"]
        assert gen["status"]["failed"] == 1 and gen["status"]["completedIndexes"] == "0-2"
        assert c.job_creations().count("e2e-it0-gen") == 1
        assert run["status"]["iterations"][0]["steps"][0]["retries"] == 0
        _close(c)


def test_generation_shard_over_its_limit_fails_the_run_naming_it(tmp_path: Path) -> None:
    with cluster(tmp_path, failures={("it0-gen", 1): 5}) as c:
        c.start_operator()
        c.create_run(run_body(spec={"backoffLimit": 1}))
        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        st = run["status"]
        assert st["phase"] == "Failed" and st["reason"] == "StepFailed"
        assert "shard 1" in st["message"]
        _close(c)


def test_training_failing_past_backoff_limit_fails_the_run(tmp_path: Path) -> None:
    with cluster(tmp_path, failures={("it0-train", 0): 10}) as c:
        c.start_operator()
        c.create_run(run_body(spec={"backoffLimit": 1}))
        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        st = run["status"]
        assert st["phase"] == "Failed" and st["reason"] == "StepFailed", st
        assert "train of iteration 0 failed 2 time(s), more than backoffLimit (1)" in st["message"]
        failed = next(x for x in st["conditions"] if x["type"] == "Failed")
        assert failed["status"] == "True" and failed["reason"] == "StepFailed"
        assert c.job_creations().count("e2e-it0-train") == 2
        assert "e2e-it0-eval" not in c.jobs()
        reasons = wait_event(c, "e2e", "StepFailed")
        assert "StepRetrying" in reasons
        _close(c)


def test_suspend_and_resume_mid_iteration(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        c.kubelet.hold.add("it0-convert")
        c.start_operator()
        c.create_run(run_body(spec={"iterations": 1}))
        c.wait(lambda: "e2e-it0-convert" in c.jobs(), 30, "convert Job")
        c.patch_spec("e2e", {"suspend": True})
        run = c.wait_phase("e2e", "Suspended", 30)
        assert next(x for x in run["status"]["conditions"] if x["type"] == "Suspended")["status"] == "True"
        c.wait(lambda: c.jobs()["e2e-it0-convert"]["spec"]["suspend"] is True, 10, "Job suspended")
        c.kubelet.hold.clear()
        c.patch_spec("e2e", {"suspend": False})
        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        assert run["status"]["phase"] == "Complete"
        assert next(x for x in run["status"]["conditions"] if x["type"] == "Suspended")["reason"] == "Resumed"
        assert c.job_creations().count("e2e-it0-convert") == 1
        reasons = wait_event(c, "e2e", "Resumed")
        assert "Suspended" in reasons
        _close(c)


def test_deleting_the_spinrun_stops_its_work_cleanly(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        c.kubelet.hold.add("it0-convert")
        c.start_operator()
        c.create_run(run_body())
        c.wait(lambda: "e2e-it0-convert" in c.jobs(), 30, "convert Job")
        uid = c.get_run("e2e")["metadata"]["uid"]
        c.delete_run("e2e")
        gone = c.collect_garbage(uid)
        assert "e2e-it0-gen" in gone and "e2e-it0-spec" in gone
        assert "e2e-data" not in gone, "the claim (checkpoints, results) outlives the run unless deleteWithRun"
        before = len(c.job_creations())
        import time

        time.sleep(1.0)
        assert len(c.job_creations()) == before, "no children after deletion"
        assert c.jobs() == {}
        assert c.operator is not None and c.operator.thread is not None and c.operator.thread.is_alive()
        c.stop_operator()
        _close(c)


def test_training_as_a_kubeflow_trainjob_with_the_crd_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """launcher: trainjob against an emulator serving trainer.kubeflow.org/v1alpha1 TrainJobs, the
    harness playing Kubeflow Trainer's controller. TrainJobs are listed at each reconcile (no
    watch), so the resync sets the pace: short here. Its requests are not recorded: the chart
    grants TrainJob RBAC only with trainjob.enabled (tests/chart checks that variant)."""
    from spin_operator import driver

    monkeypatch.setattr(driver, "RESYNC_SECONDS", 0.3)
    with cluster(tmp_path, trainjob_crd=True) as c:
        assert c.trainer is not None
        c.trainer.hold.add("it0-train")
        c.start_operator()
        c.create_run(run_body(spec={"iterations": 1, "training": {"launcher": "trainjob"}}))
        tj = c.wait(lambda: next(iter(c.custom.list_namespaced_custom_object(
            "trainer.kubeflow.org", "v1alpha1", c.namespace, "trainjobs")["items"]), None), 30, "the TrainJob")
        assert tj["metadata"]["ownerReferences"][0]["uid"] == c.get_run("e2e")["metadata"]["uid"]
        c.patch_spec("e2e", {"suspend": True})
        c.wait(lambda: c.custom.get_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", c.namespace, "trainjobs",
                                                            "e2e-it0-train")["spec"]["suspend"] is True, 10, "suspended")
        c.trainer.hold.clear()
        c.patch_spec("e2e", {"suspend": False})
        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        assert run["status"]["phase"] == "Complete", run["status"]
        assert c.trainer.completed == ["e2e-it0-train"]
        assert "e2e-it0-train" not in c.jobs(), "training ran as a TrainJob, not a Job"
        assert (tmp_path / "data" / "runs" / "e2e" / "iter-0" / "DONE").exists()


def test_trainjob_launcher_without_the_crd_says_what_to_install(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        c.start_operator()
        c.create_run(run_body(spec={"iterations": 1, "training": {"launcher": "trainjob"}}))
        run = c.wait(lambda: (r := c.get_run("e2e")).get("status", {}).get("reason") == "LauncherUnavailable" and r, 30,
                     "LauncherUnavailable")
        assert "install Kubeflow Trainer v2" in run["status"]["message"]


@pytest.mark.parametrize("kueue_rules", [True, False], ids=["workload-active", "suspend-flag-as-before"])
def test_suspend_and_resume_under_kueue(kueue_rules: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kueue (the harness plays its webhook and reconciler) suspends queued Jobs until admitted and
    unsuspends an admitted Job someone else suspended. The operator, with SPIN_KUEUE_ENABLED, stops
    and resumes a queued run through the Workload's spec.active; without it (as before #13) it
    flips the Job's suspend flag, and Kueue flips it back: a patch loop."""
    monkeypatch.setenv("SPIN_KUEUE_ENABLED", "true" if kueue_rules else "false")
    with cluster(tmp_path, kueue_quota=0) as c:
        assert c.kueue is not None
        c.kubelet.hold.add("it0-convert")
        c.start_operator()
        c.create_run(run_body(spec={"iterations": 1, "queueName": "gpu-queue"}))
        st = c.wait(lambda: (r := c.get_run("e2e")).get("status", {}).get("reason") == "WaitingForQuota" and r["status"],
                    30, "waiting for quota")
        assert "waiting for quota in queue gpu-queue" in st["message"]
        c.kueue.quota = 1
        c.wait(lambda: "e2e-it0-convert" in c.jobs() and not c.jobs()["e2e-it0-convert"]["spec"]["suspend"], 30,
               "convert admitted and running")
        c.patch_spec("e2e", {"suspend": True})
        c.wait_phase("e2e", "Suspended", 10)
        import time

        time.sleep(2.0)
        if not kueue_rules:
            assert c.kueue.unsuspended_behind > 3, "expected the suspend-flag fight with Kueue"
            return
        assert c.kueue.unsuspended_behind == 0 and c.kueue.evictions == 1
        assert c.jobs()["e2e-it0-convert"]["spec"]["suspend"] is True  # Kueue evicted it
        c.kubelet.hold.clear()
        c.patch_spec("e2e", {"suspend": False})
        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        assert run["status"]["phase"] == "Complete", run["status"]
        assert c.kueue.unsuspended_behind == 0
        assert c.job_creations().count("e2e-it0-convert") == 1


def _runtime_ready() -> str | None:
    import importlib.util

    missing = [m for m in ("spin_runtime.steps.generate", "spin_runtime.steps.convert", "spin_runtime.steps.train", "spin_runtime.steps.evaluate")
               if importlib.util.find_spec(m) is None]
    return f"runtime steps not available yet: {', '.join(missing)}" if missing else None


class StatusRecorder:
    """Reads a SpinRun's status every 0.1 s in a thread and keeps each distinct `progress`."""

    def __init__(self, c: Cluster, name: str) -> None:
        import threading

        self.c, self.name, self.seen = c, name, []  # type: list[dict[str, Any]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> StatusRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            try:
                run = self.c.get_run(self.name)
            except Exception:
                continue
            progress = (run.get("status") or {}).get("progress")
            if progress and (not self.seen or self.seen[-1]["progress"] != progress):
                self.seen.append(run["status"] | {"wide": _wide_columns(run)})


def _wide_columns(run: dict[str, Any]) -> dict[str, Any]:
    """What `kubectl get spinruns -o wide` shows in the priority-1 columns."""
    from spin_runtime.api.crd import PRINTER_COLUMNS

    return {col["name"]: _jsonpath(run, col["jsonPath"]) for col in PRINTER_COLUMNS if col.get("priority") == 1}


@pytest.mark.slow
def test_real_steps_on_the_tiny_model_complete_an_iteration_showing_live_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real steps serve their progress on their pods' progress port; the operator polls it
    into status.progress (and the -o wide columns) while each step runs, and drops it after."""
    reason = _runtime_ready()
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("SPIN_PROGRESS_SECONDS", "0.2")
    spec = {
        "iterations": 1,
        "generation": {"shards": 2, "maxNewTokens": 8, "batchSize": 8},
        "training": {"maxLength": 64, "maxPromptLength": 32, "maxSteps": 3, "perDeviceBatchSize": 2, "reportTo": []},
        "evaluation": {"maxSamples": 4},
    }
    with cluster(tmp_path, mode="real", pods=True) as c, StatusRecorder(c, "e2e") as seen:
        c.start_operator()
        c.create_run(run_body(spec=spec))
        try:
            run = c.wait_phase("e2e", ("Complete", "Failed"), float(os.environ.get("SPIN_E2E_REAL_TIMEOUT", "300")))
        except AssertionError as e:
            raise AssertionError(f"{e}; pods started: {c.kubelet.pod_starts}; finished Jobs: {sorted(c.kubelet.done_at)}") from e
        assert run["status"]["phase"] == "Complete", (run["status"], c.kubelet.errors[-2:])
        assert "progress" not in run["status"]
        run_dir = tmp_path / "data" / "runs" / "e2e"
        assert (run_dir / "spec.json").exists()
        assert (run_dir / "iter-0" / "model").is_dir()
        assert (run_dir / "iter-0" / "DONE").exists()
        _close(c)
    by_step: dict[str, list[dict[str, Any]]] = {}
    for st in seen.seen:
        by_step.setdefault(st["progress"]["step"], []).append(st)
    assert {"generate", "train"} <= set(by_step), [s["progress"] for s in seen.seen]
    gen = by_step["generate"]
    assert all(s["progress"]["shardsTotal"] == 2 and s["phase"] == "Generating" for s in gen)
    assert all(s["wide"]["Progress"].startswith("shards ") and s["wide"]["Step"] == "generate" for s in gen)
    train = [s["progress"] for s in by_step["train"]]
    assert all(p["iteration"] == 0 and p["summary"] for p in train), train
    counted = [p for p in train if p.get("total") is not None]
    assert counted and all(p["unit"] == "steps" and p["total"] == 3 for p in counted), train


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SPIN_E2E_KUBECONFIG"), reason="set SPIN_E2E_KUBECONFIG to run against a real cluster")
def test_real_cluster_two_iterations(tmp_path: Path) -> None:  # pragma: no cover - opt-in
    """Against a real cluster with the CRD installed (`spin crd | kubectl apply -f -`) and images
    that can run the tiny model; the operator runs here, the Jobs run there."""
    from kubernetes import client, config

    from tests.operator.harness import OperatorThread

    kubeconfig = Path(os.environ["SPIN_E2E_KUBECONFIG"])
    namespace = os.environ.get("SPIN_E2E_NAMESPACE", "default")
    timeout = float(os.environ.get("SPIN_E2E_TIMEOUT", "1800"))
    op = OperatorThread(kubeconfig).start()
    api = client.CustomObjectsApi(config.new_client_from_config(str(kubeconfig)))
    body = run_body(name=f"e2e-{os.getpid()}", spec={"training": {"maxSteps": 1}})
    body["metadata"]["namespace"] = namespace
    try:
        api.create_namespaced_custom_object("spin.dev", "v1alpha1", namespace, "spinruns", body)
        import time

        deadline = time.monotonic() + timeout
        phase = None
        while time.monotonic() < deadline and phase not in ("Complete", "Failed"):
            time.sleep(5)
            obj = api.get_namespaced_custom_object("spin.dev", "v1alpha1", namespace, "spinruns", body["metadata"]["name"])
            phase = (obj.get("status") or {}).get("phase")
        assert phase == "Complete", obj.get("status")
    finally:
        api.delete_namespaced_custom_object("spin.dev", "v1alpha1", namespace, "spinruns", body["metadata"]["name"])
        op.stop()
