"""`spin-operator`'s entry point and metrics, and operator settings read from the environment:
argument parsing, the wiring of main() into kopf, the Prometheus endpoint, the PyTorchJob
switch of the Helm chart, and the filter that drops Job events carrying nothing new. Fast: no
cluster, no kopf loop."""

from __future__ import annotations

import argparse
import socket
import urllib.request
from typing import Any

import kopf
import pytest
from prometheus_client import REGISTRY

from spin_operator import main as main_mod
from spin_operator import metrics
from spin_operator.builders import meta
from spin_operator.kube import client as kube_client
from spin_operator.kube.crd_identity import CrdIdentity, Seen
from spin_operator.kube.expectations import EXPECTATION_TTL_SECONDS, Expectations
from spin_operator.kube.index_audit import Audit, indexed_children
from spin_operator.reconcile.actions import Create
from spin_operator.reconcile.decide import reconcile
from spin_operator.settings import DeploymentSettings
from tests.operator.fixtures import make_body
from tests.operator.sim import Sim

# --------------------------------------------------------------------------- arguments


def parse(*argv: str) -> argparse.Namespace:
    return main_mod.build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--all-namespaces"], {"WATCH_NAMESPACES": "a"}, (True, [])),
        (["-A"], {}, (True, [])),
        (["--namespace", "a", "-n", "b"], {"WATCH_NAMESPACES": "c"}, (False, ["a", "b"])),
        ([], {"WATCH_NAMESPACES": " x, y ,,"}, (False, ["x", "y"])),
        ([], {"WATCH_NAMESPACES": ""}, (True, [])),
        ([], {}, (True, [])),
    ],
)
def test_namespaces_come_from_the_flags_else_watch_namespaces(argv: list[str], env: dict[str, str], expected: Any) -> None:
    assert main_mod.namespaces_from(parse(*argv), DeploymentSettings.from_env(env)) == expected


def test_metrics_port_and_liveness_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPIN_METRICS_PORT", raising=False)
    monkeypatch.delenv("SPIN_LIVENESS", raising=False)
    args = parse()
    assert args.metrics_port == 8080 and args.liveness == "http://0.0.0.0:8081/healthz" and not args.verbose
    args = parse("--metrics-port", "0", "--liveness", "", "--verbose")
    assert args.metrics_port == 0 and args.liveness == "" and args.verbose
    monkeypatch.setenv("SPIN_METRICS_PORT", "9100")
    assert parse().metrics_port == 9100
    with pytest.raises(SystemExit):
        parse("--metrics-port", "many")


def test_the_operator_identity_needs_no_passwd_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf's own identity reads the user name from getpass, which fails for a uid the image's
    /etc/passwd lacks; seen on the real cluster with the chart's runAsUser."""
    import getpass

    monkeypatch.setattr(getpass, "getuser", lambda: (_ for _ in ()).throw(KeyError("getpwuid(): uid not found: 65532")))
    assert main_mod.own_identity().startswith("spin-operator@")


def test_the_watch_timeout_is_whole_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf sends settings.watching.server_timeout as timeoutSeconds; the real apiserver answers
    `timeoutSeconds=300.0` with 400 "strconv.ParseInt: parsing \"300.0\"" and no watch starts."""
    from spin_operator import handlers

    settings = kopf.OperatorSettings()
    monkeypatch.setenv("SPIN_WATCH_TIMEOUT", "120")
    handlers.configure(settings=settings, memo=kopf.Memo())
    assert settings.watching.server_timeout == 120 and isinstance(settings.watching.server_timeout, int)
    assert str(settings.watching.server_timeout) == "120"


def test_main_wires_flags_into_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, Any] = {}
    monkeypatch.setattr(kube_client, "api_client", lambda: calls.setdefault("api_client", True))
    monkeypatch.setattr(metrics, "serve", lambda port: calls.setdefault("metrics_port", port))
    monkeypatch.setattr(kopf, "run", lambda **kw: calls.setdefault("kopf", kw))
    assert main_mod.main(["--namespace", "team-a", "--metrics-port", "0", "--liveness", ""]) == 0
    assert calls["api_client"] is True  # fails fast without a cluster config
    assert calls["metrics_port"] == 0
    identity = calls["kopf"].pop("identity")
    assert identity.startswith("spin-operator@")
    assert callable(calls["kopf"].pop("memo").restart) and not calls["kopf"].pop("stop_flag").is_set()
    assert calls["kopf"] == {"standalone": True, "clusterwide": False, "namespaces": ["team-a"], "liveness_endpoint": None}

    calls.clear()
    assert main_mod.main(["--all-namespaces", "--metrics-port", "9101"]) == 0
    assert calls["metrics_port"] == 9101
    assert calls["kopf"]["clusterwide"] is True and calls["kopf"]["namespaces"] == []
    assert calls["kopf"]["liveness_endpoint"] == "http://0.0.0.0:8081/healthz"


def test_a_restart_a_handler_asks_for_starts_kopf_again_in_the_same_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memo's `restart` (asked for when the SpinRun CRD was applied again) stops kopf and
    main runs it again; a stop without it (SIGTERM) ends the process."""
    runs: list[Any] = []

    def run(**kw: Any) -> None:
        runs.append(kw)
        if len(runs) == 1:
            kw["memo"].restart()
            assert kw["stop_flag"].is_set(), "asking for a restart stops this kopf"

    monkeypatch.setattr(kube_client, "api_client", lambda: None)
    monkeypatch.setattr(metrics, "serve", lambda port: None)
    monkeypatch.setattr(kopf, "run", run)
    assert main_mod.main(["--namespace", "team-a", "--metrics-port", "0"]) == 0
    assert len(runs) == 2 and runs[0]["stop_flag"] is not runs[1]["stop_flag"]


