"""Logged labels that are not a class of the task (issue 22, Build 5): left out and counted, as the server
refuses them, never a crash or a new class; the classes come from the champion (its metadata, else its
estimator) and the base data."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mfl_testbed import datasets
from mfl_trainer import datasource, tables
from tests.trainer.test_train import (
    DAY,
    NOW,
    config,
    model_dir,
    run_trainer,
    version_path,
    write_base,
)

FAST = {"hyperparameters": {"max_iter": 30}}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


def write_labelled(root: Path, n: int, foreign: dict[int, Any]) -> None:
    """``n`` labelled predictions in the window; row ``i`` of ``foreign`` gets that label instead of its class
    (a label another server took, or one taken before servers refused it)."""
    stream = datasets.drift_stream(n, drift_at=[0], seed=2)
    ts = NOW - 2 * DAY + np.arange(n) * 60.0
    ids = datasets.write_feedback_logs(model_dir(root), stream.X, stream.y, stream.feature_names, ts)
    wanted = {ids[i]: label for i, label in foreign.items()}
    for path in (model_dir(root) / "feedback").rglob("*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        for line in lines:
            line["label"] = wanted.get(line["id"], line["label"])
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def trained_v1(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    write_base(root, n=1000)
    code, summary, _ = run_trainer(config(root, now=NOW - 3 * DAY, **FAST), tmp_path, monkeypatch, capsys)
    assert code == 0, summary


def metadata(root: Path, version: int) -> dict[str, Any]:
    return json.loads((version_path(root, version) / "metadata.json").read_text())


FOREIGN = {i: label for i, label in zip(range(0, 400, 4), ["maybe", 7, 2.5, "yes", -1] * 20)}
# Other spellings of the known classes are the same classes (1, 1.0, "1", " 0 ", True: the server's rule).
SPELLINGS = {1: "1", 5: 1.0, 9: " 0 ", 13: True, 17: "0.0"}


def test_labels_outside_the_classes_are_left_out_and_counted(root, tmp_path, monkeypatch, capsys):
    trained_v1(root, tmp_path, monkeypatch, capsys)
    write_labelled(root, 800, {**FOREIGN, **SPELLINGS})

    code, summary, err = run_trainer(config(root, version=2, parentVersion=1, **FAST), tmp_path, monkeypatch, capsys)

    assert code == 0, summary
    assert metadata(root, 2)["classes"] == [0, 1]  # never 7, 2.5, -1 or text
    assert summary["skipped"]["feedbackRowsWithUnknownClass"] == 100
    assert metadata(root, 2)["skipped"]["feedbackRowsWithUnknownClass"] == 100
    assert summary["rows"]["feedback"] == 700
    assert "left out 100 feedback rows whose label is not a class of the task (classes ['0', '1'], from " in err
    assert (
        "champion version 1 and the base data): '-1' in 20, '2.5' in 20, '7' in 20, 'maybe' in 20, 'yes' in 20" in err
    )


def test_a_champion_whose_metadata_lists_no_classes_gives_them_from_its_estimator(root, tmp_path, monkeypatch, capsys):
    """No base data any more, and metadata without classes (another trainer wrote it): the champion's fitted
    estimator says what the classes are."""
    trained_v1(root, tmp_path, monkeypatch, capsys)
    shutil.rmtree(model_dir(root) / "data")
    path = version_path(root, 1) / "metadata.json"
    path.write_text(json.dumps({**metadata(root, 1), "classes": None}))
    write_labelled(root, 800, FOREIGN)

    code, summary, err = run_trainer(config(root, version=2, parentVersion=1, **FAST), tmp_path, monkeypatch, capsys)

    assert code == 0, summary
    assert metadata(root, 2)["classes"] == [0, 1]
    assert summary["skipped"]["feedbackRowsWithUnknownClass"] == 100
    assert "(classes ['0', '1'], from champion version 1)" in err


def test_a_first_version_takes_its_classes_from_the_base_data(root, tmp_path, monkeypatch, capsys):
    write_base(root, n=1000)
    write_labelled(root, 400, {0: "churned", 1: "churned", 2: 3})

    code, summary, _ = run_trainer(config(root, **FAST), tmp_path, monkeypatch, capsys)

    assert code == 0, summary
    assert metadata(root, 1)["classes"] == [0, 1]
    assert summary["skipped"]["feedbackRowsWithUnknownClass"] == 3


def test_task_classes_and_the_table_rule():
    base = np.array([0.0, 1.0, np.nan, 1.0])
    assert tables.class_keys(base) == {"0", "1"}
    assert tables.class_keys(np.array(["yes", " no ", "", "NA"], dtype=object)) == {"yes", "no"}
    records = [
        {"id": f"r{i}", "ts": float(i), "features": {"a": float(i)}, "label": label}
        for i, label in enumerate([0, 1, "1", 1.0, True, "maybe", 7, None, "", [1], "maybe"])
    ]
    feedback = datasource.feedback_from_records(records)
    stats: Counter = Counter()
    table = tables.build_table(["a"], "label", "classification", None, feedback, stats, classes={"0", "1"})
    assert table.y.tolist() == [0, 1, 1, 1, 1]
    assert table.unknown_classes == {"maybe": 2, "7": 1, "[1]": 1}
    assert stats["feedbackRowsWithUnknownClass"] == 4 and stats["feedbackRowsWithBadLabel"] == 2
    # Without classes (no champion, no base data) every label is kept, as before.
    kept = tables.build_table(["a"], "label", "classification", None, feedback, Counter())
    assert len(kept) == 9 and kept.unknown_classes == {}
    # Regression is not a matter of classes.
    numbers = tables.build_table(["a"], "label", "regression", None, feedback, Counter(), classes={"0"})
    assert numbers.unknown_classes == {}
