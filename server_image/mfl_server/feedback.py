"""Pure feedback review: which labels to accept, and how each one scores against its prediction."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mfl_contracts.classes import as_number as as_number  # re-exported: the label rules are the contract's
from mfl_contracts.classes import class_key

from .errors import bad_request, too_large, unprocessable
from .ids import InvalidId, PredictionRef
from .limits import MAX_ABS_NUMBER, MAX_TEXT_CHARS

MISSING_TEXT = frozenset({"", "na", "n/a", "null", "none", "nan"})  # the trainer drops these labels
OTHER_LABEL = "__other__"  # confusion label for actual values outside the known classes
MAX_CONFUSION_LABELS = 100  # bound on series when the classes are unknown
MAX_LABEL_CHARS = MAX_TEXT_CHARS  # a class name longer than this is a mistake or an attack
MAX_CLASSES_SHOWN = 20
DAY = 86400.0
# How far ahead of this replica's clock a prediction's signed time may be: the replicas' clock skew. An id dated
# further ahead was signed by a replica whose clock runs ahead, or forged with the key; its claim would be filed
# under a day that no sweep reaches until that day has come and gone (MFL_FEEDBACK_CLOCK_MARGIN_SECONDS).
DEFAULT_FUTURE_MARGIN = 300.0


@dataclass(frozen=True)
class Accepted:
    index: int  # in the request
    id: str
    ref: PredictionRef
    label: Any


@dataclass(frozen=True)
class Rejected:
    index: int
    id: Any
    reason: str  # malformed | bad_signature | expired | future | bad_label | duplicate
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


@dataclass(frozen=True)
class LabelRules:
    """What a label must satisfy for the loaded model, at the time of the request."""

    task: str
    classes: frozenset[str] | None  # label_key of each class; None: the model does not say
    now: float
    max_age: float  # seconds after its prediction that a label is still accepted
    future_margin: float = DEFAULT_FUTURE_MARGIN  # seconds a prediction may be dated ahead of ``now``

    @classmethod
    def for_model(
        cls,
        task: str,
        classes: list[Any] | None,
        now: float,
        max_age: float,
        future_margin: float = DEFAULT_FUTURE_MARGIN,
    ) -> LabelRules:
        known = frozenset(label_key(c) for c in classes) if task == "classification" and classes else None
        return cls(task, known, now, max_age, future_margin)


def review(
    entries: list[Any], verify: Callable[[Any], tuple[str, PredictionRef]], rules: LabelRules
) -> tuple[list[Accepted], list[Rejected]]:
    """Split entries into valid labels and rejected ones; an id given twice in one batch counts once.

    Whether an id was labelled before (here, on another replica, before a restart) is the label
    recorder's to say (mfl_server.labels: claim files or the ledger): it is the only state the replicas share.
    """
    accepted: list[Accepted] = []
    rejected: list[Rejected] = []
    in_batch: set[str] = set()
    for index, entry in enumerate(entries):
        outcome = _review_one(index, entry, verify, rules)
        if isinstance(outcome, Accepted) and outcome.id in in_batch:
            outcome = duplicate(index, outcome.id)
        if isinstance(outcome, Accepted):
            in_batch.add(outcome.id)
            accepted.append(outcome)
        else:
            rejected.append(outcome)
    return accepted, rejected


def duplicate(index: int, prediction_id: str) -> Rejected:
    return Rejected(index, prediction_id, "duplicate", "a label for this prediction was already recorded")


def refusal(accepted: int, rejected: list[Rejected]) -> str | None:
    """Why the whole request is a client error: nothing recorded and something invalid.

    A batch of duplicates only is a retry that already succeeded, not an error.
    """
    invalid = [item for item in rejected if item.reason != "duplicate"]
    if accepted or not invalid:
        return None
    first = invalid[0]
    return f"no label recorded: entry {first.index}: {first.message}"


def _review_one(
    index: int, entry: Any, verify: Callable[[Any], tuple[str, PredictionRef]], rules: LabelRules
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
    problem = future_problem(ref.ts, rules.now, rules.future_margin)
    if problem:
        return Rejected(index, canonical, "future", problem)
    problem = age_problem(ref.ts, rules.now, rules.max_age)
    if problem:
        return Rejected(index, canonical, "expired", problem)
    problem = label_problem(entry["label"], rules.task, rules.classes)
    if problem:
        return Rejected(index, canonical, "bad_label", problem)
    return Accepted(index, canonical, ref, entry["label"])


def age_problem(prediction_ts: float, now: float, max_age: float) -> str | None:
    """Labels are taken for ``max_age`` seconds after the prediction; that bounds the claims kept."""
    if now - prediction_ts <= max_age:
        return None
    return (
        f"the prediction is {_duration(now - prediction_ts)} old: labels are accepted for "
        f"{_duration(max_age)} after the prediction (MFL_FEEDBACK_MAX_AGE_SECONDS)"
    )


def future_problem(prediction_ts: float, now: float, margin: float) -> str | None:
    """A prediction dated more than ``margin`` seconds after ``now``: no replica whose clock is within the
    margin of this one made it, and its claim (or ledger day) would outlive the retention meant for it."""
    ahead = prediction_ts - now
    if ahead <= margin:
        return None
    return (
        f"the prediction id is dated {_duration(ahead)} in the future: ids dated more than {margin:.0f} s "
        f"ahead of this server's clock are refused (MFL_FEEDBACK_CLOCK_MARGIN_SECONDS); the replica that "
        f"signed it has a clock running ahead (check NTP on its node) or the id was forged with the signing key"
    )


def label_problem(label: Any, task: str, classes: frozenset[str] | None = None) -> str | None:
    if isinstance(label, str) and len(label) > MAX_LABEL_CHARS:
        return f"label is {len(label)} characters long, at most {MAX_LABEL_CHARS} are accepted"
    if task == "regression":
        number = as_number(label)
        if isinstance(label, bool) or not abs(number) <= MAX_ABS_NUMBER:  # also NaN
            return f"label must be a finite number of absolute value at most {MAX_ABS_NUMBER:.3g}, got {_shown(label)}"
        return None
    if not isinstance(label, (str, int, float)) or _is_missing(label):
        return f"label must be a class (string or number), got {_shown(label)}"
    if not isinstance(label, str) and not abs(as_number(label)) <= MAX_ABS_NUMBER:
        return f"label must be a finite number of absolute value at most {MAX_ABS_NUMBER:.3g}, got {_shown(label)}"
    if classes is not None and label_key(label) not in classes:
        return f"label {_shown(label)} is not a class of this model; its classes are {_class_list(classes)}"
    return None


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, (bool, int, float)) or value is None else repr(str(value)[:40])


def _class_list(classes: frozenset[str]) -> str:
    shown = sorted(classes)[:MAX_CLASSES_SHOWN]
    more = len(classes) - len(shown)
    return f"{shown}" + (f" and {more} more" if more else "")


def _duration(seconds: float) -> str:
    if seconds >= 2 * DAY:
        return f"{seconds / DAY:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds:.0f} s"


def label_key(value: Any) -> str:
    """Comparable text of a class label, as the trainer compares them: 1, 1.0, "1" and True agree."""
    return class_key(value)


def is_correct(predicted: Any, actual: Any) -> bool:
    return label_key(predicted) == label_key(actual)


def abs_error(predicted: Any, actual: Any) -> float:
    return abs(as_number(actual) - as_number(predicted))


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
