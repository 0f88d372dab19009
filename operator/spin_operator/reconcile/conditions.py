"""Reading and writing the typed SpinRun status: conditions (set with Kubernetes' transition
rules), terminal state, and the status document written to the API server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ValidationError

from spin_runtime.api.status import Condition, ConditionType, Reason, SpinRunStatus


def _max_length(field: str) -> int:
    return next(m.max_length for m in Condition.model_fields[field].metadata if hasattr(m, "max_length"))


#: Longest condition reason and message the status schema accepts.
MAX_REASON = _max_length("reason")
MAX_MESSAGE = _max_length("message")


def read_status(doc: Mapping[str, Any] | SpinRunStatus | None) -> SpinRunStatus:
    """The typed status of a status document (unknown keys such as kopf's are dropped). A status
    edited into something invalid keeps its valid top-level fields."""
    if isinstance(doc, SpinRunStatus):
        return doc.model_copy(deep=True)
    data = dict(doc or {})
    try:
        return SpinRunStatus.model_validate(data)
    except ValidationError:
        kept = {}
        for key, value in data.items():
            try:
                SpinRunStatus.model_validate({key: value})
            except ValidationError:
                continue
            kept[key] = value
        return SpinRunStatus.model_validate(kept)


def status_document(status: SpinRunStatus) -> dict[str, Any]:
    """The status as the API server stores it: camelCase, only the fields that were set, no nulls
    (a null in a merge patch deletes the key, so the stored status never holds one)."""
    return _without_nulls(status.model_dump(by_alias=True, exclude_unset=True, mode="json"))


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any], keep: frozenset[str] = frozenset({"kopf"})) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns the stored status `old` into `new`: only what
    differs, nested objects patched key by key, a key `new` lacks deleted (null), except the
    top-level `keep` (kopf's own bookkeeping). Empty when nothing differs."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if before == value:
            continue
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            patch[key] = status_patch(before, value, frozenset())
        else:
            patch[key] = value
    for key in old:
        if key not in new and key not in keep:
            patch[key] = None
    return patch


def condition(status: SpinRunStatus, ctype: ConditionType) -> Condition | None:
    """The condition of that type, if any."""
    return next((c for c in status.conditions if c.type == ctype), None)


def is_true(status: SpinRunStatus, ctype: ConditionType) -> bool:
    c = condition(status, ctype)
    return bool(c and c.status == "True")


#: The Failed reason that is not final: fixing the spec resumes the run.
RECOVERABLE_FAILURE = Reason.VALIDATION_FAILED


def is_terminal(status: SpinRunStatus | Mapping[str, Any]) -> bool:
    """Complete or Failed (sticky: the run never creates children again), except a failure
    for an invalid spec, which ends when the spec is fixed."""
    typed = status if isinstance(status, SpinRunStatus) else read_status(status)
    failed = condition(typed, ConditionType.FAILED)
    return is_true(typed, ConditionType.COMPLETE) or (
        failed is not None and failed.status == "True" and failed.reason != RECOVERABLE_FAILURE
    )


def set_condition(
    status: SpinRunStatus, ctype: ConditionType, value: bool, reason: Reason, message: str, now: str, generation: int
) -> bool:
    """Set a condition; lastTransitionTime moves only when the status flips. True if it flipped."""
    sval: Literal["True", "False"] = "True" if value else "False"
    reason_text, message = str(reason)[:MAX_REASON], message[:MAX_MESSAGE]
    c = condition(status, ctype)
    if c is None:
        status.conditions.append(
            Condition(
                type=ctype,
                status=sval,
                reason=reason_text,
                message=message,
                last_transition_time=now,
                observed_generation=generation,
            )
        )
        return True
    flipped = c.status != sval
    if flipped:
        c.last_transition_time = now
    c.status, c.reason, c.message, c.observed_generation = sval, reason_text, message, generation
    return flipped
