"""Scheduler figures, each beside what plain asyncio or croniter gives in the same run.

* Fire lateness on the real clock: cron triggers firing every second for a few seconds,
  measured from the scheduled second to the publish call, beside plain `loop.call_at`
  timers due at the half seconds in between (same loop, same batch size, no overlap).
* Thousands of cron triggers: tasks and memory they cost (one timer task, a heap), beside
  the naive design of one sleeping task per trigger; and the time to compute a next fire
  time, beside croniter's `get_next`.
"""

from __future__ import annotations

import asyncio
import gc
import math
import statistics
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from croniter import croniter  # type: ignore[import-untyped]

from bench._harness import Report
from dp.events import EventBase, InMemoryBroker, InMemoryPublisher
from dp.scheduler import CronSchedule, Scheduler, create_cron_trigger

SECTION = "scheduler"
JITTER_TRIGGERS = 50  # cron triggers firing together each second
JITTER_SECONDS = 6
SCALES = (1_000, 10_000)


def run(report: Report) -> None:
    asyncio.run(_lateness(report))
    for count in SCALES:
        asyncio.run(_many_triggers(report, count))
    _next_fire_speed(report)


# --- fire lateness ------------------------------------------------------------------------


class _LatenessPublisher:
    """Publishes to a broker and notes how late each publish is after its cron second."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self._publisher = InMemoryPublisher(broker)
        self.late: list[float] = []
        self.first_late: dict[int, float] = {}

    async def publish(self, topic: str, event: EventBase) -> None:
        now = time.time()
        second = math.floor(now)  # every fire is due on a whole second: lateness < 1 s
        self.late.append(now - second)
        self.first_late.setdefault(second, now - second)
        await self._publisher.publish(topic, event)


async def _lateness(report: Report) -> None:
    broker = InMemoryBroker()
    publisher = _LatenessPublisher(broker)
    scheduler = Scheduler(publisher)
    for i in range(JITTER_TRIGGERS):
        trigger = create_cron_trigger("* * * * * *", lambda: EventBase(topic="bench.tick"))
        await scheduler.register_trigger(f"tick-{i}", trigger, "bench.tick")

    loop = asyncio.get_running_loop()
    baseline: list[float] = []
    baseline_first: list[float] = []

    def on_time(target: float, first: bool) -> None:
        late = time.time() - target
        baseline.append(late)
        if first:
            baseline_first.append(late)

    # The baseline timers are due on the half seconds, so they never compete with the cron
    # fires on the whole seconds.
    start = math.floor(time.time()) + 1
    for second in range(JITTER_SECONDS):
        target = start + second + 0.5
        when = loop.time() + (target - time.time())
        for i in range(JITTER_TRIGGERS):
            loop.call_at(when, on_time, target, i == 0)

    async with scheduler:
        await asyncio.sleep(start + JITTER_SECONDS - time.time())

    ms = 1_000
    dp_ms = sorted(x * ms for x in publisher.late)
    base_ms = sorted(x * ms for x in baseline)
    batch = f"{JITTER_TRIGGERS} per second"
    report.add(
        SECTION,
        f"cron fire lateness p50 ({batch}, {len(dp_ms)} fires)",
        _pct(dp_ms, 50),
        "ms",
        baseline_name="loop.call_at lateness",
        baseline=_pct(base_ms, 50),
        higher_is_better=False,
    )
    report.add(
        SECTION,
        f"cron fire lateness p99 ({batch})",
        _pct(dp_ms, 99),
        "ms",
        baseline_name="loop.call_at lateness",
        baseline=_pct(base_ms, 99),
        target="< 10 ms",
        higher_is_better=False,
    )
    report.add(
        SECTION,
        "first fire of each second, max",
        max(publisher.first_late.values()) * ms,
        "ms",
        baseline_name="first call_at callback",
        baseline=max(baseline_first) * ms,
        higher_is_better=False,
    )


def _pct(sorted_values: list[float], percent: int) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[percent - 1]


# --- many triggers ------------------------------------------------------------------------


def _expressions(count: int) -> list[tuple[str, str]]:
    """A mix of daily, hourly and minute schedules, a fifth of them in Europe/Berlin."""
    shapes = ("{m} {h} * * *", "{m} * * * *", "*/{step} * * * *", "{m} {h} * * MON-FRI")
    return [
        (
            shapes[i % 4].format(m=i % 60, h=i % 24, step=i % 29 + 1),
            "Europe/Berlin" if i % 5 == 0 else "UTC",
        )
        for i in range(count)
    ]


async def _many_triggers(report: Report, count: int) -> None:
    specs = _expressions(count)

    def event() -> EventBase:
        return EventBase(topic="bench.tick")

    triggers = [create_cron_trigger(expr, event, timezone=zone) for expr, zone in specs]

    async def registered(*, running: bool) -> Scheduler:
        scheduler = Scheduler(InMemoryPublisher(InMemoryBroker()))
        if running:
            await scheduler.start()
        for i, trigger in enumerate(triggers):
            await scheduler.register_trigger(f"job-{i}", trigger, "bench.tick")
        return scheduler

    # Tasks, and the time to start: computing every trigger's first fire time into the heap.
    tasks_before = len(asyncio.all_tasks())
    scheduler = await registered(running=False)
    started = time.perf_counter()
    await scheduler.start()
    start_seconds = time.perf_counter() - started
    dp_tasks = len(asyncio.all_tasks()) - tasks_before
    await scheduler.stop()
    now = datetime.now(UTC)
    iterators = [croniter(expr, now.astimezone(ZoneInfo(zone))) for expr, zone in specs]
    started = time.perf_counter()
    for iterator in iterators:
        iterator.get_next(datetime)
    croniter_seconds = time.perf_counter() - started

    # Memory of a running scheduler holding the triggers (the triggers themselves excluded).
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    scheduler = await registered(running=True)
    dp_memory = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    await scheduler.stop()

    # The naive design: one task per trigger, each asleep until its next fire time.
    gc.collect()
    tasks_before = len(asyncio.all_tasks())
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    sleepers = [asyncio.create_task(asyncio.sleep(3_600)) for _ in range(count)]
    await asyncio.sleep(0)  # let each task start and go to sleep
    naive_memory = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    naive_tasks = len(asyncio.all_tasks()) - tasks_before
    for task in sleepers:
        task.cancel()
    await asyncio.gather(*sleepers, return_exceptions=True)

    label = f"{count:,} cron triggers"
    naive = "a sleeping task per trigger"
    report.add(
        SECTION,
        f"{label}: asyncio tasks",
        dp_tasks,
        "tasks",
        baseline_name=naive,
        baseline=naive_tasks,
        higher_is_better=False,
    )
    report.add(
        SECTION,
        f"{label}: memory",
        dp_memory / 1e6,
        "MB",
        baseline_name=naive,
        baseline=naive_memory / 1e6,
        higher_is_better=False,
    )
    report.add(
        SECTION,
        f"{label}: start() (first fire time of each)",
        start_seconds * 1e3,
        "ms",
        baseline_name="croniter get_next for each",
        baseline=croniter_seconds * 1e3,
        higher_is_better=False,
    )


# --- next fire time -----------------------------------------------------------------------


def _next_fire_speed(report: Report) -> None:
    """Median time of one next-fire computation, for a mix of 2,000 expressions."""
    expressions = [expr for expr, _ in _expressions(2_000)]
    after = datetime(2025, 3, 1, 12, 0, 30, tzinfo=UTC)
    for zone in ("UTC", "Europe/Berlin"):
        schedules = [CronSchedule(expr, zone) for expr in expressions]
        start = after.astimezone(ZoneInfo(zone))
        iterators = [croniter(expr, start) for expr in expressions]

        def dp_round(schedules: list[CronSchedule] = schedules) -> None:
            for schedule in schedules:
                schedule.next_fire(after)

        def croniter_round(iterators: list[croniter] = iterators, start: datetime = start) -> None:
            for iterator in iterators:
                iterator.get_next(datetime, start_time=start)

        dp_times, base_times = [], []
        for _ in range(5):  # alternate, so drift in machine speed hits both alike
            dp_times.append(_timed(dp_round))
            base_times.append(_timed(croniter_round))
        report.add(
            SECTION,
            f"next fire time, {zone}",
            statistics.median(dp_times) / len(expressions) * 1e6,
            "us",
            baseline_name="croniter get_next",
            baseline=statistics.median(base_times) / len(expressions) * 1e6,
            higher_is_better=False,
        )


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
