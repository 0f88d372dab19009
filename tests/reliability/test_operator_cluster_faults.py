"""What the real control plane of tests/kube.py cannot make, kept on the emulator (issue #20; the
rest of this file moved to tests/reliability/test_real_cluster_faults.py, see docs/reliability.md
"Moved onto the real control plane"):

- ImagePullBackOff: the process kubelet pulls nothing (every image runs from the host's root), so
  no pod of it ever waits on an image;
- a cluster that ignores the Jobs' podFailurePolicy ("as-before"): the v1.37 Job controller always
  honours it (JobPodFailurePolicy is GA and locked on), and the chart supports clusters from 1.29,
  where an administrator could still turn the gate off.

The operator runs in-process against the emulator (tests/operator/harness.py); each test tallies
what the user loses."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from spin_runtime import errors
from tests.operator.harness import Cluster, cluster
from tests.operator.test_e2e import run_body, wait_event
from tests.reliability.conftest import Tally

pytestmark = pytest.mark.e2e


def _status(c: Cluster, name: str = "e2e") -> dict:
    return c.get_run(name).get("status") or {}


def _cond(st: dict, ctype: str) -> dict:
    return next((x for x in st.get("conditions") or [] if x["type"] == ctype), {})


# --------------------------------------------------------------------------- a cluster without podFailurePolicy


def test_preempted_pods_each_cost_a_retry_where_the_pod_failure_policy_is_ignored(tmp_path: Path, tally: Tally) -> None:
    with cluster(tmp_path, pods=True, gc_delay=0.2) as c:
        c.kubelet.honour_pod_failure_policy = False
        c.kubelet.disruptions.update({("it0-convert", 0): 1, ("it0-train", 0): 2})
        c.start_operator()
        c.create_run(run_body(spec={"iterations": 1, "backoffLimit": 1}))
        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        st = run["status"]
        retries = sum(s["retries"] for it in st["iterations"] for s in it["steps"])
        assert len(c.kubelet.disrupted) >= 2
        # each preemption was a failed attempt: training spent its one retry, then failed the run
        assert st["phase"] == "Failed" and "train of iteration 0 failed 2 time(s)" in st["message"], st
        tally.add("faults.pod_preempted.no_policy", len(c.kubelet.disrupted))
        tally.add("observed.step_retries_spent.no_policy", retries)


def test_a_bad_spec_exit_code_is_retried_where_the_pod_failure_policy_is_ignored(tmp_path: Path, tally: Tally) -> None:
    with cluster(tmp_path, pods=True) as c:
        c.kubelet.honour_pod_failure_policy = False
        c.kubelet.exit_codes[("it0-convert", 0)] = errors.EXIT_BAD_SPEC
        c.start_operator()
        c.create_run(run_body(spec={"backoffLimit": 3}))
        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        attempts = c.job_creations().count("e2e-it0-convert")
        assert run["status"]["phase"] == "Failed", run["status"]
        assert attempts == 4
        tally.add("observed.attempts_on_exit_78.no_policy", attempts)


# --------------------------------------------------------------------------- image pulls


def test_a_pod_waiting_on_its_image_is_reported_and_the_run_continues_once_pushed(tmp_path: Path, tally: Tally) -> None:
    with cluster(tmp_path, pods=True, gc_delay=0.2) as c:
        c.kubelet.troubles[("it0-gen", 1)] = "ImagePullBackOff"
        c.start_operator()
        c.create_run(run_body(spec={"iterations": 1}))
        st = c.wait(lambda: (s := _status(c)).get("reason") == "ImagePullBackOff" and s, 30, "ImagePullBackOff reported")
        pc = _cond(st, "Progressing")
        assert pc["status"] == "False" and "e2e-it0-gen-1-" in pc["message"], pc
        reasons = wait_event(c, "e2e", "ImagePullBackOff")
        assert reasons.count("ImagePullBackOff") == 1
        del c.kubelet.troubles[("it0-gen", 1)]  # the image pushed
        run = c.wait_phase("e2e", ("Complete", "Failed"), 60)
        assert run["status"]["phase"] == "Complete", run["status"]
        tally.add("faults.pod_ImagePullBackOff", 1)


def test_a_pod_whose_image_never_comes_fails_the_run_after_the_grace_period(tmp_path: Path, tally: Tally) -> None:
    with cluster(tmp_path, pods=True) as c:
        c.kubelet.troubles[("it0-convert", 0)] = "ImagePullBackOff"
        c.start_operator()
        t0 = time.monotonic()
        c.create_run(run_body(spec={"podStartupTimeoutSeconds": 3}))
        run = c.wait_phase("e2e", ("Complete", "Failed"), 30)
        waited = time.monotonic() - t0
        st = run["status"]
        assert st["phase"] == "Failed" and st["reason"] == "ImagePullBackOff", st
        assert "podStartupTimeoutSeconds (3s)" in st["message"]
        assert "e2e-it0-convert" not in c.jobs() or c.jobs()["e2e-it0-convert"]["status"].get("active", 0) == 0
        tally.add("observed.seconds_until_a_stuck_step_failed", int(waited))
