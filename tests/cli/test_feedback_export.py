"""`mfl feedback export` on a store in a folder (VolumeStore over tmp_path): the sample is stratified by predicted
class, the rows of the serving version's worst slices are oversampled, ids labelled already (feedback logs or
the ledger) and predictions outside --since are left out; CSV always, Parquet only with pyarrow."""

from __future__ import annotations

import csv
import gzip
import json
import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mfl_cli import cli, export, sampling

NOW = time.time()
HOUR = 3600.0
FEATURES = ["x0", "color"]
REPORT = {
    "model": "churn",
    "version": 1,
    "task": "classification",
    "challenger": {"metrics": {"accuracy": 0.9}},
    "worstSlices": {
        "challenger": [
            {"feature": "x0", "bin": "[0, 0.2)", "accuracy": 0.55, "rows": 40},
            {"feature": "color", "bin": "blue", "accuracy": 0.95, "rows": 40},  # better than overall: not weak
        ]
    },
}


def day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def prediction(n: int, ts: float, predicted: Any, x0: float = 0.5, color: str = "red") -> dict[str, Any]:
    return {
        "id": f"id-{n:05d}",
        "ts": ts,
        "version": 1,
        "track": "stable",
        "features": {"x0": x0, "color": color},
        "prediction": predicted,
    }


def write_log(root: Path, folder: str, records: list[dict[str, Any]], name: str = "host-1.jsonl") -> None:
    """Lines into <model>/<folder>/date=<day of each record>/<name>, gzipped when the name says so."""
    by_day: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_day.setdefault(day(record["ts"]), []).append(record)
    for when, lines in by_day.items():
        path = root / "churn" / folder / f"date={when}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)


def write_version(root: Path, version: int = 1, report: dict[str, Any] | None = None) -> None:
    folder = root / "churn" / "versions" / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report or REPORT))
    metadata = {"version": version, "task": "classification", "features": FEATURES, "classes": [0, 1, 2]}
    (folder / "metadata.json").write_text(json.dumps(metadata))


def mfl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return int(stop.value.code or 0), out, err


