"""When a loop's retraining schedule falls due: a Kubernetes CronJob's schedule, in a time zone.

The expressions are cronsim's (requirements/operator.txt says why that library): five fields, minute hour
day-of-month month day-of-week, with `*`, `a-b`, `*/n`, `a-b/n`, lists, month and day names (JAN, sun),
0 or 7 for Sunday and, as in cron, either day field matching when both are restricted (neither starts with
`*`). Added here, as CronJob's parser (robfig/cron) has them: the macros below and `?` for a day field.
cronsim's own extensions (L, W, #) pass too; six fields (seconds) do not, CronJob has none.

The time zone is an IANA name (a CronJob's spec.timeZone), UTC when omitted. Daylight-saving changes go as in
Debian cron (cronsim): a time the clock skips runs right after the change, a time it repeats runs once; an
expression whose minute or hour field starts with `*` follows the real clock.
"""

from __future__ import annotations

import functools
import math
import zoneinfo
from datetime import UTC, datetime, tzinfo

from cronsim import CronSim, CronSimError

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_A_PAST_INSTANT = datetime(2000, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=256)  # each decision reads its loop's schedule
def parse(expression: str) -> str:
    """The five-field form of a schedule (a macro expanded); ValueError saying what is wrong."""
    text = expression.strip()
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise ValueError(f"unknown macro {text!r}: use one of {', '.join(MACROS)} or five fields")
        return MACROS[text.lower()]
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(
            f"cron needs 5 fields (minute hour day-of-month month day-of-week) or a macro such as @daily, "
            f"got {len(fields)}: {expression!r}"
        )
    fields[2], fields[4] = ("*" if f == "?" else f for f in (fields[2], fields[4]))
    normal = " ".join(fields)
    try:
        next(CronSim(normal, _A_PAST_INSTANT))  # parses it, and finds a first time
    except CronSimError as error:
        raise ValueError(f"invalid cron {expression!r}: {str(error).lower()}") from None
    except StopIteration:
        raise ValueError(f"invalid cron {expression!r}: no such date") from None
    return normal


@functools.cache
def _zone_names() -> frozenset[str]:
    # What the operator's tz database holds (its image's /usr/share/zoneinfo, or the tzdata package); as
    # Kubernetes, an explicit name only: not the node's local time.
    return frozenset(n for n in zoneinfo.available_timezones() if n.lower() not in ("local", "localtime"))


def time_zone(name: str | None) -> tzinfo:
    """The zone of an IANA name (None: UTC); ValueError for a name the tz database does not hold."""
    if name is None:
        return UTC
    if name not in _zone_names():
        raise ValueError(f"{name!r} is not a time zone of the tz database: use an IANA name such as Europe/Berlin")
    return zoneinfo.ZoneInfo(name)


def matches(expression: str, minute_start: float, zone: str | None = None) -> bool:
    """Is this minute a slot of the schedule?"""
    return last_slot(expression, minute_start - 1, minute_start, zone) == minute_start


def last_slot(expression: str, after: float, now: float, zone: str | None = None) -> float | None:
    """The latest slot in (after, now], however far back: after an outage only the latest missed one."""
    start = datetime.fromtimestamp(math.floor(now) + 1, tz=time_zone(zone))
    try:
        slot = next(CronSim(parse(expression), start, reverse=True)).timestamp()  # the first one <= now
    except StopIteration:
        return None
    return slot if slot > after else None
