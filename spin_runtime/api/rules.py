"""Cross-field rules of the spec, each declared once: its CEL expression (the CRD's
`x-kubernetes-validations`), the same judgment in Python (`spin validate` and the operator), the one
"must ..." sentence both say, and the examples it accepts and refuses, on which
tests/test_rules_agree.py holds the two sides to the same verdicts. A model lists its rules in
`rules` (base.py runs them and writes them into the schema); nothing here knows the models."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic.alias_generators import to_snake
from pydantic_core import InitErrorDetails, PydanticCustomError

#: A spec object as YAML writes it (camelCase), the form examples are given in.
Example = dict[str, Any]

XVAL = "x-kubernetes-validations"


@dataclass(frozen=True)
class Rule:
    """A rule over one object of the spec, said once for the CRD and for `spin validate`.

    `cel` judges the object as the kube-apiserver holds it (camelCase, CRD defaults applied; a
    field the CRD gives no default may be absent, so read it through `has()`); `holds` judges the
    validated pydantic model. `field` names the field `spin validate` reports a refusal at (the
    CRD's message then starts with it); None reports it at the object. `detail` says what in this
    object breaks the rule, after the message (Python only: the CRD's message is fixed).
    """

    message: str
    cel: str | None
    holds: Callable[[Any], bool]
    accepts: tuple[Example, ...]
    refuses: tuple[Example, ...]
    field: str | None = None
    detail: Callable[[Any], str] | None = None
    #: Why the rule has no CEL side (required when `cel` is None).
    python_only: str = ""

    @property
    def crd_message(self) -> str:
        """The message of the CRD's rule: the field named first where `spin validate` names it as the path."""
        return f"{self.field} {self.message}" if self.field else self.message

    def problem(self, model: Any) -> str | None:
        """What `spin validate` says of `model` (at `field`), or None when the rule holds."""
        if self.holds(model):
            return None
        return f"{self.message} ({self.detail(model)})" if self.detail else self.message


@dataclass(frozen=True)
class UpdateRule:
    """A rule on a change (CEL reading `oldSelf`): only the apiserver judges it, as only it holds
    the stored object. `on` names the field whose schema carries it (CEL's `self` is then that
    field); None: the object. Examples are (old, new) pairs of the object the rule is declared on."""

    message: str
    cel: str
    accepts: tuple[tuple[Example, Example], ...]
    refuses: tuple[tuple[Example, Example], ...]
    on: str | None = None


AnyRule = Rule | UpdateRule


def cel(*parts: str) -> str:
    """One CEL expression from parts written on several source lines (the CRD holds it on one)."""
    return "".join(parts)


def exactly_one(*fields: str, accepts: tuple[Example, ...], refuses: tuple[Example, ...]) -> Rule:
    """The rule "exactly one of these (camelCase) fields is set"."""
    names = [to_snake(f) for f in fields]
    if len(fields) == 2:
        expr = f"has(self.{fields[0]}) != has(self.{fields[1]})"
    else:
        expr = "[" + ", ".join(f"has(self.{f})" for f in fields) + "].filter(x, x).size() == 1"

    def given(m: Any) -> list[str]:
        return [f for f, n in zip(fields, names, strict=True) if getattr(m, n) is not None]

    return Rule(
        message=f"must set exactly one of {', '.join(fields[:-1])} or {fields[-1]}",
        cel=expr,
        holds=lambda m: len(given(m)) == 1,
        detail=lambda m: f"got {', '.join(given(m)) or 'none'}",
        accepts=accepts,
        refuses=refuses,
    )


def check(model: Any, rules: Sequence[AnyRule]) -> None:
    """Raise one pydantic error per rule `model` breaks (at the rule's field, or at the object)."""
    errors = []
    for rule in rules:
        if isinstance(rule, Rule) and (text := rule.problem(model)) is not None:
            errors.append(
                InitErrorDetails(
                    type=PydanticCustomError("value_error", "{error}", {"error": text}),
                    loc=(rule.field,) if rule.field else (),
                    input=getattr(model, to_snake(rule.field)) if rule.field else model,
                )
            )
    if errors:
        raise ValidationError.from_exception_data(type(model).__name__, errors)


def add_to_schema(schema: dict[str, Any], rules: Sequence[AnyRule]) -> None:
    """Write the CEL side of `rules` into a model's JSON schema (crd.py carries it into the CRD)."""
    for rule in rules:
        if isinstance(rule, UpdateRule):
            node = schema["properties"][rule.on] if rule.on else schema
            node.setdefault(XVAL, []).append({"rule": rule.cel, "message": rule.message})
        elif rule.cel is not None:
            schema.setdefault(XVAL, []).append({"rule": rule.cel, "message": rule.crd_message})
