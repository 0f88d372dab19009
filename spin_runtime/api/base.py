"""The pydantic base of every SpinRun model (camelCase aliases, unknown fields refused) and the
limits that both the spec and the status use."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

#: Most iterations a run may have (bounds lists in spec and status, and CEL cost).
MAX_ITERATIONS = 64


class SpinModel(BaseModel):
    """Base for every spec model: camelCase aliases, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        allow_inf_nan=False,
    )

    def dump(self) -> dict[str, Any]:
        """The object as YAML/CRD data (camelCase, unset optionals omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
