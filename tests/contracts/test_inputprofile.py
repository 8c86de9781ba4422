"""The input profile: deciles, bins, PSI and its noise floor (the reason minRows 500 and 0.2 go together)."""

from __future__ import annotations

import math
import random

import pytest

from mfl_contracts import inputprofile as ip


def _profile(values: list[float]) -> dict:
    return ip.make_profile({"x": values})["features"]["x"]


def test_deciles_give_ten_equal_bins_and_empty_outer_ones() -> None:
    entry = _profile([float(i) for i in range(1000)])
    assert len(entry["edges"]) == 9
    assert entry["min"] == 0.0 and entry["max"] == 999.0
    shares = entry["expected"]
    assert [shares[f"b{i}"] for i in range(10)] == [0.1] * 10
    assert shares[ip.BELOW] == shares[ip.ABOVE] == shares[ip.MISSING] == 0


def test_ties_collapse_bins_and_shares_follow_the_data() -> None:
    entry = _profile([0.0] * 700 + [1.0] * 200 + [2.0] * 100)
    assert entry["edges"] == [1.0, 2.0]
    assert entry["expected"]["b0"] == 0.7 and entry["expected"]["b1"] == 0.2 and entry["expected"]["b2"] == 0.1


def test_bin_of_covers_every_case() -> None:
    entry = _profile([float(i) for i in range(100)])
    assert ip.bin_of(entry, -1) == ip.BELOW
    assert ip.bin_of(entry, 1000) == ip.ABOVE
    for missing in (None, float("nan"), "text", True, [1]):
        assert ip.bin_of(entry, missing) == ip.MISSING
    assert ip.bin_of(entry, 0) == "b0" and ip.bin_of(entry, 99) == "b9" and ip.bin_of(entry, "55") == "b5"


def test_missing_values_in_training_have_their_share() -> None:
    entry = _profile([1.0, 2.0, None, 4.0])  # type: ignore[list-item]
    assert entry["expected"][ip.MISSING] == 0.25


def test_only_the_first_max_features_are_profiled() -> None:
    columns = {f"f{i}": [0.0, 1.0] for i in range(ip.MAX_FEATURES + 5)}
    assert len(ip.make_profile(columns)["features"]) == ip.MAX_FEATURES


def test_psi_is_zero_on_the_training_shares_and_large_on_a_shift() -> None:
    rng = random.Random(1)
    train = [rng.gauss(0, 1) for _ in range(20_000)]
    entry = _profile(train)
    same = ip.count_bins(entry, [rng.gauss(0, 1) for _ in range(5_000)])
    shifted = ip.count_bins(entry, [rng.gauss(1, 1) for _ in range(5_000)])
    assert ip.psi(entry["expected"], same) < 0.02
    assert ip.psi(entry["expected"], shifted) > 0.5
    assert ip.psi(entry["expected"], {}) is None


def test_noise_floor_at_min_rows_stays_far_below_the_threshold() -> None:
    """500 rows from the training distribution, 2,000 times: PSI's worst is well under 0.2 (chi-squared/n)."""
    rng = random.Random(7)
    entry = _profile([rng.random() for _ in range(50_000)])
    worst = max(
        ip.psi(entry["expected"], ip.count_bins(entry, [rng.random() for _ in range(500)])) or 0.0 for _ in range(2_000)
    )
    assert worst < 0.1


def test_out_of_range_values_weigh_heavily() -> None:
    entry = _profile([float(i) for i in range(1000)])
    counts = ip.count_bins(entry, [float(i) for i in range(900)] + [5000.0] * 100)
    assert ip.psi(entry["expected"], counts) > 0.2


@pytest.mark.parametrize(
    "broken",
    [
        None,
        {"features": []},
        {"features": {"x": {"min": 0, "max": 1, "edges": [2, 1], "expected": {}}}},
        {"features": {"x": {"min": 0, "max": math.inf, "edges": [], "expected": {}}}},
        {"features": {"x": {"min": 0, "max": 1, "edges": list(range(12)), "expected": {}}}},
        {"features": {"x": {"min": 0, "max": 1, "edges": [0.5], "expected": {"b0": 2}}}},
    ],
)
def test_broken_profiles_are_ignored_not_fatal(broken: object) -> None:
    assert ip.valid_profile(broken) is None


def test_a_valid_profile_reads_back() -> None:
    profile = ip.make_profile({"x": [float(i) for i in range(100)], "y": [1.0] * 100})
    assert set(ip.valid_profile(profile)["features"]) == {"x", "y"}
