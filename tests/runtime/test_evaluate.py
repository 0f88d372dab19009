"""`spin evaluate`: held-out log-probs of real and generated answers under the new model and its
opponent, SPIN reward margin/accuracy, greedy answers judged against the reference (built-in task
scorers, normalised exact match for any other data, the user's `evaluation.scorer`; the start
model's too on the first iteration), and the lm-evaluation-harness command lines.

lm-eval lives in its own environment (`make lmeval`, found through SPIN_LM_EVAL): one test runs
the evaluate step with the real harness on local tasks over JSONL files (under `make test` it must
run, SPIN_REQUIRE_LM_EVAL=1); the others check the commands built, the parsing of its results JSON
and the wiring through a stand-in `lm_eval` script."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from spin_runtime.api.load import SpecError, validate_data
from spin_runtime.api.spec import LM_EVAL_PAPER_VERSION, LmEval, LmEvalTask, SpinRunSpec
from spin_runtime.errors import EXIT_BAD_SPEC
from spin_runtime.modeling import scoring
from spin_runtime.plan import layout, stages
from spin_runtime.steps import lm_eval as lme
from spin_runtime.steps.evaluate import run_evaluate
from tests.runtime.lm_eval_tasks import write_lm_eval_tasks
from tests.runtime.train_helpers import (
    addition_rows,
    answer_logp,
    make_run,
    one_thread,  # noqa: F401 - fixture
    perturbed_copy,
    write_pairs,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """Stands in for a trained iteration: the tiny model with moved weights."""
    return perturbed_copy(tiny_model_dir, tmp_path_factory.mktemp("trained") / "model", seed=3, scale=0.02)


def _rows() -> list[dict]:
    rows = addition_rows(6, 0, seed=7)
    rows[1]["answer"] = None  # a row without ground truth (not a built-in task row)
    return rows


def _run(run_dir: Path, model: Path, trained: Path, k: int = 0, **evaluation: object) -> list[dict]:
    # prompts short enough not to be cut (the independent recomputation does not cut them)
    training = {"maxLength": 128, "maxPromptLength": 96}
    make_run(run_dir, model, training=training, evaluation={"maxSamples": 5, **evaluation})
    if k > 0:
        shutil.copytree(model, run_dir / layout.model_dir(k - 1))
    shutil.copytree(trained, run_dir / layout.model_dir(k))
    rows = _rows()
    write_pairs(run_dir, k, "test", rows)
    return rows[:5]


def test_evaluate_writes_finite_reward_metrics_and_exact_match_then_marker(
    tmp_path: Path, tiny_model_dir: Path, trained: Path
) -> None:
    run_dir = tmp_path / "run"
    rows = _run(run_dir, tiny_model_dir, trained)
    metrics = run_evaluate(run_dir, 0)
    assert metrics is not None
    assert (run_dir / stages.Step(0, "evaluate").marker).exists()
    stored = json.loads((run_dir / layout.metrics_path(0)).read_text())["eval"]
    assert stored == json.loads(json.dumps(metrics))

    keys = ("logp_real", "logp_generated", "opponent_logp_real", "opponent_logp_generated",
            "reward_real", "reward_generated", "reward_margin", "reward_accuracy")  # fmt: skip
    for key in keys:
        assert isinstance(stored[key], float) and math.isfinite(stored[key]), key
    assert stored["samples"] == 5 and stored["beta"] == 0.1
    assert 0.0 <= stored["reward_accuracy"] <= 1.0
    beta = stored["beta"]
    assert stored["reward_real"] == pytest.approx(beta * (stored["logp_real"] - stored["opponent_logp_real"]), rel=1e-6)
    assert stored["reward_margin"] == pytest.approx(stored["reward_real"] - stored["reward_generated"], rel=1e-6)

    # the log-probs are sums over the answer tokens only (independent recomputation)
    tok = AutoTokenizer.from_pretrained(trained)
    model = AutoModelForCausalLM.from_pretrained(trained).eval()
    expected = sum(answer_logp(model, tok, r["prompt"], r["real"]) for r in rows) / len(rows)
    assert stored["logp_real"] == pytest.approx(expected, rel=1e-5)

    # exact match on the first 5 rows: 4 by the task scorer, the one without an answer by normalised match
    assert stored["exact_match_samples"] == 5
    assert stored["exact_match_rule"] == "task:addition-3digit+normalised"
    assert 0.0 <= stored["exact_match"] <= 1.0
    assert 0.0 <= stored["baseline_exact_match"] <= 1.0
    assert run_evaluate(run_dir, 0) is None, "a finished step is skipped"


def test_later_iterations_have_no_baseline_row(tmp_path: Path, tiny_model_dir: Path, trained: Path) -> None:
    run_dir = tmp_path / "run"
    _run(run_dir, tiny_model_dir, trained, k=1, exactMatch=False)
    metrics = run_evaluate(run_dir, 1)
    assert metrics is not None
    assert metrics["opponent"] == "<run>/iter-0/model"
    assert "baseline_exact_match" not in metrics and "exact_match" not in metrics


def _fake_answers(rows: list[dict], right: set[int]) -> object:
    """A stand-in for greedy decoding: the real answer for the rows in `right`, else a wrong one."""
    by_prompt = {r["prompt"]: i for i, r in enumerate(rows)}

    def fake(model: object, tok: object, prompts: list[str], max_new_tokens: int, gen: object = None, system: str | None = None) -> list[str]:
        return [(f"  {rows[by_prompt[p]]['real'].upper()}!  " if by_prompt[p] in right else "no idea") for p in prompts]

    return fake


def test_task_rows_use_their_scorer_and_other_rows_normalised_match(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _rows()  # row 1 has no answer: it is judged against its real answer
    monkeypatch.setattr(scoring, "generate_answers", _fake_answers(rows, right={0, 1, 2}))
    monkeypatch.setattr(scoring, "new_token_budget", lambda tok, reals, cap=64: 24)
    out = scoring.heldout_scores(None, None, SpinRunSpec(), rows)
    assert out == {"exact_match": pytest.approx(3 / 6), "exact_match_samples": 6,
                   "exact_match_rule": "task:addition-3digit+normalised"}  # fmt: skip
    assert scoring.heldout_scores(None, None, SpinRunSpec(evaluation={"exactMatch": False}), rows) == {}
    assert scoring.exact_match(None, None, SpinRunSpec(), rows) == (pytest.approx(3 / 6), 6)
    assert scoring.exact_match(None, None, SpinRunSpec(evaluation={"exactMatch": False}), rows) is None


def test_normalised_match_ignores_case_whitespace_and_punctuation_at_the_ends_only() -> None:
    assert scoring.normalise_answer("  The  Answer\n is:\tParis.  ") == "the answer is: paris"
    assert scoring.normalised_match('"Paris!"', "paris")
    assert scoring.normalised_match("¿Qué?", "qué")
    assert not scoring.normalised_match("Par-is", "Paris"), "punctuation inside is kept"
    assert not scoring.normalised_match("$5", "5"), "symbols are not punctuation"
    assert not scoring.normalised_match("", "paris")


def _user_run(run_dir: Path, model: Path, trained: Path, **evaluation: object) -> list[dict]:
    """A run on the user's own JSONL data (no built-in task, no `answer` column)."""
    rows = [{**r, "answer": None, "prompt": f"Question {i}: name a colour.", "real": real}
            for i, (r, real) in enumerate(zip(_rows(), ["Red.", "blue", "Green", "grey", "white", "black"], strict=True))]  # fmt: skip
    data = run_dir.parent / "mydata.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["real"]}) + "\n" for r in rows))
    make_run(run_dir, model, training={"maxLength": 128, "maxPromptLength": 96}, evaluation={"maxSamples": 5, **evaluation})
    stored = json.loads((run_dir / "spec.json").read_text())
    stored["spec"]["dataset"] = {"path": str(data), "testSize": 1}
    (run_dir / "spec.json").write_text(json.dumps(stored))
    shutil.copytree(trained, run_dir / layout.model_dir(0))
    write_pairs(run_dir, 0, "test", rows)
    return rows[:5]


