"""The generated CRD: in sync with the chart, structural, and refusing what the models refuse
(asked of the real kube-apiserver: server-side dry runs with strict field validation)."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from spin_runtime.api.crd import PRINTER_COLUMNS, crd_dict, crd_yaml
from spin_runtime.api.crd import openapi_schema as _openapi_schema
from spin_runtime.api.load import SpecError, validate_data
from spin_runtime.api.recipes import RECIPES
from spin_runtime.api.rules import Rule, UpdateRule
from spin_runtime.api.spec import DEFAULT_MAX_LENGTH, DEFAULT_MAX_PROMPT_LENGTH, LABEL_VALUE_PATTERN, SpinRun
from tests.admission import Admission
from tests.test_rules_agree import CASES, document, shown

REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "charts" / "spin-operator" / "crds" / "spinruns.spin.dev.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
XVAL = "x-kubernetes-validations"


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    yield path or "<root>", node
    for name, sub in node.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


openapi_schema = functools.cache(_openapi_schema)  # generated once for the whole module


@functools.cache
def _crd() -> dict[str, Any]:
    return crd_dict()


def _base() -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / "spinrun-local.yaml").read_text())


# --------------------------------------------------------------------------- the file


def test_committed_crd_matches_the_generator() -> None:
    assert CRD_FILE.read_text(encoding="utf-8") == crd_yaml(), "run `make crd` (spin crd > chart file)"


def test_crd_yaml_parses_back_to_crd_dict() -> None:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    assert yaml.load(crd_yaml(), Loader=loader) == _crd()


def test_crd_is_a_valid_custom_resource_definition() -> None:
    kubernetes_validate.validate(_crd(), "1.30", strict=True)


def test_names_version_and_status_subresource() -> None:
    crd = _crd()
    assert crd["metadata"]["name"] == "spinruns.spin.dev"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == ("SpinRun", "spinruns", "spinrun")
    assert names["shortNames"] == ["spin"]
    assert names["categories"] == ["spinrun", "ml"]
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = _crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["jsonPath"], c.get("priority", 0)) for c in columns] == [
        ("Phase", ".status.phase", 0),
        ("Iteration", ".status.currentIteration", 0),
        ("Max", ".spec.iterations", 0),
        ("Checkpoint", ".status.lastCheckpoint.path", 0),
        ("Age", ".metadata.creationTimestamp", 0),
        ("Step", ".status.progress.step", 1),
        ("Progress", ".status.progress.summary", 1),
        ("ETA", ".status.progress.eta", 1),
        ("Reason", ".status.reason", 1),
        ("Message", ".status.message", 1),
    ]
    assert not any("conditions" in c["jsonPath"] for c in PRINTER_COLUMNS)
    schema = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for c in columns:  # every column reads a field the schema has
        node = schema
        for part in c["jsonPath"].strip(".").split("."):
            node = node["properties"][part] if part != "creationTimestamp" else {}


# --------------------------------------------------------------------------- structural


def test_schema_is_structural() -> None:
    schema = openapi_schema()
    assert schema["properties"]["metadata"] == {"type": "object"}
    for path, node in _nodes(schema):
        for key in ("$ref", "$defs", "title", "const", "nullable", "allOf", "oneOf", "not"):
            assert key not in node, f"{path}: {key}"
        if node.get("x-kubernetes-int-or-string"):
            assert node.get("anyOf") == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "anyOf" not in node, path
            assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean"), path
        assert "default" not in node or node["default"] is not None, path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(key, True) is True, f"{path}: {key} must be a boolean (OpenAPI 3.0)"
        if "additionalProperties" in node:
            assert isinstance(node["additionalProperties"], dict), path
            assert "properties" not in node, path
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), path


def test_optional_fields_keep_their_non_null_branch_and_bounds() -> None:
    spec = openapi_schema()["properties"]["spec"]["properties"]
    assert spec["startCheckpoint"]["type"] == "object"
    assert spec["generation"]["properties"]["parallelism"] == {
        "description": "Shards running at once in a cluster (default: all).",
        "type": "integer",
        "minimum": 1,
        "maximum": 1024,
    }
    assert spec["generation"]["properties"]["temperature"]["exclusiveMinimum"] is True
    assert spec["startIteration"]["maximum"] == 63  # lt=64 on an integer
    assert spec["training"]["properties"]["deepspeed"]["properties"]["stage"]["enum"] == [0, 1, 2, 3]
    assert spec["training"]["properties"]["deepspeed"]["properties"]["stage"]["type"] == "integer"
    assert spec["nodeSelector"]["additionalProperties"] == {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN}
    assert spec["nodeSelector"]["maxProperties"] == 64


def test_integer_bounds_survive_float64() -> None:
    """The apiserver reads schema bounds as float64 and refuses every value of a field whose bound
    is not an exact integer there: 2**63 - 1 on tolerationSeconds made the CRD refuse any
    toleration with tolerationSeconds (seen on the real apiserver, #20)."""
    inexact = [f"{p}.{b}" for p, n in _nodes(openapi_schema()) if n.get("type") == "integer"
               for b in ("minimum", "maximum") if b in n and abs(n[b]) > 2**53]
    assert inexact == []


def test_every_property_has_a_description() -> None:
    missing = [
        path
        for path, node in _nodes(openapi_schema())
        if not node.get("description") and not path.endswith(("[]", "{}", ".metadata"))
    ]
    assert missing == []


def test_descriptions_come_from_the_models() -> None:
    training = openapi_schema()["properties"]["spec"]["properties"]["training"]
    field = SpinRun.model_fields["spec"].annotation.model_fields["training"]
    assert training["description"] == field.description
    assert training["properties"]["lossType"]["description"].startswith("SPIN loss")


def test_defaults_satisfy_their_own_schema() -> None:
    for path, node in _nodes(openapi_schema()):
        if "default" in node:
            rest = {k: v for k, v in node.items() if k != "default"}
            errors = list(jsonschema.Draft4Validator(rest).iter_errors(node["default"]))
            assert not errors, f"{path}: default {node['default']!r}: {errors[0].message}"


def test_status_preserves_unknown_fields_and_has_no_defaults() -> None:
    status = openapi_schema()["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    assert not [p for p, n in _nodes(status) if "default" in n]


# --------------------------------------------------------------------------- CEL


def _rules() -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    return [(path, node, rule) for path, node in _nodes(openapi_schema()) for rule in node.get(XVAL, [])]


def test_every_rule_compiles_and_says_must() -> None:
    env = celpy.Environment()
    for path, _, rule in _rules():
        env.compile(rule["rule"])
        assert "must" in rule["message"], f"{path}: {rule['message']}"


def test_rules_only_read_bounded_values() -> None:
    """The apiserver estimates CEL cost from maxItems/maxLength: every list and string a
    rule reads (and everything under `self` for equality rules) needs a bound."""

    def bounded(node: dict[str, Any]) -> bool:
        if node.get("type") == "array":
            return "maxItems" in node
        if node.get("type") == "string":
            return "maxLength" in node or "enum" in node
        return True

    for path, node, rule in _rules():
        if path == "<root>":
            continue  # metadata.name: only size() and one regular expression
        if re.search(r"\bself == oldSelf\b", rule["rule"]):
            unbounded = [p for p, n in _nodes(node, path) if not bounded(n)]
            assert unbounded == [], f"{rule['rule']}: {unbounded}"
            continue
        for ref in re.findall(r"self((?:\.\w+)+)", rule["rule"]):
            target = node
            for name in ref.strip(".").split("."):
                target = target.get("properties", {}).get(name, {})
            assert bounded(target), f"{path}: {rule['rule']} reads unbounded {ref}"
            for sub_path, sub in _nodes(target.get("items", {}), ref):
                assert bounded(sub), f"{path}: {rule['rule']} iterates unbounded {sub_path}"


def test_examples_and_defaults_are_admitted(admission: Admission) -> None:
    for example in EXAMPLES:
        assert admission.problems(yaml.safe_load(example.read_text())) == [], example.name
    minimal = {"apiVersion": "spin.dev/v1alpha1", "kind": "SpinRun", "metadata": {"name": "r"}}
    assert admission.problems(minimal) == []
    full = SpinRun.model_validate(minimal).dump()
    assert admission.problems(full) == []


def _object_blocks(node: dict[str, Any], prefix: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """The path of every object-valued field under `node` (not list items or maps)."""
    for name, sub in node.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            yield (*prefix, name)
            yield from _object_blocks(sub, (*prefix, name))


def _scalar_leaves(value: Any, prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every scalar in a dumped spec with its path (lists are left whole)."""
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _scalar_leaves(sub, (*prefix, key))
    elif not isinstance(value, list):
        yield prefix, value


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    doc = {"apiVersion": "spin.dev/v1alpha1", "kind": "SpinRun", "metadata": {"name": "r"}}
    node: dict[str, Any] = doc
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return doc


def _validate_verdict(doc: dict[str, Any]) -> list[str]:
    try:
        validate_data(doc)
    except SpecError as e:
        return e.problems
    return []


def test_every_block_left_empty_is_judged_alike_by_validate_and_the_apiserver(admission: Admission) -> None:
    """`training: {}`, `generation: {}`, ... : a block whose fields all have documented defaults is
    admitted by both, one with a required choice is refused by both (a CEL rule reading an absent
    field without has() refuses every spec that leaves it out)."""
    spec_schema = openapi_schema()["properties"]["spec"]
    differ = []
    for block in _object_blocks(spec_schema, ("spec",)):
        doc = _with(block, {})
        ours, theirs = _validate_verdict(doc), admission.problems(doc)
        if bool(ours) != bool(theirs):
            differ.append(f"{'.'.join(block)}: {{}}: validate says {ours or 'ok'}, the apiserver {theirs or 'ok'}")
    assert not differ, "\n".join(differ)


def test_each_documented_default_given_alone_is_admitted(admission: Admission) -> None:
    """A spec that writes out one default (as a user copying docs/spec-reference.md does) is
    admitted wherever `spin validate` admits it."""
    minimal = {"apiVersion": "spin.dev/v1alpha1", "kind": "SpinRun", "metadata": {"name": "r"}}
    dumped = SpinRun.model_validate(minimal).dump()["spec"]
    refused = []
    for path, value in _scalar_leaves(dumped, ("spec",)):
        if value is None:
            continue
        doc = _with(path, value)
        if _validate_verdict(doc) == [] and (problems := admission.problems(doc)):
            refused.append(f"{'.'.join(path)}: {value!r}: {problems}")
    assert not refused, "\n".join(refused)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value

    return mutate


CEL_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("storage with both kinds", _set("spec.storage", {"existingClaim": "pvc", "newClaim": {}}), "exactly one of existingClaim or newClaim"),
    ("storage with neither kind", _set("spec.storage", {"subPath": "runs"}), "exactly one of existingClaim or newClaim"),
    ("storage subPath with ..", _set("spec.storage.subPath", "runs/../etc"), "must not contain '..'"),
    ("model with no source", _set("spec.model", {}), "exactly one of hub, path or builtin"),
    ("model with two sources", _set("spec.model", {"hub": "a/b", "path": "/m"}), "exactly one of hub, path or builtin"),
    ("gguf without path", _set("spec.model", {"hub": "a/b", "ggufFile": "m.gguf"}), "ggufFile must be used together with path"),
    ("dataset with two sources", _set("spec.dataset", {"hub": "a/b", "path": "/d.jsonl"}), "exactly one of hub, path or builtin"),
    ("synthetic data with two sources", _set("spec.syntheticData", [{"iteration": 0, "hub": "a/b", "path": "/d"}]), "exactly one of hub or path"),
    ("reserved env", _set("spec.env", [{"name": "MASTER_ADDR", "value": "x"}]), "env must not set"),
    ("reserved env HF_TOKEN", _set("spec.env", [{"name": "HF_TOKEN", "value": "x"}]), "env must not set"),
    ("start iteration at the end", _set("spec.startIteration", 2), "startIteration must be smaller than iterations"),
    ("synthetic data past the end", _set("spec.syntheticData", [{"iteration": 2, "hub": "a/b"}]), "smaller than iterations"),
    ("synthetic data twice", _set("spec.syntheticData", [{"iteration": 0, "hub": "a/b"}, {"iteration": 0, "path": "/d"}]), "at most once"),
    ("multi-node on a single-node volume", lambda d: (_set("spec.training.nodes", 2)(d), _set("spec.storage", {"newClaim": {"accessModes": ["ReadWriteOnce"]}})(d)), "ReadWriteMany"),
    ("prompt as long as the sequence", _set("spec.training.maxPromptLength", 128), "maxPromptLength must be smaller than maxLength"),
    ("prompt longer than the default sequence", lambda d: d["spec"]["training"].pop("maxLength") and _set("spec.training.maxPromptLength", 2048)(d), "maxPromptLength must be smaller than maxLength"),
    ("sequence shorter than the default prompt", lambda d: d["spec"]["training"].pop("maxPromptLength") and _set("spec.training.maxLength", 256)(d), "maxPromptLength must be smaller than maxLength"),
    ("select epoch past a schedule entry's epochs", _set("spec.training.selectEpoch", 2), "must not exceed any schedule entry"),
    ("select epoch beside max steps", lambda d: (_set("spec.schedule", [{"learningRate": 1e-6, "epochs": 3}])(d),
                                                  _set("spec.training.selectEpoch", 2)(d),
                                                  _set("spec.training.maxSteps", 10)(d)), "remove training.maxSteps"),
    ("name too long", _set("metadata.name", "r" * 41), "at most 40 characters"),
    ("name starting with a digit", _set("metadata.name", "1run"), "DNS label that starts with a letter"),
    ("name with a dot", _set("metadata.name", "run.one"), "DNS label that starts with a letter"),
]


@pytest.mark.parametrize(("mutate", "message"), [c[1:] for c in CEL_CASES], ids=[c[0] for c in CEL_CASES])
def test_cel_rule_refuses_what_the_model_refuses(
    mutate: Callable[[dict[str, Any]], None], message: str, admission: Admission
) -> None:
    doc = _base()
    assert admission.problems(doc) == []
    mutate(doc)
    problems = admission.problems(doc)
    assert any(message in p for p in problems), problems
    with pytest.raises(SpecError):
        validate_data(doc)


def test_every_declared_rule_example_gets_its_verdict_from_the_apiserver(admission: Admission) -> None:
    """The examples beside each rule (test_rules_agree.py judges them with cel-python and `spin
    validate`): the real apiserver refuses each refused one with the rule's message at the rule's
    place, and names no accepted one with it."""
    wrong = []
    for case_id, _, _, path, rule, example, accepted in CASES:
        if isinstance(rule, UpdateRule):
            old, new = (document(path, e) for e in example)
            where, message = shown((*path, rule.on) if rule.on else path), rule.message
            problems = admission.problems(new, old=old)
        elif isinstance(rule, Rule) and rule.cel is not None:
            where, message, problems = shown(path), rule.crd_message, admission.problems(document(path, example))
        else:
            continue
        said = re.compile(rf'{re.escape(where)}: Invalid value: ("object": )?{re.escape(message)}')
        refused = any(said.search(p) for p in problems)
        if refused == accepted:
            wrong.append(f"{case_id}: the apiserver {'refuses' if refused else 'admits'} it: {problems}")
    assert not wrong, "\n".join(wrong)


def test_select_epoch_is_last_best_or_an_unquoted_epoch_number_for_validate_and_the_apiserver(
    admission: Admission,
) -> None:
    verdicts = {}
    for value in ["last", "best", 1, 6, "first", "2", 0, 1001, "Last"]:
        doc = _base()
        doc["spec"]["schedule"] = [{"learningRate": 1e-6, "epochs": 6}]
        doc["spec"]["training"]["selectEpoch"] = value
        doc["spec"]["training"].pop("maxSteps", None)
        theirs, ours = admission.problems(doc), _validate_verdict(doc)
        verdicts[repr(value)] = (bool(ours), bool(theirs))
        if isinstance(value, str) and value not in ("last", "best"):
            assert any("spec.training.selectEpoch: must be last, best or an epoch number" in p for p in ours), ours
    assert verdicts == {"'last'": (False, False), "'best'": (False, False), "1": (False, False), "6": (False, False),
                        "'first'": (True, True), "'2'": (True, True), "0": (True, True), "1001": (True, True),
                        "'Last'": (True, True)}


def test_recipes_keep_the_sequence_lengths_the_cel_rule_assumes() -> None:
    """Training's CEL rule cannot see the recipe, so it compares against the model's defaults where
    a field is left out: a recipe that set other lengths would make the CRD judge differently."""
    for name, recipe in RECIPES.items():
        training = recipe.get("training", {})
        assert training.get("maxLength", DEFAULT_MAX_LENGTH) == DEFAULT_MAX_LENGTH, name
        assert training.get("maxPromptLength", DEFAULT_MAX_PROMPT_LENGTH) == DEFAULT_MAX_PROMPT_LENGTH, name


def test_storage_is_immutable_but_other_fields_may_change(admission: Admission) -> None:
    old = _base()
    new = copy.deepcopy(old)
    new["spec"]["iterations"] = 3
    new["spec"]["schedule"].append({"learningRate": 1e-6})
    assert admission.problems(new, old=old) == []

    changed = copy.deepcopy(old)
    changed["spec"]["storage"] = {"newClaim": {"size": "1Ti"}}
    assert any("storage is immutable" in p for p in admission.problems(changed, old=old))
    assert admission.problems(changed) == []  # a create has no oldSelf

    removed = copy.deepcopy(old)
    del removed["spec"]["storage"]
    assert any("must not be added or removed" in p for p in admission.problems(removed, old=old))
    assert any("must not be added or removed" in p for p in admission.problems(old, old=removed))


def test_unknown_fields_are_refused_like_kubectl_strict_validation(admission: Admission) -> None:
    doc = _base()
    doc["spec"]["trainig"] = {}
    (problem,) = admission.problems(doc)
    assert 'unknown field "spec.trainig"' in problem, problem
