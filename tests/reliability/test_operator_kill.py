"""The operator process is SIGKILLed mid-step and at every phase boundary of a 2-iteration run
(the harness's `instant` kubelet writes each step's markers into a real run directory), then
restarted: the run completes, no Job is ever created twice, no finished step runs again, and
every file written before a kill is byte-identical at the end.

Two kinds of kill per phase and iteration:
- mid-step: while the phase's Job runs, killed and restarted with the Job still running;
- at the boundary: the step's Job completes, the operator creates the next step's Job (or
  decides the run is complete), and is killed before its status write lands (the write is
  held by the emulator and never applied) — so the new process finds a Job its status does
  not know about; in iteration 1 the step instead completes while the operator is down.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.operator.test_e2e import run_body
from tests.reliability.conftest import Tally
from tests.reliability.faulty import (
    Fault,
    OperatorProcess,
    Zygote,
    changed_files,
    faulty_cluster,
    operator_process,
    plan_of,
    run_dir_snapshot,
)

pytestmark = pytest.mark.e2e

PHASES = {"Generating": "gen", "Converting": "convert", "Training": "train", "Evaluating": "eval"}


def _operator_gets(c, n_before: int) -> bool:  # type: ignore[no-untyped-def]
    gets = [r for r in c.emulator.requests() if r["resource"] == "spinruns" and r["verb"] == "get" and r["agent"] == "spin-operator"]
    return len(gets) > n_before


def _count_gets(c) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for r in c.emulator.requests() if r["resource"] == "spinruns" and r["verb"] == "get" and r["agent"] == "spin-operator")


def restart_and_settle(c, op: OperatorProcess) -> None:  # type: ignore[no-untyped-def]
    """Start the operator and wait until it has reconciled the run once (it GETs the SpinRun
    first, then acts); a little slack for its actions to land."""
    before = _count_gets(c)
    op.start()
    c.wait(lambda: _operator_gets(c, before), 30, "the restarted operator to reconcile")
    time.sleep(0.5)


@pytest.mark.parametrize("phase", list(PHASES))
def test_operator_killed_mid_step_and_at_the_boundary_of_every_phase(
    phase: str, tmp_path: Path, tally: Tally, zygote: Zygote
) -> None:
    suffix = PHASES[phase]
    run_dir = tmp_path / "data" / "runs" / "e2e"
    snapshots: list[dict[str, tuple[str, int]]] = []
    with faulty_cluster(tmp_path) as c, operator_process(c, tmp_path / "operator.log", zygote=zygote) as op:
        plan = plan_of(c)
        c.kubelet.hold |= {f"it0-{suffix}", f"it1-{suffix}"}
        op.start()
        c.create_run(run_body())
        for k in (0, 1):
            job = f"e2e-it{k}-{suffix}"
            c.wait(lambda job=job: job in c.jobs(), 60, job)
            c.wait_phase("e2e", phase, 30)
            creations = c.job_creations()

            # mid-step: killed while the Job runs, back while it still runs
            op.kill()
            snapshots.append(run_dir_snapshot(run_dir))
            restart_and_settle(c, op)
            assert c.job_creations() == creations, "a restart mid-step created Jobs"
            assert c.get_run("e2e")["status"]["phase"] == phase

            if k == 0:
                # boundary: the operator acts on the completion, dies before its status write
                held = plan.add(Fault("hang", action="update", resource="spinruns", subresource="status", agent="spin-operator"))
                c.kubelet.hold.discard(f"it{k}-{suffix}")
                c.wait(lambda held=held: held.injected > 0, 60, "the status write after the step completed")
                op.kill()
                held.release()
            else:
                # boundary passed while the operator is down
                op.kill()
                c.kubelet.hold.discard(f"it{k}-{suffix}")
                c.wait(lambda job=job: job in c.kubelet.done_at, 30, f"{job} to finish while the operator is down")
            snapshots.append(run_dir_snapshot(run_dir))
            restart_and_settle(c, op)

        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        st = run["status"]
        assert st["phase"] == "Complete", (st, op.tail())
        assert st["completedIterations"] == 2

        # Jobs the server created for the operator, per name (from the emulator's answers), and
        # the operator's create requests per name (from its request log)
        admitted = Counter(plan.admitted_creates("jobs"))
        dupes = {n: k for n, k in admitted.items() if k > 1}
        assert not dupes, f"Jobs created more than once: {dupes}"
        assert sorted(admitted) == sorted(f"e2e-it{k}-{s}" for k in range(2) for s in PHASES.values())
        requests = Counter(c.job_creations())
        resent = [a for a in plan.answers if a.action == "create" and a.resource == "jobs" and not a.applied]
        assert all(a.status == 409 for a in resent), resent  # a re-sent create never made a second Job
        assert sum(requests.values()) == len(admitted) + len(resent)
        starts = Counter(c.kubelet.pod_starts)
        rerun = {pod: n for pod, n in starts.items() if n > 1}
        assert not rerun, f"pods of finished steps ran again: {rerun}"

        final = run_dir_snapshot(run_dir)
        lost = [f"after kill {i}: {d}" for i, snap in enumerate(snapshots)
                for d in changed_files(snap, final, rewritten_ok=("spec.json",))]
        assert not lost, lost
        assert (run_dir / "iter-0" / "DONE").exists() and (run_dir / "iter-1" / "DONE").exists()
        assert len([p for p in final if p.endswith(".done")]) == 2 * (2 + 3)  # 2 shards + convert/train/evaluate

        tally.add("faults.operator_sigkill", 4)
        tally.add("faults.status_write_lost", 1)
        tally.add("observed.duplicate_job_creations", sum(n - 1 for n in dupes.values()))
        tally.add("observed.job_create_requests_resent_answered_409", len(resent))
        tally.add("observed.steps_recomputed", sum(n - 1 for n in rerun.values()))
        tally.add("observed.files_changed_after_kill", len(lost))
        tally.add("observed.files_checked", sum(len(s) for s in snapshots))
