"""The plan: steps per iteration, command lines, schedule, data window, start models."""

from __future__ import annotations

import pytest

from spin_runtime.api.spec import SpinRunSpec
from spin_runtime.plan import hparams, stages


def spec(**kw) -> SpinRunSpec:
    return SpinRunSpec.model_validate(kw)


def test_iteration_steps_are_generate_shards_convert_train_evaluate():
    s = spec(generation={"shards": 3})
    names = [st.key for st in stages.steps_for_iteration(s, 1)]
    assert names == [
        "it1/generate-0-of-3",
        "it1/generate-1-of-3",
        "it1/generate-2-of-3",
        "it1/convert",
        "it1/train",
        "it1/evaluate",
    ]


def test_given_synthetic_data_replaces_generation_but_not_convert():
    s = spec(syntheticData=[{"iteration": 0, "path": "/data/SPIN_iter0"}])
    assert [st.name for st in stages.steps_for_iteration(s, 0)] == ["convert", "train", "evaluate"]
    assert stages.steps_for_iteration(s, 1)[0].name == "generate"


def test_evaluation_disabled_makes_train_the_last_step():
    s = spec(evaluation={"enabled": False})
    assert stages.last_step(s, 0).name == "train"


def test_step_argv_is_a_list_and_shard_can_come_from_the_environment():
    step = stages.Step(2, "generate", 1, 4)
    assert step.argv("/data/runs/x") == [
        "spin", "generate", "--run-dir", "/data/runs/x", "--iteration", "2", "--shards", "4", "--shard", "1",
    ]  # fmt: skip
    assert "--shard" not in step.argv("/data/runs/x", shard_from_env=True)
    assert stages.Step(0, "train").argv("/r") == ["spin", "train", "--run-dir", "/r", "--iteration", "0"]


def test_markers_are_unique_per_step():
    s = spec(generation={"shards": 4}, iterations=3)
    markers = [st.marker for st in stages.all_steps(s)]
    assert len(markers) == len(set(markers))


@pytest.mark.parametrize(
    ("k", "lr", "beta"),
    [(0, 5e-7, 0.1), (1, 5e-7, 0.1), (2, 1e-7, 0.1), (3, 1e-7, 5.0), (7, 1e-7, 5.0)],
)
def test_default_schedule_is_the_papers(k, lr, beta):
    hp = hparams.hparams(spec(iterations=8), k)
    assert (hp.learning_rate, hp.beta) == (lr, beta)
    assert hp.loss_type == "sigmoid"


def test_data_window_is_previous_and_current_iteration():
    s = spec()
    assert hparams.data_window(s, 0) == [0]
    assert hparams.data_window(s, 1) == [0, 1]
    assert hparams.data_window(s, 3) == [2, 3]
    assert hparams.data_window(spec(dataWindow=1), 3) == [3]


def test_data_window_before_the_start_iteration_needs_given_data():
    with pytest.raises(ValueError, match=r"iteration 2 trains on the synthetic data of iteration 1 .* add syntheticData"):
        spec(startIteration=2, startCheckpoint={"path": "/ckpt/iter1"})
    assert hparams.data_window(spec(startIteration=2, startCheckpoint={"path": "/ckpt/iter1"}, dataWindow=1), 2) == [2]
    s = spec(startIteration=2, startCheckpoint={"path": "/ckpt/iter1"}, syntheticData=[{"iteration": 1, "hub": "UCLA-AGI/SPIN_iter1"}])
    assert hparams.data_window(s, 2) == [1, 2]


def test_start_model_chains_iterations():
    s = spec(startIteration=1, startCheckpoint={"path": "/ckpt/iter0"}, syntheticData=[{"iteration": 0, "path": "/data/syn0"}])
    assert hparams.start_model(s, 1).source.path == "/ckpt/iter0"
    assert hparams.start_model(s, 2).run_path == "iter-1/model"
    assert hparams.start_model(spec(), 0).source == spec().model
    assert list(stages.iterations(s)) == [1, 2, 3]


def test_the_walk_is_stages_whose_shards_run_together_then_single_steps():
    s = spec(generation={"shards": 2}, iterations=2)
    walk = stages.run_stages(s)
    assert [st.key for st in walk] == [f"it{k}/{n}" for k in (0, 1) for n in ("generate", "convert", "train", "evaluate")]
    assert [st.key for st in walk[0].steps] == ["it0/generate-0-of-2", "it0/generate-1-of-2"]
    assert [st.key for st in walk[1].steps] == ["it0/convert"]
    assert [st for stage in walk for st in stage.steps] == stages.all_steps(s)
