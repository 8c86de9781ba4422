"""A five-field cron matcher (UTC): minute hour day-of-month month day-of-week.

Supports `*`, `*/n`, `a-b`, `a-b/n` and comma lists; as in cron, when both day fields are restricted a
time matches if either does.
"""

from __future__ import annotations

from datetime import UTC, datetime

_BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]


def _parse_field(text: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"bad step in {part!r}")
        if base == "*":
            start, end = low, high
        elif "-" in base:
            start, end = (int(x) for x in base.split("-", 1))
        else:
            start = end = int(base)
        if not (low <= start <= end <= high):
            raise ValueError(f"{part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return values


def parse(expression: str) -> list[set[int]]:
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"cron needs 5 fields, got {len(fields)}: {expression!r}")
    try:
        parsed = [_parse_field(f, lo, hi) for f, (lo, hi) in zip(fields, _BOUNDS)]
    except ValueError as error:
        raise ValueError(f"invalid cron {expression!r}: {error}") from None
    parsed[4] = {d % 7 for d in parsed[4]}
    return parsed


def matches(expression: str, minute_start: float) -> bool:
    minute, hour, dom, month, dow = parse(expression)
    t = datetime.fromtimestamp(minute_start, tz=UTC)
    day_restricted = expression.split()[2] != "*" and expression.split()[4] != "*"
    day_ok = (
        ((t.day in dom) or (t.isoweekday() % 7 in dow))
        if day_restricted
        else (t.day in dom and t.isoweekday() % 7 in dow)
    )
    return t.minute in minute and t.hour in hour and t.month in month and day_ok


def last_slot(expression: str, after: float, now: float) -> float | None:
    """The latest scheduled minute in (after, now], looking back at most a day."""
    start = max(after, now - 86400)
    slot = now - now % 60
    while slot > start:
        if matches(expression, slot):
            return slot
        slot -= 60
    return None
