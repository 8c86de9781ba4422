"""The trainer after a concept drift, in-process: the served error rises, the trainer cuts there, trains on
the concept since (cross-fitted), and the next version keeps the cut without a new rise."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from mfl_testbed import datasets
from mfl_trainer import plan

from .test_train import DAY, NOW, config, model_dir, root, run_trainer, version_path, write_base

__all__ = ["root"]  # the artifact-store fixture, shared with test_train

BEFORE, AFTER = 1500, 600  # feedback rows on the old concept, then on the new one
STEP = 60.0
START = NOW - 2 * DAY
DRIFT_TS = START + BEFORE * STEP  # prediction time of the first row of the new concept
FAST = {"estimator": "logistic_regression"}  # the concepts are hyperplanes; fits in milliseconds


def read(root: Path, version: int, name: str) -> dict[str, Any]:
    return json.loads((version_path(root, version) / name).read_text())


def served_stream(
    root: Path, version: int, n: int, drift_at: list[int], start: float, seed: int
) -> tuple[datasets.Stream, np.ndarray]:
    """`n` labelled predictions served by `version` (its predictions logged), one every STEP seconds."""
    stream = datasets.drift_stream(n, drift_at=drift_at, seed=seed)
    served = joblib.load(version_path(root, version) / "model.joblib").predict(stream.X)
    ts = start + np.arange(n) * STEP
    datasets.write_feedback_logs(
        model_dir(root), stream.X, stream.y, stream.feature_names, ts, version, predictions=served
    )
    return stream, served


def train(root: Path, tmp_path, monkeypatch, capsys, **overrides: Any) -> tuple[dict[str, Any], str]:
    code, summary, err = run_trainer(config(root, **{**FAST, **overrides}), tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    return summary, err


@pytest.fixture
def drifted(root, tmp_path, monkeypatch, capsys) -> Path:
    """Version 1 (base data, concept 0) served 1500 rows of concept 0, then 600 of concept 1."""
    write_base(root)
    train(root, tmp_path, monkeypatch, capsys, now=START - DAY)
    stream, served = served_stream(root, 1, BEFORE + AFTER, [BEFORE], START, seed=2)
    assert np.mean(served[:BEFORE] != stream.y[:BEFORE]) < 0.15  # the champion was right before the drift
    assert np.mean(served[BEFORE:] != stream.y[BEFORE:]) > 0.35  # and near chance after it
    return root


@pytest.mark.parametrize(
    "estimator",
    [FAST, {"estimator": "hist_gradient_boosting", "hyperparameters": {"max_iter": 30}}],
    ids=["logistic_regression", "hist_gradient_boosting"],
)
def test_the_trainer_cuts_at_the_drift_and_trains_on_the_new_concept(estimator, drifted, tmp_path, monkeypatch, capsys):
    root = drifted
    summary, err = train(root, tmp_path, monkeypatch, capsys, version=2, parentVersion=1, **estimator)

    data = read(root, 2, "metadata.json")["trainingData"]
    cut = data["cut"]
    assert cut is not None and abs(cut["ts"] - DRIFT_TS) <= 10 * STEP
    assert cut["errorBefore"] < 0.15 and cut["errorAfter"] > 0.35 and cut["pValue"] < 1e-6
    assert cut["rowsBefore"] + cut["rowsAfter"] == BEFORE + AFTER
    assert data["conceptSince"] == cut["ts"] and data["inheritedCut"] is False
    assert data["holdoutStrategy"] == plan.CROSS_FITTED
    assert set(data["recipes"]) == {plan.SINCE_CUT, plan.WITH_HISTORY}
    assert all(0.0 <= score <= 1.0 for score in data["recipes"].values())
    # After an abrupt drift the rows since the cut alone predict the new concept better than with the
    # old history (2000 base rows and 1500 window rows of the old concept): only they are trained on.
    assert data["recipes"][plan.SINCE_CUT] > data["recipes"][plan.WITH_HISTORY] + 0.05
    assert data["trainBase"] == 0 and data["trainFeedback"] == cut["rowsAfter"]
    assert "change point: the served error rose" in err and "chose sinceCut" in err

    metadata = read(root, 2, "metadata.json")
    report = read(root, 2, "report.json")
    assert report["trainingData"] == data
    assert metadata["rows"]["holdout"] == metadata["rows"]["train"] == cut["rowsAfter"]
    assert metadata["holdout"]["strategy"] == plan.CROSS_FITTED
    assert report["holdout"]["timeRange"] == [cut["ts"], START + (BEFORE + AFTER - 1) * STEP]
    # The challenger is judged out of fold on the rows since the cut; it beats the stale champion.
    challenger, champion = report["challenger"]["metrics"]["accuracy"], report["champion"]["metrics"]["accuracy"]
    assert challenger > champion + 0.15
    assert data["recipes"][plan.SINCE_CUT] == pytest.approx(challenger, abs=1e-9)
    paired = report["paired"]
    assert set(paired) == {"challengerOnly", "championOnly"}
    rows = report["holdout"]["rows"]
    assert (paired["challengerOnly"] - paired["championOnly"]) / rows == pytest.approx(challenger - champion, abs=1e-5)
    assert summary["paired"] == paired and summary["conceptSince"] == cut["ts"]
    assert summary["holdout"] == plan.CROSS_FITTED


def test_the_next_version_keeps_the_cut_without_a_new_rise(drifted, tmp_path, monkeypatch, capsys):
    root = drifted
    train(root, tmp_path, monkeypatch, capsys, version=2, parentVersion=1)
    since = read(root, 2, "metadata.json")["trainingData"]["conceptSince"]
    # Version 2 serves 800 more rows of the new concept; the next window starts after the drift's rows.
    later = NOW + 3 * 3600
    stream, served = served_stream(root, 2, 800, [0], later, seed=5)
    assert np.mean(served != stream.y) < 0.3

    summary, _ = train(
        root, tmp_path, monkeypatch, capsys, version=3, parentVersion=2, now=NOW + DAY, dataWindowSeconds=DAY - 2 * 3600
    )

    data = read(root, 3, "metadata.json")["trainingData"]
    assert data["cut"] is None and data["inheritedCut"] is True
    assert data["conceptSince"] == since and summary["conceptSince"] == since
    assert data["holdoutStrategy"] == plan.CROSS_FITTED
    assert data["trainBase"] == 0 and data["trainFeedback"] == 800  # all of the window is since the cut
    assert summary["rows"] == {"base": 2000, "feedback": 800, "train": 800, "holdout": 800}
    assert summary["paired"] is not None


def test_change_point_off_trains_on_the_base_data_and_the_window(drifted, tmp_path, monkeypatch, capsys):
    root = drifted
    summary, err = train(root, tmp_path, monkeypatch, capsys, version=2, parentVersion=1, changePoint=False)

    data = read(root, 2, "metadata.json")["trainingData"]
    assert data["cut"] is None and data["conceptSince"] is None and data["inheritedCut"] is False
    assert data["holdoutStrategy"] == "time_ordered_feedback" and data["recipes"] is None
    holdout = round(0.25 * (BEFORE + AFTER))
    assert data["trainBase"] == 2000 and data["trainFeedback"] == BEFORE + AFTER - holdout
    assert summary["rows"] == {"base": 2000, "feedback": BEFORE + AFTER, "train": 3575, "holdout": holdout}
    assert summary["conceptSince"] is None and "change point" not in err


def test_change_point_off_ignores_the_champions_cut(drifted, tmp_path, monkeypatch, capsys):
    root = drifted
    train(root, tmp_path, monkeypatch, capsys, version=2, parentVersion=1)
    assert read(root, 2, "metadata.json")["trainingData"]["conceptSince"] is not None
    train(root, tmp_path, monkeypatch, capsys, version=3, parentVersion=2, changePoint=False)
    data = read(root, 3, "metadata.json")["trainingData"]
    assert data["conceptSince"] is None and data["trainBase"] == 2000


def _strip_predictions(root: Path, remove_key: bool) -> None:
    for path in (model_dir(root) / "predictions").rglob("*.jsonl"):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for record in records:
            if remove_key:
                del record["prediction"]
            else:
                record["prediction"] = None
        path.write_text("".join(json.dumps(record) + "\n" for record in records))


@pytest.mark.parametrize("remove_key", [True, False], ids=["no prediction field", "prediction null"])
def test_logs_without_predictions_train_as_before(remove_key, drifted, tmp_path, monkeypatch, capsys):
    root = drifted
    _strip_predictions(root, remove_key)
    summary, err = train(root, tmp_path, monkeypatch, capsys, version=2, parentVersion=1)

    data = read(root, 2, "metadata.json")["trainingData"]
    assert data["cut"] is None and data["conceptSince"] is None
    assert data["holdoutStrategy"] == "time_ordered_feedback"
    assert data["trainBase"] == 2000
    assert summary["holdout"] == "time_ordered_feedback" and summary["rows"]["train"] == 3575
    assert "change point" not in err
    assert read(root, 2, "report.json")["paired"] is not None


# --- regression: the error stream is the absolute error ----------------------------------------------


def _write_regression_logs(root: Path, X: np.ndarray, y: np.ndarray, served: np.ndarray, ts: np.ndarray) -> None:
    """Prediction and feedback lines as the server writes them (docs/contracts.md), float labels."""
    lines: dict[Path, list[str]] = {}
    for i, (row, label, guess, t) in enumerate(zip(X, y, served, ts)):
        row_id = f"r-{i}"
        prediction = {
            "id": row_id,
            "ts": float(t),
            "version": 1,
            "track": "stable",
            "features": dict(zip("abc", map(float, row))),
            "prediction": float(guess),
        }
        feedback = {"id": row_id, "ts": float(t) + 30.0, "label": float(label)}
        for folder, record in (("predictions", prediction), ("feedback", feedback)):
            day = datetime.fromtimestamp(record["ts"], tz=UTC).strftime("%Y-%m-%d")
            lines.setdefault(model_dir(root) / folder / f"date={day}" / "host-0.jsonl", []).append(json.dumps(record))
    for path, content in lines.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(content) + "\n")


def test_regression_drift_cuts_on_the_absolute_error(root, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(8)
    old, new = np.array([3.0, -2.0, 1.0]), np.array([-3.0, 2.0, 1.0])
    X_base = rng.random((600, 3))
    y_base = X_base @ old + rng.normal(0, 0.1, 600)
    (model_dir(root) / "data").mkdir(parents=True)
    rows = ["a,b,c,price"] + [f"{r[0]},{r[1]},{r[2]},{t}" for r, t in zip(X_base, y_base)]
    (model_dir(root) / "data" / "prices.csv").write_text("\n".join(rows) + "\n")
    settings = {"task": "regression", "features": ["a", "b", "c"], "target": "price", "estimator": "ridge"}
    train(root, tmp_path, monkeypatch, capsys, now=START - DAY, **settings)

    X = rng.random((1400, 3))
    y = np.concatenate([X[:1000] @ old, X[1000:] @ new]) + rng.normal(0, 0.1, 1400)
    served = joblib.load(version_path(root, 1) / "model.joblib").predict(X)
    _write_regression_logs(root, X, y, served, START + STEP * np.arange(1400))
    summary, _ = train(root, tmp_path, monkeypatch, capsys, version=2, parentVersion=1, **settings)

    data = read(root, 2, "metadata.json")["trainingData"]
    assert data["cut"] is not None and abs(data["cut"]["ts"] - (START + 1000 * STEP)) <= 10 * STEP
    assert data["cut"]["errorBefore"] < 0.2 < 1.0 < data["cut"]["errorAfter"]
    assert data["holdoutStrategy"] == plan.CROSS_FITTED
    # recipes hold the metric itself (mae: lower is better) and the lower one is trained
    assert 0 < data["recipes"][plan.SINCE_CUT] < 0.2 < data["recipes"][plan.WITH_HISTORY]
    assert data["trainBase"] == 0 and summary["conceptSince"] == data["cut"]["ts"]
    assert summary["metric"] == "mae" and summary["challenger"]["mae"] == pytest.approx(
        data["recipes"][plan.SINCE_CUT], abs=1e-5
    )
    assert summary["paired"]["challengerOnly"] > summary["paired"]["championOnly"]