SCORER = """
calls = []

def colour_length(prompt, real, generated):
    calls.append((prompt, real, generated))
    return len(generated) / 10

def says_no(prompt, real, generated):
    return generated.startswith("no")

def broken(prompt, real, generated):
    return "high"
"""


def test_users_own_data_gets_exact_match_and_a_user_score_with_a_baseline(
    tmp_path: Path, tiny_model_dir: Path, trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "myscorers.py").write_text(SCORER)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    rows = _user_run(run_dir, tiny_model_dir, trained, scorer="myscorers:colour_length")
    monkeypatch.setattr(scoring, "generate_answers", _fake_answers(rows, right={0, 2}))
    metrics = run_evaluate(run_dir, 0)
    assert metrics is not None
    stored = json.loads((run_dir / layout.metrics_path(0)).read_text())["eval"]
    assert stored["exact_match"] == pytest.approx(2 / 5) and stored["exact_match_rule"] == "normalised"
    assert stored["baseline_exact_match"] == pytest.approx(2 / 5), "the start model is scored too"
    answers = ["  RED.!  ", "no idea", "  GREEN!  ", "no idea", "no idea"]
    assert stored["score"] == pytest.approx(sum(len(a) / 10 for a in answers) / 5)
    assert stored["baseline_score"] == pytest.approx(stored["score"])
    assert stored["scorer"] == "myscorers:colour_length" and stored["score_samples"] == 5
    import myscorers  # type: ignore[import-not-found]

    assert myscorers.calls[0] == (rows[0]["prompt"], rows[0]["real"], answers[0]), "called with prompt, real, generated"

    from spin_runtime.report import summary_table

    table = summary_table(run_dir)
    assert "score" in [cell.strip() for cell in table.splitlines()[0].split("|")]
    start_row = next(line for line in table.splitlines() if line.startswith("| start model"))
    assert "0.400" in start_row and f"{stored['baseline_score']:.3f}" in start_row