def run_export(capsys: pytest.CaptureFixture[str], root: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return mfl(
        capsys,
        "feedback",
        "export",
        "churn",
        "--offline",
        "--storage",
        str(root),
        "-o",
        str(out),
        "--seed",
        "7",
        *extra,
    )


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("MFL_DATABASE_URL", raising=False)
    root = tmp_path / "store"
    write_version(root)
    return root


# --- the command ---------------------------------------------------------------------------------------


def test_the_sample_has_equal_shares_of_each_predicted_class(offline, tmp_path, capsys):
    classes = [0] * 800 + [1] * 150 + [2] * 50  # the model predicts class 2 rarely: it still gets its share
    random.Random(1).shuffle(classes)
    write_log(offline, "predictions", [prediction(n, NOW - HOUR - n, c) for n, c in enumerate(classes)])
    code, out, err = run_export(capsys, offline, tmp_path / "label-me.csv", "--size", "30")
    assert code == 0, err
    header, rows = read_csv(tmp_path / "label-me.csv")
    assert header == ["id", "ts", "version", "prediction", "x0", "color", "label"]
    assert Counter(row["prediction"] for row in rows) == {"0": 10, "1": 10, "2": 10}
    assert all(row["label"] == "" and row["version"] == "1" for row in rows)
    assert rows[0]["ts"].endswith("Z") and datetime.fromisoformat(rows[0]["ts"].replace("Z", "+00:00"))
    assert len({row["id"] for row in rows}) == 30
    assert "wrote 30 unlabelled predictions of churn" in out and "mfl feedback import churn" in out
    assert "read 1,000 prediction lines" in err and "1,000 unlabelled" in err


def test_a_class_short_of_its_share_leaves_the_rest_to_the_others(offline, tmp_path, capsys):
    classes = [0] * 100 + [1] * 100 + [2] * 3
    write_log(offline, "predictions", [prediction(n, NOW - HOUR - n, c) for n, c in enumerate(classes)])
    code, _, _ = run_export(capsys, offline, tmp_path / "out.csv", "--size", "31")
    counts = Counter(row["prediction"] for row in read_csv(tmp_path / "out.csv")[1])
    assert code == 0 and counts == {"0": 14, "1": 14, "2": 3}


def test_predictions_labelled_already_are_left_out(offline, tmp_path, capsys):
    records = [prediction(n, NOW - HOUR - n, n % 2) for n in range(100)]
    write_log(offline, "predictions", records)
    labelled = records[:60:2] + records[1:40:2]  # 30 + 20
    feedback = [{"id": r["id"], "ts": NOW - 60, "label": 1, "version": 1, "track": "stable"} for r in labelled]
    write_log(offline, "feedback", feedback)
    code, _, err = run_export(capsys, offline, tmp_path / "out.csv", "--size", "1000")
    exported = {row["id"] for row in read_csv(tmp_path / "out.csv")[1]}
    assert code == 0 and exported == {r["id"] for r in records} - {r["id"] for r in labelled}
    assert "50 ids labelled already (the feedback logs)" in err


def test_the_rows_in_the_worst_slices_are_oversampled(offline, tmp_path, capsys):
    records = [prediction(n, NOW - HOUR - n, 1, x0=0.1 if n % 10 == 0 else 0.7) for n in range(2000)]
    write_log(offline, "predictions", records)
    code, out, _ = run_export(capsys, offline, tmp_path / "out.csv", "--size", "100")
    rows = read_csv(tmp_path / "out.csv")[1]
    hot = sum(float(row["x0"]) < 0.2 for row in rows)
    # 10% of the rows are in the slice; weighted x3 they are 3*200 / (3*200 + 1800) = 25% of the sample.
    assert code == 0 and len(rows) == 100 and hot == 25
    assert "oversampled x3 (version 1's worst slices): x0 [0, 0.2)" in out and "color blue" not in out
    assert out.splitlines()[3].split() == ["1", "2,000", "200", "100", "25"]


def test_only_the_window_is_read_and_gzip_segments_too(offline, tmp_path, capsys):
    inside = [prediction(n, NOW - 2 * HOUR - n, 0) for n in range(10)]
    segment = [prediction(100 + n, NOW - 3 * HOUR, 1) for n in range(10)]
    too_old = [prediction(200 + n, NOW - 3 * 86400 - n, 0) for n in range(10)]
    write_log(offline, "predictions", inside + too_old)
    write_log(offline, "predictions", segment, name="host-1700000000000-000001.jsonl.gz")
    code, _, _ = run_export(capsys, offline, tmp_path / "out.csv", "--since", "1d", "--size", "100")
    exported = {row["id"] for row in read_csv(tmp_path / "out.csv")[1]}
    assert code == 0 and exported == {r["id"] for r in inside + segment}


def test_the_ledger_says_what_is_labelled_when_there_is_a_database(offline, tmp_path, capsys, monkeypatch):
    from mfl_contracts import ledger

    records = [prediction(n, NOW - HOUR - n, 0) for n in range(20)]
    write_log(offline, "predictions", records)
    write_log(offline, "feedback", [{"id": records[0]["id"], "ts": NOW, "label": 0}])  # not read: the ledger rules
    asked = []

    def read_labels(url: str, model: str, since: float):
        asked.append((url, model, since))
        return iter([{"id": r["id"], "label": 0} for r in records[5:]])

    monkeypatch.setattr(ledger, "read_labels", read_labels)
    url = "postgresql://churn:secret@db:5432/churn"
    code, _, err = run_export(capsys, offline, tmp_path / "out.csv", "--database-url", url)
    exported = {row["id"] for row in read_csv(tmp_path / "out.csv")[1]}
    assert code == 0 and exported == {r["id"] for r in records[:5]}
    [(given, model, since)] = asked
    assert (given, model) == (url, "churn") and abs(since - (time.time() - 7 * 86400)) < 60
    assert "(the label ledger)" in err


def test_a_database_that_fails_is_one_line_without_the_password(offline, tmp_path, capsys, monkeypatch):
    from mfl_contracts import ledger

    write_log(offline, "predictions", [prediction(1, NOW - HOUR, 0)])

    def read_labels(url: str, model: str, since: float):
        raise ledger.LedgerError("cannot read labels from postgresql://churn@db:5432/churn: connection refused")

    monkeypatch.setattr(ledger, "read_labels", read_labels)
    monkeypatch.setenv("MFL_DATABASE_URL", "postgresql://churn:s3cret@db:5432/churn")
    code, _, err = run_export(capsys, offline, tmp_path / "out.csv")
    assert code == 1 and err.count("\n") == 1 and "s3cret" not in err
    assert err.startswith("mfl: cannot read the labels from the database: cannot read labels from postgresql://churn@")
    assert not (tmp_path / "out.csv").exists()


def test_parquet_without_pyarrow_is_a_clear_error_before_reading(offline, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    write_log(offline, "predictions", [prediction(1, NOW - HOUR, 0)])
    code, out, err = run_export(capsys, offline, tmp_path / "out.parquet", "--format", "parquet")
    assert (code, out) == (1, "") and err == "mfl: Parquet needs pyarrow (pip install pyarrow); or use --format csv\n"
    assert not (tmp_path / "out.parquet").exists()


def test_parquet_has_the_same_columns(offline, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    write_log(offline, "predictions", [prediction(n, NOW - HOUR - n, n % 3) for n in range(9)])
    code, _, _ = run_export(capsys, offline, tmp_path / "out.parquet", "--format", "parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert code == 0 and table.column_names == ["id", "ts", "version", "prediction", "x0", "color", "label"]
    assert table.num_rows == 9 and table.column("label").null_count == 9


def test_nothing_unlabelled_writes_nothing(offline, tmp_path, capsys):
    code, out, err = run_export(capsys, offline, tmp_path / "out.csv")
    assert (code, out) == (2, "") and "no unlabelled predictions of churn in the last 7 days" in err
    assert not (tmp_path / "out.csv").exists()


def test_a_long_read_shows_its_progress_on_stderr(offline, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export, "PROGRESS_SECONDS", 0.0)
    write_log(offline, "predictions", [prediction(n, NOW - HOUR - n, 0) for n in range(5)])
    write_log(offline, "predictions", [prediction(10 + n, NOW - HOUR - n, 1) for n in range(5)], name="host-2.jsonl")
    code, out, err = run_export(capsys, offline, tmp_path / "out.csv")
    assert code == 0 and "reading predictions: 1/2 objects" in err and "reading predictions: 2/2 objects" in err
    assert "reading" not in out


def test_a_bad_since_is_a_usage_error(offline, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["feedback", "export", "churn", "--offline", "--storage", str(offline), "-o", "x", "--since", "soon"])
    assert stop.value.code == 2 and "invalid duration 'soon'" in capsys.readouterr().err


# --- the pure parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bin_", "inside", "outside"),
    [
        ("[0, 0.2)", [0, 0.1, "0.15"], [0.2, -1, None, "x"]),
        ("[0.8, 1]", [0.8, 1], [1.01, 0.79]),  # the last interval is closed
        ("= 3", [3, 3.0, "3"], [3.5, 4]),
        ("missing", [None, "", float("nan")], [0, "a"]),
        ("blue", ["blue"], ["red", None]),
    ],
)
def test_a_row_is_in_a_slice_as_the_trainer_bins_it(bin_: str, inside: list, outside: list) -> None:
    weak = sampling.Slice("x", bin_)
    assert all(weak.contains({"x": v}) for v in inside)
    assert not any(weak.contains({"x": v}) for v in outside)


def test_only_slices_worse_than_the_model_count() -> None:
    assert sampling.worst_slices(REPORT) == [sampling.Slice("x0", "[0, 0.2)")]
    regression = {"challenger": {"metrics": {"mae": 1.0}}, "worstSlices": {"challenger": [
        {"feature": "a", "bin": "= 1", "mae": 2.0, "rows": 9}, {"feature": "b", "bin": "= 2", "mae": 0.5, "rows": 9}
    ]}}  # fmt: skip
    assert sampling.worst_slices(regression) == [sampling.Slice("a", "= 1")]
    assert sampling.worst_slices(None) == [] and sampling.worst_slices({"worstSlices": {}}) == []


def test_allocate_fills_equal_shares() -> None:
    assert sampling.allocate(30, {"a": 100, "b": 100, "c": 100}) == {"a": 10, "b": 10, "c": 10}
    assert sampling.allocate(31, {"a": 100, "b": 100, "c": 3}) == {"a": 14, "b": 14, "c": 3}
    assert sampling.allocate(10, {"a": 2, "b": 3}) == {"a": 2, "b": 3}


def test_the_reservoir_keeps_each_row_equally_likely() -> None:
    kept = Counter()
    for seed in range(300):
        sampler = sampling.Sampler(5, [], True, random.Random(seed))
        for n in range(50):
            sampler.add({"id": str(n), "ts": n, "prediction": 1, "features": {}})
        kept.update(int(row["id"]) for row in sampler.sample())
    first, last = sum(kept[n] for n in range(25)), sum(kept[n] for n in range(25, 50))
    assert sum(kept.values()) == 1500 and abs(first - last) < 200  # 750 each expected, sd ~27


@pytest.mark.parametrize(("text", "seconds"), [("7d", 604800), ("36h", 129600), ("1d12h", 129600), ("90", 90)])
def test_since_durations(text: str, seconds: float) -> None:
    assert export.parse_since(text) == seconds