@pytest.mark.parametrize(("started_with", "now", "restart"), [
    ("a", Seen("a", True), False),  # the same CRD
    ("a", Seen(None, False), False),  # deleted: nothing to watch yet
    ("a", Seen("b", False), False),  # applied again, not served yet: a restart now could miss it too
    ("a", Seen("b", True), True),
    (None, Seen("b", True), True),  # absent at start, applied since
    (None, Seen(None, False), False),
])
def test_the_operator_restarts_only_for_a_new_crd_that_is_served(started_with: str | None, now: Seen, restart: bool) -> None:
    assert CrdIdentity(started_with).recreated(now) is restart


def test_an_indexed_child_missing_from_two_lists_in_a_row_is_a_ghost() -> None:
    job, svc = ("jobs", "ns", "u-job"), ("services", "ns", "u-svc")
    listed = {("jobs", "ns"): {"u-job"}, ("services", "ns"): set()}
    first, ghosts = Audit().after([job, svc], listed)
    assert ghosts == frozenset() and first.suspects == {svc}, "one miss is only a suspect"
    _, ghosts = first.after([job, svc], listed)
    assert ghosts == {svc}
    _, ghosts = first.after([job], listed)
    assert ghosts == frozenset(), "its DELETED event came: the index dropped it"
    _, ghosts = first.after([job, svc], {**listed, ("services", "ns"): {"u-svc"}})
    assert ghosts == frozenset(), "listed again: it was only indexed before it was listed"


def test_the_index_audit_reads_every_childs_uid_from_the_indexes() -> None:
    from spin_operator.driver import Indexes
    from spin_operator.kube.objects import PodState

    key = ("ns", "run")
    body = {"metadata": {"name": "x", "uid": "u1"}}
    indexes = Indexes(jobs={key: [body]}, config_maps={key: [{"metadata": {"uid": "u2"}}]}, services={key: []},
                      pvcs={key: [{"metadata": {}}]}, pods={key: [PodState(name="p", uid="u3")]})
    assert indexed_children(indexes) == {("jobs", "ns", "u1"), ("configmaps", "ns", "u2"), ("pods", "ns", "u3")}


def test_the_crd_check_interval_is_a_setting() -> None:
    assert DeploymentSettings.from_env({}).crd_check_seconds == 10.0
    assert DeploymentSettings.from_env({"SPIN_CRD_CHECK_SECONDS": "0"}).crd_check_seconds == 0.0
    assert DeploymentSettings.from_env({"SPIN_CRD_CHECK_SECONDS": "soon"}).crd_check_seconds == 10.0
    assert DeploymentSettings.from_env({}).index_audit_seconds == 60.0
    assert DeploymentSettings.from_env({"SPIN_INDEX_AUDIT_SECONDS": "2"}).index_audit_seconds == 2.0


# --------------------------------------------------------------------------- metrics


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def step(name: str, start: str | None = None, end: str | None = None, retries: int = 0) -> dict[str, Any]:
    s: dict[str, Any] = {"step": name, "retries": retries}
    if start:
        s["startTime"] = start
    if end:
        s["completionTime"] = end
    return s


