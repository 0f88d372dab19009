"""The SpinRun CustomResourceDefinition, generated from the pydantic models in `spec.py`.

`openapi_schema()` turns pydantic's JSON schema into a *structural* OpenAPI v3 schema that a
kube-apiserver accepts: references inlined, Optional as its non-null branch, Literal as an
enum, bounds in OpenAPI 3.0 form, CEL rules (`x-kubernetes-validations`) carried over.
`spin crd` prints `crd_yaml()`; the chart's copy is that output, verbatim.
"""

from __future__ import annotations

from typing import Any

import yaml

from spin_runtime.api.recipes import RECIPE_PATHS
from spin_runtime.api.spec import GROUP, KIND, MAX_RUN_NAME_LENGTH, PLURAL, RUN_NAME_PATTERN, VERSION, SpinRun
from spin_runtime.errors import SpinError

CRD_NAME = f"{PLURAL}.{GROUP}"
SHORT_NAMES = ["spin"]
CATEGORIES = ["spinrun", "ml"]

XVAL = "x-kubernetes-validations"

#: Rules on the whole object: the only place where CEL may read metadata.name.
ROOT_RULES: list[dict[str, str]] = [
    {
        "rule": f"size(self.metadata.name) <= {MAX_RUN_NAME_LENGTH}",
        "message": f"metadata.name must be at most {MAX_RUN_NAME_LENGTH} characters so child object names fit 63",
    },
    {
        "rule": f"self.metadata.name.matches('{RUN_NAME_PATTERN}')",
        "message": "metadata.name must be a DNS label that starts with a letter "
        "(a-z, 0-9 and '-'), because the training Service is named after the run",
    },
]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Phase of the run."},
    {"name": "Iteration", "type": "integer", "jsonPath": ".status.currentIteration", "description": "Iteration in progress."},
    {"name": "Max", "type": "integer", "jsonPath": ".spec.iterations", "description": "Number of SPIN iterations."},
    {"name": "Checkpoint", "type": "string", "jsonPath": ".status.lastCheckpoint.path", "description": "Newest trained checkpoint."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Step", "type": "string", "jsonPath": ".status.progress.step", "priority": 1, "description": "The running step."},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary", "priority": 1,
     "description": "Live progress of the running step: shards, step of total, loss, reward margin."},
    {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta", "priority": 1, "description": "Time left in the running step."},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1, "description": "Reason of the phase."},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1, "description": "Explanation of the phase."},
]

# Output key order of a schema node (kubectl explain and diffs read better in a fixed order).
_ORDER = (
    "description",
    "type",
    "anyOf",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "maxProperties",
    "items",
    "properties",
    "additionalProperties",
    "required",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    XVAL,
)
_DROPPED = {"title", "$defs"}
_SCALARS = (str, int, float, bool)


class CRDSchemaError(SpinError):
    """The pydantic schema holds something the CRD generator cannot express structurally."""


def _resolve(node: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    """Inline `$ref` and collapse `anyOf [X, null]` into X; the outer keys (field
    description, default, CEL rules) win over the referenced model's, rules add up."""
    while True:
        if "$ref" in node:
            ref = node["$ref"]
            target = defs[ref.rsplit("/", 1)[-1]]
            outer = {k: v for k, v in node.items() if k != "$ref"}
        elif "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
            branches = [b for b in node["anyOf"] if b != {"type": "null"}]
            if len(branches) != 1:
                raise CRDSchemaError(f"{where}: a union of several types has no structural schema; use one type")
            target = branches[0]
            outer = {k: v for k, v in node.items() if k != "anyOf"}
        else:
            return node
        merged = {**target, **outer}
        rules = list(target.get(XVAL, [])) + list(outer.get(XVAL, []))
        if rules:
            merged[XVAL] = rules
        node = merged


def _rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A CEL rule with `rule` first, then `message`, then anything else."""
    head = {k: rule[k] for k in ("rule", "message") if k in rule}
    return {**head, **{k: v for k, v in rule.items() if k not in head}}


def _convert(node: dict[str, Any], defs: dict[str, Any], where: str, *, defaults: bool) -> dict[str, Any]:
    """One schema node in structural form (recursively)."""
    node = _resolve(node, defs, where)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "default":
            if defaults and value is not None and isinstance(value, _SCALARS) and where not in RECIPE_PATHS:
                out["default"] = value
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if node.get("type") == "integer":
                out[bound] = value + 1 if bound == "minimum" else value - 1
            else:
                out[bound] = value
                out[key] = True
        elif key == "properties":
            out["properties"] = {
                name: _convert(sub, defs, f"{where}.{name}", defaults=defaults) for name, sub in value.items()
            }
        elif key == "items":
            out["items"] = _convert(value, defs, f"{where}[]", defaults=defaults)
        elif key == "additionalProperties":
            if isinstance(value, dict):  # a map; `false` (extra=forbid) is pruning's job in Kubernetes
                out["additionalProperties"] = _convert(value, defs, f"{where}{{}}", defaults=defaults)
        elif key == XVAL:
            out[XVAL] = [_rule(r) for r in value]
        elif key in _ORDER:
            out[key] = value
        else:
            raise CRDSchemaError(f"{where}: schema keyword {key!r} has no place in a structural CRD schema")
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        raise CRDSchemaError(f"{where}: every schema node needs a type")
    return {k: out[k] for k in _ORDER if k in out}


def openapi_schema() -> dict[str, Any]:
    """The structural openAPIV3Schema of a SpinRun object."""
    raw = SpinRun.model_json_schema(by_alias=True)
    defs = raw.get("$defs", {})
    props = raw["properties"]
    spec = _convert(props["spec"], defs, "spec", defaults=True)
    # Status belongs to the operator: no defaults (they would invent progress), and kopf
    # keeps its own bookkeeping keys there, so unknown fields are preserved.
    status = _convert(props["status"], defs, "status", defaults=False)
    status["x-kubernetes-preserve-unknown-fields"] = True
    status = {k: status[k] for k in _ORDER if k in status}
    return {
        "description": raw.get("description", ""),
        "type": "object",
        "properties": {
            "apiVersion": {"description": f"API version of the object: {GROUP}/{VERSION}.", "type": "string"},
            "kind": {"description": f"Kind of the object: {KIND}.", "type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        XVAL: [dict(r) for r in ROOT_RULES],
    }


def crd_dict() -> dict[str, Any]:
    """The CustomResourceDefinition `spinruns.spin.dev` as a plain dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


HEADER = (
    "# Generated by `spin crd` from spin_runtime/spec.py (spin_runtime/crd.py): do not edit.\n"
    "# Regenerate with `make crd`; tests/test_crd.py fails when this file drifts.\n"
)


class _Dumper(yaml.SafeDumper):
    """Writes repeated sub-objects in full instead of as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def crd_yaml() -> str:
    """The CRD as YAML, with a header saying where it comes from."""
    body = yaml.dump(crd_dict(), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body
