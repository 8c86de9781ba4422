"""The column-wise feedback reader: cells keep their JSON values, gzip segments read like plain files, and
the join equals a row-by-row reference on messy logs."""

from __future__ import annotations

import gzip
import json
import math
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mfl_trainer import columns, datasource, tables
from mfl_trainer.columns import ABSENT, FLOAT, INT, OTHER

DAY = 86_400.0
NOW = 20_000 * DAY + 3_600.0


def _day(ts: float) -> str:
    return "date=" + datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d")


def _write(path: Path, records: list[Any], compress: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if compress else data)


# --- columns -------------------------------------------------------------------------------------


def test_cells_keep_their_json_values():
    rows = [{"a": 1.5, "b": 2}, {"a": 3, "c": "x"}, {"b": None, "a": 2**60}, {"a": True, "b": float("nan")}]
    built = columns.columns_from_dicts(rows)
    assert set(built) == {"a", "b", "c"}
    a, b, c = built["a"], built["b"], built["c"]
    assert a.kinds.tolist() == [FLOAT, INT, OTHER, OTHER] and a.others == {2: 2**60, 3: True}
    assert b.kinds.tolist() == [INT, ABSENT, OTHER, FLOAT] and c.kinds.tolist() == [ABSENT, OTHER, ABSENT, ABSENT]
    for index, row in enumerate(rows):
        for name, column in built.items():
            value = column.value(index)
            expected = row.get(name)
            if isinstance(expected, float) and math.isnan(expected):
                assert math.isnan(value)
            else:
                assert value == expected and type(value) is type(expected), (index, name)


def test_batches_and_late_columns(monkeypatch):
    monkeypatch.setattr(columns, "CHUNK_ROWS", 3)
    rows = [{"a": float(i)} for i in range(7)] + [{"a": 7.0, "late": i} for i in range(2)]
    built = columns.columns_from_dicts(rows)
    assert built["a"].numbers.tolist() == [float(i) for i in range(8)] + [7.0]
    assert built["late"].kinds.tolist() == [ABSENT] * 7 + [INT, INT]
    taken = built["late"].take(np.array([8, 0]))
    assert taken.kinds.tolist() == [INT, ABSENT] and taken.value(0) == 1


