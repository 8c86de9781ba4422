"""What the hourly sweep deletes (mfl_server.retention, FeedbackServer.sweep), with a fake clock."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

import pytest

from mfl_server.app import ModelServer
from mfl_server.retention import day_prefixes, days_to_check, expired_day_names, newest_expired_day
from tests.server.test_app import server_config

DAY1 = 1764288000.0  # 2025-11-28T00:00:00Z
DAY = 86400
KEEP = 10 * DAY


def test_a_log_day_goes_once_its_last_second_is_older_than_the_retention():
    names = ["date=2025-11-28", "date=2025-11-29", "date=garbage", ".probe-host-1", "2025-11-27"]
    last_second = DAY1 + DAY + KEEP
    assert expired_day_names(names, last_second - 1, KEEP) == []
    assert expired_day_names(names, last_second, KEEP) == ["date=2025-11-28"]
    assert expired_day_names(names, last_second + DAY, KEEP) == ["date=2025-11-28", "date=2025-11-29"]


def test_the_object_store_sweep_looks_far_back_first_then_only_at_newly_expired_days():
    now = DAY1 + DAY + KEEP + 3600  # 2025-11-28 just expired
    assert newest_expired_day(now, KEEP) == date(2025, 11, 28)
    assert days_to_check(now, KEEP, None) == (date(2015, 11, 28), date(2025, 11, 28))
    assert days_to_check(now, KEEP, date(2025, 11, 28)) is None
    assert days_to_check(now + 2 * DAY, KEEP, date(2025, 11, 28)) == (date(2025, 11, 29), date(2025, 11, 30))


def covered(prefixes: list[str], first: date, last: date) -> list[date]:
    days = [first + timedelta(days=n) for n in range(-400, (last - first).days + 400)]
    return [day for day in days if any(f"date={day.isoformat()}/".startswith(prefix) for prefix in prefixes)]


@pytest.mark.parametrize(
    "first, last, count",
    [
        (date(2015, 11, 28), date(2025, 11, 28), 3 + 1 + 9 + 10 + 28),  # days, a month, years, months, days
        (date(2024, 2, 1), date(2024, 2, 29), 1),  # a whole (leap) month
        (date(2024, 1, 1), date(2024, 12, 31), 1),  # a whole year
        (date(2025, 11, 29), date(2025, 11, 30), 2),
        (date(2025, 12, 31), date(2026, 1, 1), 2),
    ],
)
def test_day_prefixes_cover_exactly_the_expired_days_with_few_lists(first, last, count):
    prefixes = day_prefixes(first, last)
    assert covered(prefixes, first, last) == [first + timedelta(days=n) for n in range((last - first).days + 1)]
    assert len(prefixes) == count


def make_days(root, folder: str, days: list[str]) -> None:
    for day in days:
        path = root / "churn" / folder / f"date={day}"
        path.mkdir(parents=True)
        (path / "host-1.jsonl").write_text("{}\n")


def listed(root, folder: str) -> list[str]:
    return sorted(path.name for path in (root / "churn" / folder).iterdir())


def test_the_sweep_deletes_log_day_folders_past_retention_and_claims_past_the_feedback_age(tmp_path):
    days = ["2025-11-26", "2025-11-27", "2025-11-28", "2025-11-29"]
    for folder in ("predictions", "feedback"):
        make_days(tmp_path, folder, days)
    for day in days:  # a claim: date=<day>/<shard>/<hash>
        (tmp_path / "churn" / "feedback-claims" / f"date={day}" / "ab").mkdir(parents=True)
        (tmp_path / "churn" / "feedback-claims" / f"date={day}" / "ab" / "cdef").touch()
    config = server_config(tmp_path, retention_log_seconds=KEEP, feedback_max_age=2 * DAY)
    server = ModelServer(config)
    now = DAY1 + DAY + KEEP  # 2025-11-28 has just passed the retention
    try:
        asyncio.run(server.sweep(now))
    finally:
        server.close()
    for folder in ("predictions", "feedback"):
        assert listed(tmp_path, folder) == ["date=2025-11-29"]
    assert listed(tmp_path, "feedback-claims") == []  # claims go at max age + margin, far earlier


def test_without_retention_logs_are_kept(tmp_path):
    make_days(tmp_path, "predictions", ["2020-01-01"])
    server = ModelServer(server_config(tmp_path))
    try:
        asyncio.run(server.sweep(DAY1))
    finally:
        server.close()
    assert listed(tmp_path, "predictions") == ["date=2020-01-01"]


def store_size(root) -> tuple[int, int]:
    """(files, bytes) under the model's folder."""
    files = [path for path in (root / "churn").rglob("*") if path.is_file()]
    return len(files), sum(path.stat().st_size for path in files)


def test_the_store_stays_bounded_over_a_simulated_month_and_more(tmp_path):
    """60 days of the same daily traffic (prediction and feedback logs, one claim per label), the hourly sweep
    run at the end of each day: the store grows for the retention (10 days) plus the day being written,
    then stays flat, where before this issue it grew by a day's worth every day."""
    config = server_config(tmp_path, retention_log_seconds=KEEP, feedback_max_age=2 * DAY)
    server = ModelServer(config)
    daily_lines, labels = 200, 50
    sizes = []
    try:
        for offset in range(60):
            day = (date(2025, 11, 28) + timedelta(days=offset)).isoformat()
            for folder, lines in (("predictions", daily_lines), ("feedback", labels)):
                path = tmp_path / "churn" / folder / f"date={day}"
                path.mkdir(parents=True)
                (path / "host-1.jsonl").write_text('{"id": "x", "features": {"f0": 1.0}}\n' * lines)
            shard = tmp_path / "churn" / "feedback-claims" / f"date={day}" / "ab"
            shard.mkdir(parents=True)
            for index in range(labels):
                (shard / f"{index:030x}").touch()
            asyncio.run(server.sweep(DAY1 + (offset + 1) * DAY - 1))  # the day's last sweep
            sizes.append(store_size(tmp_path))
    finally:
        server.close()
    daily_files, daily_bytes = 2 + labels, sizes[0][1]
    kept_days = KEEP // DAY + 1
    assert sizes[-1] == sizes[30] == sizes[15]  # flat once the retention is full
    assert sizes[-1][0] <= kept_days * daily_files and sizes[-1][1] <= kept_days * daily_bytes
    assert sizes[-1][0] < 60 * daily_files / 4  # without retention: 60 days of files
