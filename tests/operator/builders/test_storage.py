"""The run's PVC and per-iteration spec ConfigMap (builders/storage.py): golden files and the
pinned spec read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from spin_operator.builders import meta
from spin_operator.builders.storage import persistent_volume_claim, spec_config_map, spec_from_config_map
from tests.operator.builders.cases import CASES, check_golden, run_of, storage_objects

GOLDEN = Path(__file__).parent / "golden" / "storage"


@pytest.mark.parametrize("case", sorted(CASES))
def test_storage_objects_match_golden_files(case: str) -> None:
    check_golden(GOLDEN / f"{case}.yaml", storage_objects(case))


def test_existing_claim_makes_no_pvc() -> None:
    assert [o["kind"] for o in storage_objects("gpu-multi-node")] == ["ConfigMap"]


def test_spec_config_map_round_trips() -> None:
    run, ref = run_of("gpu-multi-node")
    cm = spec_config_map(ref, run.spec, 0)
    assert spec_from_config_map(cm) == run.spec


def test_the_claim_is_kept_with_the_run_deleted_unless_delete_with_run() -> None:
    run, ref = run_of("cpu-single-node")
    kept = persistent_volume_claim(ref, run.spec)
    assert kept is not None and "ownerReferences" not in kept["metadata"]
    spec = run.spec.model_copy(deep=True)
    assert spec.storage.new_claim is not None
    spec.storage.new_claim.delete_with_run = True
    owned = persistent_volume_claim(ref, spec)
    assert owned is not None and owned["metadata"]["ownerReferences"] == [meta.owner_reference(ref)]
    assert "annotations" not in owned["metadata"]
