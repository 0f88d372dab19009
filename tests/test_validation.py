"""`spin validate`: one plain line per problem, each naming the field, for hand-written
broken files and for hundreds of generated malformed specs; and the plan table."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spin_runtime.api.load import SpecError, load_spinrun, parse_yaml, validate_data
from spin_runtime.cli import main
from spin_runtime.plan.table import plan_table
from tests.admission import Admission

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
BROKEN = yaml.safe_load((Path(__file__).parent / "data" / "broken_specs.yaml").read_text(encoding="utf-8"))

_KEY = r'(?:[A-Za-z_][A-Za-z0-9_]*|\["(?:[^"\\]|\\.)*"\])'
#: A problem line: a field path (`spec.schedule[0].beta`, `<root>`, `x["odd key"]`) then ": ".
FIELD_LINE = re.compile(rf"^(?:<root>|{_KEY}(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\]|\[\"(?:[^\"\\]|\\.)*\"\])*): \S")
#: A problem line about the file itself (YAML syntax, documents).
FILE_LINE = re.compile(r"^(line \d+(, column \d+)?: |the file )")


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- broken files


@pytest.mark.parametrize("case", BROKEN, ids=[c["name"] for c in BROKEN])
def test_broken_spec_gets_a_plain_message(case: dict[str, str], tmp_path: Path) -> None:
    path = _write(tmp_path, case["document"])
    with pytest.raises(SpecError) as info:
        load_spinrun(path)
    problems = info.value.problems
    assert any(case["expect"] in p for p in problems), problems
    for line in problems:
        assert "\n" not in line
        assert FIELD_LINE.match(line) or FILE_LINE.match(line), line


def _one_object(text: str) -> Any:
    """The object kubectl would send for a file, or None for a file it refuses itself
    (not YAML, several or no documents, a key twice)."""
    try:
        return parse_yaml(text)
    except SpecError:
        return None


OBJECT_CASES = [c for c in BROKEN if _one_object(c["document"]) is not None]


@pytest.mark.parametrize("case", OBJECT_CASES, ids=[c["name"] for c in OBJECT_CASES])
def test_broken_spec_is_refused_by_the_crd_too(case: dict[str, str], admission: Admission) -> None:
    assert admission.problems(_one_object(case["document"]))


def test_examples_are_valid() -> None:
    assert len(EXAMPLES) >= 2
    for path in EXAMPLES:
        run = load_spinrun(path)
        assert run.metadata.name


def test_local_example_is_the_small_cpu_demo() -> None:
    run = load_spinrun(REPO / "examples" / "spinrun-local.yaml")
    spec = run.spec
    assert run.metadata.name == "demo-local"
    assert spec.model.builtin == "smollm2-135m-instruct"
    assert spec.dataset.builtin is not None and spec.dataset.builtin.name == "addition-3digit"
    assert spec.training.gpus_per_node == 0 and spec.generation.engine == "transformers"
    assert spec.iterations == 2


def test_zephyr_example_is_the_papers_recipe() -> None:
    spec = load_spinrun(REPO / "examples" / "spinrun-zephyr-7b.yaml").spec
    assert spec.model.hub == "HuggingFaceH4/zephyr-7b-sft-full"
    assert spec.dataset.hub == "HuggingFaceH4/ultrachat_200k" and spec.dataset.max_samples == 50_000
    assert [(e.learning_rate, e.beta) for e in spec.schedule] == [(5e-7, 0.1), (5e-7, 0.1), (1e-7, 0.1), (1e-7, 5.0)]
    assert (spec.training.nodes, spec.training.gpus_per_node, spec.training.deepspeed.stage) == (1, 8, 3)
    assert spec.generation.shards == 8 and spec.hf_token_secret is not None


def test_yaml_is_read_as_kubectl_reads_it(tmp_path: Path) -> None:
    text = """\
