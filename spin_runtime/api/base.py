"""The pydantic base of every SpinRun model (camelCase aliases, unknown fields refused, the
model's cross-field rules run and written into its schema) and the limits that both the spec
and the status use."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from spin_runtime.api import rules as _rules
from spin_runtime.api.rules import AnyRule

#: Most iterations a run may have (bounds lists in spec and status, and CEL cost).
MAX_ITERATIONS = 64


class SpinModel(BaseModel):
    """Base for every spec model: camelCase aliases, unknown fields refused, `rules` checked."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        allow_inf_nan=False,
    )

    #: The model's cross-field rules (rules.py): checked after its fields, and its CRD CEL rules.
    rules: ClassVar[tuple[AnyRule, ...]] = ()

    @model_validator(mode="after")
    def _rules_hold(self) -> Any:
        _rules.check(self, type(self).rules)
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        if cls.rules:
            _rules.add_to_schema(handler.resolve_ref_schema(schema), cls.rules)
        return schema

    def dump(self) -> dict[str, Any]:
        """The object as YAML/CRD data (camelCase, unset optionals omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
