"""Kubernetes container resources as the kube-apiserver judges them: quantities (parsed exactly,
compared), which names a container may request, which resources cannot be overcommitted (their
request must equal their limit) and which must be whole numbers. Each rule is declared once
(rules.py: its CEL for the CRD, its Python check for `spin validate`); tests hold both to each
other and to the apiserver's own answers."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from spin_runtime.api.rules import Rule, cel

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


def _quantities(values: Mapping[str, str]) -> dict[str, Decimal]:
    return {name: parse_quantity(text) for name, text in values.items()}


# --------------------------------------------------------------------------- the rules

_CEL_EXTENDED = f"(k.contains('/') && !k.matches(r'{_NATIVE_DOMAIN}'))"
_CEL_NO_OVERCOMMIT = f"({_CEL_EXTENDED} || k.startsWith('hugepages-'))"


def _q(expr: str) -> str:
    return f"quantity(string({expr}))"


def _per_map_rules(kind: str) -> tuple[Rule, ...]:
    """The rules each of the two maps keeps (kind: requests or limits)."""

    def values(m: Any) -> Mapping[str, str]:
        return getattr(m, kind)

    def names(m: Any) -> list[str]:
        return [n for n in values(m) if not re.fullmatch(RESOURCE_NAME_PATTERN, n)]

    def negative(m: Any) -> list[str]:
        return [f"{n} {t}" for n, t in values(m).items() if parse_quantity(t) < 0]

    def fractional(m: Any) -> list[str]:
        return [f"{n} {t}" for n, t in values(m).items()
                if is_extended(n) and parse_quantity(t) != parse_quantity(t).to_integral_value()]

    return (
        Rule(
            message=f"{kind}: every name must be a container resource: cpu, memory, ephemeral-storage, "
            "hugepages-<size> or a fully qualified name such as nvidia.com/gpu",
            cel=f"!has(self.{kind}) || self.{kind}.all(k, k.matches(r'{RESOURCE_NAME_PATTERN}'))",
            holds=lambda m: not names(m),
            detail=lambda m: "got " + ", ".join(repr(n) for n in names(m)),
            accepts=({kind: {"cpu": "1", "hugepages-2Mi": "64Mi", "example.com/fpga": "1"}},),
            refuses=({kind: {"gpus": "1"}}, {kind: {"gpu memory": "1"}}),
        ),
        Rule(
            message=f"{kind}: must not be negative",
            cel=f"!has(self.{kind}) || self.{kind}.all(k, !{_q(f'self.{kind}[k]')}.isLessThan(quantity('0')))",
            holds=lambda m: not negative(m),
            detail=lambda m: "got " + ", ".join(negative(m)),
            accepts=({kind: {"cpu": "0", "memory": "1Gi"}},),
            refuses=({kind: {"cpu": "-1"}}, {kind: {"memory": "-1Mi"}}),
        ),
        Rule(
            message=f"{kind}: an extended resource (such as nvidia.com/gpu) must be a whole number",
            cel=f"!has(self.{kind}) || self.{kind}.all(k, !{_CEL_EXTENDED} || {_q(f'self.{kind}[k]')}.isInteger())",
            holds=lambda m: not fractional(m),
            detail=lambda m: "got " + ", ".join(fractional(m)) + ": it cannot be shared",
            accepts=({kind: {"example.com/fpga": "2", "cpu": "500m", "kubernetes.io/x": "500m"}},),
            refuses=({kind: {"example.com/fpga": "500m"}},),
        ),
    )


def _missing_limits(m: Any) -> list[str]:
    """Requests that cannot be overcommitted but have no limit (the operator adds the GPU limit)."""
    return [n for n in m.requests if not may_overcommit(n) and n != GPU_RESOURCE and n not in m.limits]


def _over_limits(m: Any) -> list[str]:
    requests, limits = _quantities(m.requests), _quantities(m.limits)
    return [f"{n} {m.requests[n]} against {m.limits[n]}" for n, q in requests.items() if n in limits
            and (q > limits[n] if may_overcommit(n) else q != limits[n])]


#: The rules of a Resources object: a container's requests and limits as the apiserver judges
#: them, before the operator adds its GPU limit (which `gpu_request_rule` checks).
RESOURCE_RULES: tuple[Rule, ...] = (
    *(rule for pair in zip(_per_map_rules("requests"), _per_map_rules("limits"), strict=True) for rule in pair),
    Rule(
        message="limits: a resource that cannot be overcommitted (extended, hugepages) must have a limit equal "
        "to its request",
        cel=cel(
            f"!has(self.requests) || self.requests.all(k, !{_CEL_NO_OVERCOMMIT} || k == '{GPU_RESOURCE}' || ",
            "(has(self.limits) && k in self.limits))",
        ),
        holds=lambda m: not _missing_limits(m),
        detail=lambda m: "set limits for " + ", ".join(_missing_limits(m)),
        accepts=({"requests": {"example.com/fpga": "1", "cpu": "1", GPU_RESOURCE: "1"},
                  "limits": {"example.com/fpga": "1"}},),
        refuses=({"requests": {"example.com/fpga": "1"}}, {"requests": {"hugepages-2Mi": "64Mi"}}),
    ),
    Rule(
        message="requests: must not exceed their limits (and must equal them for extended resources and hugepages)",
        cel=cel(
            "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) || ",
            f"({_CEL_NO_OVERCOMMIT} ? {_q('self.requests[k]')}.compareTo({_q('self.limits[k]')}) == 0 ",
            f": {_q('self.requests[k]')}.compareTo({_q('self.limits[k]')}) <= 0))",
        ),
        holds=lambda m: not _over_limits(m),
        detail=lambda m: "got " + ", ".join(_over_limits(m)),
        accepts=({"requests": {"memory": "4Gi", "cpu": "1"}, "limits": {"memory": "4096Mi", "cpu": "2"}},
                 {"requests": {"example.com/fpga": "1"}, "limits": {"example.com/fpga": "1"}}),
        refuses=({"requests": {"memory": "8Gi"}, "limits": {"memory": "4Gi"}},
                 {"requests": {"example.com/fpga": "1"}, "limits": {"example.com/fpga": "2"}}),
    ),
)


def gpu_request_rule(
    gpus_cel: str,
    gpus: Callable[[Any], int],
    gpus_field: str,
    *,
    accepts: tuple[dict[str, Any], ...],
    refuses: tuple[dict[str, Any], ...],
) -> Rule:
    """The rule of an object with `resources` and a GPU count (`gpus_cel` in CEL, `gpus` in Python,
    read from `gpus_field`): a GPU request without a GPU limit meets the limit the operator adds,
    so it must equal that count, and there must be one."""
    request = _q(f"self.resources.requests['{GPU_RESOURCE}']")

    def unmatched(m: Any) -> bool:
        requests, limits = m.resources.requests, m.resources.limits
        if GPU_RESOURCE not in requests or GPU_RESOURCE in limits:
            return False
        return gpus(m) <= 0 or parse_quantity(requests[GPU_RESOURCE]) != gpus(m)

    def detail(m: Any) -> str:
        if gpus(m) <= 0:
            return (f"{gpus_field} gives none: remove the request, or set {gpus_field} "
                    f"(or resources.limits[{GPU_RESOURCE}])")
        return f"got {m.resources.requests[GPU_RESOURCE]}, {gpus_field} gives {gpus(m)}"

    return Rule(
        message=f"resources.requests[{GPU_RESOURCE}] must equal the GPUs of {gpus_field} (or be left out: the "
        "operator requests them)",
        cel=cel(
            "!has(self.resources) || !has(self.resources.requests) || ",
            f"!('{GPU_RESOURCE}' in self.resources.requests) || ",
            f"(has(self.resources.limits) && '{GPU_RESOURCE}' in self.resources.limits) || ",
            f"(({gpus_cel}) > 0 && {request}.isInteger() && {request}.asInteger() == ({gpus_cel}))",
        ),
        holds=lambda m: not unmatched(m),
        detail=detail,
        accepts=accepts,
        refuses=refuses,
    )
