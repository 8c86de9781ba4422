"""Where did the served model's error last rise? An offline CUSUM change-point test on the error stream.

The stream is what users saw: for each labelled prediction in time order, whether the served prediction
was wrong (classification) or its absolute error (regression). Those predictions were made before their
labels existed, so every value is out of sample, whichever version served it.

The test (Page 1954; the offline form in Csorgo & Horvath 1997, ch. 1): for x_1..x_n with mean m and
standard deviation s, the CUSUM of deviations S_k = sum_{i<=k} (x_i - m) and

    T = max_k |S_k| / (s * sqrt(n)).

Without a change (independent, identically distributed x), T converges in distribution to the supremum
of a Brownian bridge, whose tail is Kolmogorov's: P(T > c) = 2 sum_{j>=1} (-1)^(j-1) exp(-2 j^2 c^2).
So "T beyond the (1 - alpha) quantile" is a test of "no change" at level alpha, and the argmax of |S_k|
estimates where the mean moved (consistent for one change). Binary segmentation (Vostrikova 1981) repeats
the test on both sides of each change found, which finds several changes; each test keeps level alpha.
Segments shorter than `min_segment` are not split: neither the mean nor the location is estimable there.

The loop wants the most recent rise: the concept the model must learn now started there. A fall in the
error (a better version promoted) is a change too but not a reason to forget older rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import kolmogorov

DEFAULT_ALPHA = 0.01
DEFAULT_MIN_SEGMENT = 100


@dataclass(frozen=True)
class Change:
    """A change in the mean of the error stream, between rows `index - 1` and `index` of the stream."""

    index: int
    before: float  # mean error in the segment before (within the segment tested)
    after: float  # mean error in the segment after
    statistic: float  # T
    p_value: float  # asymptotic, from Kolmogorov's distribution

    @property
    def rise(self) -> bool:
        return self.after > self.before


def kolmogorov_tail(c: float) -> float:
    """P(sup |Brownian bridge| > c): Kolmogorov's survival function (scipy's, accurate for every c)."""
    return float(kolmogorov(c))


def cusum_test(errors: np.ndarray, margin: int = 1) -> Change | None:
    """The most likely change in the mean of `errors` at least `margin` rows from either end, tested;
    None for a (numerically) constant stream or one too short for such a split.

    The split is the argmax of |S_k| over the admissible k only, so a short run at an edge (the tail of an
    older drift at the start of the window) cannot hide a change in the middle; T there is at most the
    unrestricted maximum, so Kolmogorov's tail stays a valid, conservative p-value."""
    n = len(errors)
    if n < 2 * margin or n < 2:
        return None
    deviation = float(np.std(errors))
    if deviation <= 1e-12 * max(1.0, float(np.abs(errors).mean())):
        return None
    partial = np.cumsum(errors - errors.mean())[:-1]  # S_1 .. S_{n-1}: index k splits after row k
    admissible = np.abs(partial[margin - 1 : n - margin])
    k = margin - 1 + int(np.argmax(admissible))
    statistic = float(abs(partial[k]) / (deviation * math.sqrt(n)))
    index = k + 1
    return Change(
        index=index,
        before=float(errors[:index].mean()),
        after=float(errors[index:].mean()),
        statistic=statistic,
        p_value=kolmogorov_tail(statistic),
    )


def find_changes(
    errors: np.ndarray, alpha: float = DEFAULT_ALPHA, min_segment: int = DEFAULT_MIN_SEGMENT
) -> list[Change]:
    """Every significant change by binary segmentation, in stream order (indices into `errors`)."""
    found: list[Change] = []
    pending = [(0, len(errors))]
    while pending:
        start, stop = pending.pop()
        if stop - start < 2 * min_segment:
            continue
        change = cusum_test(np.asarray(errors[start:stop], dtype=np.float64), margin=min_segment)
        if change is None or change.p_value > alpha:
            continue
        index = start + change.index
        found.append(Change(index, change.before, change.after, change.statistic, change.p_value))
        pending += [(start, index), (index, stop)]
    return sorted(found, key=lambda c: c.index)


def latest_rise(
    errors: np.ndarray, alpha: float = DEFAULT_ALPHA, min_segment: int = DEFAULT_MIN_SEGMENT
) -> Change | None:
    """The most recent significant rise of the error, re-measured against its neighbouring changes."""
    changes = find_changes(errors, alpha, min_segment)
    bounds = [0, *(c.index for c in changes), len(errors)]
    for position in range(len(changes) - 1, -1, -1):
        change = changes[position]
        before = errors[bounds[position] : change.index]
        after = errors[change.index : bounds[position + 2]]
        if after.mean() > before.mean():
            return Change(change.index, float(before.mean()), float(after.mean()), change.statistic, change.p_value)
    return None
