"""Kubernetes container resources as the kube-apiserver judges them: quantities (parsed exactly,
compared), which names a container may request, which resources cannot be overcommitted (their
request must equal their limit) and which must be whole numbers. Each rule is stated twice, once
in Python (`spin validate`) and once in CEL (the CRD), side by side; tests hold both to the
apiserver's own answers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

#: The GPU resource the operator adds from gpusPerNode / tensorParallelSize.
GPU_RESOURCE = "nvidia.com/gpu"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NAME_PART = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
#: A qualified name (label keys, taint keys, extended resources): `[dns-subdomain/]name`.
QUALIFIED_NAME_PATTERN = rf"^({_DNS_LABEL}(\.{_DNS_LABEL})*/)?{_NAME_PART}$"
#: A container resource: a standard one, or a fully qualified (domain/name) one.
RESOURCE_NAME_PATTERN = (
    rf"^(cpu|memory|ephemeral-storage|hugepages-[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?|"
    rf"{_DNS_LABEL}(\.{_DNS_LABEL})*/{_NAME_PART})$"
)
#: Native resources: no domain, or a kubernetes.io one; every other domain/name is extended.
_NATIVE_DOMAIN = r"^([^/]*\.)?kubernetes\.io/"

_SUFFIXES = {
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"), "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$")


def parse_quantity(text: str | int) -> Decimal:
    """The exact value of a Kubernetes quantity (`500m`, `64Gi`, `1e3`, `8`); ValueError if it is none."""
    m = _QUANTITY.match(str(text))
    if m is None:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number, suffix = m.group(1), m.group(2) or ""
    try:
        value = Decimal(number)
        if suffix[:1] in ("e", "E"):
            return value * (Decimal(10) ** int(suffix[1:]))
        return value * _SUFFIXES[suffix]
    except (InvalidOperation, KeyError, ValueError) as e:
        raise ValueError(f"not a Kubernetes quantity: {text!r}") from e


def is_extended(name: str) -> bool:
    """Whether `name` is an extended resource (a domain outside kubernetes.io): whole numbers only."""
    return "/" in name and re.match(_NATIVE_DOMAIN, name) is None


def may_overcommit(name: str) -> bool:
    """Whether a request may be below its limit: not for extended resources or huge pages."""
    return not is_extended(name) and not name.startswith("hugepages-")


def resource_problems(requests: Mapping[str, str], limits: Mapping[str, str]) -> list[str]:
    """Why the apiserver would refuse a container with these requests and limits (before the
    operator adds its GPU limit, which `gpu_request_problem` checks)."""
    problems = []
    for kind, values in (("requests", requests), ("limits", limits)):
        for name, text in values.items():
            if not re.match(RESOURCE_NAME_PATTERN, name):
                problems.append(
                    f"{kind}: {name!r} is not a container resource: use cpu, memory, ephemeral-storage, hugepages-<size> "
                    "or a fully qualified name such as nvidia.com/gpu"
                )
                continue
            value = parse_quantity(text)
            if value < 0:
                problems.append(f"{kind}[{name}]: must not be negative (got {text})")
            elif is_extended(name) and value != value.to_integral_value():
                problems.append(f"{kind}[{name}]: must be a whole number: {name} cannot be shared (got {text})")
    for name, text in requests.items():
        if not re.match(RESOURCE_NAME_PATTERN, name):
            continue
        if name not in limits:
            if not may_overcommit(name) and name != GPU_RESOURCE:  # the operator adds the GPU limit
                problems.append(f"limits[{name}]: must be set, equal to its request: {name} cannot be overcommitted")
            continue
        req, lim = parse_quantity(text), parse_quantity(limits[name])
        if may_overcommit(name) and req > lim:
            problems.append(f"requests[{name}]: must not exceed its limit ({text} > {limits[name]})")
        elif not may_overcommit(name) and req != lim:
            problems.append(f"requests[{name}]: must equal its limit ({text} != {limits[name]}): {name} cannot be overcommitted")
    return problems


def gpu_request_problem(requests: Mapping[str, str], limits: Mapping[str, str], gpus: int, gpus_field: str) -> str | None:
    """A GPU request without a GPU limit meets the limit the operator adds (`gpus`, from
    `gpus_field`): it must equal it, and there must be one (gpus > 0)."""
    if GPU_RESOURCE not in requests or GPU_RESOURCE in limits:
        return None
    if gpus <= 0:
        return (f"resources.requests[{GPU_RESOURCE}] needs GPUs this step does not use ({gpus_field} gives none): "
                f"remove the request, or set {gpus_field} (or resources.limits[{GPU_RESOURCE}])")
    if parse_quantity(requests[GPU_RESOURCE]) != gpus:
        return (f"resources.requests[{GPU_RESOURCE}] must equal the {gpus} GPU(s) of {gpus_field} (or be left out: "
                "the operator requests them)")
    return None


# --------------------------------------------------------------------------- the same in CEL

_CEL_EXTENDED = f"(k.contains('/') && !k.matches(r'{_NATIVE_DOMAIN}'))"
_CEL_NO_OVERCOMMIT = f"({_CEL_EXTENDED} || k.startsWith('hugepages-'))"


def _q(expr: str) -> str:
    return f"quantity(string({expr}))"


#: Rules that hold for each of the two maps (MAP: requests, then limits).
_PER_MAP_CEL_RULES: list[tuple[str, str]] = [
    (f"!has(self.MAP) || self.MAP.all(k, k.matches(r'{RESOURCE_NAME_PATTERN}'))",
     "MAP: every name must be a container resource: cpu, memory, ephemeral-storage, hugepages-<size> or "
     "a fully qualified name such as nvidia.com/gpu"),
    (f"!has(self.MAP) || self.MAP.all(k, !{_q('self.MAP[k]')}.isLessThan(quantity('0')))",
     "MAP: must not be negative"),
    (f"!has(self.MAP) || self.MAP.all(k, !{_CEL_EXTENDED} || {_q('self.MAP[k]')}.isInteger())",
     "MAP: an extended resource (such as nvidia.com/gpu) must be a whole number"),
]

#: CEL rules of a Resources object: the Python rules of `resource_problems`, for the CRD.
RESOURCE_CEL_RULES: list[tuple[str, str]] = [
    *((rule.replace("MAP", m), message.replace("MAP", m)) for rule, message in _PER_MAP_CEL_RULES for m in ("requests", "limits")),
    (f"!has(self.requests) || self.requests.all(k, !{_CEL_NO_OVERCOMMIT} || k == '{GPU_RESOURCE}' || "
     "(has(self.limits) && k in self.limits))",
     "limits: a resource that cannot be overcommitted (extended, hugepages) must have a limit equal to its request"),
    (f"!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) || "
     f"({_CEL_NO_OVERCOMMIT} ? {_q('self.requests[k]')}.compareTo({_q('self.limits[k]')}) == 0 "
     f": {_q('self.requests[k]')}.compareTo({_q('self.limits[k]')}) <= 0))",
     "requests: must not exceed their limits (and must equal them for extended resources and hugepages)"),
]


def gpu_request_cel(gpus_expr: str, gpus_field: str) -> tuple[str, str]:
    """The CEL rule of `gpu_request_problem` on an object with `resources` and a GPU count."""
    request = _q(f"self.resources.requests['{GPU_RESOURCE}']")
    return (
        f"!has(self.resources) || !has(self.resources.requests) || !('{GPU_RESOURCE}' in self.resources.requests) || "
        f"(has(self.resources.limits) && '{GPU_RESOURCE}' in self.resources.limits) || "
        f"(({gpus_expr}) > 0 && {request}.isInteger() && {request}.asInteger() == ({gpus_expr}))",
        f"resources.requests[{GPU_RESOURCE}] must equal the GPUs of {gpus_field} (or be left out: the operator "
        "requests them)",
    )
