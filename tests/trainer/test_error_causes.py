"""Trainer errors name their true cause and the fix (issue 22, Build 5). Each case was reported as something
else before: "too few rows" (a feature the logs lack, an empty target column), "no features" (an empty window),
"base data lacks a column" (a column only the champion uses), "one class after the holdout" (the rows since a
change point, when the history had both classes)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mfl_testbed import datasets
from tests.trainer.test_train import DAY, FEATURES, NOW, config, model_dir, run_trainer, write_base, write_feedback

FAST = {"hyperparameters": {"max_iter": 30}}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


def test_a_feature_no_logged_prediction_has_is_named_not_too_few_rows(root, tmp_path, monkeypatch, capsys):
    write_feedback(root, n=800)  # a loop without base data: the rows are the logs'
    code, summary, _ = run_trainer(config(root, features=[*FEATURES, "tenure"]), tmp_path, monkeypatch, capsys)
    assert code == 2
    error = summary["error"]
    assert error.startswith("too few rows: 0 labelled rows (base 0, feedback 0) < minRows 200: ")
    assert "800 feedback rows were left out because their logged prediction lacks a feature ('tenure' in 800 rows)" in (
        error
    )
    assert "drop them from retraining.features" in error


def test_an_empty_target_column_is_named_not_too_few_rows(root, tmp_path, monkeypatch, capsys):
    data = model_dir(root) / "data"
    data.mkdir(parents=True)
    (data / "base.csv").write_text("x0,label\n" + "".join(f"{i},\n" for i in range(300)))
    code, summary, _ = run_trainer(config(root, features=["x0"]), tmp_path, monkeypatch, capsys)
    assert code == 2
    assert "300 base rows were left out because the target column 'label' is empty in them" in summary["error"]
    assert "fill it in the base data" in summary["error"]


@pytest.mark.parametrize("logs", ["none", "outside the window"])
def test_an_empty_window_is_no_data_not_no_features(logs, root, tmp_path, monkeypatch, capsys):
    if logs == "outside the window":
        write_feedback(root, n=300, start=NOW - 30 * DAY)
    document = {key: value for key, value in config(root).items() if key != "features"}
    code, summary, _ = run_trainer(document, tmp_path, monkeypatch, capsys)
    assert code == 2
    assert summary["error"].startswith("no data: no base data (*.csv) in ")
    assert "no labelled feedback in the data window" in summary["error"]
    assert "widen retraining.dataWindow" in summary["error"]


def test_a_column_only_the_champion_uses_names_the_champion(root, tmp_path, monkeypatch, capsys):
    write_base(root, n=1000)
    assert run_trainer(config(root, now=NOW - 3 * DAY, **FAST), tmp_path, monkeypatch, capsys)[0] == 0
    path = model_dir(root) / "data" / "base.csv"
    rows = list(csv.reader(path.open()))
    drop = rows[0].index("x9")
    path.write_text("".join(",".join(v for i, v in enumerate(row) if i != drop) + "\n" for row in rows))
    write_feedback(root, n=400)

    document = config(root, version=2, parentVersion=1, features=FEATURES[:9], **FAST)
    code, summary, _ = run_trainer(document, tmp_path, monkeypatch, capsys)

    assert code == 2
    assert summary["error"].startswith(
        f"champion version 1 was trained with feature(s) ['x9'] (its metadata's features), which base data {path} lacks"
    )
    assert "put the column(s) back in the base data" in summary["error"]


def test_rows_since_a_change_point_of_one_class_train_with_the_history(root, tmp_path, monkeypatch, capsys):
    """After a rise of the served error every new label is one class: the recipe of the rows since the cut
    cannot train a classifier, so the one with the history (both classes) is trained, not a refusal that
    blamed the holdout."""
    write_base(root, n=1000)
    assert run_trainer(config(root, now=NOW - 3 * DAY, **FAST), tmp_path, monkeypatch, capsys)[0] == 0
    stream = datasets.drift_stream(1000, drift_at=[0], seed=2)
    y = stream.y.copy()
    y[500:] = 1
    served = np.where(np.arange(1000) < 500, y, 0)  # right before, wrong after: the error rose at row 500
    ts = NOW - 2 * DAY + np.arange(1000) * 60.0
    datasets.write_feedback_logs(model_dir(root), stream.X, y, stream.feature_names, ts, predictions=served)

    code, summary, err = run_trainer(config(root, version=2, parentVersion=1, **FAST), tmp_path, monkeypatch, capsys)

    assert code == 0, summary
    assert summary["holdout"] == "post_change_cross_fitted"
    assert "recipes ['sinceCut'] left out: their rows hold a single class" in err
    metadata = json.loads((model_dir(root) / "versions" / "2" / "metadata.json").read_text())
    assert metadata["trainingData"]["recipes"] == {"withHistory": metadata["trainingData"]["recipes"]["withHistory"]}
    assert metadata["classes"] == [0, 1]
