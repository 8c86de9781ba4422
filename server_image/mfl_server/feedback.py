"""Pure feedback review: which labels to accept, and how each one scores against its prediction."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import bad_request, too_large, unprocessable
from .ids import InvalidId, PredictionRef

MISSING_TEXT = frozenset({"", "na", "n/a", "null", "none", "nan"})  # the trainer drops these labels
OTHER_LABEL = "__other__"  # confusion label for actual values outside the known classes
MAX_CONFUSION_LABELS = 100  # bound on series when the classes are unknown


@dataclass(frozen=True)
class Accepted:
    id: str
    ref: PredictionRef
    label: Any


@dataclass(frozen=True)
class Rejected:
    index: int
    id: Any
    reason: str  # malformed | bad_signature | bad_label | duplicate
    message: str

    def as_json(self) -> dict[str, Any]:
        """The id is echoed cut short: a rejected one may be any JSON the client sent."""
        shown = None if self.id is None else str(self.id)[:100]
        return {"index": self.index, "id": shown, "reason": self.reason, "error": self.message}


def entries_of(body: Any, max_entries: int) -> list[Any]:
    if not isinstance(body, dict):
        raise bad_request('body must be a JSON object like {"feedback": [{"id": ..., "label": ...}]}')
    entries = body.get("feedback")
    if not isinstance(entries, list):
        raise unprocessable('"feedback" must be a list of {"id": ..., "label": ...} objects')
    if not entries:
        raise unprocessable('empty batch: "feedback" has no entries')
    if len(entries) > max_entries:
        raise too_large(f"batch too large: {len(entries)} entries, at most {max_entries} per request")
    return entries


def review(
    entries: list[Any], verify: Callable[[Any], tuple[str, PredictionRef]], task: str, seen: Callable[[str], bool]
) -> tuple[list[Accepted], list[Rejected]]:
    """Split entries into accepted and rejected; ``seen`` tells ids already accepted here."""
    accepted: list[Accepted] = []
    rejected: list[Rejected] = []
    in_batch: set[str] = set()
    for index, entry in enumerate(entries):
        outcome = _review_one(index, entry, verify, task)
        if isinstance(outcome, Accepted) and (outcome.id in in_batch or seen(outcome.id)):
            outcome = Rejected(index, outcome.id, "duplicate", "feedback for this id was already accepted")
        if isinstance(outcome, Accepted):
            in_batch.add(outcome.id)
            accepted.append(outcome)
        else:
            rejected.append(outcome)
    return accepted, rejected


def _review_one(
    index: int, entry: Any, verify: Callable[[Any], tuple[str, PredictionRef]], task: str
) -> Accepted | Rejected:
    if not isinstance(entry, dict) or "id" not in entry or "label" not in entry:
        return Rejected(
            index,
            entry.get("id") if isinstance(entry, dict) else None,
            "malformed",
            'each entry must be an object with "id" and "label"',
        )
    try:
        canonical, ref = verify(entry["id"])
    except InvalidId as error:
        return Rejected(index, entry["id"], error.reason, str(error))
    problem = label_problem(entry["label"], task)
    if problem:
        return Rejected(index, canonical, "bad_label", problem)
    return Accepted(canonical, ref, entry["label"])


def label_problem(label: Any, task: str) -> str | None:
    if task == "regression":
        return None if math.isfinite(as_number(label)) else f"label must be a finite number, got {label!r}"
    if isinstance(label, (str, int, float)) and not _is_missing(label):
        return None
    return f"label must be a class (string or number), got {str(label)[:40]!r}"


def label_key(value: Any) -> str:
    """Comparable text of a class label, as the trainer compares them: 1, 1.0, "1" and True agree."""
    number = as_number(value)
    if math.isfinite(number) and number == int(number):
        return str(int(number))
    if isinstance(value, float):
        return repr(value)
    return str(value).strip()


def is_correct(predicted: Any, actual: Any) -> bool:
    return label_key(predicted) == label_key(actual)


def abs_error(predicted: Any, actual: Any) -> float:
    return abs(as_number(actual) - as_number(predicted))


def as_number(value: Any) -> float:
    if isinstance(value, (bool, int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return math.nan
    return math.nan


def _is_missing(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in MISSING_TEXT


class ConfusionLabels:
    """Keeps `mfl_confusion_total{actual}` bounded: unknown actual classes share one label."""

    def __init__(self, classes: list[Any] | None) -> None:
        self._known = {label_key(c) for c in classes} if classes else set()
        self._open = not classes

    def actual(self, label: Any) -> str:
        key = label_key(label)
        if key in self._known:
            return key
        if self._open and len(self._known) < MAX_CONFUSION_LABELS:
            self._known.add(key)
            return key
        return OTHER_LABEL


class SeenIds:
    """Bounded LRU of accepted feedback ids: duplicates within this replica count once.

    Older ids fall out once ``capacity`` newer ones arrived, and another replica keeps its own set;
    the trainer treats a later line for the same id as a correction, so the store stays consistent.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        if key in self._ids:
            self._ids.move_to_end(key)
            return True
        return False

    def add(self, key: str) -> None:
        if self._capacity <= 0:
            return
        self._ids[key] = None
        self._ids.move_to_end(key)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)
