"""Cron expressions and their fire times in a time zone, correct across DST changes.

Syntax: 5 fields `minute hour day month weekday`, or 6 with a *leading* seconds field
`second minute hour day month weekday` (as in Quartz, Spring and most libraries that take
seconds). Fields take `*`, numbers, ranges `1-5`, steps `*/15`, lists `1,15`, month and day
names (`JAN`, `MON`), `L` for the last day of the month, `MON#2` for the second Monday and
`L5` for the last Friday. Aliases: `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
`@midnight`, `@hourly`. When both day and weekday are restricted a date matching either
fires (classic cron). Parsing is croniter's; stepping through time is done here.

Cron describes local wall-clock times. Where a zone's wall clock jumps, the rule is:

* Forward (spring): a wall time that does not exist that day fires at the first instant
  after the gap, e.g. `30 2 * * *` in Europe/Berlin fires at 03:00 CEST on the last Sunday
  of March. It fires once even if several of its times fall into the gap.
* Backward (autumn): a wall time that happens twice fires only the first time.
* Except for expressions whose hour field is `*` (every hour): those keep their rhythm in
  absolute time, like a stopwatch. `0 * * * *` fires every 60 minutes through both changes:
  it skips the hour that does not exist and fires twice in the hour that happens twice.

croniter 7 itself fires a daily 02:30 job twice on the autumn day, which is one reason the
stepping is done here; the other is speed (a few microseconds per next time).
"""

from __future__ import annotations

import calendar
import functools
import re
from bisect import bisect_left
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]  # croniter ships no type hints

from dp.errors import InvalidArgumentError, InvalidCronError, InvalidTimezoneError

__all__ = ["CronSchedule"]

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_NAMES = re.compile(r"JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC|SUN|MON|TUE|WED|THU|FRI|SAT")
_UNSUPPORTED = {
    "W": "'W' (nearest weekday) is not supported",
    "H": "'H' (hashed values) is not supported; write the value out",
    "R": "'R' (random values) is not supported; write the value out",
}
_SECOND = timedelta(seconds=1)
_DAY_SECONDS = 86_400
# A cron that matches no date in this many years never will (the calendar repeats every
# 28 years between century years; February 29 on a Monday needs 28).
_HORIZON_YEARS = 30
# Time-zone offsets are assumed to change at most once a day; true of every zone in the
# tz database. Checking for a change between two instants costs one probe per day between.
_PROBE = _DAY_SECONDS


