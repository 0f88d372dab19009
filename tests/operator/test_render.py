"""`spin render` / `spin-operator render` (render.py): every iteration's objects, or one."""

from __future__ import annotations

import pytest
import yaml

from spin_operator.builders.meta import PLACEHOLDER_UID
from spin_operator.render import render_objects, render_yaml
from tests.operator.builders.cases import CASES, SETTINGS, objects, run_of
from tests.operator.fixtures import UID


def test_render_lists_every_iteration_and_filters_one() -> None:
    run, _ = run_of("cpu-single-node")
    names = [o["metadata"]["name"] for o in render_objects(run, "ns1")]
    assert names[0] == "demo-data"
    assert {"demo-it0-gen", "demo-it1-eval", "demo-it1-spec"} <= set(names)
    only = yaml.safe_load_all(render_yaml(run, "ns1", iteration=1))
    assert all(o["metadata"]["name"].startswith("demo-it1-") for o in only)
    with pytest.raises(ValueError, match="--iteration 7"):
        render_objects(run, "ns1", iteration=7)


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_shows_what_the_builders_make(case: str) -> None:
    run, _ = run_of(case)
    k = run.spec.start_iteration
    rendered = [o for o in render_objects(run, "ns1", settings=SETTINGS, uid=UID) if o["kind"] == "PersistentVolumeClaim"
                or o["metadata"].get("labels", {}).get("spin.dev/iteration") == str(k)]
    built = objects(case)
    for o in built:  # rendering offline knows no generation: 1
        if "spin.dev/generation" in o["metadata"].get("annotations", {}):
            o["metadata"]["annotations"]["spin.dev/generation"] = "1"
    assert rendered == built


def test_render_shows_owner_references_with_a_placeholder_uid_and_says_so() -> None:
    run, _ = run_of("cpu-single-node")
    text = render_yaml(run, "ns1")
    assert text.startswith("# ownerReferences carry the placeholder uid")
    docs = list(yaml.safe_load_all(text))
    job = next(o for o in docs if o["kind"] == "Job")
    assert job["metadata"]["ownerReferences"][0]["uid"] == PLACEHOLDER_UID
    pvc = next(o for o in docs if o["kind"] == "PersistentVolumeClaim")
    assert "ownerReferences" not in pvc["metadata"]  # kept when the run is deleted
    mine = render_yaml(run, "ns1", uid=UID)
    assert not mine.startswith("#") and PLACEHOLDER_UID not in mine and UID in mine


def test_render_of_the_zephyr_example_on_two_nodes_shows_the_issue_12_safeguards(tmp_path) -> None:
    """`spin render` of the paper recipe with 2 training nodes: a podFailurePolicy ignoring
    DisruptionTarget on every Job, an unowned PVC, and a rendezvous wait on the training pods."""
    from pathlib import Path

    from spin_runtime.api.load import load_spinrun

    run = load_spinrun(Path(__file__).resolve().parents[2] / "examples" / "spinrun-zephyr-7b.yaml")
    run.spec.training.nodes = 2
    docs = list(yaml.safe_load_all(render_yaml(run, "spin", iteration=run.spec.start_iteration)))
    jobs = [o for o in docs if o["kind"] == "Job"]
    assert jobs and all(j["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["type"] == "DisruptionTarget" for j in jobs)
    train = next(j for j in jobs if j["metadata"]["name"].endswith("-train"))
    env = train["spec"]["template"]["spec"]["containers"][0]["env"]
    assert any(e["name"] == "PET_RDZV_CONF" and e["value"].startswith("timeout=") for e in env)
    pvc = next(o for o in render_objects(run, "spin") if o["kind"] == "PersistentVolumeClaim")
    assert "ownerReferences" not in pvc["metadata"]
