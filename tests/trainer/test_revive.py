"""Reviving a past version (revive.py): version 1 learned concept A, version 2 (the champion) concept B; when
concept A comes back, the next version is version 1's model, judged on the holdout as the one to be served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from mfl_server.model import load_model
from mfl_testbed import datasets
from mfl_trainer import plan

from .test_train import DAY, FEATURES, NOW, config, model_dir, root, run_trainer, version_path

__all__ = ["root"]  # the artifact-store fixture, shared with test_train

A, B, C = 0, 1, 2  # hyperplane concepts
STEP = 60.0
FAST = {"estimator": "logistic_regression"}
V1_NOW, V2_NOW = NOW - 9 * DAY, NOW - 5 * DAY  # when versions 1 and 2 were trained (their windows' ends)
SERVED_FROM = NOW - 2 * DAY  # version 2 serves 300 rows of concept B, then 150 of the returning concept
BEFORE, AFTER = 300, 150


def read(root: Path, version: int, name: str) -> dict[str, Any]:
    return json.loads((version_path(root, version) / name).read_text())


def log_rows(root: Path, concept: int, n: int, start: float, seed: int, served_by: int | None = None) -> None:
    """`n` labelled rows of `concept`, one every STEP seconds from `start` (predicted by `served_by`)."""
    X = datasets.sample_features(n, seed)
    y = datasets.concept_labels(X, concept)
    served = None
    if served_by is not None:
        served = joblib.load(version_path(root, served_by) / "model.joblib").predict(X)
    ts = start + np.arange(n) * STEP
    datasets.write_feedback_logs(model_dir(root), X, y, FEATURES, ts, served_by or 1, predictions=served)


def train(root: Path, tmp_path, monkeypatch, capsys, **overrides: Any) -> dict[str, Any]:
    code, summary, _ = run_trainer(config(root, **{**FAST, **overrides}), tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    return summary


@pytest.fixture
def registry(root, tmp_path, monkeypatch, capsys) -> Path:
    """Version 1 trained on 1200 rows of concept A, version 2 (the champion) on 800 rows of concept B."""
    log_rows(root, A, 1200, V1_NOW - DAY, seed=1)
    train(root, tmp_path, monkeypatch, capsys, version=1, now=V1_NOW, dataWindowSeconds=DAY)
    log_rows(root, B, 800, V2_NOW - DAY, seed=2, served_by=1)
    train(root, tmp_path, monkeypatch, capsys, version=2, parentVersion=1, now=V2_NOW, dataWindowSeconds=DAY)
    return root


def returning(root: Path, concept: int) -> None:
    """Version 2 serves its concept B, then `concept`: the served error rises there."""
    log_rows(root, B, BEFORE, SERVED_FROM, seed=3, served_by=2)
    log_rows(root, concept, AFTER, SERVED_FROM + BEFORE * STEP, seed=4, served_by=2)


def retrain(root, tmp_path, monkeypatch, capsys, version: int = 3, **overrides: Any) -> dict[str, Any]:
    return train(
        root, tmp_path, monkeypatch, capsys, version=version, parentVersion=2, dataWindowSeconds=3 * DAY, **overrides
    )


def test_a_returning_concept_revives_the_version_that_learned_it(registry, tmp_path, monkeypatch, capsys):
    root = registry
    returning(root, A)

    summary = retrain(root, tmp_path, monkeypatch, capsys)

    metadata, report = read(root, 3, "metadata.json"), read(root, 3, "report.json")
    assert summary["revivedFrom"] == metadata["revivedFrom"] == report["revivedFrom"] == 1
    # The same fitted model, byte for byte, described as version 1 describes it, served as version 3.
    new, old = version_path(root, 3), version_path(root, 1)
    assert (new / "model.joblib").read_bytes() == (old / "model.joblib").read_bytes()
    past = read(root, 1, "metadata.json")
    for key in ("features", "featureTypes", "classes", "format", "servingOutput", "estimator", "hyperparameters"):
        assert metadata[key] == past[key], key
    assert metadata["version"] == 3 and metadata["parentVersion"] == 2
    assert read(root, 3, "model-settings.json")["parameters"] == {"uri": "./model.joblib", "version": "3"}
    served = load_model(new, 3)  # a valid version for the server, which predicts as version 1 does
    X = datasets.sample_features(50, seed=9)
    assert served.features == past["features"] and served.classes == past["classes"]
    assert served.predict(X) == load_model(old, 1).predict(X)
    assert metadata["trainingData"]["holdoutStrategy"] == plan.CROSS_FITTED
    # The report judges the revived model on the holdout the trained challenger and the champion were judged on.
    revival = metadata["revival"]
    assert revival == report["revival"] and revival["considered"] == [1] and revival["skipped"] == {}
    accuracy = report["challenger"]["metrics"]["accuracy"]
    assert accuracy == revival["scores"]["1"] >= revival["trainedChallenger"]
    assert report["champion"]["metrics"]["accuracy"] == revival["champion"] < accuracy
    assert metadata["metrics"]["challenger"] == report["challenger"]["metrics"] == summary["challenger"]
    # The paired counts are version 1's against the champion: the gate's sign test sees a clear win.
    paired = report["paired"]
    assert summary["paired"] == paired and paired["challengerOnly"] > 3 * max(paired["championOnly"], 1)
    rows = report["holdout"]["rows"]
    assert rows == AFTER
    champion_accuracy = report["champion"]["metrics"]["accuracy"]
    assert (paired["challengerOnly"] - paired["championOnly"]) / rows == pytest.approx(
        accuracy - champion_accuracy, abs=1e-5
    )


def test_a_new_concept_is_trained_as_before(registry, tmp_path, monkeypatch, capsys):
    root = registry
    returning(root, C)

    summary = retrain(root, tmp_path, monkeypatch, capsys)

    metadata, report = read(root, 3, "metadata.json"), read(root, 3, "report.json")
    assert summary["revivedFrom"] is None and "revivedFrom" not in metadata and "revivedFrom" not in report
    revival = metadata["revival"]
    assert revival["revivedFrom"] is None and revival["considered"] == [1]
    assert revival["scores"]["1"] < revival["trainedChallenger"]
    assert report["challenger"]["metrics"]["accuracy"] == revival["trainedChallenger"]
    assert (version_path(root, 3) / "model.joblib").read_bytes() != (
        version_path(root, 1) / "model.joblib"
    ).read_bytes()


def test_revival_off_trains_as_before(registry, tmp_path, monkeypatch, capsys):
    root = registry
    returning(root, A)

    summary = retrain(root, tmp_path, monkeypatch, capsys, reviveVersions=0)

    metadata = read(root, 3, "metadata.json")
    assert summary["revivedFrom"] is None and "revival" not in metadata and "revivedFrom" not in metadata


def test_a_past_version_that_fails_to_load_is_skipped(registry, tmp_path, monkeypatch, capsys):
    root = registry
    broken = version_path(root, 3)  # a version whose model file is damaged (a copy of version 1's metadata)
    shutil.copytree(version_path(root, 1), broken)
    (broken / "model.joblib").write_bytes(b"not a pickle")
    returning(root, A)

    summary = retrain(root, tmp_path, monkeypatch, capsys, version=4)

    revival = read(root, 4, "metadata.json")["revival"]
    assert revival["considered"] == [3, 1] and set(revival["scores"]) == {"1"}
    assert "cannot load model.joblib" in revival["skipped"]["3"]
    assert summary["revivedFrom"] == revival["revivedFrom"] == 1
