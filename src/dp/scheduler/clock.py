"""Where the scheduler gets the time from: the system clock, or a manual one for tests.

The scheduler never calls `datetime.now()` or `asyncio.sleep()` itself; it asks its `Clock`.
With a `ManualClock` a test walks cron schedules through days and DST changes in
milliseconds::

    clock = ManualClock(datetime(2025, 3, 29, tzinfo=UTC))
    scheduler = Scheduler(publisher, clock=clock)
    ...
    await clock.advance(timedelta(days=2))  # every sleeper wakes at its own deadline
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from dp.errors import InvalidArgumentError

__all__ = ["Clock", "ManualClock", "SystemClock"]

# The wall clock can be stepped (NTP, a suspended laptop) while asyncio's timers run on the
# monotonic clock, so long sleeps are taken in naps and the wall clock is read after each.
_MAX_NAP = 60.0

# How many event-loop turns `ManualClock` grants woken tasks to go back to sleep.
_SETTLE_TURNS = 100


@runtime_checkable
class Clock(Protocol):
    """The time source of a scheduler."""

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Return once `now() >= when` (at once if that is already so)."""
        ...


class SystemClock:
    """The real time: `datetime.now(UTC)`, and asyncio timers to wait."""

    __slots__ = ()

    def now(self) -> datetime:
        """The current UTC time."""
        return datetime.now(UTC)

    async def sleep_until(self, when: datetime) -> None:
        """Sleep until the wall clock reads `when`, correcting for clock steps every minute."""
        while True:
            delay = (when - datetime.now(UTC)).total_seconds()
            if delay <= 0:
                return
            await asyncio.sleep(min(delay, _MAX_NAP))

    def __repr__(self) -> str:
        return "SystemClock()"


class _Sleeper:
    __slots__ = ("future", "task")

    def __init__(self, future: asyncio.Future[None], task: asyncio.Task[object] | None) -> None:
        self.future = future
        self.task = task


class ManualClock:
    """A clock that moves only when told, for tests.

    `advance` and `set` move time forward step by step: each task sleeping on the clock is
    woken with `now()` equal to its own deadline, and gets to run (and go back to sleep)
    before time moves on. So a scheduler sees every fire time exactly, as on a real clock
    that never runs late.

    Args:
        start: the initial time (aware); default 2025-01-01 00:00 UTC.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = _utc(start) if start is not None else datetime(2025, 1, 1, tzinfo=UTC)
        self._sleepers: list[tuple[datetime, int, _Sleeper]] = []
        self._order = itertools.count()

    def now(self) -> datetime:
        """The clock's current time (UTC)."""
        return self._now

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock."""
        return sum(1 for _, _, s in self._sleepers if not s.future.done())

    async def sleep_until(self, when: datetime) -> None:
        """Wait until the clock is moved to `when` or later."""
        when = _utc(when)
        if when <= self._now:
            await asyncio.sleep(0)  # a loop that keeps sleeping into the past must still yield
            return
        sleeper = _Sleeper(asyncio.get_running_loop().create_future(), asyncio.current_task())
        heapq.heappush(self._sleepers, (when, next(self._order), sleeper))
        try:
            await sleeper.future
        finally:
            sleeper.future.cancel()  # no-op when woken; marks a cancelled sleep as stale

    async def advance(self, delta: timedelta) -> None:
        """Move the clock forward by `delta`, waking sleepers at their deadlines in order."""
        if delta < timedelta(0):
            raise InvalidArgumentError("delta", delta, "positive", hint="set() moves a clock back")
        await self.set(self._now + delta)

    async def set(self, when: datetime) -> None:
        """Move the clock to `when`, waking sleepers at their deadlines in order.

        Moving backwards (like a wall clock stepped by NTP) wakes nobody.
        """
        when = _utc(when)
        await self._settle(())  # let tasks started just before reach their first sleep
        while self._sleepers and self._sleepers[0][0] <= when:
            self._now = max(self._now, self._sleepers[0][0])
            woken = []
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, sleeper = heapq.heappop(self._sleepers)
                if not sleeper.future.done():
                    sleeper.future.set_result(None)
                    woken.append(sleeper.task)
            await self._settle(woken)
        self._now = when

    async def _settle(self, woken: tuple[()] | list[asyncio.Task[object] | None]) -> None:
        """Yield to the loop until every woken task is asleep on this clock again, or done."""
        for _ in range(_SETTLE_TURNS):
            await asyncio.sleep(0)
            asleep = {s.task for _, _, s in self._sleepers if not s.future.done()}
            if all(task is None or task.done() or task in asleep for task in woken):
                return

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()})"


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidArgumentError(
            "when",
            when,
            "an aware datetime with a time zone, e.g. datetime(2025, 1, 1, tzinfo=UTC)",
        )
    return when.astimezone(UTC)
