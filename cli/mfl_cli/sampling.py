"""Which served predictions to hand to people for labelling (`mfl feedback export`): pure functions.

A sample stratified by predicted class, equal shares per class (a class short of its share gives the rest to the
others), so a rare class the model over- or under-predicts gets labels at all; within a class, rows in the last
report's worst slices are OVERSAMPLE times as likely to be picked, since that is where a label teaches the next
version the most. Every stratum is a reservoir (Algorithm R) of at most `size` rows: one pass over any number of
predictions in bounded memory, each row of a stratum equally likely to be kept.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

OVERSAMPLE = 3.0  # a row in a worst slice is this many times as likely to be picked as another of its class
MISSING_BIN = "missing"  # the trainer's slice of missing values (mfl_trainer.evaluation.MISSING_BIN)
INTERVAL = re.compile(r"^\[(?P<low>[^,\s]+), (?P<high>[^\]\)\s]+)(?P<close>[\]\)])$")
GREATER_IS_BETTER = {"accuracy": True, "mae": False}  # the trainer's slice metrics (evaluation.PRIMARY_METRIC)


@dataclass(frozen=True)
class Slice:
    """One of the report's worst slices, as the trainer names them (mfl_trainer.evaluation.slice_bins): a
    quantile interval "[low, high)" (the last one closed), a value "= 3" (numbers formatted .4g), "missing", or
    the text of a categorical value."""

    feature: str
    bin: str

    def contains(self, features: Mapping[str, Any]) -> bool:
        value = features.get(self.feature)
        if _is_missing(value):
            return self.bin == MISSING_BIN
        if self.bin.startswith("= "):
            number = _number(value)
            return number is not None and f"{number:.4g}" == self.bin[2:]
        interval = INTERVAL.match(self.bin)
        if interval:
            return _in_interval(_number(value), interval)
        return str(value) == self.bin

    def __str__(self) -> str:
        return f"{self.feature} {self.bin}"


def worst_slices(report: dict[str, Any] | None) -> list[Slice]:
    """The serving model's worst slices (its report's `worstSlices.challenger`) that score worse than the model
    does overall: the trainer lists its ten worst even when they are fine."""
    entries = ((report or {}).get("worstSlices") or {}).get("challenger") or []
    overall = ((report or {}).get("challenger") or {}).get("metrics") or {}
    found = []
    for entry in entries:
        if not isinstance(entry, dict) or "feature" not in entry or "bin" not in entry:
            continue
        metric = next((m for m in GREATER_IS_BETTER if isinstance(entry.get(m), (int, float))), None)
        if metric and isinstance(overall.get(metric), (int, float)):
            worse = entry[metric] < overall[metric] if GREATER_IS_BETTER[metric] else entry[metric] > overall[metric]
            if not worse:
                continue
        found.append(Slice(str(entry["feature"]), str(entry["bin"])))
    return found


def class_key(prediction: Any) -> str:
    """A predicted class as text, as the server and trainer compare labels: 1, 1.0 and "1" are one class."""
    if isinstance(prediction, bool):
        return str(int(prediction))
    number = _number(prediction)
    if number is not None and math.isfinite(number) and number == int(number):
        return str(int(number))
    return str(prediction).strip()


@dataclass
class Stratum:
    seen: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


class Sampler:
    """Strata keyed by (predicted class, in a worst slice); regression has one class ("")."""

    def __init__(self, size: int, slices: list[Slice], classification: bool, rng: random.Random) -> None:
        self.size = size
        self.slices = slices
        self.classification = classification
        self.rng = rng
        self.strata: dict[tuple[str, bool], Stratum] = {}

    def add(self, record: dict[str, Any]) -> None:
        stratum = self.strata.setdefault((self.class_of(record), self.in_slices(record)), Stratum())
        stratum.seen += 1
        if len(stratum.rows) < self.size:
            stratum.rows.append(record)
            return
        slot = self.rng.randrange(stratum.seen)
        if slot < self.size:
            stratum.rows[slot] = record

    def sample(self) -> list[dict[str, Any]]:
        """`size` rows (fewer when fewer were seen): equal shares per class, worst slices oversampled."""
        available = {c: self._kept(c, True) + self._kept(c, False) for c in self.classes()}
        chosen: list[dict[str, Any]] = []
        for name, quota in allocate(self.size, available).items():
            hot, cold = self._split(name, quota)
            chosen += self._take(name, True, hot) + self._take(name, False, cold)
        return sorted(chosen, key=lambda r: (r.get("ts") or 0, str(r.get("id"))))

    def classes(self) -> list[str]:
        return sorted({name for name, _ in self.strata})

    def seen(self, name: str, hot: bool) -> int:
        return self.strata.get((name, hot), Stratum()).seen

    def class_of(self, record: dict[str, Any]) -> str:
        return class_key(record.get("prediction")) if self.classification else ""

    def in_slices(self, record: dict[str, Any]) -> bool:
        features = record.get("features") or {}
        return any(s.contains(features) for s in self.slices)

    def _kept(self, name: str, hot: bool) -> int:
        return len(self.strata.get((name, hot), Stratum()).rows)

    def _split(self, name: str, quota: int) -> tuple[int, int]:
        """A class's quota between its worst-slice rows and the others, weighted by what was seen."""
        weight_hot = OVERSAMPLE * self.seen(name, True)
        total = weight_hot + self.seen(name, False)
        hot = min(self._kept(name, True), round(quota * weight_hot / total) if total else 0)
        cold = min(self._kept(name, False), quota - hot)
        hot = min(self._kept(name, True), quota - cold)  # the other side fills a short one
        return hot, cold

    def _take(self, name: str, hot: bool, count: int) -> list[dict[str, Any]]:
        rows = self.strata.get((name, hot), Stratum()).rows
        return self.rng.sample(rows, count) if count < len(rows) else list(rows)


def allocate(total: int, available: Mapping[str, int]) -> dict[str, int]:
    """Equal shares of `total`, the classes with the fewest rows first: one short of its share takes all it has
    and leaves the rest to the others (water-filling)."""
    shares: dict[str, int] = {}
    remaining = total
    ordered = sorted(available, key=lambda name: (available[name], name))
    for done, name in enumerate(ordered):
        shares[name] = min(available[name], remaining // (len(ordered) - done))
        remaining -= shares[name]
    return {name: shares[name] for name in sorted(shares)}


# --- values --------------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return True
    return isinstance(value, float) and math.isnan(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _in_interval(number: float | None, interval: re.Match[str]) -> bool:
    low, high = _number(interval["low"]), _number(interval["high"])
    if number is None or low is None or high is None:
        return False
    return low <= number <= high if interval["close"] == "]" else low <= number < high