def test_a_bool_scorer_counts_true_as_one(
    tmp_path: Path, tiny_model_dir: Path, trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "myscorers2.py").write_text(SCORER)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    rows = _user_run(run_dir, tiny_model_dir, trained, scorer="myscorers2:says_no", exactMatch=False)
    monkeypatch.setattr(scoring, "generate_answers", _fake_answers(rows, right={0}))
    run_evaluate(run_dir, 0)
    stored = json.loads((run_dir / layout.metrics_path(0)).read_text())["eval"]
    assert stored["score"] == pytest.approx(4 / 5) and "exact_match" not in stored


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nosuchmodule_xyz:f", r"evaluation.scorer 'nosuchmodule_xyz:f': cannot import module 'nosuchmodule_xyz'"),
        ("myscorers3:missing", r"evaluation.scorer 'myscorers3:missing': module 'myscorers3' has no function 'missing'"),
        ("myscorers3:broken", r"evaluation.scorer 'myscorers3:broken' returned 'high' \(str\) on held-out row .*finite float or a bool"),
    ],
)
def test_a_scorer_that_cannot_be_used_fails_with_the_field_named_and_no_marker(
    tmp_path: Path, tiny_model_dir: Path, trained: Path, monkeypatch: pytest.MonkeyPatch, ref: str, message: str
) -> None:
    from spin_runtime.errors import SpecConfigError

    (tmp_path / "myscorers3.py").write_text(SCORER)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    rows = _user_run(run_dir, tiny_model_dir, trained, scorer=ref)
    monkeypatch.setattr(scoring, "generate_answers", _fake_answers(rows, right=set()))
    with pytest.raises(SpecConfigError, match=message):
        run_evaluate(run_dir, 0)
    assert not (run_dir / stages.Step(0, "evaluate").marker).exists()


def test_a_scorer_that_is_not_module_colon_function_is_refused_by_validation() -> None:
    from spin_runtime.api.load import SpecError, validate_data

    with pytest.raises(SpecError) as err:
        validate_data({"apiVersion": "spin.dev/v1alpha1", "kind": "SpinRun", "metadata": {"name": "x"},
                       "spec": {"evaluation": {"scorer": "my scorer.py"}}})  # fmt: skip
    assert any("spec.evaluation.scorer" in p and "module:function" in p for p in err.value.problems)


