"""Live progress of the running step in the SpinRun status: what the pods serve (the runtime's
own progress server), how the operator polls it, and what the decision writes."""

from __future__ import annotations

import asyncio
from typing import Any

from spin_operator.kube.objects import PodState
from spin_operator.kube.progress_poller import ProgressPoller, url
from spin_operator.reconcile.decide import reconcile
from spin_operator.settings import DeploymentSettings
from spin_runtime.launch import PROGRESS_PORT, PROGRESS_PORT_ENV, PROGRESS_PORT_NAME
from spin_runtime.steps.progress_server import ProgressServer
from tests.operator.fixtures import make_body
from tests.operator.sim import T0, Sim

NOW = T0.timestamp()


def _record(step: str, *, done: int | None, total: int | None, unit: str, rate: float | None = None,
            started: float = NOW - 60, phase: str | None = None, **metrics: Any) -> dict[str, Any]:
    return {"step": step, "state": "running", "started": started, "updated": NOW - 1, "phase": phase, "unit": unit,
            "done": done, "total": total, "rate": rate, "metrics": metrics, "summary": None}


def _generating(shards: int = 4, parallelism: int = 2) -> Sim:
    sim = Sim(make_body(spec={"generation": {"shards": shards, "parallelism": parallelism}}))
    sim.tick()
    sim.running("demo-it0-gen")
    return sim


# --------------------------------------------------------------------------- what the pods carry


def test_every_step_pod_names_its_progress_port_and_sets_it_in_its_env() -> None:
    sim = Sim(make_body())
    sim.tick()
    container = sim.job("demo-it0-gen")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": PROGRESS_PORT_NAME, "containerPort": PROGRESS_PORT, "protocol": "TCP"} in container["ports"]
    assert {"name": PROGRESS_PORT_ENV, "value": str(PROGRESS_PORT)} in container["env"]


def test_pod_state_reads_the_pod_ip_and_the_progress_port_named_or_from_env() -> None:
    named = {"status": {"phase": "Running", "podIP": "10.0.0.7"}, "metadata": {"name": "p"},
             "spec": {"containers": [{"ports": [{"name": "rdzv", "containerPort": 29500},
                                                {"name": PROGRESS_PORT_NAME, "containerPort": 9000}]}]}}
    pod = PodState.from_pod(named)
    assert (pod.ip, pod.progress_port, pod.serves_progress) == ("10.0.0.7", 9000, True)
    from_env = {"status": {"phase": "Running", "podIP": "fd00::7"}, "metadata": {"name": "p"},
                "spec": {"containers": [{"env": [{"name": PROGRESS_PORT_ENV, "value": "8765"}]}]}}
    pod = PodState.from_pod(from_env)
    assert pod.progress_port == 8765 and url(pod) == "http://[fd00::7]:8765/progress"
    assert not PodState.from_pod({"status": {"phase": "Pending"}, "metadata": {"name": "p"}, "spec": {}}).serves_progress


# --------------------------------------------------------------------------- the decision


def test_generation_progress_shows_shards_done_of_n_and_the_running_shards_prompts() -> None:
    sim = _generating()
    sim.job("demo-it0-gen")["status"].update(succeeded=1, completedIndexes="0")
    for i, (done, total) in ((1, (30, 50)), (2, (10, 50))):
        sim.pod("demo-it0-gen", i, phase="Running", ip=f"10.0.0.{i}")
        sim.progress[f"demo-it0-gen-{i}-abcde"] = _record(
            f"it0/generate-{i}-of-4", done=done, total=total, unit="prompts", rate=0.5, **{"tok/s": 100.0})
    elapsed = sim.now.timestamp() - (NOW - 60)
    sim.tick()
    p = sim.status["progress"]
    assert (p["step"], p["iteration"], p["shardsDone"], p["shardsTotal"]) == ("generate", 0, 1, 4)
    assert (p["done"], p["total"], p["unit"]) == (40, 100, "prompts")
    assert p["summary"] == "shards 1/4 · 40/100 prompts · 200 tok/s"
    # the slowest running shard has 40 prompts left at 0.5/s = 80 s; then the shard still waiting
    # for a pod takes one more shard-length (its elapsed time + 80 s)
    assert p["etaSeconds"] == 80 + elapsed + 80 == 221 and p["eta"] == "3m41s"
    assert p["updated"] == "2026-01-01T11:59:59Z"


def test_training_progress_shows_step_of_total_loss_margin_and_eta() -> None:
    sim = _generating(shards=1)
    for name in ("gen", "convert"):
        sim.finish(f"demo-it0-{name}")
        sim.tick()
    sim.running("demo-it0-train")
    sim.pod("demo-it0-train", phase="Running", ip="10.0.0.9")
    sim.progress["demo-it0-train-0-abcde"] = _record(
        "it0/train", done=40, total=120, unit="steps", rate=0.1, loss=0.4123, margin=0.93, **{"s/step": 10.0})
    sim.tick()
    p = sim.status["progress"]
    assert (p["step"], p["done"], p["total"], p["unit"]) == ("train", 40, 120, "steps")
    assert (p["loss"], p["margin"], p["etaSeconds"], p["eta"]) == (0.4123, 0.93, 800, "13m20s")
    assert p["summary"] == "step 40/120 · loss 0.412 · margin 0.93 · 10.0 s/step"
    assert sim.status["phase"] == "Training"


