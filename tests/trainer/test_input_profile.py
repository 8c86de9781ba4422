"""A version's input profile (metadata.json ``inputProfile``, mfl_contracts.inputprofile): the deciles of the
numeric features of the rows its model was trained on, never of the holdout, in the published feature order."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mfl_contracts import inputprofile
from mfl_trainer import input_profile

from .test_train import DAY, NOW, config, model_dir, root, run_trainer, version_path, write_base, write_feedback
from .test_train_drift import AFTER, BEFORE, FAST, drifted

__all__ = ["drifted", "root"]  # fixtures

N_BASE, N_FEEDBACK, N_HOLDOUT = 600, 400, 100  # the newest quarter of the feedback is held out
FEATURES = ["colour", "amount", "count", "partial"]
NUMERIC = ["amount", "count", "partial"]
HELD_OUT_AMOUNT = 10.0  # the holdout's amounts are all above it; the training rows' below 1


@pytest.fixture(autouse=True)
def small_profiles(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests train on hundreds of rows: profiles from 100 rows, but for the test of the real floor."""
    if "min_rows" not in request.node.name:
        monkeypatch.setattr(input_profile, "MIN_ROWS", 100)


def test_fewer_training_rows_than_min_rows_make_no_profile() -> None:
    rows = inputprofile.MIN_ROWS - 1
    assert input_profile.make({"x": [float(i) for i in range(rows)]}) is None
    assert input_profile.make({"x": [float(i) for i in range(rows + 1)]}) is not None
    assert "fewer than 1000 training rows" in input_profile.described(None, 1, 0.1)


def metadata(root: Path, version: int) -> dict[str, Any]:
    return json.loads((version_path(root, version) / "metadata.json").read_text())


def decimals(values: np.ndarray) -> np.ndarray:
    """The values as the CSV and the JSON lines give them back (4 decimals)."""
    return np.array([float(f"{value:.4f}") for value in values])


def cell(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.4f}"


def mixed_store(root: Path) -> dict[str, np.ndarray]:
    """Base data and feedback with a categorical feature, a continuous one, one of few integer values (tied
    deciles) and one with missing cells in the base data; the training rows' numeric columns."""
    rng = np.random.default_rng(8)
    n = N_BASE + N_FEEDBACK
    colour = rng.choice(["red", "green", "blue"], n)
    amount = decimals(rng.random(n))
    count = rng.integers(0, 6, n).astype(float)
    partial = decimals(rng.normal(50, 10, n))
    partial[:N_BASE][rng.random(N_BASE) < 0.2] = np.nan  # blank base cells; the feedback has every value
    label = np.where((colour == "red") | (amount > 0.7), "yes", "no")
    amount[n - N_HOLDOUT :] += HELD_OUT_AMOUNT  # the newest feedback: the holdout (never profiled)
    data = model_dir(root) / "data"
    data.mkdir(parents=True)
    rows = [",".join([*FEATURES, "answer"])]
    for i in range(N_BASE):
        rows.append(f"{colour[i]},{amount[i]:.4f},{count[i]:.0f},{cell(partial[i])},{label[i]}")
    (data / "mixed.csv").write_text("\n".join(rows) + "\n")
    ts = NOW - 2 * DAY + np.arange(N_FEEDBACK) * 60.0
    for kind in ("predictions", "feedback"):
        for j, t in enumerate(ts):
            i = N_BASE + j
            when = float(t) + (60.0 if kind == "feedback" else 0.0)
            path = model_dir(root) / kind / f"date={datetime.fromtimestamp(when, tz=UTC).date()}" / "a.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "predictions":
                features = {"colour": str(colour[i]), "amount": amount[i], "count": count[i], "partial": partial[i]}
                line = {"id": f"r{j}", "ts": float(t), "features": features}
            else:
                line = {"id": f"r{j}", "ts": when, "label": str(label[i]), "predictionTs": float(t)}
            with path.open("a") as handle:
                handle.write(json.dumps(line) + "\n")
    trained = slice(0, n - N_HOLDOUT)
    return {"amount": amount[trained], "count": count[trained], "partial": partial[trained]}


