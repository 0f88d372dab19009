"""Every cross-field rule of the spec (spin_runtime/api/rules.py) judged by both of its sides on the
examples declared beside it, at every place of a SpinRun its model occurs: the CEL the CRD carries,
evaluated by cel-python on the object as the kube-apiserver holds it (CRD defaults applied, values
typed by the schema), and `spin validate` (the loader, so the Python check and the line it prints).
Both accept an accepted example; both refuse a refused one, `spin validate` with the rule's message
at its field. test_crd.py asks the real apiserver the same of every example (so cel-python and the
quantity functions here are held to it)."""

from __future__ import annotations

import copy
import functools
import typing
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import celpy
import pytest
from celpy import celtypes

from spin_runtime.api.base import SpinModel
from spin_runtime.api.crd import openapi_schema
from spin_runtime.api.load import SpecError, unwrap, validate_data
from spin_runtime.api.resources import parse_quantity
from spin_runtime.api.rules import XVAL, Example, Rule, UpdateRule
from spin_runtime.api.spec import SpinRun

Path = tuple[str, ...]  # field names from the object's root; "[]" is the first item of a list


# --------------------------------------------------------------------------- where the rules are


@functools.cache
def _places() -> list[tuple[type[SpinModel], dict[str, Any], Path]]:
    """Every model of a SpinRun with the CRD's schema node for it and its path (each place once)."""
    out: list[tuple[type[SpinModel], dict[str, Any], Path]] = []

    def walk(model: type[SpinModel], node: dict[str, Any], path: Path) -> None:
        out.append((model, node, path))
        for name, field in model.model_fields.items():
            alias = field.alias or name
            tp, sub, sub_path = unwrap(field.annotation), node.get("properties", {}).get(alias), (*path, alias)
            if typing.get_origin(tp) is list:
                tp, sub, sub_path = unwrap(typing.get_args(tp)[0]), (sub or {}).get("items"), (*sub_path, "[]")
            if isinstance(tp, type) and issubclass(tp, SpinModel) and sub is not None:
                walk(tp, sub, sub_path)

    walk(SpinRun, openapi_schema(), ())
    return out


def shown(path: Path) -> str:
    """A path as `spin validate` prints it: spec.tolerations[0].key."""
    return "".join("[0]" if p == "[]" else f".{p}" for p in path).lstrip(".")


def _cases() -> Iterator[tuple[str, type[SpinModel], dict[str, Any], Path, Rule | UpdateRule, Any, bool]]:
    for model, node, path in _places():
        for rule in model.rules:
            for accepted, examples in ((True, rule.accepts), (False, rule.refuses)):
                for i, example in enumerate(examples):
                    verb = "accepts" if accepted else "refuses"
                    case_id = f"{shown(path)}: {rule.message[:60]}: {verb}[{i}]"
                    yield case_id, model, node, path, rule, example, accepted


CASES = list(_cases())


# --------------------------------------------------------------------------- CEL as the apiserver runs it


class _Quantity:
    """A value of Kubernetes' CEL quantity library (exact, as resource.Quantity compares)."""

    def __init__(self, value: Decimal) -> None:
        self.value = value


def _compare(a: _Quantity, b: _Quantity) -> celtypes.IntType:
    return celtypes.IntType((a.value > b.value) - (a.value < b.value))


#: Kubernetes' CEL library functions the rules call that cel-python lacks.
KUBERNETES_FUNCTIONS = {
    "quantity": lambda text: _Quantity(parse_quantity(str(text))),
    "isLessThan": lambda a, b: celtypes.BoolType(a.value < b.value),
    "isInteger": lambda a: celtypes.BoolType(a.value == a.value.to_integral_value()),
    "asInteger": lambda a: celtypes.IntType(int(a.value)),
    "compareTo": _compare,
}


@functools.cache
def _program(expr: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(expr), functions=KUBERNETES_FUNCTIONS)


def _defaulted(value: Any, node: dict[str, Any]) -> Any:
    """`value` with the CRD's defaults filled in, as the apiserver does before it runs the rules."""
    value = copy.deepcopy(value)
    if isinstance(value, dict) and "properties" in node:
        for name, sub in node["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        return {k: _defaulted(v, node["properties"][k]) if k in node["properties"] else v for k, v in value.items()}
    if isinstance(value, dict) and isinstance(node.get("additionalProperties"), dict):
        return {k: _defaulted(v, node["additionalProperties"]) for k, v in value.items()}
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_defaulted(v, node["items"]) for v in value]
    return value


