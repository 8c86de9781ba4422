"""retraining.schedule as a CronJob's: its syntax (cronsim and CronJob's macros), timeZone (daylight-saving
changes included), a slot missed during an outage (once) and startingDeadline (issue 23, item 6)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from feedbackloop.core import api, cron
from feedbackloop.core.phases import StartTraining, decide
from feedbackloop.core.timeutil import format_time, parse_time

from .test_phases import actions_of, events, healthy, make_spec, monitoring_status, serving, world

BERLIN = "Europe/Berlin"


def ts(text: str, zone: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def slots(expression: str, start: float, end: float, zone: str | None = None, every: int = 60) -> list[float]:
    """What a decision `every` seconds over [start, end) triggers, each slot handled as phases does."""
    handled, found = start, []
    for poll in range(int(start), int(end), every):
        slot = cron.last_slot(expression, handled, poll + 30, zone)  # 30 s into each minute
        if slot is not None:
            found.append(slot)
            handled = slot
    return found


# --- CronJob's syntax ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, when, expected",
    [
        ("0 3 * * SUN", "2026-11-29T03:00", True),  # a Sunday
        ("0 3 * * sun", "2026-11-29T03:00", True),
        ("0 3 * * 7", "2026-11-29T03:00", True),  # 7 is Sunday too
        ("0 3 * * 0", "2026-11-29T03:00", True),
        ("0 3 * * 7", "2026-11-28T03:00", False),
        ("0 3 * * MON-FRI", "2026-11-30T03:00", True),
        ("0 3 * * MON-FRI", "2026-11-29T03:00", False),
        ("0 3 1 JAN,JUL *", "2026-07-01T03:00", True),
        ("0 3 ? * MON", "2026-11-30T03:00", True),  # ? for a day field, as CronJob's parser
        ("@weekly", "2026-11-29T00:00", True),
        ("@weekly", "2026-11-30T00:00", False),
        ("@daily", "2026-11-30T00:00", True),
        ("@midnight", "2026-11-30T00:00", True),
        ("@hourly", "2026-11-30T17:00", True),
        ("@hourly", "2026-11-30T17:01", False),
        ("@monthly", "2026-12-01T00:00", True),
        ("@monthly", "2026-11-30T00:00", False),
        ("@yearly", "2027-01-01T00:00", True),
        ("@annually", "2027-01-01T00:00", True),
        ("@YEARLY", "2026-12-01T00:00", False),
    ],
)
def test_cronjob_syntax(expr: str, when: str, expected: bool) -> None:
    assert cron.matches(expr, ts(when)) is expected


def test_sunday_spelled_three_ways_is_one_schedule() -> None:
    year = (ts("2026-01-01T00:00"), ts("2027-01-01T00:00"))
    weekly = slots("0 3 * * SUN", *year, every=6 * 3600)
    assert len(weekly) == 52 and all(datetime.fromtimestamp(s, UTC).isoweekday() == 7 for s in weekly)
    assert all(datetime.fromtimestamp(s, UTC).hour == 3 for s in weekly)
    assert slots("0 3 * * 7", *year, every=6 * 3600) == slots("0 3 * * 0", *year, every=6 * 3600) == weekly


@pytest.mark.parametrize(
    "expr, words",
    [
        ("* * *", "5 fields"),
        ("0 * * * * *", "5 fields"),  # seconds: CronJob has none
        ("61 * * * *", "bad minute"),
        ("*/0 * * * *", "bad minute"),
        ("0 0 31 2 *", "bad day-of-month"),  # no such date
        ("0 3 * * SUNDAY", "bad day-of-week"),
        ("@every 1h", "unknown macro"),
        ("@fortnightly", "unknown macro"),
    ],
)
def test_invalid_schedules_are_refused_saying_why(expr: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        cron.parse(expr)


def retraining(**fields: object) -> dict[str, object]:
    return {"features": ["a"], "target": "y", **fields}


@pytest.mark.parametrize(
    "fields, field, words",
    [
        ({"schedule": "61 * * * *"}, "spec.retraining.schedule", "invalid cron '61 * * * *': bad minute"),
        ({"schedule": "@every 1h"}, "spec.retraining.schedule", "unknown macro"),
        ({"schedule": "@daily", "timeZone": "Mars/Olympus"}, "spec.retraining.timeZone", "not a time zone"),
        ({"schedule": "@daily", "timeZone": "Local"}, "spec.retraining.timeZone", "not a time zone"),
        ({"schedule": "@daily", "timeZone": "../etc/passwd"}, "spec.retraining.timeZone", "not a time zone"),
        ({"schedule": "@daily", "startingDeadline": "1 hour"}, "spec.retraining.startingDeadline", ""),
    ],
)
def test_the_spec_refuses_naming_the_field(fields: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make_spec(retraining=retraining(**fields))
    message = api.describe_validation_error(caught.value)
    assert message.startswith(f"{field}: ") and words in message, message


def test_the_spec_accepts_cronjob_schedules_in_a_time_zone() -> None:
    spec = make_spec(retraining=retraining(schedule="0 3 * * SUN", timeZone=BERLIN, startingDeadline="2h"))
    assert spec.retraining is not None and spec.retraining.time_zone == BERLIN
    assert spec.retraining.starting_deadline is not None and spec.retraining.starting_deadline.seconds == 7200
    assert make_spec(retraining=retraining(schedule="@weekly")).retraining is not None


# --- time zones ------------------------------------------------------------------------------------------


def test_a_time_zone_moves_the_slot_with_its_offset() -> None:
    winter = slots("0 3 * * *", ts("2026-01-15T00:00"), ts("2026-01-16T00:00"), "America/New_York")
    summer = slots("0 3 * * *", ts("2026-07-15T00:00"), ts("2026-07-16T00:00"), "America/New_York")
    assert winter == [ts("2026-01-15T08:00")] and summer == [ts("2026-07-15T07:00")]
    assert slots("0 3 * * *", ts("2026-01-15T00:00"), ts("2026-01-16T00:00")) == [ts("2026-01-15T03:00")]  # UTC


def test_a_time_the_clock_skips_runs_once_right_after_the_change() -> None:
    # Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 never happens that day.
    day = (ts("2026-03-28T12:00", BERLIN), ts("2026-03-30T12:00", BERLIN))
    assert slots("30 2 * * *", *day, BERLIN) == [
        ts("2026-03-29T03:00", BERLIN),  # = 01:00 UTC, the first minute after the jump
        ts("2026-03-30T02:30", BERLIN),
    ]


def test_a_time_the_clock_repeats_runs_once() -> None:
    # Europe/Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice, at 00:30 and 01:30 UTC.
    day = (ts("2026-10-24T12:00", BERLIN), ts("2026-10-26T12:00", BERLIN))
    assert slots("30 2 * * *", *day, BERLIN) == [ts("2026-10-25T00:30"), ts("2026-10-26T01:30")]
    # An interval follows the real clock: every half hour, through both 02:30s.
    repeated = slots("*/30 * * * *", ts("2026-10-24T23:59"), ts("2026-10-25T02:00"), BERLIN)
    assert repeated == [ts("2026-10-25T00:00") + 1800 * k for k in range(4)]


# --- a missed slot runs once; startingDeadline -----------------------------------------------------------

SUNDAY_3AM = ts("2026-11-29T03:00")
MONDAY = ts("2026-11-30T10:00")  # 31 hours later: the operator was down from Saturday to Monday morning


def weekly(**fields: object):
    return make_spec(retraining=retraining(schedule="0 3 * * SUN", cooldown="1m", **fields))


def handled_at(when: float) -> dict[str, object]:
    return {**idle(), "handledRequests": {"schedule": format_time(when)}}


def idle() -> dict[str, object]:
    """Monitoring, the last retraining long past."""
    return {**monitoring_status(), "lastRetrainAt": format_time(SUNDAY_3AM - 30 * 86400)}


def test_a_slot_missed_in_an_outage_of_more_than_a_day_runs_once() -> None:
    last_week = SUNDAY_3AM - 7 * 86400
    d = decide(world(handled_at(last_week), spec=weekly(), health=healthy(), serving=serving(), now=MONDAY))
    [start] = actions_of(d, StartTraining)
    assert start.trigger == "Schedule"
    assert d.status["handledRequests"]["schedule"] == format_time(SUNDAY_3AM)  # the slot, as lastScheduleTime
    after = {**d.status, "retraining": None, "lastRetrainAt": format_time(MONDAY - 3600)}
    again = decide(world(after, spec=weekly(), health=healthy(), serving=serving(), now=MONDAY + 60))
    assert not actions_of(again, StartTraining)


def test_several_missed_slots_run_once() -> None:
    spec = make_spec(retraining=retraining(schedule="@hourly", cooldown="1m"))
    d = decide(world(handled_at(MONDAY - 5 * 3600), spec=spec, health=healthy(), serving=serving(), now=MONDAY))
    assert [a.trigger for a in actions_of(d, StartTraining)] == ["Schedule"]
    assert d.status["handledRequests"]["schedule"] == format_time(MONDAY)


def test_a_slot_later_than_the_starting_deadline_is_skipped_with_an_event() -> None:
    spec = weekly(startingDeadline="2h")
    d = decide(world(handled_at(SUNDAY_3AM - 7 * 86400), spec=spec, health=healthy(), serving=serving(), now=MONDAY))
    assert not actions_of(d, StartTraining) and ("Warning", "RetrainSkipped") in events(d)
    assert "startingDeadline 2h" in d.status["retrainBlockedBy"]
    assert d.status["handledRequests"]["schedule"] == format_time(SUNDAY_3AM)  # consumed: no event again
    again = decide(world(d.status, spec=spec, health=healthy(), serving=serving(), now=MONDAY + 60))
    assert ("Warning", "RetrainSkipped") not in events(again)
    within = decide(
        world(handled_at(SUNDAY_3AM - 1), spec=spec, health=healthy(), serving=serving(), now=SUNDAY_3AM + 3600)
    )
    assert [a.trigger for a in actions_of(within, StartTraining)] == ["Schedule"]


def test_the_schedule_counts_from_the_first_idle_round() -> None:
    """Without a handled slot, a round marks where the schedule starts; a slot after it runs however late the next
    round comes (polls may be minutes apart), and removing the schedule forgets the mark."""
    spec = weekly()
    first = decide(world(idle(), spec=spec, health=healthy(), serving=serving(), now=SUNDAY_3AM - 600))
    assert not actions_of(first, StartTraining)
    assert parse_time(first.status["handledRequests"]["schedule"]) == SUNDAY_3AM - 600
    late = decide(world(first.status, spec=spec, health=healthy(), serving=serving(), now=SUNDAY_3AM + 300))
    assert [a.trigger for a in actions_of(late, StartTraining)] == ["Schedule"]
    unscheduled = decide(world(first.status, health=healthy(), serving=serving(), now=SUNDAY_3AM + 300))
    assert "schedule" not in unscheduled.status["handledRequests"]


def test_a_new_loop_does_not_mark_the_schedule_before_its_first_version() -> None:
    d = decide(world({}, spec=weekly(), now=SUNDAY_3AM - 600))
    [start] = actions_of(d, StartTraining)
    assert start.trigger == "Initial" and "schedule" not in d.status.get("handledRequests", {})