def test_metrics_follow_status_transitions() -> None:
    key = ("metrics-test", "run-a")
    ns = {"namespace": "metrics-test"}
    iterations0 = sample("spinrun_iterations_completed_total", **ns)
    retries0 = sample("spinrun_step_retries_total", step="train", **ns)
    gen0 = sample("spinrun_step_duration_seconds_count", step="generate", **ns)
    old = {"phase": "Generating", "iterations": [{"iteration": 0, "steps": [step("generate", "2026-01-01T00:00:00Z")]}]}
    new = {
        "phase": "Training",
        "completedIterations": 1,
        "iterations": [{"iteration": 0, "steps": [
            step("generate", "2026-01-01T00:00:00Z", "2026-01-01T00:00:42Z"),
            step("train", "2026-01-01T00:01:00Z", retries=2),
        ]}],
    }
    metrics.observe(key, {}, old)
    assert sample("spinrun_runs", phase="Generating", **ns) >= 1
    metrics.observe(key, old, new)
    assert sample("spinrun_iterations_completed_total", **ns) == iterations0 + 1
    assert sample("spinrun_step_retries_total", step="train", **ns) == retries0 + 2
    assert sample("spinrun_step_duration_seconds_count", step="generate", **ns) == gen0 + 1
    training = sample("spinrun_runs", phase="Training", **ns)
    assert training >= 1
    metrics.observe(key, new, new)  # no transition: nothing counted twice
    assert sample("spinrun_iterations_completed_total", **ns) == iterations0 + 1
    assert sample("spinrun_step_retries_total", step="train", **ns) == retries0 + 2
    metrics.forget(key)
    assert sample("spinrun_runs", phase="Training", **ns) == training - 1


def test_runs_by_phase_are_rebuilt_from_the_cluster_after_a_restart() -> None:
    """A restarted operator reconciles every run once (kopf's resume): each reconcile records the
    run's phase and progress, so Complete and Failed runs count again without any status change."""
    key = ("metrics-rebuild", "finished")
    ns = {"namespace": "metrics-rebuild"}
    metrics.record(key, {"phase": "Complete", "completedIterations": 3}, planned=3)
    assert sample("spinrun_runs", phase="Complete", **ns) == 1 and sample("spinrun_runs", phase="Failed", **ns) == 0
    assert sample("spinrun_run_completed_iterations", run="finished", **ns) == 3
    assert sample("spinrun_run_planned_iterations", run="finished", **ns) == 3
    metrics.forget(key)
    assert sample("spinrun_runs", phase="Complete", **ns) == 0
    assert REGISTRY.get_sample_value("spinrun_run_completed_iterations", {"run": "finished", **ns}) is None


def test_running_step_progress_gauges_exist_only_while_the_step_reports() -> None:
    key = ("metrics-live", "run-l")
    labels = {"namespace": "metrics-live", "run": "run-l"}
    progress = {"iteration": 0, "step": "train", "unit": "steps", "done": 30, "total": 120, "loss": 0.41,
                "margin": 0.93, "etaSeconds": 900, "summary": "step 30/120"}
    metrics.record(key, {"phase": "Training", "progress": progress}, planned=2)
    assert REGISTRY.get_sample_value("spinrun_step_progress_ratio", {**labels, "step": "train"}) == 0.25
    assert REGISTRY.get_sample_value("spinrun_step_eta_seconds", {**labels, "step": "train"}) == 900
    assert REGISTRY.get_sample_value("spinrun_train_loss", labels) == 0.41
    assert REGISTRY.get_sample_value("spinrun_train_reward_margin", labels) == 0.93
    metrics.record(key, {"phase": "Evaluating", "progress": {"iteration": 0, "step": "evaluate", "summary": "x"}}, planned=2)
    assert REGISTRY.get_sample_value("spinrun_step_progress_ratio", {**labels, "step": "train"}) is None
    assert REGISTRY.get_sample_value("spinrun_train_loss", labels) is None
    metrics.record(key, {"phase": "Training", "progress": progress}, planned=2)
    metrics.forget(key)
    assert REGISTRY.get_sample_value("spinrun_step_eta_seconds", {**labels, "step": "train"}) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_endpoint_serves_gauges_and_counters() -> None:
    assert metrics.serve(0) is None  # --metrics-port 0: no endpoint
    metrics.observe(("metrics-test", "run-b"), {}, {"phase": "Complete", "completedIterations": 0})
    metrics.API_REQUESTS.labels(verb="get", resource="spinruns").inc()
    server = metrics.serve(_free_port(), addr="127.0.0.1")
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert resp.status == 200
            text = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        metrics.forget(("metrics-test", "run-b"))
    for phase in metrics.PHASES:
        assert f'spinrun_runs{{namespace="metrics-test",phase="{phase}"}}' in text
    assert 'spinrun_api_requests_total{resource="spinruns",verb="get"}' in text
    for name in ("spinrun_iterations_completed_total", "spinrun_reconcile_duration_seconds_bucket",
                 "spinrun_reconcile_errors_total", "spinrun_step_duration_seconds"):
        assert name in text


