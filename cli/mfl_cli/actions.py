"""The write verbs: the annotations the operator reads (feedbackloop.core.phases), when writing one makes sense,
and what to tell the user. Pure functions; the adapter (mfl_cli.kube) writes the patch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from feedbackloop.core import api, phases

CANARY_VERBS = ("promote", "abort", "pause", "resume")


def annotation_key(verb: str) -> str:
    if verb not in phases.REQUEST_ANNOTATIONS:
        raise ValueError(f"the operator reads no request {verb!r}")
    return phases.ANNOTATION_PREFIX + verb


def new_token(now: datetime | None = None) -> str:
    """A request's value: a new value is a new request to the operator, so it must never repeat
    (microseconds, where the documented `date +%s` would merge two requests in one second)."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def refusal(verb: str, loop: dict[str, Any], now: float) -> str:
    """Why writing the request now would be lost or harmful ('' when it may be written).

    The operator keeps an unhandled promote/abort until the next canary and then acts on it at once, so
    without a canary running it is refused here. A retraining the operator would skip is refused with
    the operator's own reason (phases.retrain_blocker); one asked for while a retraining or canary runs
    waits for it, which the confirmation says.
    """
    status = loop.get("status") or {}
    name = loop["metadata"]["name"]
    if verb in CANARY_VERBS:
        if status.get("rollout"):
            return ""
        return f"{name} has no canary running (phase {status.get('phase') or 'unknown'}): nothing to {verb}"
    if status.get("retraining") or status.get("rollout"):
        return ""
    try:
        spec = api.validate_spec(loop.get("spec") or {})
    except ValueError as error:
        return f"{name} has an invalid spec, the operator does not act on it: {api.describe_validation_error(error)}"
    blocker = phases.retrain_blocker(spec, status, now, "Manual")
    return f"the operator would skip this retraining: {blocker}" if blocker else ""


def confirmation(verb: str, loop: dict[str, Any], token: str, prog: str) -> str:
    """One line: what was asked of which loop, that the operator acts later, and how to follow it."""
    meta, status = loop["metadata"], loop.get("status") or {}
    where = f"{meta['namespace']}/{meta['name']}"
    rollout = status.get("rollout") or {}
    canary = f"canary version {rollout.get('version')}"
    what = {
        "promote": f"promotion of {canary}",
        "abort": f"rollback of {canary}",
        "pause": f"pause of {canary} at {rollout.get('weight')}%",
        "resume": f"resumption of {canary}",
        "retrain": "a retraining",
    }[verb]
    if verb == "retrain" and (status.get("retraining") or rollout):
        what += " (it starts when the running " + ("retraining" if status.get("retraining") else "canary") + " ends)"
    return (
        f"{where}: requested {what} ({annotation_key(verb)}={token}); the operator acts on it asynchronously: "
        f"{prog} status {meta['name']} -n {meta['namespace']} --watch"
    )