def deciles(values: np.ndarray) -> list[float]:
    """The contract's cut points: the order statistics at k * n / 10 (k = 1..9) of the values present,
    distinct, inside (min, max]."""
    numbers = np.sort(values[np.isfinite(values)])
    n = len(numbers)
    cuts = sorted({float(numbers[min(n - 1, n * k // 10)]) for k in range(1, 10)})
    return [c for c in cuts if numbers[0] < c <= numbers[-1]]


def test_a_version_profiles_the_numeric_features_of_its_training_rows(root, tmp_path, monkeypatch, capsys):
    trained = mixed_store(root)
    document = config(root, features=FEATURES, target="answer", changePoint=False)
    code, summary, err = run_trainer(document, tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    assert summary["holdout"] == "time_ordered_feedback" and summary["rows"]["holdout"] == N_HOLDOUT
    assert f"input profile: 3 numeric features of {N_BASE + N_FEEDBACK - N_HOLDOUT} training rows" in err
    meta = metadata(root, 1)
    profile = meta[inputprofile.PROFILE_KEY]

    assert inputprofile.valid_profile(profile) == profile  # the operator reads it back whole
    assert profile["binning"] == "deciles" and profile["rows"] == N_BASE + N_FEEDBACK - N_HOLDOUT
    assert list(profile["features"]) == NUMERIC  # published order; the categorical colour is left out
    assert meta["featureTypes"]["colour"] == "categorical" and "inputProfile" in meta["seconds"]
    for name, entry in profile["features"].items():
        values = trained[name]
        present = values[np.isfinite(values)]
        assert entry["edges"] == deciles(values), name
        assert entry["min"] == present.min() and entry["max"] == present.max(), name
        shares = entry["expected"]
        assert list(shares) == inputprofile.bin_names(entry["edges"])
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5), name
        bins = np.searchsorted(entry["edges"], present, side="right")
        for i in range(len(entry["edges"]) + 1):
            assert shares[f"b{i}"] == pytest.approx((bins == i).sum() / len(values), abs=1e-6), (name, i)
        assert shares["missing"] == pytest.approx(1 - len(present) / len(values), abs=1e-6), name
        assert shares["below"] == shares["above"] == 0
    assert profile["features"]["amount"]["max"] < 1  # no holdout row: their amounts are above 10
    assert len(profile["features"]["count"]["edges"]) < 9  # six values: ties collapse bins
    assert profile["features"]["partial"]["expected"]["missing"] > 0.05


def test_a_version_without_numeric_features_has_no_profile(root, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(3)
    colour = rng.choice(["red", "green", "blue"], 400)
    data = model_dir(root) / "data"
    data.mkdir(parents=True)
    lines = ["colour,answer"] + [f"{c},{'yes' if c == 'red' else 'no'}" for c in colour]
    (data / "colours.csv").write_text("\n".join(lines) + "\n")
    code, summary, err = run_trainer(config(root, features=["colour"], target="answer"), tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    assert "no input profile: no numeric feature" in err
    assert inputprofile.PROFILE_KEY not in metadata(root, 1)  # optional: the operator then judges no input drift


def test_after_a_cut_the_profile_is_of_the_rows_the_published_model_trained_on(drifted, tmp_path, monkeypatch, capsys):
    """Cross-fitted after the drift: the published model trains on the rows since the cut (judged out of fold,
    so also the `holdout`) and maybe the history: the profile has exactly those rows."""
    root = drifted
    code, summary, _ = run_trainer(config(root, version=2, parentVersion=1, **FAST), tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    meta = metadata(root, 2)
    assert meta["holdout"]["strategy"] == "post_change_cross_fitted"
    profile = meta[inputprofile.PROFILE_KEY]
    data = meta["trainingData"]
    assert profile["rows"] == meta["rows"]["train"] == data["trainBase"] + data["trainFeedback"]
    assert profile["rows"] == meta["rows"]["holdout"]  # trained on the rows since the cut, which are judged on
    assert profile["rows"] < meta["rows"]["base"] + BEFORE + AFTER  # the older concept and the base data left out
    assert list(profile["features"]) == meta["features"]
    assert inputprofile.valid_profile(profile) == profile


def test_an_incremental_version_profiles_the_window_s_training_split(root, tmp_path, monkeypatch, capsys):
    """An incremental model continues the champion: its profile is of the window's training split (base data
    and the feedback outside the holdout), not of this run's new rows alone."""
    write_base(root)
    assert run_trainer(config(root, estimator="sgd", now=NOW - 3 * DAY), tmp_path, monkeypatch, capsys)[0] == 0
    write_feedback(root, n=2000, drift_at=(0,))
    document = config(root, version=2, parentVersion=1, estimator="sgd", incremental=True, incrementalSteps=5)
    code, summary, _ = run_trainer(document, tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    meta = metadata(root, 2)
    rows = meta["rows"]
    assert rows["train"] == 1500  # the new feedback outside the holdout
    assert meta[inputprofile.PROFILE_KEY]["rows"] == rows["base"] + rows["feedback"] - rows["holdout"]


def test_at_most_rows_are_profiled_evenly_spaced(root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(input_profile, "ROWS", 300)
    write_base(root)
    code, summary, _ = run_trainer(config(root), tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    profile = metadata(root, 1)[inputprofile.PROFILE_KEY]
    assert summary["rows"]["train"] > 300 and profile["rows"] == 300
    assert len(profile["features"]) == 10 and inputprofile.valid_profile(profile) == profile


def test_sample_positions_are_evenly_spaced_and_deterministic():
    assert input_profile.sample_positions(5, 10).tolist() == [0, 1, 2, 3, 4]
    assert input_profile.sample_positions(0, 10).tolist() == []
    picked = input_profile.sample_positions(1_000_003, 100_000)
    assert len(picked) == 100_000 and picked[0] == 0 and picked[-1] == 1_000_002
    gaps = np.diff(picked)
    assert gaps.min() >= 1 and gaps.max() - gaps.min() <= 1  # distinct, increasing, evenly spaced
    assert np.array_equal(picked, input_profile.sample_positions(1_000_003, 100_000))


def test_features_without_a_value_are_skipped_and_at_most_max_features_kept(monkeypatch):
    monkeypatch.setattr(input_profile, "MIN_ROWS", 1)
    empty = np.full(4, np.nan)
    columns = [("none", empty), *((f"f{i}", np.array([0.0, 1.0, np.nan, np.inf])) for i in range(40))]
    kept = input_profile.profiled(iter(columns))
    assert list(kept) == [f"f{i}" for i in range(inputprofile.MAX_FEATURES)]
    assert all(type(value) is float for value in kept["f0"])  # plain floats for make_profile
    entry = input_profile.make(kept)["features"]["f0"]  # type: ignore[index]
    assert entry["expected"]["missing"] == 0.5  # NaN and inf are missing values
    assert input_profile.make({}) is None and input_profile.make({"none": empty.tolist()}) is None