def test_a_step_still_setting_up_shows_its_phase_without_an_eta() -> None:
    sim = _generating(shards=1)
    sim.pod("demo-it0-gen", 0, phase="Running", ip="10.0.0.1")
    sim.progress["demo-it0-gen-0-abcde"] = _record(
        "it0/generate-0-of-1", done=None, total=64, unit="prompts", phase="loading the model",
        started=sim.now.timestamp() - 42)
    sim.tick()
    p = sim.status["progress"]
    assert p["summary"] == "shards 0/1 · loading the model (42s)" and p.get("etaSeconds") is None


def test_progress_is_gone_once_the_step_finishes_and_before_any_pod_reports() -> None:
    sim = _generating(shards=1)
    sim.tick()
    assert "progress" not in sim.status  # no pod has reported, no shard finished
    sim.pod("demo-it0-gen", 0, phase="Running", ip="10.0.0.1")
    sim.progress["demo-it0-gen-0-abcde"] = _record("it0/generate-0-of-1", done=3, total=8, unit="prompts", rate=1.0)
    sim.tick()
    assert sim.status["progress"]["done"] == 3
    sim.finish("demo-it0-gen")
    sim.objects[("Pod", "demo-it0-gen-0-abcde")]["status"]["phase"] = "Succeeded"
    sim.tick()
    assert "progress" not in sim.status and sim.status["phase"] == "Converting"


def test_a_record_of_another_iteration_is_not_shown() -> None:
    sim = _generating(shards=1)
    sim.pod("demo-it0-gen", 0, phase="Running", ip="10.0.0.1")
    sim.progress["demo-it0-gen-0-abcde"] = _record("it3/train", done=3, total=8, unit="steps")
    sim.tick()
    assert "progress" not in sim.status


def test_garbage_in_a_record_never_breaks_the_status() -> None:
    sim = _generating(shards=1)
    sim.pod("demo-it0-gen", 0, phase="Running", ip="10.0.0.1")
    sim.progress["demo-it0-gen-0-abcde"] = {"step": "it0/generate-0-of-1", "done": "many", "total": -3, "rate": "fast",
                                            "metrics": ["x"], "unit": 7, "started": None, "updated": float("nan")}
    d = reconcile(sim.body, sim.observed(), sim.now)
    p = d.status_document()["progress"]
    assert p["step"] == "generate" and p.get("done") is None and p.get("total") is None


# --------------------------------------------------------------------------- polling the pods


def _serving_pod(server: ProgressServer, name: str = "p0") -> PodState:
    return PodState(name=name, phase="Running", ip="127.0.0.1", progress_port=server.port)


def test_the_poller_reads_what_the_step_serves_at_most_once_per_interval() -> None:
    server = ProgressServer(0, host="127.0.0.1")
    clock = [100.0]
    poller = ProgressPoller(interval=15, timeout=2, keep=120, clock=lambda: clock[0])
    try:
        server.publish({"step": "it0/train", "done": 1, "total": 9})
        pod = _serving_pod(server)
        assert asyncio.run(poller.records(("ns", "r"), [pod])) == {"p0": {"step": "it0/train", "done": 1, "total": 9}}
        server.publish({"step": "it0/train", "done": 2, "total": 9})
        clock[0] += 5  # within the interval: the cached record, no request
        assert asyncio.run(poller.records(("ns", "r"), [pod]))["p0"]["done"] == 1
        clock[0] += 10
        assert asyncio.run(poller.records(("ns", "r"), [pod]))["p0"]["done"] == 2
        assert poller.polls == 2
    finally:
        server.close()


def test_a_pod_that_stops_answering_keeps_its_last_record_for_a_while() -> None:
    server = ProgressServer(0, host="127.0.0.1")
    clock = [0.0]
    poller = ProgressPoller(interval=1, timeout=0.5, keep=30, clock=lambda: clock[0])
    pod = _serving_pod(server)
    server.publish({"step": "it0/train", "done": 5})
    assert asyncio.run(poller.records(("ns", "r"), [pod]))["p0"]["done"] == 5
    server.close()  # refused from now on
    clock[0] = 10
    assert asyncio.run(poller.records(("ns", "r"), [pod]))["p0"]["done"] == 5
    clock[0] = 31
    assert asyncio.run(poller.records(("ns", "r"), [pod])) == {}


def test_pods_that_serve_nothing_cost_no_poll_and_polling_can_be_turned_off() -> None:
    poller = ProgressPoller(interval=1)
    pending = PodState(name="p", phase="Pending", ip="10.0.0.1", progress_port=8765)
    assert asyncio.run(poller.records(("ns", "r"), [pending])) == {} and poller.polls == 0

    def poll_seconds(env: dict[str, str]) -> float:
        return DeploymentSettings.from_env(env).progress_seconds

    assert poll_seconds({"SPIN_PROGRESS_SECONDS": "0"}) == 0 and not ProgressPoller(interval=0).enabled
    assert poll_seconds({}) == 15.0 and poll_seconds({"SPIN_PROGRESS_SECONDS": "x"}) == 15.0
