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


@pytest.mark.parametrize("generator", ["hyperplane", "agrawal"])
def test_covariate_shift_moves_the_inputs_and_keeps_the_concept(generator):
    stream = datasets.covariate_shift_stream(6000, 3000, seed=2, generator=generator, noise=0.0)
    before, after = stream.X[:3000], stream.X[3000:]
    assert np.array_equal(before, datasets.sample_features(6000, 2, generator)[:3000])
    assert np.max(np.abs(after.std(axis=0) / before.std(axis=0) - 1)) > 0.25  # some feature's spread moved
    assert np.array_equal(stream.y, datasets.concept_labels(stream.X, 0, generator))
    assert set(stream.concept) == {0} and 0.2 < stream.y[3000:].mean() < 0.9


def test_recurring_concepts_come_back_to_the_same_concept():
    stream = datasets.recurring_stream(4000, [1000, 2000, 3000], cycle=(0, 1), seed=1, noise=0.0)
    assert [set(stream.concept[i : i + 1000]) for i in range(0, 4000, 1000)] == [{0}, {1}, {0}, {1}]
    assert np.array_equal(stream.y, datasets.concept_labels(stream.X, stream.concept))
    assert np.mean(stream.y[1000:2000] != datasets.concept_labels(stream.X[1000:2000], 0)) > 0.25
    plain = datasets.drift_stream(4000, [1000, 2000, 3000], seed=1, noise=0.0)
    assert np.array_equal(stream.X, plain.X) and np.array_equal(stream.y[:2000], plain.y[:2000])


@pytest.mark.parametrize("generator", ["hyperplane", "agrawal"])
def test_prior_shift_changes_the_class_balance_and_keeps_the_concept(generator):
    stream = datasets.prior_shift_stream(6000, 3000, positive_share=0.85, seed=3, generator=generator, noise=0.0)
    assert np.array_equal(stream.y, datasets.concept_labels(stream.X, 0, generator))
    assert abs(stream.y[3000:].mean() - 0.85) < 0.03 and abs(stream.y[:3000].mean() - 0.85) > 0.1
    assert np.array_equal(stream.X[:3000], datasets.sample_features(6000, 3, generator)[:3000])


def test_a_rotating_hyperplane_parts_from_concept_0_a_little_every_row():
    stream = datasets.rotating_stream(6000, 2000, turn=np.pi / 2, seed=1, noise=0.0)
    agree = stream.y == datasets.concept_labels(stream.X, 0)
    assert agree[:2000].all() and list(stream.concept[1999:2001]) == [0, 1]
    shares = [agree[i : i + 1000].mean() for i in range(2000, 6000, 1000)]
    assert all(a > b for a, b in zip(shares, shares[1:])) and shares[0] > 0.85 and shares[-1] < 0.7
    assert np.mean(stream.y[-200:] != datasets.concept_labels(stream.X[-200:], 1)) < 0.2  # near concept 1's


def test_a_noise_burst_flips_labels_only_inside_it_then_the_labels_are_clean_again():
    stream = datasets.noise_burst_stream(5000, (2000, 3000), burst_noise=0.3, seed=4)
    plain = datasets.drift_stream(5000, (), seed=4)
    changed = stream.y != plain.y
    assert not changed[:2000].any() and not changed[3000:].any()
    assert 0.25 < changed[2000:3000].mean() < 0.35
    assert np.array_equal(stream.X, plain.X) and set(stream.concept) == {0}


def test_existing_streams_are_unchanged_by_the_new_generators():
    """Fingerprints of drift_stream's output as it was before the new generators (and the benchmark's
    existing streams with it) were added."""
    stream = datasets.drift_stream(2000, [700, 1400], kind="gradual", width=300, seed=7, generator="agrawal")
    assert (int(stream.y.sum()), int(stream.concept.sum())) == (1043, 1890)
    stream = datasets.drift_stream(500, [250], seed=1)
    assert (round(float(stream.X.sum()), 6), int(stream.y.sum())) == (2487.324172, 242)