apiVersion: spin.dev/v1alpha1
kind: SpinRun
metadata: {name: r}
spec:
  model: {hub: a/b, revision: 2024-01-01}
  dataset: {hub: c/d, testSplit: null}
  schedule: [{learningRate: 5e-7}]
"""
    spec = load_spinrun(_write(tmp_path, text)).spec
    assert spec.schedule[0].learning_rate == 5e-7  # a number, not the string '5e-7'
    assert spec.model.revision == "2024-01-01"  # a date stays text
    assert spec.dataset.test_split == "test_sft"  # null = absent = the default, as in a cluster


def test_every_problem_is_reported_at_once() -> None:
    doc = {
        "metadata": {"name": "r"},
        "spec": {"iterations": 0, "generation": {"shards": 0}, "training": {"lossType": "x"}},
    }
    with pytest.raises(SpecError) as info:
        validate_data(doc)
    assert len(info.value.problems) == 3


def test_unknown_field_without_a_close_name_points_to_the_right_place() -> None:
    with pytest.raises(SpecError) as info:
        validate_data({"metadata": {"name": "r"}, "spec": {"deepspeed": {"zzz": 1}, "training": {"deepspeed": {"qqqq": 1}}}})
    assert info.value.problems == [
        "spec.training.deepspeed.qqqq: unknown field; known fields here: enabled, stage, offloadParams, offloadOptimizer",
        "spec.deepspeed: unknown field here; did you mean 'training.deepspeed'?",
    ]


def test_non_string_keys_are_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "metadata: {name: r}\nspec:\n  nodeSelector: {1: gpu}\n  3: x\n")
    with pytest.raises(SpecError) as info:
        load_spinrun(path)
    assert "spec: keys must be strings (got the key 3)" in info.value.problems


def test_unreadable_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read the file"):
        load_spinrun(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spinrun(binary)


# --------------------------------------------------------------------------- the CLI


def test_cli_validate_accepts_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", *map(str, EXAMPLES)]) == 0
    assert capsys.readouterr().out.count(": valid") == len(EXAMPLES)


def test_cli_validate_prints_one_line_per_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "metadata: {name: r}\nspec:\n  iterations: 0\n  trainig: {}\n  generation: {shards: -1}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3
    assert all(line.startswith(f"{path}: ") for line in err)
    assert f"{path}: spec.trainig: unknown field; did you mean 'training'?" in err


def test_spin_validate_as_a_command_exits_2_on_a_broken_file(tmp_path: Path) -> None:
    broken = _write(tmp_path, "metadata: {name: r}\nspec: {iterations: 0}\n")
    cmd = [sys.executable, "-m", "spin_runtime.cli", "validate", *map(str, EXAMPLES), str(broken)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    assert done.stdout.count(": valid") == len(EXAMPLES)
    assert done.stderr.strip() == f"{broken}: spec.iterations: must be at least 1 (got 0)"


def test_cli_plan_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(REPO / "examples" / "spinrun-local.yaml")]) == 0
    assert "syn(0)+syn(1)" in capsys.readouterr().out


# --------------------------------------------------------------------------- plan table


def test_plan_table_shows_the_papers_schedule() -> None:
    table = plan_table(load_spinrun(REPO / "examples" / "spinrun-zephyr-7b.yaml"))
    lines = table.splitlines()
    assert lines[0].startswith("SpinRun zephyr-7b-spin: iterations 0..3")
    rows = [line.split() for line in lines[4:]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"]
    assert rows[0][1:5] == ["HuggingFaceH4/zephyr-7b-sft-full", "syn(0)", "5e-07", "0.1"]
    assert rows[3][1:5] == ["<run>/iter-2/model", "syn(2)+syn(3)", "1e-07", "5"]
    assert all("generate x8 > convert > train > evaluate" in line for line in lines[4:])


def test_plan_table_shows_an_epoch_number_as_n_of_the_schedules_epochs() -> None:
    run = validate_data({"metadata": {"name": "r"}, "spec": {"recipe": "spin-paper", "training": {"selectEpoch": 2}}})
    rows = [line.split() for line in plan_table(run).splitlines()[4:]]
    assert all(r[5:8] == ["2", "of", "6"] for r in rows), rows


def test_plan_table_marks_given_data_and_start_iteration() -> None:
    run = validate_data(
        {
            "metadata": {"name": "r"},
            "spec": {
                "iterations": 3,
                "startIteration": 1,
                "startCheckpoint": {"path": "/ckpt/iter0"},
                "syntheticData": [{"iteration": 0, "hub": "UCLA-AGI/SPIN_iter0"}, {"iteration": 1, "hub": "UCLA-AGI/SPIN_iter1"}],
                "evaluation": {"enabled": False},
            },
        }
    )
    rows = [line.split() for line in plan_table(run).splitlines()[4:]]
    assert [r[0] for r in rows] == ["1", "2"]
    assert rows[0][1:3] == ["/ckpt/iter0", "syn(0)+syn(1)"]  # the window reaches the given syn(0)
    assert " ".join(rows[0]).endswith("(data given) > convert > train")
    assert " ".join(rows[1]).endswith("generate > convert > train")


# --------------------------------------------------------------------------- fuzzing

HOSTILE = [
    "../../etc",
    "$(rm -rf /)",
    "`reboot`",
    "a; rm -rf /",
    "x" * 300,
    "r" * 41,
    "",
    " ",
    "line\nbreak",
    "trailing\n",
    "名前",
    "\x00",
    "-1",
    "5e-7",
    "true",
    "null",
    "ReadWriteMany",
    "MASTER_ADDR",
    "HF_TOKEN",
    "hinge",
    "runs/../x",
]
KEYS = [
    "trainig",
    "loss_type",
    "lossType",
    "Iterations",
    "status",
    "startCheckpoint",
    "syntheticData",
    "env",
    "tolerations",
    "nodeSelector",
    "queueName",
    "hfTokenSecret",
    "imagePullSecrets",
    "existingClaim",
    "ggufFile",
    "path",
    "hub",
    "builtin",
]
VALUES = st.one_of(
    st.integers(min_value=-3, max_value=70),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.sampled_from(HOSTILE),
    st.text(max_size=30),
    st.lists(st.one_of(st.integers(-2, 5), st.sampled_from(HOSTILE)), max_size=3),
    st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), st.integers(-2, 5) | st.sampled_from(HOSTILE), max_size=2),
    st.just([{"name": "MASTER_ADDR", "value": "x"}]),
    st.just({"existingClaim": "pvc", "newClaim": {}}),
)
BASES = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in EXAMPLES]


def _locations(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _locations(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _locations(v, (*prefix, i))


def _at(doc: Any, loc: tuple[Any, ...]) -> Any:
    for el in loc:
        doc = doc[el]
    return doc


@st.composite
def malformed_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid example with one to three random mutations."""
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        locs = list(_locations(doc))
        loc = draw(st.sampled_from(locs))
        op = draw(st.sampled_from(["replace", "replace", "number", "add", "delete", "name"]))
        target = _at(doc, loc)
        if op == "name":
            doc.setdefault("metadata", {})
            if isinstance(doc["metadata"], dict):
                doc["metadata"]["name"] = draw(st.sampled_from(HOSTILE) | st.text(max_size=45))
        elif op == "add" and isinstance(target, dict):
            target[draw(st.sampled_from(KEYS) | st.text(max_size=12))] = copy.deepcopy(draw(VALUES))
        elif op == "add" and isinstance(target, list):
            target.append(copy.deepcopy(draw(VALUES)))
        elif op == "delete" and loc:
            del _at(doc, loc[:-1])[loc[-1]]
        elif op == "number" and loc and isinstance(target, (int, float)) and not isinstance(target, bool):
            factor = draw(st.sampled_from([-1, 0, 2, 10**6, 0.5]))
            _at(doc, loc[:-1])[loc[-1]] = target * factor + draw(st.sampled_from([0, 1, -1]))
        elif loc:
            _at(doc, loc[:-1])[loc[-1]] = copy.deepcopy(draw(VALUES))  # `st.just` values are shared
    return doc


@settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(malformed_specs())
def test_malformed_specs_are_refused_cleanly(admission: Admission, doc: dict[str, Any]) -> None:
    """Every generated spec is accepted, or refused with lines that each start with a field
    path; and what pydantic refuses, the apiserver (the CRD's schema and CEL rules) refuses as well.

    Known gaps, all in the direction "the models accept, the apiserver refuses" (which is
    allowed here): integers beyond 64 bits; apiVersion/kind left out (the models default
    them); metadata fields other than name and namespace (the models do not read them).
    """
    try:
        validate_data(doc)
    except SpecError as e:
        assert e.problems
        for line in e.problems:
            assert "\n" not in line and FIELD_LINE.match(line), line
        crd = admission.problems(doc)
        assert crd, f"the models refused {e.problems} but the CRD admits {doc!r}"


def test_whole_number_floats_read_as_the_apiserver_stores_them(admission: Admission, kube: Any) -> None:
    """`trainSize: 32.0` is admitted by the apiserver, stored as 32, and read so by `spin validate`
    too (the two must agree on what a spec means)."""
    from spin_cluster.api import path

    doc = yaml.safe_load((REPO / "examples" / "spinrun-local.yaml").read_text())
    doc["metadata"]["name"] = "floats"
    doc["spec"]["dataset"]["builtin"]["trainSize"] = 32.0
    doc["spec"]["schedule"][0]["epochs"] = 1.0
    assert admission.problems(doc) == []
    url = path("spin.dev", "v1alpha1", "spinruns", "admission")
    stored = kube.api.create(url, doc)
    kube.api.delete(f"{url}/floats")
    assert stored["spec"]["dataset"]["builtin"]["trainSize"] == 32 and isinstance(stored["spec"]["dataset"]["builtin"]["trainSize"], int)
    run = validate_data(doc)
    assert run.spec.dataset.builtin is not None and run.spec.dataset.builtin.train_size == 32
    with pytest.raises(SpecError, match="trainSize: must be an integer"):
        validate_data({**doc, "spec": {**doc["spec"], "dataset": {"builtin": {"name": "addition-3digit", "trainSize": 32.5}}}})


