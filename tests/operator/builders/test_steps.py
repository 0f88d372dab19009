"""The generate, convert and evaluate Jobs (builders/steps.py): golden files and the generation
Job's indexes, retries and GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from spin_operator.builders import meta
from spin_runtime.errors import DETERMINISTIC_EXIT_CODES
from tests.operator.builders.cases import CASES, check_golden, objects, stage_objects

GOLDEN = Path(__file__).parent / "golden" / "steps"


@pytest.mark.parametrize("case", sorted(CASES))
def test_step_jobs_match_golden_files(case: str) -> None:
    check_golden(GOLDEN / f"{case}.yaml", stage_objects(case, training=False))


def test_generation_job_is_indexed_with_per_index_retries() -> None:
    gen = next(o for o in objects("gpu-multi-node") if o["metadata"]["name"].endswith("-gen"))
    spec = gen["spec"]
    assert spec["completionMode"] == "Indexed"
    assert (spec["completions"], spec["parallelism"]) == (4, 2)
    assert spec["backoffLimitPerIndex"] == 2 and spec["maxFailedIndexes"] == 0
    assert "backoffLimit" not in spec
    assert spec["suspend"] is True
    assert gen["metadata"]["annotations"][meta.ANNOTATION_SUSPENDED_BY] == "spinrun"
    assert gen["metadata"]["labels"][meta.LABEL_QUEUE] == "gpu-queue"
    c = spec["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "--shard" not in c["command"] and c["command"][:2] == ["spin", "generate"]


def test_cpu_generation_requests_no_gpu() -> None:
    gen = next(o for o in objects("cpu-single-node") if o["metadata"]["name"].endswith("-gen"))
    assert "nvidia.com/gpu" not in str(gen)


def test_synthetic_data_iteration_has_no_generation_job() -> None:
    assert [o["metadata"]["name"] for o in stage_objects("synthetic-no-eval", training=False)] == ["demo-it0-convert"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_job_ignores_disruptions_and_fails_at_once_on_deterministic_exit_codes(case: str) -> None:
    jobs = [o for o in objects(case) if o["kind"] == "Job"]
    assert jobs
    for job in jobs:
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
        per_index = "backoffLimitPerIndex" in job["spec"]
        assert rules[1]["action"] == ("FailIndex" if per_index else "FailJob")
        assert rules[1]["onExitCodes"] == {"operator": "In", "values": sorted(DETERMINISTIC_EXIT_CODES)}
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy


@pytest.mark.parametrize(("modes", "shards", "together"), [
    (["ReadWriteOnce"], 2, True), (["ReadWriteOncePod"], 3, True), (["ReadWriteMany"], 2, False),
    (["ReadWriteOnce", "ReadWriteMany"], 2, False), (["ReadWriteOnce"], 1, False),
])
def test_generation_shards_share_the_node_of_a_read_write_once_volume(
    modes: list[str], shards: int, together: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = {"generation": {"shards": shards}, "storage": {"newClaim": {"size": "1Gi", "accessModes": modes}}}
    monkeypatch.setitem(CASES, "volume", case)
    gen = next(o for o in stage_objects("volume", training=False) if o["metadata"]["name"].endswith("-gen"))
    pod = gen["spec"]["template"]["spec"]
    if not together:
        assert "affinity" not in pod
        return
    (term,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == {**gen["spec"]["template"]["metadata"]["labels"],
                                                     **term["labelSelector"]["matchLabels"]}, "it selects the shards"
    assert term["labelSelector"]["matchLabels"]["spin.dev/step"] == "generate"
