"""What the hourly sweep deletes of the logs (MFL_RETENTION_LOG_SECONDS): pure choices over names and a clock.

Logs are partitioned by UTC day (``date=YYYY-MM-DD``, docs/contracts.md), so retention deletes whole days:
a day goes once its LAST second is older than the retention. The operator never sets a retention shorter
than the feedback max age plus a day, so a day whose predictions can still be labelled keeps its
prediction lines. Claims and ledger partitions have their own floor (mfl_server.claims,
mfl_contracts.ledger): never before no replica accepts their labels any more.

On a volume the day folders are listed (one readdir). An object store has no folders, and listing every
segment of a year to find a few old days would be thousands of requests an hour, so the sweep lists the
prefixes of expired days only (whole years and months in one prefix, ``day_prefixes``): the first sweep
of a process looks ``LOOKBACK_YEARS`` back, later ones only at the days expired since (``days_to_check``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

DAY_SECONDS = 86400
LOOKBACK_YEARS = 10  # object store: how far before the retention the first sweep of a process looks
DAY_PREFIX = "date="


def day_of_name(name: str) -> date | None:
    """The day of ``date=YYYY-MM-DD``, or None for anything else (a probe file, a stray folder)."""
    if not name.startswith(DAY_PREFIX):
        return None
    try:
        return date.fromisoformat(name.removeprefix(DAY_PREFIX))
    except ValueError:
        return None


def day_start(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def is_expired(day: date, now: float, keep_seconds: float) -> bool:
    """The day's last second is more than ``keep_seconds`` old."""
    return now >= day_start(day) + DAY_SECONDS + keep_seconds


def expired_day_names(names: Iterable[str], now: float, keep_seconds: float) -> list[str]:
    """Day folders (``date=...``) whose whole day is older than ``keep_seconds``."""
    expired = []
    for name in names:
        day = day_of_name(name)
        if day is not None and is_expired(day, now, keep_seconds):
            expired.append(name)
    return sorted(expired)


def newest_expired_day(now: float, keep_seconds: float) -> date:
    """The newest day that is past retention at ``now``."""
    return datetime.fromtimestamp(now - keep_seconds - DAY_SECONDS, tz=UTC).date()


def days_to_check(now: float, keep_seconds: float, checked_through: date | None) -> tuple[date, date] | None:
    """The expired days whose objects may still exist, (first, last): those after ``checked_through`` (the
    newest day a previous sweep of this process emptied), else ``LOOKBACK_YEARS`` back; None if none."""
    last = newest_expired_day(now, keep_seconds)
    first = checked_through + timedelta(days=1) if checked_through else last.replace(year=last.year - LOOKBACK_YEARS)
    return (first, last) if first <= last else None


def day_prefixes(first: date, last: date) -> list[str]:
    """The fewest ``date=`` name prefixes covering exactly the days ``first``..``last``: whole years
    (``date=2024-``), then whole months (``date=2025-03-``), then days (``date=2025-04-07/``). Listing one
    returns only objects to delete: a sweep costs a few dozen LISTs, not one per day of the lookback."""
    prefixes = []
    day = first
    while day <= last:
        year_end = date(day.year, 12, 31)
        month_end = (day.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
        if (day.month, day.day) == (1, 1) and year_end <= last:
            prefixes.append(f"{DAY_PREFIX}{day.year:04d}-")
            day = year_end + timedelta(days=1)
        elif day.day == 1 and month_end <= last:
            prefixes.append(f"{DAY_PREFIX}{day:%Y-%m}-")
            day = month_end + timedelta(days=1)
        else:
            prefixes.append(f"{DAY_PREFIX}{day.isoformat()}/")
            day += timedelta(days=1)
    return prefixes