# --------------------------------------------------------------------------- PyTorchJob switch (Helm)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("True", True), ("1", True), ("false", False), ("FALSE", False), ("0", False), ("", None), (None, None)],
)
def test_pytorchjob_switch_is_read_from_the_environment(value: str | None, expected: bool | None) -> None:
    env = {} if value is None else {"SPIN_PYTORCHJOB_ENABLED": value}
    assert DeploymentSettings.from_env(env).launcher_enabled("pytorchjob") is expected


def test_pytorchjob_switch_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="SPIN_PYTORCHJOB_ENABLED"):
        DeploymentSettings.from_env({"SPIN_PYTORCHJOB_ENABLED": "maybe"})


def test_the_operator_reads_its_settings_once_at_start_and_keeps_them_in_its_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resync, progress polling, Kueue: read by DeploymentSettings.from_env when the operator
    starts and passed down through the per-process state, not looked up at each reconcile."""
    from spin_operator import handlers

    monkeypatch.setenv("SPIN_RESYNC_SECONDS", "7")
    monkeypatch.setenv("SPIN_PROGRESS_SECONDS", "3")
    monkeypatch.setenv("SPIN_KUEUE_ENABLED", "true")
    memo = kopf.Memo()
    handlers.configure(settings=kopf.OperatorSettings(), memo=memo)
    assert memo.state.deployment.resync_seconds == 7.0 and memo.state.deployment.kueue is True
    assert memo.state.progress.interval == 3.0


def test_only_the_settings_module_reads_the_environment() -> None:
    """Every environment variable of the deployment is read in one place (settings.py), so the
    Helm chart's variables and the operator's settings are one list."""
    import ast
    from pathlib import Path

    import spin_operator

    root = Path(spin_operator.__file__).parent
    readers = set()
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                    and node.attr in ("environ", "getenv"):
                readers.add(path.relative_to(root).as_posix())
    assert readers == {"settings.py"}


def test_disabled_pytorchjob_launcher_gets_a_clear_condition_and_no_pytorchjob() -> None:
    disabled = DeploymentSettings(launchers_enabled={"pytorchjob": False})
    sim = Sim(make_body(spec={"training": {"launcher": "pytorchjob"}}))
    sim.tick()
    sim.finish("demo-it0-gen")
    sim.tick()
    sim.finish("demo-it0-convert")
    sim.launcher_served = True  # served by the cluster, but this deployment may not create them
    d = reconcile(sim.body, sim.observed(), sim.now, disabled)
    assert not [a for a in d.actions if isinstance(a, Create) and a.kind == "PyTorchJob"]
    status = d.status_document()
    pc = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert pc["status"] == "False" and pc["reason"] == "LauncherDisabled"
    assert "pytorchjob.enabled=false" in pc["message"] and "indexedjob" in pc["message"]
    assert status["reason"] == "LauncherDisabled"
    assert [(t, r) for t, r, _ in d.events if r == "LauncherDisabled"] == [("Warning", "LauncherDisabled")]
    sim.body["status"] = status
    again = reconcile(sim.body, sim.observed(), sim.now, disabled)
    assert not [r for _, r, _ in again.events if r == "LauncherDisabled"]  # the event only on the transition
    enabled = reconcile(sim.body, sim.observed(), sim.now, DeploymentSettings(launchers_enabled={"pytorchjob": True}))
    assert [a.kind for a in enabled.actions if isinstance(a, Create)] == ["PyTorchJob"]


# --------------------------------------------------------------------------- Job event filter


def job(name: str, **status: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {meta.LABEL_RUN: "r", meta.LABEL_ITERATION: "0", meta.LABEL_STEP: "convert"}},
            "spec": {}, "status": status}


def test_job_events_that_change_nothing_read_by_the_reconcile_are_dropped() -> None:
    seen = Expectations()
    assert seen.is_news("ns", "ADDED", job("r-it0-convert"))
    assert not seen.is_news("ns", "MODIFIED", job("r-it0-convert"))  # e.g. a label-only change
    assert seen.is_news("ns", "MODIFIED", job("r-it0-convert", active=1))
    done = job("r-it0-convert", succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    assert seen.is_news("ns", "MODIFIED", done)
    assert not seen.is_news("ns", "MODIFIED", done)
    assert seen.is_news("other", "MODIFIED", done)  # keyed by namespace too
    assert seen.is_news("ns", "DELETED", done)  # a deletion is always news
    assert seen.is_news("ns", "ADDED", done)  # ... and forgets the Job


def test_created_jobs_count_as_observed_until_the_index_shows_them():
    key = ("ns", "run")
    expected = Expectations()
    job = {"metadata": {"name": "run-it0-gen"}}
    expected.expect(key, "run-it0-gen", job, now=100.0)
    assert expected.pending(key, [], now=101.0) == [job]
    assert expected.pending(key, [job], now=102.0) == []  # the index caught up
    assert expected.created[key] == {}
    expected.expect(key, "run-it0-gen", job, now=100.0)
    assert expected.pending(key, [], now=100.0 + EXPECTATION_TTL_SECONDS + 1) == []


def test_a_watched_job_event_settles_its_expectation_so_a_later_deletion_shows():
    """Created → ADDED seen (no reconcile: nothing new) → deleted by hand: the next reconcile
    must see the Job gone, not keep counting it as expected."""
    import asyncio

    from spin_operator import handlers
    from spin_operator.driver import OperatorState
    from spin_operator.kube.objects import JobState

    key = ("ns", "run")
    memo = kopf.Memo(state=OperatorState())
    expectations = memo.state.expectations
    job = {"metadata": {"name": "run-it0-convert", "labels": {"spinrun.dev/run": "run"}}, "status": {}}
    expectations.expect(key, "run-it0-convert", job, now=100.0)
    expectations.record("ns", "run-it0-convert", JobState.from_job(job))
    labels = {meta.LABEL_RUN: "run"}
    asyncio.run(handlers.owned_job_event(namespace="ns", labels=labels, logger=None, body=job, memo=memo, type="ADDED"))
    assert key not in expectations.created
    assert expectations.pending(key, [], now=101.0) == []



def test_a_retry_is_still_expected_while_the_index_shows_only_the_attempt_it_replaced():
    """The retried Job was deleted and its next attempt created under the same name; a lagging
    index (or a late event of the old one) must not make the new attempt look met, or the stale
    failed Job would be retried again: one create per attempt, even under load."""
    from spin_operator.kube.expectations import Expectations

    key = ("ns", "run")
    old = {"metadata": {"name": "run-it0-convert", "annotations": {meta.ANNOTATION_ATTEMPT: "1"}}}
    new = {"metadata": {"name": "run-it0-convert", "annotations": {meta.ANNOTATION_ATTEMPT: "2"}}}
    expected = Expectations()
    expected.expect(key, "run-it0-convert", new, now=100.0)
    assert expected.pending(key, [old], now=101.0) == [new]  # the index lags: the new attempt wins
    expected.settle(key, "run-it0-convert", attempt=1)  # the old one's DELETED event
    assert expected.pending(key, [], now=101.0) == [new]
    expected.settle(key, "run-it0-convert", attempt=2)  # the new one's ADDED event
    assert expected.pending(key, [], now=101.0) == []

# --------------------------------------------------------------------------- issue #12: scheduling, filters


def test_children_are_listed_and_watched_with_the_managed_by_selector(monkeypatch: pytest.MonkeyPatch) -> None:
    from spin_operator import handlers

    for value, expected in (("true", ["app.kubernetes.io/managed-by=spinrun"]), ("false", [])):
        monkeypatch.setenv("SPIN_SERVER_SIDE_FILTER", value)
        settings, memo = kopf.OperatorSettings(), kopf.Memo()
        handlers.configure(settings=settings, memo=memo)
        for group, version, plural in handlers.CHILD_RESOURCES:
            assert list(settings.watching.label_selectors.collect(kopf.Resource(group, version, plural))) == expected
        assert list(settings.watching.label_selectors.collect(kopf.Resource("spin.dev", "v1alpha1", "spinruns"))) == []


def test_children_indexes_are_read_by_the_ids_they_are_registered_under() -> None:
    from spin_operator import handlers

    given = {index_id: f"index {index_id}" for index_id in handlers.INDEX_IDS}
    indexes = handlers._indexes({**given, "logger": None})
    assert (indexes.jobs, indexes.config_maps, indexes.services, indexes.pvcs, indexes.pods) == tuple(given.values())
    with pytest.raises(KeyError, match=handlers.PODS_INDEX):  # a renamed index fails, never reads as empty
        handlers._indexes({k: v for k, v in given.items() if k != handlers.PODS_INDEX})


def test_no_handler_needs_a_finalizer() -> None:
    """kopf puts its finalizer on an object when a handler requires it (a timer or daemon, or a
    mandatory delete handler); with the operator gone, deleting such a SpinRun would hang."""
    from spin_operator import handlers  # noqa: F401  (registers)
    from tests.operator.kopf_internals import changing_handlers, spawning_handlers

    registry = kopf.get_default_registry()
    spinruns = [h for h in changing_handlers(registry) if "spinrun" in getattr(h, "id", "")]
    assert spinruns
    assert not spawning_handlers(registry), "a kopf timer or daemon requires a finalizer"
    assert not [h for h in changing_handlers(registry) if getattr(h, "requires_finalizer", False)]


def test_the_private_api_adapters_pin_what_pyproject_pins() -> None:
    """kopf's private parts are read in one adapter (tests/operator/kopf_internals.py), which checks
    the installed version against its pin, which must be the dev extra's in pyproject.toml."""
    import re
    from pathlib import Path

    from packaging.specifiers import SpecifierSet

    from tests.operator.kopf_internals import KOPF_VERSIONS

    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    dev = pyproject.split("dev = [", 1)[1].split("]", 1)[0]
    found = re.search(r'"kopf([^"]+)"', dev)
    assert found and SpecifierSet(found.group(1)) == KOPF_VERSIONS, f"pyproject's dev extra must pin kopf{KOPF_VERSIONS}"


