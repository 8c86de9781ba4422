"""The ledger's SQL and choices (mfl_contracts.ledger), without a database: pure functions."""

from __future__ import annotations

import math
from datetime import date

import pytest

from mfl_contracts import ledger

DAY1 = 1764288000.0  # 2025-11-28T00:00:00Z
DAY = 86400
MAX_AGE = 7 * DAY


def test_a_labels_day_is_its_predictions_utc_day():
    assert ledger.day_of(DAY1 + DAY - 0.001) == date(2025, 11, 28)
    assert ledger.day_of(DAY1 + DAY) == date(2025, 11, 29)


def test_partitions_are_named_and_bounded_by_their_day():
    day = date(2025, 12, 31)
    assert ledger.partition_name(day) == "mfl_labels_p20251231"
    assert ledger.day_of_partition("mfl_labels_p20251231") == day
    ddl = ledger.partition_ddl(day)
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS mfl_labels_p20251231 PARTITION OF mfl_labels")
    assert ddl.endswith("FOR VALUES FROM ('2025-12-31') TO ('2026-01-01')")
    for other in ("mfl_labels", "mfl_labels_p2025123", "mfl_labels_p20251399", "x_mfl_labels_p20251231", "orders"):
        assert ledger.day_of_partition(other) is None


def test_ddl_takes_the_advisory_lock_first_then_the_schema_then_each_day_once_in_order():
    days = [date(2025, 11, 29), date(2025, 11, 28), date(2025, 11, 29)]
    statements = ledger.ddl_statements(days, schema=True)
    assert statements[0] == f"SELECT pg_advisory_xact_lock({ledger.DDL_LOCK})"
    assert statements[1].startswith("SET LOCAL lock_timeout")
    assert statements[2:4] == list(ledger.SCHEMA)
    assert [s.split()[5] for s in statements[4:]] == ["mfl_labels_p20251128", "mfl_labels_p20251129"]
    assert len(ledger.ddl_statements(days)) == 4  # no schema: lock, timeout, two days


def test_a_batch_is_one_statement_with_one_array_per_column():
    rows = [
        ledger.LabelRow("id-1", "1", "0", 3, "stable", DAY1 + 5),
        ledger.LabelRow("id-2", '"yes"', None, 4, "canary", DAY1 + DAY),
    ]
    params = ledger.insert_params("churn", rows, DAY1 + 2 * DAY)
    assert params == {
        "model": "churn",
        "ts": [DAY1 + 2 * DAY, DAY1 + 2 * DAY],  # one receive time for all rows: repeated per row
        "days": [date(2025, 11, 28), date(2025, 11, 29)],
        "ids": ["id-1", "id-2"],
        "labels": ["1", '"yes"'],
        "predictions": ["0", None],
        "versions": [3, 4],
        "tracks": ["stable", "canary"],
        "prediction_ts": [DAY1 + 5, DAY1 + DAY],
    }
    sql = ledger.INSERT_LABELS
    assert sql.count("INSERT") == 1 and "unnest(" in sql and "ON CONFLICT DO NOTHING" in sql
    assert sql.rstrip().endswith("RETURNING id")
    assert all(f"%({name})b" in sql for name in params)  # binary: the cheap dump of long arrays


def test_rows_of_several_requests_keep_each_their_receive_time():
    rows = [ledger.LabelRow(f"id-{n}", "1", "0", 3, "stable", DAY1) for n in range(3)]
    assert ledger.insert_params("churn", rows, [DAY1 + 1, DAY1 + 1, DAY1 + 2])["ts"] == [DAY1 + 1, DAY1 + 1, DAY1 + 2]
    with pytest.raises(ValueError, match="2 receive times for 3 rows"):
        ledger.insert_params("churn", rows, [DAY1, DAY1])


@pytest.mark.parametrize(
    "keep, expected",
    [
        (0.0, math.inf),  # no retention: kept for ever
        (30 * DAY, 30 * DAY),
        (DAY, MAX_AGE + ledger.CLOCK_MARGIN),  # never before labels stop arriving
    ],
)
def test_the_horizon_is_retention_but_never_less_than_labels_can_arrive(keep, expected):
    assert ledger.horizon(keep, MAX_AGE) == expected


def test_a_partition_expires_once_its_whole_day_is_past_the_horizon():
    keep = ledger.horizon(10 * DAY, MAX_AGE)
    names = ["mfl_labels_p20251128", "mfl_labels_p20251129", "mfl_labels", "not_ours"]
    last_second = DAY1 + DAY + keep
    assert ledger.expired_partitions(names, last_second - 1, keep) == []
    assert ledger.expired_partitions(names, last_second, keep) == ["mfl_labels_p20251128"]
    assert ledger.expired_partitions(names, last_second + DAY, keep) == names[:2]
    assert ledger.expired_partitions(names, DAY1 * 3, math.inf) == []


def test_a_row_reads_back_as_the_feedback_line_of_a_volume():
    row = ("id-1", DAY1 + 9, 1, 3, "stable", 0, DAY1)
    assert ledger.label_dict(row) == {
        "id": "id-1",
        "ts": DAY1 + 9,
        "label": 1,
        "version": 3,
        "track": "stable",
        "prediction": 0,
        "predictionTs": DAY1,
    }


def test_messages_name_the_database_without_its_password():
    assert (
        ledger.describe("postgresql://churn:s3cret@db.example:5433/churn") == "postgresql://churn@db.example:5433/churn"
    )
    assert ledger.describe("postgresql://db/x") == "postgresql://db/x"
    assert ledger.reason(RuntimeError('connection to "h" failed: refused\n\tIs the server running?')) == (
        'connection to "h" failed: refused'
    )
    assert ledger.reason(RuntimeError("")) == "RuntimeError"