class CronSchedule:
    """A parsed cron expression bound to a time zone; answers "when does it fire next?".

    Args:
        expression: e.g. `"30 2 * * *"`, `"*/10 * * * * *"` (seconds first), `"@daily"`.
        timezone: an IANA zone name; the expression is read in that zone's wall-clock time.

    Attributes:
        expression: the expression as given.
        timezone: the zone name as given.
        every_hour: whether the hour field is `*`; such schedules keep their rhythm in
            absolute time across DST changes.

    Raises:
        InvalidCronError: if the expression is malformed or can never fire (`0 0 30 2 *`).
        InvalidTimezoneError: if the zone is unknown.
    """

    __slots__ = (
        "_days",
        "_hours",
        "_last_day",
        "_minutes",
        "_months",
        "_nth",
        "_seconds",
        "_star_day",
        "_star_weekday",
        "_tz",
        "_weekdays",
        "every_hour",
        "expression",
        "timezone",
    )

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        self.expression = expression
        self.timezone = timezone
        self._tz = _zone(timezone)
        fields, nth = _expand(expression)
        minutes, hours, days, months, weekdays, seconds = fields
        self._seconds = _values(seconds, 0, 59)
        self._minutes = _values(minutes, 0, 59)
        self._hours = _values(hours, 0, 23)
        self._months = frozenset(_values(months, 1, 12))
        self._star_day = days == ["*"]
        self._days = frozenset(d for d in days if isinstance(d, int))
        self._last_day = "l" in days
        self._star_weekday = weekdays == ["*"] and not nth
        self._weekdays = frozenset(_values(weekdays, 0, 6))
        self._nth: dict[int, frozenset[int | str]] = {d: frozenset(n) for d, n in nth.items()}
        self.every_hour = len(self._hours) == 24
        start = datetime(2000, 1, 1)
        if self._next_wall(start, inclusive=True, limit=start.year + _HORIZON_YEARS) is None:
            raise InvalidCronError(expression, "it matches no date (e.g. February 30)")

    def next_fire(self, after: datetime) -> datetime:
        """The first fire time strictly after `after` (aware), as an aware UTC datetime."""
        if after.tzinfo is None or after.utcoffset() is None:
            raise InvalidArgumentError("after", after, "an aware datetime (it has no time zone)")
        if self._tz is UTC:
            wall = self._next_wall_or_fail(after.astimezone(UTC).replace(tzinfo=None))
            return wall.replace(tzinfo=UTC)
        return self._next_zoned(after.astimezone(UTC))

    def fires(self, after: datetime, count: int) -> list[datetime]:
        """The next `count` fire times after `after`, in UTC."""
        times = []
        for _ in range(count):
            after = self.next_fire(after)
            times.append(after)
        return times

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r}, timezone={self.timezone!r})"

    # --- time zones -----------------------------------------------------------------------

    def _next_zoned(self, after: datetime) -> datetime:
        """Walk the zone's constant-offset stretches from `after` until one holds a fire.

        Within a stretch, wall time is absolute time plus a fixed offset, so the next
        wall-clock match converts directly. At each offset change the DST rules of the
        module docstring apply.
        """
        tz = self._tz
        start = after
        inclusive = False  # the first stretch wants times after `after`, later ones from the change
        offset = _offset(tz, start)
        # Wall times before `floor` already fired in the first pass of a repeated hour.
        floor = self._floor_if_repeating(start, offset)
        for _ in range(1_000):
            wall = (start + offset).replace(tzinfo=None)
            if floor is not None and floor > wall:
                candidate = self._next_wall_or_fail(floor, inclusive=True)
            else:
                candidate = self._next_wall_or_fail(wall, inclusive=inclusive)
            fire = (candidate - offset).replace(tzinfo=UTC)
            change = _first_change(tz, start, fire, offset)
            if change is None:
                return fire
            new_offset = _offset(tz, change)
            old_wall_end = (change + offset).replace(tzinfo=None)
            new_wall_start = (change + new_offset).replace(tzinfo=None)
            floor = None
            if new_offset > offset:  # wall times [old_wall_end, new_wall_start) do not exist
                if not self.every_hour:
                    skipped = self._next_wall(old_wall_end, inclusive=True)
                    if skipped is not None and skipped < new_wall_start:
                        return change
            elif not self.every_hour:  # wall times [new_wall_start, old_wall_end) repeat
                floor = old_wall_end
            start, offset, inclusive = change, new_offset, True
        raise RuntimeError(f"{self!r}: no fire time found after {after.isoformat()}")

    def _floor_if_repeating(self, instant: datetime, offset: timedelta) -> datetime | None:
        """In the second pass of a repeated hour, the wall time where the repetition ends."""
        if self.every_hour:
            return None
        local = instant.astimezone(self._tz)
        if not local.fold:
            return None
        first_offset = local.replace(fold=0).utcoffset()
        assert first_offset is not None  # a ZoneInfo always knows its offsets
        # The same wall time in the first pass was an earlier instant; the change lies between.
        first_pass = instant - (first_offset - offset)
        change = _first_change(self._tz, first_pass, instant, first_offset)
        if change is None:
            return None
        return (change + first_offset).replace(tzinfo=None)

    # --- wall-clock matching --------------------------------------------------------------

    def _next_wall_or_fail(self, start: datetime, *, inclusive: bool = False) -> datetime:
        found = self._next_wall(start, inclusive=inclusive)
        if found is None:
            raise InvalidCronError(
                self.expression, f"it matches no date within {_HORIZON_YEARS} years of {start}"
            )
        return found

    def _next_wall(
        self, start: datetime, *, inclusive: bool, limit: int | None = None
    ) -> datetime | None:
        """The first naive wall time matching the fields after `start` (or at it)."""
        exact = inclusive and not start.microsecond
        t = start if exact else start.replace(microsecond=0) + _SECOND
        day = t.date()
        clock: tuple[int, int, int] | None = (t.hour, t.minute, t.second)
        last_year = (limit if limit is not None else day.year + _HORIZON_YEARS) + 1
        one_day = timedelta(days=1)
        while day.year < last_year:
            if day.month not in self._months:
                day = _first_of_next_month(day)
                clock = None
                continue
            if self._day_matches(day):
                hms = self._first_time(clock) if clock else self._earliest()
                if hms is not None:
                    return datetime(day.year, day.month, day.day, *hms)
            day += one_day
            clock = None
        return None

    def _day_matches(self, day: date) -> bool:
        if self._star_day and self._star_weekday:
            return True
        in_month = day.day in self._days or (
            self._last_day and day.day == calendar.monthrange(day.year, day.month)[1]
        )
        if self._star_weekday:
            return in_month
        weekday = (day.weekday() + 1) % 7  # cron counts from Sunday = 0
        on_weekday = weekday in self._weekdays and (
            weekday not in self._nth or self._nth_matches(day, self._nth[weekday])
        )
        if self._star_day:
            return on_weekday
        return in_month or on_weekday

    @staticmethod
    def _nth_matches(day: date, wanted: frozenset[int | str]) -> bool:
        if (day.day - 1) // 7 + 1 in wanted:
            return True
        return "l" in wanted and day.day + 7 > calendar.monthrange(day.year, day.month)[1]

    def _earliest(self) -> tuple[int, int, int]:
        return self._hours[0], self._minutes[0], self._seconds[0]

    def _first_time(self, clock: tuple[int, int, int]) -> tuple[int, int, int] | None:
        """The first (hour, minute, second) of the fields at or after `clock`, same day."""
        hour, minute, second = clock
        hours, minutes, seconds = self._hours, self._minutes, self._seconds
        h = bisect_left(hours, hour)
        if h == len(hours):
            return None
        if hours[h] > hour:
            return hours[h], minutes[0], seconds[0]
        m = bisect_left(minutes, minute)
        if m < len(minutes):
            if minutes[m] > minute:
                return hour, minutes[m], seconds[0]
            s = bisect_left(seconds, second)
            if s < len(seconds):
                return hour, minute, seconds[s]
            if m + 1 < len(minutes):
                return hour, minutes[m + 1], seconds[0]
        if h + 1 < len(hours):
            return hours[h + 1], minutes[0], seconds[0]
        return None


