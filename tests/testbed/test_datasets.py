"""The synthetic concept-drift generator shared by tests, demo and benchmarks."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mfl_testbed import datasets


def test_streams_are_deterministic():
    first = datasets.drift_stream(500, drift_at=[250], seed=3)
    second = datasets.drift_stream(500, drift_at=[250], seed=3)
    assert np.array_equal(first.X, second.X) and np.array_equal(first.y, second.y)
    assert not np.array_equal(first.X, datasets.drift_stream(500, drift_at=[250], seed=4).X)


def test_abrupt_drift_switches_the_concept_at_the_position():
    stream = datasets.drift_stream(1000, drift_at=[400, 700], kind="abrupt", noise=0.0)
    assert stream.concept[:400].tolist() == [0] * 400
    assert set(stream.concept[400:700]) == {1} and set(stream.concept[700:]) == {2}
    assert np.array_equal(stream.y, datasets.concept_labels(stream.X, stream.concept))


def test_gradual_drift_mixes_old_and_new_concepts_around_the_position():
    concept = datasets.concept_index(4000, drift_at=[2000], kind="gradual", width=1000)
    assert concept[:1000].mean() < 0.05 and concept[-1000:].mean() > 0.95
    assert 0.3 < concept[1800:2200].mean() < 0.7
    assert np.all(np.diff(datasets.concept_index(100, [30, 60], "gradual", 1, seed=1)) >= 0)


@pytest.mark.parametrize("generator", ["hyperplane", "agrawal"])
def test_a_new_concept_relabels_many_rows(generator):
    X = datasets.sample_features(5000, seed=1, generator=generator)
    before, after = datasets.concept_labels(X, 0, generator), datasets.concept_labels(X, 1, generator)
    assert 0.2 < before.mean() < 0.8
    assert np.mean(before != after) > 0.25
    assert X.shape[1] == len(datasets.feature_names(generator))


def test_concepts_do_not_depend_on_the_sampling_seed():
    X = datasets.sample_features(100, seed=5)
    assert np.array_equal(datasets.drift_stream(100, seed=5, noise=0.0).y, datasets.concept_labels(X, 0))


def test_noise_flips_about_that_share():
    clean = datasets.drift_stream(10_000, seed=1, noise=0.0).y
    noisy = datasets.drift_stream(10_000, seed=1, noise=0.1).y
    assert 0.08 < np.mean(clean != noisy) < 0.12


def test_write_base_csv(tmp_path):
    path = tmp_path / "m" / "data" / "base.csv"
    names = datasets.write_base_csv(path, 20, seed=2, n_features=4, target="y")
    rows = list(csv.reader(path.open()))
    assert names == ["x0", "x1", "x2", "x3"] and rows[0] == [*names, "y"] and len(rows) == 21
    assert {r[-1] for r in rows[1:]} <= {"0", "1"}


def test_write_feedback_logs_uses_the_contract_layout(tmp_path):
    stream = datasets.drift_stream(3, seed=1)
    ts = [1_764_000_000.0, 1_764_000_001.0, 1_764_090_000.0]  # the last on the next UTC day
    ids = datasets.write_feedback_logs(
        tmp_path, stream.X, stream.y, stream.feature_names, ts, predictions=np.array([1, 0, 1])
    )
    days = sorted(p.name for p in (tmp_path / "predictions").iterdir())
    assert days == ["date=2025-11-24", "date=2025-11-25"]
    first = json.loads((tmp_path / "predictions" / days[0] / "synthetic-0.jsonl").read_text().splitlines()[0])
    assert first["id"] == ids[0] and first["ts"] == ts[0] and set(first["features"]) == set(stream.feature_names)
    assert first["prediction"] == 1
    label = json.loads((tmp_path / "feedback" / days[0] / "synthetic-0.jsonl").read_text().splitlines()[0])
    assert label["id"] == ids[0] and label["label"] == int(stream.y[0]) and label["predictionTs"] == ts[0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="generator"):
        datasets.sample_features(3, generator="sea")
    with pytest.raises(ValueError, match="kind"):
        datasets.concept_index(3, [1], kind="sudden")
