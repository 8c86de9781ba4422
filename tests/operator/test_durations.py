"""Durations in the spec (api.parse_duration): the API's form, read by durationpy (issue 23, item 6)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedbackloop.core import api

UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
PARTS = st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(sorted(UNIT_SECONDS))), min_size=1, max_size=5)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(PARTS)
def test_every_form_the_pattern_accepts_reads_as_the_sum_of_its_parts(parts: list[tuple[int, str]]) -> None:
    """Any order, any repetition (as Go's time.ParseDuration), ms before m."""
    text = "".join(f"{count}{unit}" for count, unit in parts)
    assert api.parse_duration(text) == pytest.approx(sum(c * UNIT_SECONDS[u] for c, u in parts), rel=1e-12, abs=1e-9)


@pytest.mark.parametrize(
    "text, seconds", [("90s", 90), ("1h30m", 5400), ("2h45m30s", 9930), ("1d12h", 129600), ("1500ms", 1.5), ("0s", 0)]
)
def test_go_and_kubernetes_durations(text: str, seconds: float) -> None:
    assert api.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["1.5h", "1us", "300ns", "-1s", "+1s", "0", "1w", "1y", "1mm", "1H", "１s"])
def test_forms_outside_the_api_are_refused(text: str) -> None:
    """durationpy reads more (fractions, signs, ns, weeks, years); the spec's pattern does not, and Prometheus,
    which gets some of these durations in queries, reads none of them."""
    with pytest.raises(ValueError, match="invalid duration"):
        api.parse_duration(text)


def test_a_duration_beyond_any_date_is_too_long_not_a_crash() -> None:
    with pytest.raises(ValueError, match="too long"):
        api.parse_duration("9" * 30 + "d")
    with pytest.raises(ValueError, match="too long"):
        api.DurationText("3651d")