def test_the_next_look_follows_the_decision() -> None:
    from spin_operator import driver
    from spin_operator.reconcile.decide import Decision
    from spin_runtime.api.status import Condition, SpinRunStatus

    RESYNC_SECONDS = DeploymentSettings().resync_seconds

    def next_look(decision: Decision) -> float | None:
        return driver.next_look(decision, RESYNC_SECONDS)

    running = Decision(requeue_after=3.0)
    assert next_look(running) == 3.0
    assert next_look(Decision()) == RESYNC_SECONDS
    assert next_look(Decision(requeue_after=10 * RESYNC_SECONDS)) == RESYNC_SECONDS
    done = SpinRunStatus(conditions=[Condition(type="Complete", status="True")])
    assert next_look(Decision(status=done)) is None  # nothing left to do without an event
    assert next_look(Decision(status=done, requeue_after=60.0)) == 60.0  # the TTL


def test_a_scheduled_look_keeps_the_earliest_and_fires_once() -> None:
    import asyncio

    from spin_operator.driver import OperatorState

    async def scenario() -> list[str]:
        state, fired = OperatorState(), []

        async def look(tag: str) -> None:
            fired.append(tag)

        key = ("ns", "r")
        state.schedule(key, 0.2, lambda: look("late"))
        state.schedule(key, 0.05, lambda: look("early"))  # sooner: replaces
        state.schedule(key, 0.1, lambda: look("later"))  # not sooner: ignored
        await asyncio.sleep(0.35)
        state.schedule(key, 0.05, lambda: look("cancelled"))
        state.forget_run("ns", "r")
        await asyncio.sleep(0.1)
        return fired

    assert asyncio.run(scenario()) == ["early"]


def test_the_kueue_switch_is_read_from_the_environment() -> None:
    assert DeploymentSettings.from_env({"SPIN_KUEUE_ENABLED": "true"}).kueue is True
    assert DeploymentSettings.from_env({}).kueue is False
    with pytest.raises(ValueError, match="SPIN_KUEUE_ENABLED"):
        DeploymentSettings.from_env({"SPIN_KUEUE_ENABLED": "sometimes"})
