"""What this operator process knows that the watch index may not show yet: Jobs it created that
the index has not caught up with ("expectations", as Kubernetes controllers keep them), and the
last state of each Job that reached a reconcile (so events that change nothing are dropped)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spin_operator.builders.meta import ANNOTATION_ATTEMPT
from spin_operator.kube.objects import JobState, PodState

#: How long a created Job counts as existing without the index showing it.
EXPECTATION_TTL_SECONDS = 300.0

#: (namespace, run name)
RunKey = tuple[str, str]


def attempt_of(job: Mapping[str, Any]) -> int:
    """The attempt a Job was created for (its spin.dev/attempt annotation; 0 when absent)."""
    try:
        return int(((job.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_ATTEMPT, 0))
    except (TypeError, ValueError):
        return 0


@dataclass
class Expectations:
    """Per-process bookkeeping of created and seen Jobs; starts empty with each operator."""

    #: (namespace, run) → job name → (monotonic time created, body). Under load the index lags
    #: behind the API server; without these a reconcile in that gap would create the same Job
    #: again (answered 409) and announce its step twice.
    created: dict[RunKey, dict[str, tuple[float, dict[str, Any]]]] = field(default_factory=dict)
    #: (namespace, job name) → the state that led to (or came from) a reconcile.
    seen: dict[tuple[str, str], JobState] = field(default_factory=dict)
    #: (namespace, pod name) → the pod's last state that reached a reconcile.
    seen_pods: dict[tuple[str, str], PodState] = field(default_factory=dict)

    def expect(self, key: RunKey, job_name: str, body: dict[str, Any], now: float) -> None:
        """A create of `job_name` is about to be sent: count it as existing from now on."""
        self.created.setdefault(key, {})[job_name] = (now, body)

    def pending(self, key: RunKey, indexed: list[Mapping[str, Any]], now: float) -> list[dict[str, Any]]:
        """Jobs created by this process that the index does not show yet (expired ones are
        forgotten). A Job the index shows only at an older attempt (the retried one, deleted but
        still indexed) is still pending: the caller lists these after the index, so they win."""
        expected = self.created.get(key)
        if not expected:
            return []
        in_index = {(j.get("metadata") or {}).get("name"): attempt_of(j) for j in indexed}
        for job_name, (created, body) in list(expected.items()):
            caught_up = job_name in in_index and in_index[job_name] >= attempt_of(body)
            if caught_up or now - created > EXPECTATION_TTL_SECONDS:
                del expected[job_name]
        return [body for _, body in expected.values()]

    def settle(self, key: RunKey, job_name: str, attempt: int | None = None) -> None:
        """The watch showed `job_name` (created, changed or deleted) at `attempt`, or its create
        failed, or this process deleted it: stop expecting it. An event of an older attempt of
        the same name (the Job a retry replaced) settles nothing. The one place expectations
        are forgotten."""
        expected = self.created.get(key)
        if expected is None or job_name not in expected:
            return
        if attempt is not None and attempt < attempt_of(expected[job_name][1]):
            return
        del expected[job_name]
        if not expected:
            del self.created[key]

    def record(self, namespace: str, job_name: str, state: JobState) -> None:
        """The decision has accounted for this state of the Job."""
        self.seen[(namespace, job_name)] = state

    def is_news(self, namespace: str, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """Whether a Job event may change a reconcile's outcome: a deletion, or a state (conditions,
        counts, suspension, attempt, ...) other than the one last seen for that Job. The echo of a
        Job just created, and status updates that change nothing the decision reads, are dropped."""
        key = (namespace, str((body.get("metadata") or {}).get("name")))
        if event_type == "DELETED":
            self.seen.pop(key, None)
            return True
        state = JobState.from_job(body)
        if self.seen.get(key) == state:
            return False
        self.seen[key] = state
        return True

    def pod_is_news(self, namespace: str, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """Whether a pod event may change a reconcile's outcome (as `is_news` for Jobs)."""
        key = (namespace, str((body.get("metadata") or {}).get("name")))
        if event_type == "DELETED":
            self.seen_pods.pop(key, None)
            return True
        state = PodState.from_pod(body)
        if self.seen_pods.get(key) == state:
            return False
        self.seen_pods[key] = state
        return True

    def forget_run(self, namespace: str, run: str) -> None:
        """A SpinRun was deleted: drop what is kept about its Jobs."""
        self.created.pop((namespace, run), None)
        for key in [k for k in self.seen if k[0] == namespace and k[1].startswith(f"{run}-it")]:
            del self.seen[key]
        for key in [k for k in self.seen_pods if k[0] == namespace and k[1].startswith(f"{run}-it")]:
            del self.seen_pods[key]
