"""`mfl report` says what a version was trained on: the change point it trained since (found now, found for an
earlier version, or none), the rows, how it was judged, the recipes, and the paired holdout counts the gate's
sign test used. Older reports, without these keys, still print; -o json|yaml gives report.json as it is."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from mfl_cli import cli

CHANGE = datetime(2026, 12, 2, 10, 4, 11, tzinfo=UTC).timestamp()
EARLIER = datetime(2026, 11, 20, 8, 0, 0, tzinfo=UTC).timestamp()

OLD_REPORT: dict[str, Any] = {  # as trainers before change-point training wrote it
    "model": "churn",
    "version": 4,
    "parentVersion": 3,
    "task": "classification",
    "target": "label",
    "metric": "accuracy",
    "holdout": {"rows": 300, "strategy": "time_ordered_feedback", "reason": "the newest 300 feedback rows"},
    "challenger": {"metrics": {"accuracy": 0.9}, "confusion": {"labels": [0, 1], "matrix": [[140, 10], [20, 130]]}},
    "champion": {"metrics": {"accuracy": 0.88}},
    "worstSlices": {"challenger": [{"feature": "x0", "bin": "[0, 0.2)", "accuracy": 0.7, "rows": 20}]},
}


def with_cut() -> dict[str, Any]:
    report = {**copy.deepcopy(OLD_REPORT), "version": 5, "parentVersion": 4}
    report["holdout"] = {
        "rows": 640,
        "strategy": "post_change_cross_fitted",
        "reason": "all 640 feedback rows since the cut at ts 1796205851, cross-fitted in 5 folds",
    }
    report["paired"] = {"challengerOnly": 212, "championOnly": 31}
    report["trainingData"] = {
        "conceptSince": CHANGE,
        "cut": {
            "ts": CHANGE,
            "errorBefore": 0.0812,
            "errorAfter": 0.4733,
            "statistic": 9.7,
            "pValue": 3e-12,
            "rowsBefore": 1210,
            "rowsAfter": 640,
            "method": "CUSUM, binary segmentation, alpha 0.01, min 100 rows per side",
        },
        "inheritedCut": False,
        "trainBase": 0,
        "trainFeedback": 640,
        "holdoutStrategy": "post_change_cross_fitted",
        "recipes": {"sinceCut": 0.861, "withHistory": 0.702},
    }
    return report


def inherited() -> dict[str, Any]:
    report = {**with_cut(), "version": 6, "parentVersion": 5}
    report["trainingData"].update(conceptSince=EARLIER, cut=None, inheritedCut=True, trainFeedback=820)
    report["trainingData"]["recipes"] = {"sinceCut": 0.84, "withHistory": 0.85}
    report["paired"] = {"challengerOnly": 14, "championOnly": 12}
    return report


def without_cut() -> dict[str, Any]:
    report = {**copy.deepcopy(OLD_REPORT), "version": 7, "parentVersion": 6}
    report["paired"] = {"challengerOnly": 40, "championOnly": 33}
    report["trainingData"] = {
        "conceptSince": None,
        "cut": None,
        "inheritedCut": False,
        "trainBase": 5000,
        "trainFeedback": 2100,
        "holdoutStrategy": "time_ordered_feedback",
        "recipes": None,
    }
    return report


def lines_of(report: dict[str, Any], tmp_path: Path) -> list[str]:
    return cli.render_report(report, tmp_path).splitlines()


def test_a_change_found_now() -> None:
    lines = lines_of(with_cut(), Path("/nonexistent"))
    assert lines[2] == (
        "training data:  since the change at 2026-12-02T10:04:11Z (served error 0.08 -> 0.47, CUSUM p=3e-12; "
        "1,210 rows before, 640 after)"
    )
    assert lines[3] == (
        "                trained on 640 feedback rows, 0 base rows; judged cross-fitted (5 folds); "
        "recipes: sinceCut 0.861 (trained), withHistory 0.702"
    )
    assert lines[4] == "paired:         challenger right where champion wrong on 212 rows, the reverse on 31"
    assert lines[0].startswith("churn version 5 (parent 4)") and lines[1].startswith("holdout: 640 rows")
    assert "== challenger: accuracy=0.9000" in lines  # the rest of the report follows as before


def test_a_change_found_for_an_earlier_version() -> None:
    lines = lines_of(inherited(), Path("/nonexistent"))
    assert lines[2] == "training data:  since the change at 2026-11-20T08:00:00Z found for an earlier version"
    assert lines[3] == (
        "                trained on 820 feedback rows, 0 base rows; judged cross-fitted (5 folds); "
        "recipes: sinceCut 0.840, withHistory 0.850 (trained)"
    )
    assert lines[4] == "paired:         challenger right where champion wrong on 14 rows, the reverse on 12"


def test_no_change_found() -> None:
    lines = lines_of(without_cut(), Path("/nonexistent"))
    assert lines[2] == "training data:  base data and the data window (no change found)"
    assert lines[3] == "                trained on 2,100 feedback rows, 5,000 base rows; judged on the newest feedback"
    assert "recipes" not in lines[3] and "too few" not in lines[3]
    assert lines[4] == "paired:         challenger right where champion wrong on 40 rows, the reverse on 33"


def test_a_change_with_too_few_rows_since_says_what_was_trained_on() -> None:
    report = with_cut()
    report["holdout"] = {"rows": 100, "strategy": "post_change_stratified", "reason": "100 of the 180 ..."}
    report["trainingData"].update(holdoutStrategy="post_change_stratified", trainBase=5000, trainFeedback=1310)
    report["trainingData"]["recipes"] = None
    line = lines_of(report, Path("/nonexistent"))[3]
    assert line == (
        "                trained on 1,310 feedback rows, 5,000 base rows (too few since the change to train on "
        "them alone); judged on a stratified share of the rows since the change"
    )


def test_a_first_version_has_no_paired_counts() -> None:
    report = without_cut()
    report.update(parentVersion=None, champion=None, paired=None)
    text = cli.render_report(report, Path("/nonexistent"))
    assert "training data:" in text and "paired:" not in text and "== champion" not in text


def test_regression_counts_say_closer() -> None:
    report = with_cut()
    report.update(task="regression", metric="mae", challenger={"metrics": {"mae": 1.2}}, champion=None)
    report["trainingData"]["recipes"] = {"sinceCut": 1.4, "withHistory": 1.2}  # lower mae is better
    lines = lines_of(report, Path("/nonexistent"))
    assert lines[4] == "paired:         challenger closer than champion on 212 rows, the reverse on 31"
    assert lines[3].endswith("recipes: sinceCut 1.400, withHistory 1.200 (trained)")


def test_an_old_report_prints_as_before(tmp_path: Path) -> None:
    (tmp_path / "confusion.png").write_bytes(b"png")
    text = cli.render_report(copy.deepcopy(OLD_REPORT), tmp_path)
    assert "training data" not in text and "paired" not in text
    lines = text.splitlines()
    assert lines[:2] == [
        "churn version 4 (parent 3), classification, target 'label'",
        "holdout: 300 rows, time_ordered_feedback (the newest 300 feedback rows)",
    ]
    for expected in ("== challenger: accuracy=0.9000", "actual 0", "== champion: accuracy=0.8800", "[0, 0.2)"):
        assert expected in text
    assert lines[-1] == f"confusion matrix plot: {tmp_path / 'confusion.png'}"


@pytest.mark.parametrize(
    "training",
    [
        {},
        {"cut": {}},  # a cut without its numbers
        {"cut": {"ts": "soon", "pValue": None}, "trainFeedback": True, "recipes": {"sinceCut": None}},
        {"conceptSince": EARLIER, "holdoutStrategy": "a_future_strategy", "recipes": {}},
    ],
)
def test_partial_training_data_prints_without_failing(training: dict[str, Any]) -> None:
    report = {**copy.deepcopy(OLD_REPORT), "trainingData": training, "paired": {}}
    text = cli.render_report(report, Path("/nonexistent"))
    assert "training data:" in text and "paired:         challenger right where champion wrong on ? rows" in text


# --- the command -------------------------------------------------------------------------------------


def store(tmp_path: Path, reports: dict[int, dict[str, Any]]) -> Path:
    root = tmp_path / "store"
    for version, report in reports.items():
        folder = root / "churn" / "versions" / str(version)
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps(report))
        (folder / "metadata.json").write_text(json.dumps({"version": version}))
    return root


def mfl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return int(stop.value.code or 0), out, err


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return store(tmp_path, {4: copy.deepcopy(OLD_REPORT), 5: with_cut(), 6: inherited(), 7: without_cut()})


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("5", "since the change at 2026-12-02T10:04:11Z (served error 0.08 -> 0.47"),
        ("6", "found for an earlier version"),
        ("7", "base data and the data window (no change found)"),
    ],
)
def test_the_command_prints_the_training_data(
    offline: Path, capsys: pytest.CaptureFixture[str], version: str, expected: str
) -> None:
    code, out, _ = mfl(capsys, "report", "churn", "--offline", "--storage", str(offline), "--version", version)
    assert code == 0 and expected in out and "paired:         challenger right" in out


def test_the_command_prints_an_old_report(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = mfl(capsys, "report", "churn", "--offline", "--storage", str(offline), "--version", "4")
    assert code == 0 and out.startswith("churn version 4 (parent 3)") and "training data" not in out


def test_without_a_version_the_newest_in_the_store_is_shown(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = mfl(capsys, "report", "churn", "--offline", "--storage", str(offline))
    assert code == 0 and out.startswith("churn version 7") and "(no change found)" in out


@pytest.mark.parametrize("version", ["4", "5", "6", "7"])
def test_json_and_yaml_are_the_report_as_it_is(offline: Path, capsys: pytest.CaptureFixture[str], version: str) -> None:
    stored = json.loads((offline / "churn" / "versions" / version / "report.json").read_text())
    base = ["report", "churn", "--offline", "--storage", str(offline), "--version", version]
    code, out, _ = mfl(capsys, *base, "-o", "json")
    assert code == 0 and json.loads(out) == stored
    code, out, _ = mfl(capsys, *base, "--output", "yaml")
    assert code == 0 and yaml.safe_load(out) == stored
    if version != "4":
        assert stored["trainingData"] and "paired" in stored and "trainingData:" in out


def test_a_missing_report_is_an_error(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = mfl(
        capsys, "report", "churn", "--offline", "--storage", str(offline), "--version", "9", "-o", "json"
    )
    # issue 23: an object not found is exit 1 (as kubectl), usage errors alone are 2; the message says "mfl:"
    assert (code, out) == (1, "") and err.startswith("mfl: no report for churn version 9")
