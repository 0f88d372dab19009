"""Names, labels and owner references of every child (builders/meta.py)."""

from __future__ import annotations

import pytest

from spin_operator.builders import meta
from tests.operator.builders.cases import CASES, objects
from tests.operator.fixtures import UID


@pytest.mark.parametrize("case", sorted(CASES))
def test_children_are_owned_labelled_and_names_fit(case: str) -> None:
    for obj in objects(case):
        m = obj["metadata"]
        assert len(m["name"]) + len("-999-abcde") <= 63
        if obj["kind"] == "PersistentVolumeClaim":  # outlives the run unless deleteWithRun
            assert "ownerReferences" not in m and m["annotations"][meta.ANNOTATION_CREATED_BY_RUN] == UID
        else:
            assert m["ownerReferences"] == [meta.owner_reference(meta.RunRef("demo", "ns1", UID))]
        assert meta.controller_uid(obj) == (None if obj["kind"] == "PersistentVolumeClaim" else UID)
        assert m["labels"][meta.LABEL_RUN] == "demo"
        assert m["labels"][meta.LABEL_MANAGED_BY] == "spinrun"


def test_job_names_follow_the_step_suffixes() -> None:
    assert [meta.job_name("r", 3, s) for s in meta.STEP_SUFFIX] == ["r-it3-gen", "r-it3-convert", "r-it3-train", "r-it3-sft", "r-it3-eval"]
    assert meta.spec_configmap_name("r", 3) == "r-it3-spec" and meta.pvc_name("r") == "r-data"
