"""The SpinRun models: paper defaults, camelCase round trips and the rules the models enforce."""

from __future__ import annotations

import importlib.util
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from spin_runtime.api import spec, status
from spin_runtime.api.spec import Dataset, LmEval, ModelSource, Resources, SpinRun, SpinRunSpec, Storage, schedule_for


def _run(**spec: typing.Any) -> SpinRun:
    return SpinRun.model_validate({"metadata": {"name": "r"}, "spec": spec})


def _all_models() -> set[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [SpinRun]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for field in model.model_fields.values():
            for arg in _type_args(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    todo.append(arg)
    return seen


def _type_args(tp: typing.Any) -> list[typing.Any]:
    args = [tp]
    for a in typing.get_args(tp):
        args += _type_args(a)
    return args


# --------------------------------------------------------------------------- paper defaults


def test_default_schedule_is_the_papers() -> None:
    spec = SpinRunSpec()
    assert spec.iterations == 4
    assert [e.learning_rate for e in spec.schedule] == [5e-7, 5e-7, 1e-7, 1e-7]
    assert [e.beta for e in spec.schedule] == [0.1, 0.1, 0.1, 5.0]
    assert [e.epochs for e in spec.schedule] == [2, 2, 2, 2]
    assert spec.data_window == 2


def test_training_defaults_are_the_papers() -> None:
    tr = SpinRunSpec().training
    assert tr.loss_type == "sigmoid"
    assert tr.optimizer == "rmsprop"
    assert tr.lr_scheduler == "linear"
    assert tr.warmup_ratio == 0.1
    assert (tr.per_device_batch_size, tr.gpus_per_node, tr.gradient_accumulation_steps) == (8, 8, 1)
    assert (tr.max_length, tr.max_prompt_length) == (1024, 512)
    assert tr.gradient_checkpointing is True
    assert tr.seed == 42
    assert tr.deepspeed.stage == 3 and tr.deepspeed.offload_params is False


def test_data_and_generation_defaults_are_the_papers() -> None:
    spec = SpinRunSpec(dataset=Dataset(hub="HuggingFaceH4/ultrachat_200k"))
    assert spec.dataset.split == "train_sft"
    assert spec.dataset.max_samples == 50_000
    assert spec.dataset.test_size == 500
    assert spec.generation.decoding == "greedy"
    assert spec.generation.max_new_tokens == 256


def test_lm_eval_defaults_are_the_leaderboard_shots() -> None:
    tasks = {t.name: t.num_fewshot for t in LmEval().tasks}
    assert tasks == {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0, "winogrande": 5, "gsm8k": 5}


def test_empty_spec_runs_the_builtin_model_and_task() -> None:
    run = _run()
    assert run.spec.model.builtin == "smollm2-135m-instruct"
    assert run.spec.dataset.builtin is not None
    assert run.spec.storage.new_claim is not None


def test_last_schedule_entry_repeats_for_later_iterations() -> None:
    spec = SpinRunSpec(iterations=6)
    assert schedule_for(spec, 5) == spec.schedule[-1]
    assert schedule_for(spec, 0) == spec.schedule[0]


# --------------------------------------------------------------------------- names and docs


def test_dump_is_camel_case_and_round_trips() -> None:
    run = _run(training={"lossType": "hinge", "gpusPerNode": 0}, hfTokenSecret={"name": "hf"})
    data = run.dump()
    assert data["spec"]["training"]["lossType"] == "hinge"
    assert data["spec"]["hfTokenSecret"] == {"name": "hf", "key": "token"}
    assert "loss_type" not in data["spec"]["training"]
    assert SpinRun.model_validate(data) == run
    assert SpinRun.model_validate_json(run.model_dump_json(by_alias=True)) == run


def test_dump_leaves_unset_optionals_out() -> None:
    data = _run().dump()
    assert "startCheckpoint" not in data["spec"]
    assert "status" not in data


def test_every_field_has_a_description() -> None:
    missing = [
        f"{model.__name__}.{name}"
        for model in _all_models()
        for name, field in model.model_fields.items()
        if not field.description
    ]
    assert missing == []
    assert all(model.__doc__ for model in _all_models())


def test_every_spec_model_refuses_unknown_fields() -> None:
    for model in _all_models() - {spec.ObjectMeta, status.SpinRunStatus}:
        assert model.model_config.get("extra") == "forbid", model.__name__


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    "source",
    [{}, {"hub": "a/b", "builtin": "tiny-random-llama"}, {"ggufFile": "m.gguf", "hub": "a/b"}],
)
def test_model_source_needs_exactly_one_source(source: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        ModelSource.model_validate(source)


def test_model_source_describes_itself() -> None:
    assert ModelSource(hub="a/b").describe() == "a/b"
    assert ModelSource(builtin="tiny-random-llama").describe() == "builtin:tiny-random-llama"
    assert ModelSource(path="/m", gguf_file="q.gguf").describe() == "/m/q.gguf"


def test_storage_refuses_both_kinds_and_parent_folders() -> None:
    with pytest.raises(ValidationError, match="exactly one of existingClaim or newClaim"):
        Storage.model_validate({"existingClaim": "pvc", "newClaim": {}})
    with pytest.raises(ValidationError, match="subPath must not contain"):
        Storage.model_validate({"existingClaim": "pvc", "subPath": "runs/../etc"})


def test_run_name_must_be_a_short_dns_label_starting_with_a_letter() -> None:
    for bad in ["a" * 41, "1run", "Run", "run.x", "run-", ""]:
        with pytest.raises(ValidationError):
            SpinRun.model_validate({"metadata": {"name": bad}})
    assert SpinRun.model_validate({"metadata": {"name": "a" * 40}}).metadata.name == "a" * 40


def test_start_iteration_must_be_before_the_last() -> None:
    with pytest.raises(ValidationError, match="startIteration"):
        SpinRunSpec(iterations=2, start_iteration=2)


def test_synthetic_data_iterations_are_unique_and_in_range() -> None:
    with pytest.raises(ValidationError, match="at most once"):
        SpinRunSpec.model_validate({"syntheticData": [{"iteration": 0, "hub": "a/b"}, {"iteration": 0, "path": "/d"}]})
    with pytest.raises(ValidationError, match="smaller than iterations"):
        SpinRunSpec.model_validate({"iterations": 2, "syntheticData": [{"iteration": 2, "hub": "a/b"}]})


def test_env_must_not_collide_with_torchrun() -> None:
    with pytest.raises(ValidationError, match="MASTER_ADDR"):
        SpinRunSpec.model_validate({"env": [{"name": "MASTER_ADDR", "value": "x"}]})


def test_multi_node_training_needs_a_shared_volume() -> None:
    with pytest.raises(ValidationError, match="ReadWriteMany"):
        SpinRunSpec.model_validate(
            {"training": {"nodes": 2}, "storage": {"newClaim": {"accessModes": ["ReadWriteOnce"]}}}
        )


def test_prompt_must_be_shorter_than_the_whole_sequence() -> None:
    with pytest.raises(ValidationError, match="maxPromptLength"):
        SpinRunSpec.model_validate({"training": {"maxLength": 128, "maxPromptLength": 128}})


def test_resource_quantities_accept_yaml_integers_but_not_fractions() -> None:
    r = Resources.model_validate({"requests": {"cpu": 8, "memory": "64Gi", "nvidia.com/gpu": "1"}})
    assert r.requests == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}
    for bad in [0.5, "lots", True]:
        with pytest.raises(ValidationError):
            Resources.model_validate({"requests": {"cpu": bad}})


def test_empty_test_split_means_none() -> None:
    assert Dataset(hub="a/b", test_split="").test_split is None
    assert Dataset(hub="a/b").test_split == "test_sft"


def test_lm_eval_batch_size_takes_numbers_and_auto() -> None:
    assert LmEval(batch_size=8).batch_size == "8"
    assert LmEval(batch_size="auto:4").batch_size == "auto:4"
    for bad in [0, "-1", "big"]:
        with pytest.raises(ValidationError):
            LmEval(batch_size=bad)


def test_seeds_fit_numpy() -> None:
    with pytest.raises(ValidationError):
        SpinRunSpec.model_validate({"training": {"seed": 2**32}})


def test_non_finite_numbers_are_refused() -> None:
    with pytest.raises(ValidationError):
        SpinRunSpec.model_validate({"schedule": [{"learningRate": float("nan")}]})


def test_queue_name_is_a_dns_subdomain_that_fits_a_label_value() -> None:
    for bad in ("q" * 64, "team-a.gpu_queue", "GPU"):
        with pytest.raises(ValidationError):
            SpinRunSpec(queue_name=bad)
    assert SpinRunSpec(queue_name="team-a.gpu-queue").queue_name == "team-a.gpu-queue"


def test_spec_reference_is_up_to_date() -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "gen_spec_reference.py"
    module_spec = importlib.util.spec_from_file_location("gen_spec_reference", script)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    assert module.OUTPUT.read_text(encoding="utf-8") == module.render(), "run python scripts/gen_spec_reference.py"


def test_the_spin_paper_recipe_sets_the_originals_details_where_the_spec_is_silent() -> None:
    from spin_runtime.api.recipes import PAPER_MODEL_REVISIONS

    spec = SpinRunSpec.model_validate({"recipe": "spin-paper", "model": {"hub": "alignment-handbook/zephyr-7b-sft-full"}})
    assert spec.system_prompt == ""
    assert (spec.generation.engine, spec.generation.prompt_format, spec.generation.decoding) == ("transformers", "instruction", "greedy")
    assert spec.generation.max_new_tokens == 256
    # the repository literally: 6 epochs, each kept and scored, the final one continues
    assert (spec.training.truncation, spec.training.select_epoch, spec.training.save_epochs) == ("original", "last", True)
    assert spec.training.collator == "original"
    # never clipped; attention that hides the masked EOS inside an answer as a key only, as sdpa did then
    assert (spec.training.max_grad_norm, spec.training.attn_implementation) == (0, "sdpa")
    assert spec.evaluation.lm_eval.version == "0.4.0"
    assert [e.epochs for e in spec.schedule] == [6, 6, 6, 6]
    assert spec.model.revision == PAPER_MODEL_REVISIONS["alignment-handbook/zephyr-7b-sft-full"]
    # what the spec sets wins
    fast = SpinRunSpec.model_validate({"recipe": "spin-paper", "generation": {"engine": "vllm"}})
    assert fast.generation.engine == "vllm" and fast.generation.prompt_format == "instruction"
    # and a spec dumped and read again is the same spec
    assert SpinRunSpec.model_validate(spec.dump()) == spec


def test_recipe_fields_have_no_crd_default_so_the_operator_can_fill_them() -> None:
    from spin_runtime.api.crd import openapi_schema

    gen = openapi_schema()["properties"]["spec"]["properties"]["generation"]["properties"]
    assert "default" not in gen["promptFormat"] and "default" not in gen["engine"]
    assert gen["batchSize"]["default"] == 64  # fields no recipe sets keep theirs


def test_every_recipe_field_that_differs_from_the_default_says_why_it_matters() -> None:
    from spin_runtime.api.recipes import RECIPE_NOTES, RECIPE_PATHS, RECIPES

    defaults = {"spec": SpinRunSpec().dump()}
    paper = {"spec": RECIPES["spin-paper"]}

    def at(data: dict, path: str) -> object:
        for key in path.split("."):
            data = data.get(key) if isinstance(data, dict) else None  # type: ignore[assignment]
        return data

    differing = {p for p in RECIPE_PATHS if at(defaults, p) != at(paper, p)}
    assert differing <= set(RECIPE_NOTES), sorted(differing - set(RECIPE_NOTES))
    assert set(RECIPE_NOTES) <= RECIPE_PATHS, "a note for a field the recipe does not set"


def test_a_paper_recipe_spec_with_a_malformed_model_is_refused_not_crashed() -> None:
    """Found by the hypothesis test against the real apiserver: a list where the hub id goes made
    the recipe's revision lookup raise TypeError instead of the validator's message."""
    from spin_runtime.api.load import SpecError, validate_data

    with pytest.raises(SpecError, match=r"spec.model.hub"):
        validate_data({"metadata": {"name": "r"}, "spec": {"recipe": "spin-paper", "model": {"hub": [{"name": "x"}]}}})
