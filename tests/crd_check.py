"""A stand-in for the kube-apiserver's admission of a SpinRun: what it would refuse, given
the generated CRD. Used by the CRD and validation tests (no cluster needed).

It follows the apiserver's order: JSON encoding, object-name checks, null pruning, strict
field validation (unknown fields refused, as `kubectl apply` does by default), structural
defaulting, the OpenAPI schema (jsonschema Draft 4 = OpenAPI 3.0 bounds; patterns with
RE2's `$`), then every CEL rule (cel-python), with `oldSelf` bound on updates.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from typing import Any

import celpy
import jsonschema

from spin_runtime.api.crd import openapi_schema
from spin_runtime.api.spec import API_VERSION, KIND

XVAL = "x-kubernetes-validations"
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
INT64 = (-(2**63), 2**63 - 1)


def _re2(pattern: str) -> str:
    """RE2 (Go) reads `$` as the end of the text; Python also matches before a final newline."""
    return re.sub(r"(?<!\\)\$", r"\\Z", pattern)


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Any:
    if validator.is_type(instance, "string") and not re.search(_re2(pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"pattern": _pattern})


def _strict(node: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused wherever Kubernetes would prune them."""
    node = dict(node)
    if "properties" in node:
        node["properties"] = {k: _strict(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    if isinstance(node.get("items"), dict):
        node["items"] = _strict(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _strict(node["additionalProperties"])
    return node


@functools.cache
def schema() -> dict[str, Any]:
    """The CRD's openAPIV3Schema."""
    return openapi_schema()


@functools.cache
def _validator() -> Any:
    return _Validator(_strict(schema()))


@functools.cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _prune_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune_nulls(v) for v in value]
    return value


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: fill absent properties that have a default, recursively."""
    if isinstance(value, dict) and "properties" in node:
        for name, sub in node["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, dict) and isinstance(node.get("additionalProperties"), dict):
        for key in value:
            value[key] = apply_defaults(node["additionalProperties"], value[key])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        return [apply_defaults(node["items"], v) for v in value]
    return value


def _ints_fit(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return INT64[0] <= value <= INT64[1]
    if isinstance(value, dict):
        return all(_ints_fit(v) for v in value.values())
    if isinstance(value, list):
        return all(_ints_fit(v) for v in value)
    return True


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


def _metadata_problems(obj: dict[str, Any]) -> list[str]:
    problems = []
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
        problems.append(f"apiVersion/kind must be {API_VERSION}/{KIND}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [*problems, "metadata must be an object"]
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        problems.append("metadata.name must be a DNS subdomain")
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or len(ns) > 63 or not _DNS_LABEL.fullmatch(ns)):
        problems.append("metadata.namespace must be a DNS label")
    return problems


def _cel_problems(node: dict[str, Any], value: Any, old: Any, path: str) -> list[str]:
    """Every CEL rule of the schema evaluated where the object has a value."""
    problems = []
    for rule in node.get(XVAL, []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue  # transition rules run on updates only, when the old value exists
        activation = {"self": celpy.json_to_cel(value)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old)
        try:
            ok = _program(rule["rule"]).evaluate(activation)
        except celpy.CELEvalError as e:
            problems.append(f"{path}: rule {rule['rule']!r} failed: {e}")
            continue
        if isinstance(ok, celpy.CELEvalError):
            problems.append(f"{path}: rule {rule['rule']!r} failed: {ok}")
        elif not bool(ok):
            problems.append(f"{path}: {rule['message']}")
    if isinstance(value, dict) and "properties" in node:
        for name, sub in node["properties"].items():
            if name in value:
                sub_old = old.get(name) if isinstance(old, dict) else None
                problems += _cel_problems(sub, value[name], sub_old, f"{path}.{name}")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):  # list items are not correlated with old ones
            problems += _cel_problems(node["items"], item, None, f"{path}[{i}]")
    elif isinstance(value, dict) and isinstance(node.get("additionalProperties"), dict):
        for key, item in value.items():
            sub_old = old.get(key) if isinstance(old, dict) else None
            problems += _cel_problems(node["additionalProperties"], item, sub_old, f"{path}[{key}]")
    return problems


def _prepare(obj: Any) -> Any:
    return apply_defaults(schema(), _prune_nulls(copy.deepcopy(obj)))


def admission_problems(obj: Any, old: Any = None) -> list[str]:
    """Why the kube-apiserver would refuse to store `obj` (as an update of `old` if given);
    empty when it would accept it. Stops at the first stage that refuses."""
    if _has_nan(obj):
        return ["NaN and infinity cannot be written in JSON"]
    json.dumps(obj)
    if not _ints_fit(obj):
        return ["integers must fit in 64 bits"]
    if not isinstance(obj, dict):
        return ["the object must be a JSON object"]
    problems = _metadata_problems(obj)
    if problems:
        return problems
    value = _prepare(obj)
    errors = sorted(_validator().iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
    old_value = _prepare(old) if old is not None else None
    return _cel_problems(schema(), value, old_value, "<root>")