def test_lm_eval_enabled_without_the_package_fails_first_and_says_what_to_install(
    tmp_path: Path, tiny_model_dir: Path, trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    _run(run_dir, tiny_model_dir, trained, lmEval={"enabled": True})
    monkeypatch.setattr(lme, "find_executable", lambda: None)
    with pytest.raises(lme.LmEvalError, match=r"own environment \(`make lmeval` builds \.venv-lmeval.*SPIN_LM_EVAL") as e:
        run_evaluate(run_dir, 0)
    assert e.value.exit_code == EXIT_BAD_SPEC, "an image without the harness fails the step at once, never retried"
    assert not (run_dir / stages.Step(0, "evaluate").marker).exists()
    assert not (run_dir / layout.metrics_path(0)).exists()


# --------------------------------------------------------------------------- lm-eval


def test_lm_eval_commands_one_per_shot_count_with_the_papers_shots() -> None:
    cmds = lme.lm_eval_commands("/runs/r/iter-1/model", LmEval(enabled=True), "/runs/r/iter-1/lm_eval")
    assert len(cmds) == 4
    assert cmds[0] == [
        "lm_eval", "--model", "hf",
        "--model_args", "pretrained=/runs/r/iter-1/model,dtype=bfloat16",
        "--tasks", "arc_challenge",
        "--num_fewshot", "25",
        "--batch_size", "auto",
        "--output_path", "/runs/r/iter-1/lm_eval/shots-25",
    ]  # fmt: skip
    by_shots = {c[c.index("--num_fewshot") + 1]: c[c.index("--tasks") + 1] for c in cmds}
    assert by_shots == {"25": "arc_challenge", "10": "hellaswag", "5": "mmlu,winogrande,gsm8k", "0": "truthfulqa_mc2"}
    small = LmEval(enabled=True, tasks=[LmEvalTask(name="gsm8k", num_fewshot=5)], limit=10, batch_size="8")
    (cmd,) = lme.lm_eval_commands("m", small, "out", device="cuda")
    assert cmd[cmd.index("--limit") + 1] == "10" and cmd[cmd.index("--device") + 1] == "cuda"
    assert cmd[cmd.index("--batch_size") + 1] == "8"
    with pytest.raises(lme.LmEvalError, match="cannot carry a path with ','"):
        lme.lm_eval_commands("/runs/a,b/model", small, "out")


RESULTS = {
    "results": {
        "arc_challenge": {"alias": "arc_challenge", "acc,none": 0.6, "acc_stderr,none": 0.01, "acc_norm,none": 0.65},
        "gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.35, "exact_match,flexible-extract": 0.37},
    },
    "n-shot": {"arc_challenge": 25, "gsm8k": 5},
}


def test_lm_eval_results_json_is_parsed_into_scores() -> None:
    tasks = lme.parse_results(RESULTS)
    assert tasks["arc_challenge"]["score"] == 0.65 and tasks["arc_challenge"]["score_metric"] == "acc_norm,none"
    assert tasks["gsm8k"]["score"] == 0.35 and tasks["gsm8k"]["num_fewshot"] == 5
    assert "alias" not in tasks["arc_challenge"]["metrics"]
    summary = lme.summarize(tasks, ["arc_challenge", "gsm8k", "mmlu"])
    assert summary["average"] == pytest.approx(0.5) and summary["scored_tasks"] == 2
    with pytest.raises(lme.LmEvalError, match="no 'results'"):
        lme.parse_results({})


def test_lm_eval_runner_stores_scores_through_a_stand_in_command(
    tmp_path: Path, tiny_model_dir: Path, trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "lm_eval"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, pathlib, sys\n"
        "out = pathlib.Path(sys.argv[sys.argv.index('--output_path') + 1]) / 'model'\n"
        "out.mkdir(parents=True)\n"
        f"(out / 'results_2026.json').write_text(json.dumps({RESULTS!r}))\n"
    )
    script.chmod(0o755)
    monkeypatch.setattr(lme, "find_executable", lambda: str(script))
    run_dir = tmp_path / "run"
    tasks = [{"name": "arc_challenge", "numFewshot": 25}, {"name": "gsm8k", "numFewshot": 5}]
    _run(run_dir, tiny_model_dir, trained, exactMatch=False, lmEval={"enabled": True, "tasks": tasks})
    run_evaluate(run_dir, 0)
    stored = json.loads((run_dir / layout.metrics_path(0)).read_text())
    assert stored["lm_eval"]["tasks"]["arc_challenge"]["score"] == 0.65
    assert stored["lm_eval"]["average"] == pytest.approx((0.65 + 0.35) / 2)
    assert "eval" in stored and (run_dir / stages.Step(0, "evaluate").marker).exists()


def test_lm_eval_version_is_compared_with_the_one_the_spec_expects() -> None:
    assert lme.version_info("0.4.0", "0.4.0") == {"harness_version": "0.4.0", "expected_harness_version": "0.4.0"}
    assert lme.version_info("0.4.13", "0.4") == {"harness_version": "0.4.13", "expected_harness_version": "0.4"}
    newer = lme.version_info("0.4.13", "0.4.0")
    assert "is not v0.4.0 (the paper's)" in newer["version_warning"] and "lm-eval==0.4.0" in newer["version_warning"]
    assert "asks for v0.4.0" in lme.version_info(None, "0.4.0")["version_warning"]
    assert "the paper's" not in lme.version_info("0.4.0", "0.4.13")["version_warning"]


def test_without_an_expected_lm_eval_version_the_installed_one_is_recorded_only() -> None:
    assert lme.version_info("0.4.13", None) == {"harness_version": "0.4.13"}
    assert lme.version_info(None, None) == {"harness_version": None}


def test_the_paper_recipe_expects_the_papers_lm_eval_version() -> None:
    paper = SpinRunSpec.model_validate({"recipe": "spin-paper", "evaluation": {"lmEval": {"enabled": True}}})
    assert paper.evaluation.lm_eval.version == LM_EVAL_PAPER_VERSION == "0.4.0"
    assert SpinRunSpec.model_validate({"evaluation": {"lmEval": {"enabled": True}}}).evaluation.lm_eval.version is None
    with pytest.raises(SpecError, match=r"spec.evaluation.lmEval.version.*a release number such as 0.4.0"):
        validate_data({"metadata": {"name": "r"}, "spec": {"evaluation": {"lmEval": {"version": "v0.4"}}}})


def test_lm_eval_executable_comes_from_spin_lm_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "lm_eval"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv(lme.EXECUTABLE_ENV, str(script))
    assert lme.find_executable() == str(script)
    monkeypatch.setenv(lme.EXECUTABLE_ENV, str(tmp_path / "missing"))
    with pytest.raises(lme.LmEvalMissingError, match="SPIN_LM_EVAL=.*no such executable") as missing:
        lme.find_executable()
    assert missing.value.exit_code == EXIT_BAD_SPEC, "a missing harness fails the step once, not every retry"


def test_lm_eval_on_without_a_harness_is_a_spec_the_environment_cannot_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(lme.EXECUTABLE_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(lme.sys, "executable", str(tmp_path / "python"))
    with pytest.raises(lme.LmEvalMissingError, match="needs the lm_eval command.*turn evaluation.lmEval off") as e:
        lme.run_lm_eval(tmp_path / "model", LmEval(enabled=True), tmp_path / "out")
    assert e.value.exit_code == EXIT_BAD_SPEC


def test_evaluate_runs_lm_eval_on_local_tasks_and_stores_scores_and_version(
    tmp_path: Path, tiny_model_dir: Path, trained: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    exe = lme.find_executable()
    if exe is None:
        if os.environ.get("SPIN_REQUIRE_LM_EVAL"):
            pytest.fail(f"SPIN_REQUIRE_LM_EVAL is set but no lm_eval command was found: {lme.INSTALL_HINT}")
        pytest.skip("lm-eval is not installed here (make lmeval, then SPIN_LM_EVAL=.venv-lmeval/bin/lm_eval)")
    tasks = write_lm_eval_tasks(tmp_path / "tasks")
    run_dir = tmp_path / "run"
    lm = {"enabled": True, "tasks": [{"name": "spin_choice"}, {"name": "spin_sum"}], "includePath": str(tasks),
          "batchSize": "4", "version": "0.4.0"}  # fmt: skip
    _run(run_dir, tiny_model_dir, trained, exactMatch=False, lmEval=lm)
    run_evaluate(run_dir, 0)

    stored = json.loads((run_dir / layout.metrics_path(0)).read_text())["lm_eval"]
    results = json.loads(lme.newest_results_file(run_dir / layout.iter_dir(0) / "lm_eval" / "shots-0").read_text())
    choice = stored["tasks"]["spin_choice"]
    assert choice["metrics"]["acc,none"] == results["results"]["spin_choice"]["acc,none"] == pytest.approx(0.75)
    assert choice["metrics"]["acc_norm,none"] == pytest.approx(0.25)
    assert choice["score"] == pytest.approx(0.25) and choice["score_metric"] == "acc_norm,none"
    assert stored["tasks"]["spin_sum"]["score_metric"] == "exact_match,none"
    assert stored["average"] == pytest.approx((0.25 + stored["tasks"]["spin_sum"]["score"]) / 2)
    assert stored["harness_version"] == results["lm_eval_version"] and stored["expected_harness_version"] == "0.4.0"
    if stored["harness_version"] != "0.4.0":
        assert "is not v0.4.0 (the paper's)" in stored["version_warning"]
        assert "warning: lm-eval" in capfd.readouterr().err, "the evaluate log warns too"

    from spin_runtime.report import summary_table

    lines = summary_table(run_dir).splitlines()
    header, row = lines[0], next(line for line in lines if re.match(r"\| iter\d", line))  # after the start model's row
    cells = [c.strip() for c in row.split("|")]
    assert cells[[c.strip() for c in header.split("|")].index("lm-eval avg")] == f"{stored['average']:.3f}"