def _typed(value: Any, node: dict[str, Any]) -> Any:
    """`value` as CEL sees it: typed by the schema (a `number` field holds a double, also when YAML wrote 2)."""
    if isinstance(value, dict):
        props, extra = node.get("properties", {}), node.get("additionalProperties")
        typed = {celtypes.StringType(k): _typed(v, props.get(k) or extra or {}) for k, v in value.items()}
        return celtypes.MapType(typed)
    if isinstance(value, list):
        return celtypes.ListType([_typed(v, node.get("items", {})) for v in value])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if node.get("type") == "number":
        return celtypes.DoubleType(float(value))
    if isinstance(value, int):
        return celtypes.IntType(value)
    return celtypes.DoubleType(value)


def _cel_holds(expr: str, node: dict[str, Any], new: Any, old: Any = None) -> bool:
    """The rule's verdict on `new` (an update from `old` when given); a CEL error fails the test,
    as the apiserver would refuse the object without the rule's message."""
    activation = {"self": _typed(_defaulted(new, node), node)}
    if old is not None:
        activation["oldSelf"] = _typed(_defaulted(old, node), node)
    result = _program(expr).evaluate(activation)
    assert isinstance(result, celtypes.BoolType), f"{expr} gave {result!r}"
    return bool(result)


# --------------------------------------------------------------------------- `spin validate`


def document(path: Path, example: Example) -> dict[str, Any]:
    """A SpinRun holding `example` at `path` (in the first item of each list on the way)."""
    value: Any = copy.deepcopy(example)
    for key in reversed(path):
        value = [value] if key == "[]" else {key: value}
    return {"apiVersion": "spin.dev/v1alpha1", "kind": "SpinRun", "metadata": {"name": "r"}, **value}


def _problems(doc: dict[str, Any]) -> list[str]:
    try:
        validate_data(doc)
    except SpecError as e:
        return e.problems
    return []


def _python_refuses(rule: Rule, path: Path, problems: list[str]) -> bool:
    where = shown((*path, rule.field) if rule.field else path)
    return any(line.startswith(f"{where}: {rule.message}") for line in problems)


def _below(model: type[SpinModel], path: Path, problems: list[str]) -> list[str]:
    """Problems inside the object at `path` other than its own rules' (they keep its rules from running)."""
    here = shown(path)
    own = tuple(f"{shown((*path, r.field))}: {r.message}" for r in model.rules if isinstance(r, Rule) and r.field)
    return [p for p in problems if p.startswith((f"{here}.", f"{here}[")) and not p.startswith(own)]


# --------------------------------------------------------------------------- the tests


def test_every_rule_has_a_message_examples_and_both_sides_or_a_reason() -> None:
    for model, _, _ in _places():
        for rule in model.rules:
            where = f"{model.__name__}: {rule.message}"
            assert "must" in rule.message, where
            assert rule.accepts and rule.refuses, f"{where}: needs an accepted and a refused example"
            if isinstance(rule, Rule):
                assert (rule.cel is None) == bool(rule.python_only), f"{where}: a CEL side, or python_only says why not"


def test_the_crd_carries_exactly_the_declared_rules() -> None:
    """Every x-kubernetes-validations entry of the CRD (but the root's metadata.name rules) is a
    declared rule at a place its model occurs, and every declared CEL rule is there."""

    def crd_rules(node: dict[str, Any], path: Path) -> Iterator[tuple[Path, str, str]]:
        for r in node.get(XVAL, []):
            yield path, r["rule"], r["message"]
        for name, sub in node.get("properties", {}).items():
            yield from crd_rules(sub, (*path, name))
        if isinstance(node.get("items"), dict):
            yield from crd_rules(node["items"], (*path, "[]"))

    declared = []
    for model, _, path in _places():
        for rule in model.rules:
            if isinstance(rule, UpdateRule):
                declared.append(((*path, rule.on) if rule.on else path, rule.cel, rule.message))
            elif rule.cel is not None:
                declared.append((path, rule.cel, rule.crd_message))
    in_crd = [r for r in crd_rules(openapi_schema(), ()) if r[0] != ()]
    assert sorted(in_crd) == sorted(declared)


@pytest.mark.parametrize(("model", "node", "path", "rule", "example", "accepted"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cel_and_python_give_the_same_verdict(
    model: type[SpinModel], node: dict[str, Any], path: Path, rule: Rule | UpdateRule, example: Any, accepted: bool
) -> None:
    if isinstance(rule, UpdateRule):
        old, new = example
        if rule.on:
            node, old, new = node["properties"][rule.on], old[rule.on], new[rule.on]
        assert _cel_holds(rule.cel, node, new, old) is accepted
        return
    problems = _problems(document(path, example))
    assert not _below(model, path, problems), f"the example breaks something else first: {problems}"
    python = not _python_refuses(rule, path, problems)
    assert python is accepted, f"spin validate {'refuses' if not python else 'accepts'} it: {problems}"
    if rule.cel is not None:
        cel = _cel_holds(rule.cel, node, example)
        assert cel is accepted, f"the CRD's CEL {'accepts' if cel else 'refuses'} it"