def test_only_the_wanted_or_common_features_become_columns(monkeypatch):
    monkeypatch.setattr(columns, "CHUNK_ROWS", 2)
    rows = [{"a": 1.0, "b": 2.0, "c": 0.0}, {"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 1.0, "new": 1}]
    rows += [{"a": 0.0, "b": 0.0, f"random-{i}": i} for i in range(5)]  # a client inventing keys costs nothing
    common = columns.ColumnBuilder(len(rows) + 5)
    wanted = columns.ColumnBuilder(len(rows), ["b", "c", "never"])
    for row in rows:
        common.add(row)
        wanted.add(row)
    built = common.finish()
    assert list(built) == ["a", "b"] and len(built["a"]) == len(rows)
    chosen = wanted.finish()
    assert list(chosen) == ["b", "c", "never"] and chosen["c"].present().tolist() == [True] + [False] * 7
    assert not chosen["never"].present().any()


def test_take_moves_other_values():
    column = columns.columns_from_dicts([{"a": "x"}, {"a": 1.0}, {"a": "z"}])["a"]
    taken = column.take(np.array([2, 1, 0]))
    assert [taken.value(i) for i in range(3)] == ["z", 1.0, "x"]


# --- reading logs --------------------------------------------------------------------------------


def test_gzip_segments_read_like_plain_files(tmp_path):
    predictions = [{"id": f"p{i}", "ts": NOW - 100 + i, "features": {"a": i}} for i in range(6)]
    labels = [{"id": f"p{i}", "ts": NOW - 50 + i, "label": i % 2} for i in range(6)]
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    for root, compress in ((plain, False), (packed, True)):
        suffix = ".jsonl.gz" if compress else ".jsonl"
        _write(root / "predictions" / _day(NOW) / f"a{suffix}", predictions[:3], compress)
        _write(root / "predictions" / _day(NOW) / f"b{suffix}", predictions[3:], compress)
        _write(root / "feedback" / _day(NOW) / f"a{suffix}", labels, compress)
    one, two = datasource.read_feedback(plain, NOW - DAY, NOW), datasource.read_feedback(packed, NOW - DAY, NOW)
    assert len(one) == len(two) == 6 and one.digest == two.digest and two.files_read == 3
    assert [two.row(i) for i in range(6)] == [one.row(i) for i in range(6)]


def test_a_damaged_segment_is_counted_not_fatal(tmp_path):
    good = [{"id": f"p{i}", "ts": NOW - 10, "features": {"a": 1.0}} for i in range(3)]
    folder = tmp_path / "predictions" / _day(NOW)
    _write(folder / "good.jsonl.gz", good, compress=True)
    whole = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in good[:2]))
    (folder / "torn.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    (folder / "junk.jsonl.gz").write_bytes(b"not gzip at all")
    _write(
        tmp_path / "feedback" / _day(NOW) / "f.jsonl", [{"id": f"p{i}", "ts": NOW - 5, "label": 1} for i in range(3)]
    )
    data = datasource.read_feedback(tmp_path, NOW - DAY, NOW)
    assert data.ids == ["p0", "p1", "p2"] and data.stats["corruptLogFiles"] == 2


def test_json_nan_and_big_integers_fall_back_to_the_standard_library(tmp_path):
    folder = tmp_path / "predictions" / _day(NOW)
    folder.mkdir(parents=True)
    (folder / "a.jsonl").write_text(
        '{"id": "n", "ts": %r, "features": {"a": NaN, "b": %d}}\n' % (NOW - 5, 2**70)  # noqa: UP031
    )
    _write(tmp_path / "feedback" / _day(NOW) / "f.jsonl", [{"id": "n", "ts": NOW - 1, "label": 0}])
    data = datasource.read_feedback(tmp_path, NOW - DAY, NOW)
    row = data.row(0)
    assert math.isnan(row["features"]["a"]) and row["features"]["b"] == 2**70


# --- the join against a row-by-row reference -----------------------------------------------------


def _reference(predictions: list[dict], labels: list[dict], start: float, now: float) -> list[dict]:
    """The join as the trainer did it with a dict per row: earliest label, first prediction line per id."""
    first_label: dict[str, tuple[Any, float]] = {}
    for record in labels:
        if record["ts"] <= now and (record["id"] not in first_label or record["ts"] < first_label[record["id"]][1]):
            first_label[record["id"]] = (record["label"], record["ts"])
    seen: dict[str, dict] = {}
    for record in predictions:
        if start <= record["ts"] <= now and record["id"] not in seen:
            seen[record["id"]] = record
    rows = [
        {**{k: seen[i][k] for k in ("id", "ts", "features")}, "label": label, "prediction": seen[i].get("prediction")}
        for i, (label, _) in first_label.items()
        if i in seen
    ]
    return sorted(rows, key=lambda r: (r["ts"], r["id"]))


def _messy_logs(seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    values = [0.5, 3, "text", None, True, 2**60, "", "7.5", -1.25]
    predictions, labels = [], []
    for i in range(400):
        ts = NOW - rng.choice([3 * DAY, DAY, 600, 10, 10]) + rng.choice([0, 0, 1])  # ties in time
        features = {f"f{k}": rng.choice(values) for k in range(4) if rng.random() > 0.1}
        predictions.append({"id": f"id{rng.randrange(300)}", "ts": ts, "features": features, "prediction": i % 3})
        if rng.random() < 0.8:
            label_ts = ts + rng.choice([5, 50, 2 * DAY])
            labels.append({"id": predictions[-1]["id"], "ts": min(label_ts, NOW + 100), "label": rng.choice([0, 1])})
    return predictions, labels


def test_join_matches_a_row_by_row_reference(tmp_path, monkeypatch):
    monkeypatch.setattr(columns, "CHUNK_ROWS", 37)  # many batches, columns appearing late
    predictions, labels = _messy_logs(seed=5)
    files = [(_day(r["ts"]), f"w{index % 3}.jsonl", r) for index, r in enumerate(predictions)]
    for day, name, record in files:
        _append(tmp_path / "predictions" / day / name, record)
    for record in labels:
        _append(tmp_path / "feedback" / _day(record["ts"]) / "w.jsonl", record)
    start = NOW - 2 * DAY
    read = {_day(start), _day(NOW - DAY), _day(NOW)}  # the partitions the window overlaps
    in_read_order = [r for day, name, r in sorted(files, key=lambda f: f[:2]) if day in read]  # sorted is stable
    expected = _reference(in_read_order, [r for r in labels if _day(r["ts"]) in read], start, NOW)
    data = datasource.read_feedback(tmp_path, start, NOW, features=["f0", "f1", "f2", "f3"])
    assert [data.row(i) for i in range(len(data))] == expected and len(expected) > 100
    assert data.common_features() == {n for n in data.features if all(n in r["features"] for r in expected)}


def _append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def test_table_from_columns_types_and_texts():
    feedback = datasource.feedback_from_records(
        [
            {"id": "1", "ts": 1.0, "features": {"num": 1, "cat": 2, "mix": "7.5"}, "label": 1},
            {"id": "2", "ts": 2.0, "features": {"num": 2.5, "cat": "b", "mix": None}, "label": 0},
            {"id": "3", "ts": 3.0, "features": {"num": "x", "cat": 1.0, "mix": ""}, "label": 1},
        ]
    )
    stats: Counter = Counter()
    table = tables.build_table(["num", "cat", "mix"], "label", "classification", None, feedback, stats)
    assert table.feature_types == {"num": "categorical", "cat": "categorical", "mix": "numeric"}
    assert table.columns["cat"].tolist() == ["2", "b", "1.0"] and table.columns["num"].tolist() == ["1", "2.5", "x"]
    assert table.columns["mix"][0] == 7.5 and np.isnan(table.columns["mix"][1:]).all()
    assert stats == Counter()
