"""Cron expressions: parsing, next fire times, time zones and DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter  # type: ignore[import-untyped]

from dp.scheduler import CronSchedule, InvalidCronError, InvalidTimezoneError

BERLIN = ZoneInfo("Europe/Berlin")
# 2025 in Europe/Berlin: clocks go 02:00 CET -> 03:00 CEST on March 30 (01:00 UTC), and
# 03:00 CEST -> 02:00 CET on October 26 (01:00 UTC).
SPRING_DAY = datetime(2025, 3, 30, tzinfo=BERLIN)
AUTUMN_DAY = datetime(2025, 10, 26, tzinfo=BERLIN)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local(times: list[datetime], zone: ZoneInfo = BERLIN) -> list[str]:
    """Fire times as local wall-clock strings with their UTC offsets."""
    return [t.astimezone(zone).strftime("%m-%d %H:%M:%S%z") for t in times]


def test_every_five_minutes() -> None:
    """A step in the minute field fires on the multiples, strictly after the given time."""
    schedule = CronSchedule("*/5 * * * *")
    assert schedule.fires(utc(2025, 1, 1, 12, 0), 3) == [
        utc(2025, 1, 1, 12, 5),
        utc(2025, 1, 1, 12, 10),
        utc(2025, 1, 1, 12, 15),
    ]


def test_a_sixth_field_gives_seconds_and_comes_first() -> None:
    """With six fields the first is the second of the minute."""
    schedule = CronSchedule("15,45 30 9 * * *")
    assert schedule.fires(utc(2025, 1, 1), 3) == [
        utc(2025, 1, 1, 9, 30, 15),
        utc(2025, 1, 1, 9, 30, 45),
        utc(2025, 1, 2, 9, 30, 15),
    ]


def test_every_second() -> None:
    """`* * * * * *` fires every second."""
    schedule = CronSchedule("* * * * * *")
    assert schedule.next_fire(utc(2025, 1, 1, 0, 0, 0)) == utc(2025, 1, 1, 0, 0, 1)


def test_weekdays_with_names() -> None:
    """Weekday names and ranges: 09:00 Monday to Friday skips the weekend."""
    schedule = CronSchedule("0 9 * * MON-FRI")
    friday = utc(2025, 1, 3, 10, 0)
    assert schedule.next_fire(friday) == utc(2025, 1, 6, 9, 0)  # the next Monday


def test_last_day_of_month() -> None:
    """`L` in the day field is the last day of each month, leap years included."""
    schedule = CronSchedule("0 0 L * *")
    assert schedule.fires(utc(2024, 1, 15), 3) == [
        utc(2024, 1, 31),
        utc(2024, 2, 29),
        utc(2024, 3, 31),
    ]


def test_nth_and_last_weekday_of_month() -> None:
    """`MON#2` is the second Monday of the month and `L5` the last Friday."""
    assert CronSchedule("0 0 * * MON#2").next_fire(utc(2025, 1, 1)) == utc(2025, 1, 13)
    assert CronSchedule("0 0 * * L5").next_fire(utc(2025, 1, 1)) == utc(2025, 1, 31)


def test_day_or_weekday() -> None:
    """With both day and weekday restricted, a date matching either fires (classic cron)."""
    schedule = CronSchedule("0 0 13 * FRI")
    assert schedule.fires(utc(2025, 6, 1), 3) == [
        utc(2025, 6, 6),  # a Friday
        utc(2025, 6, 13),  # the 13th, also a Friday
        utc(2025, 6, 20),
    ]


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("@hourly", utc(2025, 5, 5, 13)),
        ("@daily", utc(2025, 5, 6)),
        ("@weekly", utc(2025, 5, 11)),  # Sunday
        ("@monthly", utc(2025, 6, 1)),
        ("@yearly", utc(2026, 1, 1)),
    ],
)
def test_aliases(alias: str, expected: datetime) -> None:
    """The usual `@` aliases stand for their five-field expressions."""
    assert CronSchedule(alias).next_fire(utc(2025, 5, 5, 12, 30)) == expected


def test_february_29_waits_for_a_leap_year() -> None:
    """A date that exists only in leap years is found years ahead."""
    assert CronSchedule("0 0 29 2 *").next_fire(utc(2025, 3, 1)) == utc(2028, 2, 29)


def test_time_zone_moves_the_fire_time_in_utc() -> None:
    """09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer."""
    schedule = CronSchedule("0 9 * * *", "Europe/Berlin")
    assert schedule.next_fire(utc(2025, 1, 10)) == utc(2025, 1, 10, 8)
    assert schedule.next_fire(utc(2025, 7, 10)) == utc(2025, 7, 10, 7)


def test_time_zone_behind_utc() -> None:
    """Midnight in New York is 05:00 UTC in winter, the same UTC day."""
    schedule = CronSchedule("0 0 * * *", "America/New_York")
    assert schedule.next_fire(utc(2025, 1, 10, 6)) == utc(2025, 1, 11, 5)


@pytest.mark.parametrize(
    "expression",
    [
        "*/7 * * * *",
        "0 9-17/2 * * 1-5",
        "30 2 1,15 * *",
        "0 0 L * *",
        "0 12 * * MON#1",
        "0 0 13 * FRI",
        "5 4 * JAN,JUL SUN",
        "*/20 */5 * * * *",
    ],
)
def test_agrees_with_croniter_in_utc(expression: str) -> None:
    """Away from DST changes the fire times are croniter's, for a year of samples."""
    schedule = CronSchedule(expression)
    reference = croniter(expression, datetime(2025, 1, 1), second_at_beginning=True)
    after = utc(2025, 1, 1)
    for _ in range(200):
        expected = reference.get_next(datetime).replace(tzinfo=UTC)
        after = schedule.next_fire(after)
        assert after == expected


