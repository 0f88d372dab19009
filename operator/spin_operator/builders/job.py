"""The batch/v1 Job wrapper around a step's pod template (completions, indexes, retries,
suspension, the run's metadata) and the merge patch that suspends or resumes a Job."""

from __future__ import annotations

from typing import Any

from spin_operator.builders.context import BuildContext
from spin_operator.builders.meta import suspended_by_annotation
from spin_runtime.errors import DETERMINISTIC_EXIT_CODES

JOB_API_VERSION = "batch/v1"
JOB_KIND = "Job"


def job(
    ctx: BuildContext,
    step: str,
    template: dict[str, Any],
    *,
    completions: int = 1,
    parallelism: int | None = None,
    indexed: bool = False,
    backoff_limit: int | None = 0,
    backoff_limit_per_index: int | None = None,
    max_failed_indexes: int | None = None,
) -> dict[str, Any]:
    """A batch/v1 Job around a pod template, with the run's labels, owner and annotations."""
    spec: dict[str, Any] = {
        "completions": completions,
        "parallelism": parallelism if parallelism is not None else completions,
    }
    if indexed:
        spec["completionMode"] = "Indexed"
    if backoff_limit is not None:
        spec["backoffLimit"] = backoff_limit
    if backoff_limit_per_index is not None:
        spec["backoffLimitPerIndex"] = backoff_limit_per_index
    if max_failed_indexes is not None:
        spec["maxFailedIndexes"] = max_failed_indexes
    spec["podFailurePolicy"] = pod_failure_policy(per_index=backoff_limit_per_index is not None)
    spec["podReplacementPolicy"] = "Failed"
    spec["suspend"] = ctx.suspend
    spec["template"] = template
    return {
        "apiVersion": JOB_API_VERSION,
        "kind": JOB_KIND,
        "metadata": ctx.workload_metadata(step),
        "spec": spec,
    }


def pod_failure_policy(*, per_index: bool) -> dict[str, Any]:
    """A pod evicted or preempted (condition DisruptionTarget) is replaced without counting as a
    failure; one that exits with a deterministic code (bad spec, bad data) fails its index
    (`per_index`, with backoffLimitPerIndex) or the Job at once; other failures count as usual."""
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {
                "action": "FailIndex" if per_index else "FailJob",
                "onExitCodes": {"operator": "In", "values": sorted(DETERMINISTIC_EXIT_CODES)},
            },
        ]
    }


def suspend_patch(suspend: bool) -> dict[str, Any]:
    """Merge patch suspending (or resuming) a Job, with the annotation saying who suspended it."""
    return {"metadata": {"annotations": suspended_by_annotation(suspend)}, "spec": {"suspend": suspend}}
