"""RBAC arithmetic for the chart tests: turn API requests into RBAC attributes and check them
against the rules the chart grants the operator. The real apiserver enforces the chart's RBAC in
the e2e tests; this module finds the grants no request used (least privilege) from the requests
of its audit log, and renders the chart for the tests that install its RBAC.

A request is a dict with either RBAC attributes `{verb, group|apiGroup, resource,
subresource?, namespace?}` or the raw HTTP call `{method, path, query?}` (query as a string or a
dict), which `normalize` converts the way the API server's RequestInfo resolver does.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "spin-operator"

#: Namespace subresources the API server recognises (`/api/v1/namespaces/NAME/status`).
_NAMESPACE_SUBRESOURCES = {"status", "finalize"}


@dataclass(frozen=True, order=True)
class Request:
    """One API request in RBAC terms. `subresource` is "" for the resource itself."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    namespace: str = ""

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def __str__(self) -> str:
        group = self.group or "core"
        where = f" in {self.namespace}" if self.namespace else " (cluster)"
        return f"{self.verb} {group}/{self.full_resource}{where}"


def find_helm() -> str | None:
    """helm on PATH, else the one `make tools` puts in <repo>/.tools."""
    found = shutil.which("helm")
    if found:
        return found
    local = REPO / ".tools" / "helm"
    return str(local) if local.is_file() else None


#: The registry the tests install from (the chart requires one: no spinrun image is published).
TEST_REGISTRY = "registry.example.com/ml"


def with_registry(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """`values` with images.registry set to TEST_REGISTRY unless they set one."""
    out = dict(values or {})
    out["images"] = {"registry": TEST_REGISTRY, **dict(out.get("images") or {})}
    return out


def render(
    values: Mapping[str, Any] | None = None, namespace: str = "spinrun-system", helm: str | None = None,
    release: str = "spin-operator",
) -> list[dict[str, Any]]:
    """`helm template` of the chart with these values (a dict written to a values file)."""
    import json
    import tempfile

    helm = helm or find_helm()
    if helm is None:
        raise FileNotFoundError("helm not found on PATH or in .tools/ (run `make tools`)")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump(with_registry(values), f)  # JSON is YAML
        values_file = f.name
    try:
        proc = subprocess.run(
            [helm, "template", release, str(CHART), "-n", namespace, "-f", values_file],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        Path(values_file).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def operator_rules(
    objects: Iterable[Mapping[str, Any]], service_account: str = "spin-operator"
) -> list[dict[str, Any]]:
    """The rules of every (Cluster)Role bound to the operator's ServiceAccount."""
    objects = list(objects)
    bound: set[tuple[str, str, str]] = set()  # (kind, namespace, name) of roles bound to the SA
    for obj in objects:
        if obj["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if any(s.get("kind") == "ServiceAccount" and s.get("name") == service_account for s in obj.get("subjects", [])):
            ref = obj["roleRef"]
            ns = obj["metadata"].get("namespace", "") if ref["kind"] == "Role" else ""
            bound.add((ref["kind"], ns, ref["name"]))
    rules: list[dict[str, Any]] = []
    for obj in objects:
        if obj["kind"] not in ("Role", "ClusterRole"):
            continue
        ns = obj["metadata"].get("namespace", "") if obj["kind"] == "Role" else ""
        if (obj["kind"], ns, obj["metadata"]["name"]) in bound:
            for rule in obj.get("rules", []):
                rules.append({**rule, "_namespace": ns})  # "" = cluster-wide
    return rules


def chart_operator_rules(values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The operator's rules as the chart renders them (cluster-wide mode by default)."""
    return operator_rules(render(values))


def normalize(raw: Mapping[str, Any]) -> Request | None:
    """A recorded request as RBAC attributes; None for non-resource URLs (discovery, /version)."""
    if "verb" in raw:
        resource = str(raw["resource"])
        if resource.startswith("/"):
            return None  # a non-resource URL (discovery), recorded by its path
        sub = str(raw.get("subresource") or "")
        if "/" in resource and not sub:
            resource, sub = resource.split("/", 1)
        group = str(raw.get("group", raw.get("apiGroup")) or "")
        return Request(str(raw["verb"]).lower(), group, resource, sub, str(raw.get("namespace") or ""))

    method = str(raw["method"]).upper()
    url = urlsplit(str(raw["path"]))
    query = raw.get("query", url.query)
    params = (
        parse_qs(query)
        if isinstance(query, str)
        else {k: v if isinstance(v, list) else [v] for k, v in (query or {}).items()}
    )
    parts = [p for p in url.path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None  # /api/v1, /apis/group/version: discovery
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    if resource == "namespaces" and name and not sub:
        namespace = ""  # GET /api/v1/namespaces/NAME is cluster-scoped
    watching = any(v.lower() in ("true", "1") for v in params.get("watch", []))
    if method in ("GET", "HEAD"):
        verb = "watch" if watching else ("get" if name else "list")
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        verb = "patch"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        raise ValueError(f"unknown HTTP method {method} in recorded request {dict(raw)}")
    return Request(verb, group, resource, sub, namespace)


def _matches(rule: Mapping[str, Any], req: Request) -> bool:
    groups, resources, verbs = rule.get("apiGroups", []), rule.get("resources", []), rule.get("verbs", [])
    if rule.get("_namespace") and rule["_namespace"] != req.namespace:
        return False  # a Role only covers its own namespace
    return (
        ("*" in groups or req.group in groups)
        and ("*" in resources or req.full_resource in resources)
        and ("*" in verbs or req.verb in verbs)
    )


def allowed(req: Request, rules: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any rule allows the request (resourceNames are not used by the chart)."""
    return any(_matches(r, req) for r in rules)


def rule_grants(rules: Iterable[Mapping[str, Any]]) -> set[tuple[str, str, str]]:
    """Every (group, resource[/sub], verb) the rules grant."""
    out = set()
    for r in rules:
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                for v in r.get("verbs", []):
                    out.add((g, res, v))
    return out


#: Grants the operator needs although its e2e runs do not exercise them; each with the reason.
_ADMISSION_ONLY = "checked by an admission plugin (blockOwnerDeletion), not an API call"
KNOWN_UNEXERCISED = {
    ("spin.dev", "spinruns/finalizers", "update"): _ADMISSION_ONLY,
    ("", "services", "delete"): "the headless Service of a multi-node training attempt that failed (a retry)",
}


def check_requests(
    recorded: Iterable[Mapping[str, Any]], rules: list[dict[str, Any]]
) -> tuple[list[Request], list[tuple[str, str, str]]]:
    """(requests the rules do not allow, grants no request used), both sorted."""
    reqs = {r for r in (normalize(x) for x in recorded) if r is not None}
    missing = sorted(r for r in reqs if not allowed(r, rules))
    used = {(r.group, r.full_resource, r.verb) for r in reqs}
    unused = sorted(g for g in rule_grants(rules) if g not in used)
    return missing, unused