def test_daily_job_on_the_spring_forward_day_runs_once_at_three() -> None:
    """02:30 does not exist on March 30 in Berlin: the job runs once, at 03:00 CEST."""
    schedule = CronSchedule("30 2 * * *", "Europe/Berlin")
    assert local(schedule.fires(SPRING_DAY - timedelta(days=1), 4)) == [
        "03-29 02:30:00+0100",
        "03-30 03:00:00+0200",
        "03-31 02:30:00+0200",
        "04-01 02:30:00+0200",
    ]


def test_daily_job_on_the_fall_back_day_runs_once() -> None:
    """02:30 happens twice on October 26 in Berlin: the job runs only the first time."""
    schedule = CronSchedule("30 2 * * *", "Europe/Berlin")
    assert local(schedule.fires(AUTUMN_DAY, 3)) == [
        "10-26 02:30:00+0200",
        "10-27 02:30:00+0100",
        "10-28 02:30:00+0100",
    ]


def test_job_asked_during_the_repeated_hour_does_not_run_again() -> None:
    """Asked at 02:10 CET (the second 02:10), the 02:30 job's next run is the next day."""
    schedule = CronSchedule("30 2 * * *", "Europe/Berlin")
    second_0210 = utc(2025, 10, 26, 1, 10)
    assert local([schedule.next_fire(second_0210)]) == ["10-27 02:30:00+0100"]


def test_every_minute_of_a_fixed_hour_in_the_gap_runs_once_after_it() -> None:
    """`*/20 2 * * *` on the spring day has no 02:xx: it runs once, at 03:00 CEST."""
    schedule = CronSchedule("*/20 2 * * *", "Europe/Berlin")
    assert local(schedule.fires(SPRING_DAY, 2)) == ["03-30 03:00:00+0200", "03-31 02:00:00+0200"]


@pytest.mark.parametrize("day", [SPRING_DAY, AUTUMN_DAY])
@pytest.mark.parametrize("expression", ["0 * * * *", "30 * * * *"])
def test_hourly_job_stays_hourly_in_utc_across_dst(expression: str, day: datetime) -> None:
    """An hourly job fires every 60 minutes through both DST changes."""
    schedule = CronSchedule(expression, "Europe/Berlin")
    times = schedule.fires(day, 30)
    assert {b - a for a, b in pairwise(times)} == {timedelta(hours=1)}


def test_hourly_job_fires_twice_in_the_repeated_hour() -> None:
    """On the autumn day an hourly job runs at 02:30 CEST and again at 02:30 CET."""
    schedule = CronSchedule("30 * * * *", "Europe/Berlin")
    start = utc(2025, 10, 25, 23, 45)  # 01:45 CEST
    assert local(schedule.fires(start, 3)) == [
        "10-26 02:30:00+0200",
        "10-26 02:30:00+0100",
        "10-26 03:30:00+0100",
    ]


def test_every_second_job_runs_through_the_fall_back() -> None:
    """A seconds job keeps its one-second rhythm across the change."""
    schedule = CronSchedule("* * * * * *", "Europe/Berlin")
    change = utc(2025, 10, 26, 1)
    assert schedule.fires(change - timedelta(seconds=2), 3) == [
        change - timedelta(seconds=1),
        change,
        change + timedelta(seconds=1),
    ]


def test_new_york_spring_forward() -> None:
    """02:30 does not exist on March 9, 2025 in New York: the job runs at 03:00 EDT."""
    zone = ZoneInfo("America/New_York")
    schedule = CronSchedule("30 2 * * *", "America/New_York")
    start = datetime(2025, 3, 8, 12, tzinfo=zone)
    assert local(schedule.fires(start, 2), zone) == ["03-09 03:00:00-0400", "03-10 02:30:00-0400"]


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("61 * * * *", "out of range"),
        ("* * *", "it has 3 fields"),
        ("* * * * * * *", "it has 7 fields"),
        ("0 0 30 2 *", "matches no date"),
        ("0 0 15W * *", "'W'"),
        ("H * * * *", "'H'"),
        ("@reboot", "unknown alias"),
        ("*/0 * * * *", "step"),
    ],
)
def test_invalid_expression(expression: str, problem: str) -> None:
    """A bad expression is refused at construction, with the expression and the problem."""
    with pytest.raises(InvalidCronError, match=problem) as raised:
        CronSchedule(expression)
    assert raised.value.expression == expression
    assert repr(expression) in str(raised.value)


@pytest.mark.parametrize(
    "zone",
    ["Mars/Olympus", "Europe/berlin", "", "/etc/localtime", "Europe", "x" * 300, "Europe/\x00"],
)
def test_invalid_time_zone(zone: str) -> None:
    """An unknown zone is refused with its name."""
    with pytest.raises(InvalidTimezoneError) as raised:
        CronSchedule("0 9 * * *", zone)
    assert raised.value.timezone == zone


def test_naive_time_is_refused() -> None:
    """`next_fire` needs an aware datetime; a naive one is ambiguous."""
    with pytest.raises(ValueError, match="no time zone"):
        CronSchedule("* * * * *").next_fire(datetime(2025, 1, 1))
