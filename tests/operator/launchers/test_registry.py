"""The launcher registry (launchers/__init__.py): one launcher per `training.launcher` value,
each satisfying the protocol, and the lookups by kind."""

from __future__ import annotations

from spin_operator import launchers
from spin_operator.builders.job import suspend_patch
from spin_operator.settings import LAUNCHER_NAMES


def test_every_spec_launcher_value_has_a_launcher() -> None:
    assert set(launchers.LAUNCHERS) == set(LAUNCHER_NAMES)
    for name, launcher in launchers.LAUNCHERS.items():
        assert launcher.name == name and launcher.api_version and launcher.kind and launcher.plural


def test_batch_jobs_are_read_and_patched_as_jobs() -> None:
    assert launchers.by_kind("Job") is None
    assert launchers.suspend_patch("Job", True) == suspend_patch(True)
    job = {"kind": "Job", "metadata": {"name": "j"}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert launchers.read_state(job).complete


def test_custom_resources_are_found_by_kind() -> None:
    for launcher in launchers.LAUNCHERS.values():
        if launcher.custom_resource:
            assert launchers.by_kind(launcher.kind) is launcher


def test_the_training_steps_run_through_the_specs_launcher_and_the_others_as_jobs() -> None:
    """Which steps a launcher runs is one declaration (TRAINING_STEPS), read through for_step by
    the decision (availability, companions, the all-nodes wait) and the stage builder."""
    from spin_runtime.api import status
    from spin_runtime.api.spec import SpinRunSpec
    from spin_runtime.api.status import STEP_ORDER
    from tests.operator.fixtures import make_body

    assert launchers.TRAINING_STEPS is status.TRAINING_STEPS == {"train", "sft"}
    for name in launchers.LAUNCHERS:
        spec = SpinRunSpec.model_validate({**make_body()["spec"], "training": {"launcher": name}})
        for step in STEP_ORDER:
            expected = launchers.LAUNCHERS[name] if step in launchers.TRAINING_STEPS else None
            assert launchers.for_step(spec, step) is expected


def test_the_continued_sft_arm_runs_through_the_launcher_like_train_under_its_own_names() -> None:
    """evaluation.sftBaseline's step is a training step: the spec's launcher builds it with the
    training resources and torchrun, named `<run>-it<k>-sft`, running `spin sft`."""
    from spin_operator.builders.context import BuildContext
    from spin_operator.builders.meta import RunRef
    from spin_runtime.api.spec import SpinRunSpec
    from spin_runtime.plan.stages import Stage
    from tests.operator.fixtures import make_body

    for name in launchers.LAUNCHERS:
        spec = SpinRunSpec.model_validate({**make_body()["spec"], "training": {"launcher": name, "nodes": 2},
                                           "storage": {"newClaim": {"accessModes": ["ReadWriteMany"]}},
                                           "evaluation": {"sftBaseline": {"enabled": True}}})  # fmt: skip
        ctx = BuildContext(RunRef("demo", "ns1", "uid-1"), spec, 1)
        train = launchers.step_objects(ctx, Stage(1, "train"))
        arm = launchers.step_objects(ctx, Stage(1, "sft"))
        assert [o["kind"] for o in arm] == [o["kind"] for o in train], name
        text = str(arm)
        assert "demo-it1-sft" in text and "demo-it1-train" not in text, name
        assert "'sft', '--run-dir'" in text and "'train', '--run-dir'" not in text, name
        assert str(train).replace("demo-it1-train", "demo-it1-sft").replace("'train'", "'sft'") == text, name