QUEUE_NAMES = ["gpu-queue", "team-a.gpu", "q", "a" * 63, "a" * 64, "GPU-Queue", "gpu_queue", "-gpu", "gpu.", ""]


def test_a_queue_name_is_admitted_only_if_it_can_name_a_local_queue_and_label_a_job(admission: Admission) -> None:
    """queueName becomes the LocalQueue's name and the kueue.x-k8s.io/queue-name label of every
    child (Kueue's webhook requires a DNS-1123 subdomain there): `spin validate` and the CRD admit
    exactly the names the real apiserver takes as an object name and as that label's value."""
    from spin_cluster.api import ApiError, path
    from spin_operator.builders.meta import LABEL_QUEUE

    url = path("", "v1", "configmaps", "admission")
    for name in QUEUE_NAMES:
        doc = {"apiVersion": "spin.dev/v1alpha1", "kind": "SpinRun", "metadata": {"name": "r"}, "spec": {"queueName": name}}
        ours = _verdict(doc)
        try:
            admission.kube.api.request("POST", url, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
                "name": name, "labels": {LABEL_QUEUE: name}}}, params={"dryRun": "All"})
            theirs = True
        except ApiError:
            theirs = False
        assert ours == theirs, f"queueName {name!r}: spin validate {'admits' if ours else 'refuses'} it, the apiserver {'takes' if theirs else 'refuses'} it as a name and label"
        assert (admission.problems(doc) == []) == ours, name


def _verdict(doc: dict[str, Any]) -> bool:
    try:
        validate_data(doc)
    except SpecError:
        return False
    return True
