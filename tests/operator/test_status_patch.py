"""The status the operator writes, as the real apiserver stores it: a pass with nothing new sends
no patch (before #20.8, live progress held explicit nulls, the server deleted them, and every pass
patched the status again), and a key the new status lacks is removed, also inside `progress`."""

from __future__ import annotations

from typing import Any

from spin_cluster.api import path
from spin_operator.reconcile.conditions import status_document, status_patch
from spin_runtime.api.status import SpinRunStatus, StepProgress
from tests.admission import NAMESPACE, Admission


def _status(**progress: Any) -> dict[str, Any]:
    """A status document as a decision writes it while training reports progress."""
    status = SpinRunStatus(phase="Training", reason="StepRunning", message="iteration 0: train running")
    status.progress = StepProgress(iteration=0, step="train", unit="steps", summary="step 1/3", **progress)
    return status_document(status)


def test_a_pass_with_nothing_new_patches_nothing_and_removed_keys_go(admission: Admission) -> None:
    api = admission.kube.api
    runs = path("spin.dev", "v1alpha1", "spinruns", NAMESPACE)
    name = "status-patch"
    api.create(runs, {"apiVersion": "spin.dev/v1alpha1", "kind": "SpinRun", "metadata": {"name": name}})
    try:
        url = f"{runs}/{name}/status"
        new = _status(done=1, total=3, loss=0.69, margin=None, eta_seconds=None, eta=None)
        assert "margin" not in new["progress"], "a null is never part of the document"
        api.patch(url, {"status": status_patch({}, new)})
        stored = api.get(url)["status"]
        assert status_patch(stored, new) == {}, "the next pass with the same status sends nothing"

        later = _status(done=2, total=3)  # the step no longer reports a loss
        patch = status_patch(stored, later)
        assert patch == {"progress": {"done": 2, "loss": None}}
        api.patch(url, {"status": patch})
        stored = api.get(url)["status"]
        assert stored["progress"] == later["progress"]
        assert status_patch(stored, later) == {}

        done = status_document(SpinRunStatus(phase="Complete", reason="RunCompleted", message="done"))
        api.patch(url, {"status": status_patch(stored, done)})
        stored = api.get(url)["status"]
        assert "progress" not in stored and status_patch(stored, done) == {}
    finally:
        api.delete(f"{runs}/{name}")
