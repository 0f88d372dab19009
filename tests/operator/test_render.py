"""`spin render` / `spin-operator render` (render.py): every iteration's objects, or one."""

from __future__ import annotations

import pytest
import yaml
from spin_operator.render import render_objects, render_yaml

from tests.operator.builders.cases import CASES, SETTINGS, objects, run_of


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
    rendered = [o for o in render_objects(run, "ns1", settings=SETTINGS) if o["kind"] == "PersistentVolumeClaim"
                or o["metadata"].get("labels", {}).get("spin.dev/iteration") == str(k)]
    built = objects(case)
    for o in built:  # offline rendering knows no uid (no ownerReferences) and no generation (1)
        o["metadata"].pop("ownerReferences")
        if "spin.dev/generation" in o["metadata"].get("annotations", {}):
            o["metadata"]["annotations"]["spin.dev/generation"] = "1"
    assert rendered == built
