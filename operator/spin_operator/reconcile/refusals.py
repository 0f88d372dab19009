"""What an action the API server refused does to the run. A refusal no retry can change (the
object is invalid, or an admission policy or RBAC forbids it) fails the run once, with the API's
own message; a passing one (quota, throttling, a conflict, the server) leaves the step waiting,
said once in Progressing, and the action is tried again. Pure: the driver executes, this decides."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spin_operator.builders.meta import ANNOTATION_ATTEMPT, LABEL_MANAGED_BY, MANAGED_BY, controller_uid
from spin_operator.reconcile.actions import Action, Create
from spin_operator.reconcile.conditions import MAX_MESSAGE, condition, read_status, set_condition
from spin_operator.reconcile.decide import Decision
from spin_runtime.api.status import ConditionType, Reason

#: Events that announce what a failed action would have done (posted once it succeeds).
ANNOUNCING = frozenset({Reason.STEP_STARTED, Reason.CLAIM_CREATED})
REFUSED = Reason.CREATE_REFUSED
RETRYING = Reason.CREATE_RETRYING
#: The reason of any other request (suspend, resume, delete) that waits to be tried again.
REQUEST_RETRYING = Reason.REQUEST_RETRYING
#: The reason of a create that meets another object of its name (another attempt's or run's).
IN_THE_WAY = Reason.WAITING_FOR_OLD_OBJECTS


@dataclass(frozen=True)
class Refusal:
    """The API server's answer to one action: HTTP code, reason and message."""

    code: int
    reason: str
    message: str

    @property
    def lasting(self) -> bool:
        """Whether sending the same request again can only get the same answer: an invalid object
        (400, 422) or a forbidden one (403: RBAC, an admission webhook or policy), except a 403 for
        exceeded quota, which passes once other objects go."""
        if self.code in (400, 422):
            return True
        return self.code == 403 and "exceeded quota" not in self.message


def refusal_of(code: int, reason: str, body: str | None) -> Refusal:
    """The refusal an ApiException carries: the Status object's message when the body is one."""
    message = ""
    try:
        doc: Any = json.loads(body or "")
        if isinstance(doc, Mapping):
            message = str(doc.get("message") or "")
    except ValueError:
        message = (body or "").strip()
    return Refusal(code, reason or "", message or reason or f"HTTP {code}")


#: Finalizers of the garbage collector's own cascading deletion: a normal, passing state.
GC_FINALIZERS = frozenset({"foregroundDeletion", "orphan"})


def in_the_way(existing: Mapping[str, Any], create: Create, namespace: str) -> str | None:
    """Why the object a create met (409) is not the one it makes: whose it is (this run's, an
    earlier attempt's, a deleted SpinRun of this name, or not made by spinrun at all) and what keeps
    it (being deleted since when, held by which finalizers), with the command that releases a held
    one; None when it is the same attempt of the same run, not being deleted (the create was done before)."""
    meta = existing.get("metadata") or {}

    def attempt(obj: Mapping[str, Any]) -> str | None:
        return ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_ATTEMPT)

    owner, ours = controller_uid(existing), controller_uid(create.obj)
    deleting = meta.get("deletionTimestamp")
    if owner == ours and attempt(existing) == attempt(create.obj) and not deleting:
        return None
    kinds = [str(r.get("kind")) for r in meta.get("ownerReferences") or [] if r.get("controller")]
    kind, name = create.kind.lower(), create.name
    if (meta.get("labels") or {}).get(LABEL_MANAGED_BY) != MANAGED_BY or (owner and kinds != ["SpinRun"]):
        made_by = f"a {kinds[0]}" if kinds and kinds != ["SpinRun"] else "someone else"
        return (f"{create.kind} {name} in the way was not made by spinrun (it belongs to {made_by}): this run cannot "
                f"create its own under that name until it is gone; rename the SpinRun or remove that {kind}")
    whose = ("this attempt of this run" if owner == ours and attempt(existing) == attempt(create.obj)
             else "an earlier attempt of this run" if owner == ours
             else "another SpinRun of this name (a deleted one)" if owner else "no SpinRun (orphaned)")
    held = [str(f) for f in meta.get("finalizers") or [] if f not in GC_FINALIZERS]
    if deleting and held:
        state = (f"it is being deleted since {deleting} but held by finalizer(s) {', '.join(held)}; the run creates "
                 f"its own once it is gone (whoever added the finalizer removes it, or: kubectl patch {kind} {name} -n "
                 f"{namespace} --type=json -p '[{{\"op\":\"remove\",\"path\":\"/metadata/finalizers\"}}]')")
    elif deleting:
        state = f"it is being deleted since {deleting} (the garbage collector removes its pods first); the run creates its own once it is gone"
    else:
        state = f"the run creates its own once it is gone (kubectl delete {kind} {name} -n {namespace})"
    return f"{create.kind} {name} in the way belongs to {whose}: {state}"


def _what(action: Action) -> str:
    verb = "create" if isinstance(action, Create) else type(action).__name__.lower()
    return f"{verb} {action.kind} {action.name}"


def after_refusal(
    decision: Decision, action: Action, refusal: Refusal, old_status: Mapping[str, Any], now: str, generation: int
) -> Decision:
    """The decision to write after `action` was refused: its status and events amended so the
    run says what happened (failed once for a lasting refusal; waiting, warned once, otherwise)."""
    status = read_status(decision.status)
    events = [e for e in decision.events if e[1] not in ANNOUNCING]
    said = f"{refusal.code} {refusal.reason}: {refusal.message}".strip()
    if refusal.lasting and isinstance(action, Create):
        msg = (
            f"the API server refused to {_what(action)} ({said}); retrying cannot change its answer: fix the "
            "cause (the spec field it names, or the cluster's admission policy or RBAC) and create a new SpinRun "
            "(finished steps are kept on the volume)"
        )
        status.phase, status.reason, status.message = "Failed", REFUSED, msg
        set_condition(status, ConditionType.FAILED, True, REFUSED, msg, now, generation)
        set_condition(status, ConditionType.PROGRESSING, False, REFUSED, msg, now, generation)
        status.completion_time = now
        events.append(("Warning", REFUSED, msg))
        return Decision(actions=[], status=status, events=events, requeue_after=None)
    msg = f"waiting: the API server refused to {_what(action)} ({said}); trying again"
    reason = RETRYING if isinstance(action, Create) else REQUEST_RETRYING
    if isinstance(action, Create) and refusal.code == 409:
        msg, reason = f"waiting: {refusal.message}", IN_THE_WAY
    old = read_status(old_status)
    before = condition(old, ConditionType.PROGRESSING)
    if not isinstance(action, Create) and old_status:
        status.phase = old.phase  # a suspend that did not happen does not make the run Suspended
    status.reason, status.message = reason, msg
    set_condition(status, ConditionType.PROGRESSING, False, reason, msg, now, generation)
    if before is None or (before.status, before.reason, before.message) != ("False", reason, msg[:MAX_MESSAGE]):
        events.append(("Warning", reason, msg))
    return Decision(actions=[], status=status, events=events, requeue_after=decision.requeue_after)