_Parsed = tuple[list[list[int | str]], dict[int, set[int | str]]]


def _expand(expression: str) -> _Parsed:
    """croniter's parse, limited to what this module steps through correctly."""
    if not isinstance(expression, str):
        raise InvalidCronError(str(expression), f"expected a str, got {type(expression).__name__}")
    return _expand_text(expression)


# croniter takes ~30 us to parse; many triggers share an expression. Results are only read.
@functools.lru_cache(maxsize=4_096)
def _expand_text(expression: str) -> _Parsed:
    text = expression.strip()
    if text.startswith("@"):
        if text.lower() not in _ALIASES:
            raise InvalidCronError(
                expression, f"unknown alias {text!r}; known: {', '.join(sorted(_ALIASES))}"
            )
        text = _ALIASES[text.lower()]
    count = len(text.split())
    if count not in (5, 6):
        raise InvalidCronError(expression, f"it has {count} fields")
    letters = set(_NAMES.sub("", text.upper())) - set("0123456789*/,-#L?")
    for letter, problem in _UNSUPPORTED.items():
        if letter in letters:
            raise InvalidCronError(expression, problem)
    try:
        fields, nth = croniter.expand(text, second_at_beginning=True)
    except (ValueError, TypeError) as exc:  # croniter's errors derive from ValueError
        raise InvalidCronError(expression, str(exc)) from exc
    if len(fields) == 5:
        fields = [*fields, [0]]
    return fields, nth


def _values(field: list[int | str], low: int, high: int) -> tuple[int, ...]:
    if field == ["*"]:
        return tuple(range(low, high + 1))
    return tuple(sorted(v for v in field if isinstance(v, int)))


def _zone(name: str) -> tzinfo:
    if name in ("UTC", "Etc/UTC"):
        return UTC
    if not isinstance(name, str) or not name:
        raise InvalidTimezoneError(str(name), "expected a non-empty str")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, IsADirectoryError):  # "Europe" is a folder of zones
        raise InvalidTimezoneError(name, "no such zone in the tz database") from None
    except ValueError as exc:  # malformed keys, e.g. absolute paths
        raise InvalidTimezoneError(name, str(exc)) from None
    except OSError as exc:  # e.g. a name too long to be a file
        raise InvalidTimezoneError(name, exc.strerror or "not a zone file") from None


def _offset(tz: tzinfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(tz).utcoffset()
    assert offset is not None  # every tzinfo here is a ZoneInfo or UTC
    return offset


def _first_change(tz: tzinfo, start: datetime, end: datetime, offset: timedelta) -> datetime | None:
    """The first instant in (start, end] whose UTC offset differs from `offset`, if any."""
    lo = int(start.timestamp())
    stop = int(end.timestamp())
    while lo < stop:
        hi = min(lo + _PROBE, stop)
        if _offset(tz, datetime.fromtimestamp(hi, UTC)) != offset:
            while hi - lo > 1:  # zone transitions happen on whole seconds
                mid = (lo + hi) // 2
                if _offset(tz, datetime.fromtimestamp(mid, UTC)) != offset:
                    hi = mid
                else:
                    lo = mid
            return datetime.fromtimestamp(hi, UTC)
        lo = hi
    return None


def _first_of_next_month(day: date) -> date:
    if day.month == 12:
        return date(day.year + 1, 1, 1)
    return date(day.year, day.month + 1, 1)
