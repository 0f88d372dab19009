"""The one module of the tests that reads kopf's private parts (kopf 1.45: pyproject's dev extra
pins kopf>=1.45,<1.46, and importing this module checks it): the handlers a registry holds by
kind of cause, which kopf keeps in `OperatorRegistry._changing` and `._spawning` and does not
expose. The operator itself uses kopf's public API only. A new kopf: re-check these names against
kopf/_core/intents/registries.py, then move the pin."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import kopf
from packaging.specifiers import SpecifierSet

#: The kopf versions this adapter was checked against (pyproject.toml's dev extra says the same).
KOPF_VERSIONS = SpecifierSet(">=1.45,<1.46")
if version("kopf") not in KOPF_VERSIONS:
    raise ImportError(
        f"kopf {version('kopf')} is installed; tests/operator/kopf_internals.py reads kopf {KOPF_VERSIONS}'s "
        "private OperatorRegistry._changing/_spawning: install a kopf the pin allows, or port this module "
        "to the new kopf and move the pin in pyproject.toml"
    )


def changing_handlers(registry: kopf.OperatorRegistry) -> list[Any]:
    """The handlers of object changes (create, resume, update, delete, event-driven)."""
    return list(registry._changing.get_all_handlers())


def spawning_handlers(registry: kopf.OperatorRegistry) -> list[Any]:
    """The timers and daemons (each would put kopf's finalizer on its objects)."""
    return list(registry._spawning.get_all_handlers())
