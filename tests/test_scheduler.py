"""The scheduler: firing triggers, DST days, misfires, failures, health, clocks and state.

Time comes from a `ManualClock`: `await clock.advance(...)` walks through days in
milliseconds, waking the scheduler exactly at each fire time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dp.errors import BusUnavailableError, InvalidTopicError
from dp.events import EventBase, InMemoryBroker, InMemoryConsumer, InMemoryPublisher
from dp.events.memory import InMemorySubscription
from dp.events.redis import RedisBroker
from dp.scheduler import (
    CircuitOpenError,
    DuplicateTriggerError,
    FileScheduleState,
    InvalidTriggerError,
    ManualClock,
    MemoryScheduleState,
    Scheduler,
    SchedulerError,
    ScheduleStateError,
    SystemClock,
    TriggerNotFoundError,
    create_api_trigger,
    create_cron_trigger,
    create_event_trigger,
    create_manual_trigger,
)
from redis_server import RedisServer

BERLIN = ZoneInfo("Europe/Berlin")
START = datetime(2025, 6, 2, tzinfo=UTC)  # a Monday, far from any DST change


@pytest.fixture
def broker() -> InMemoryBroker:
    return InMemoryBroker()


@pytest.fixture
def publisher(broker: InMemoryBroker) -> InMemoryPublisher:
    return InMemoryPublisher(broker)


@pytest.fixture
def consumer(broker: InMemoryBroker) -> InMemoryConsumer:
    return InMemoryConsumer(broker)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


def stamped(clock: ManualClock, topic: str = "jobs.tick") -> Callable[[], EventBase]:
    """An event factory whose events carry the (manual) time they were made at."""
    return lambda: EventBase(topic=topic, timestamp=clock.now())


def failing() -> EventBase:
    raise RuntimeError("database is down")


async def drain(events: InMemorySubscription) -> list[EventBase]:
    """The events buffered so far, without waiting for more."""
    return [await anext(events) for _ in range(events.qsize())]


class Records(logging.Handler):
    """Keeps the log records it is given."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# --- cron ---------------------------------------------------------------------------------


async def test_cron_trigger_publishes_at_each_fire_time(
    publisher: InMemoryPublisher, consumer: InMemoryConsumer, clock: ManualClock
) -> None:
    """An hourly trigger publishes one event per hour on its target topic."""
    scheduler = Scheduler(publisher, clock=clock)
    await scheduler.register_trigger(
        "hourly", create_cron_trigger("0 * * * *", stamped(clock)), "jobs.tick"
    )
    async with consumer.consume("jobs.tick") as events, scheduler:
        await clock.advance(timedelta(hours=3))
        received = await drain(events)
    assert [e.timestamp for e in received] == [START + timedelta(hours=h) for h in (1, 2, 3)]
    assert {e.source for e in received} == {"dp.scheduler/hourly"}


async def test_two_schedulers_firing_one_tick_publish_one_event_id(
    publisher: InMemoryPublisher, consumer: InMemoryConsumer
) -> None:
    """A cron tick's event id names the trigger and the due time, so two instances on one bus
    publish the same id for the same tick (the service starts one run per id)."""
    clock = ManualClock(START)
    first = Scheduler(publisher, clock=clock)
    second = Scheduler(publisher, clock=clock)
    for scheduler in (first, second):
        await scheduler.register_trigger(
            "hourly", create_cron_trigger("0 * * * *", stamped(clock)), "jobs.tick"
        )
    async with consumer.consume("jobs.tick") as events, first, second:
        await clock.advance(timedelta(hours=2))
        received = await drain(events)
    assert sorted(e.event_id for e in received) == [
        "cron-hourly-20250602T010000Z",
        "cron-hourly-20250602T010000Z",
        "cron-hourly-20250602T020000Z",
        "cron-hourly-20250602T020000Z",
    ]


async def test_event_is_moved_to_the_target_topic(
    publisher: InMemoryPublisher, consumer: InMemoryConsumer, clock: ManualClock
) -> None:
    """A factory's event on another topic is published on the trigger's target topic."""
    scheduler = Scheduler(publisher, clock=clock)
    trigger = create_cron_trigger("0 * * * *", stamped(clock, topic="somewhere.else"))
    await scheduler.register_trigger("hourly", trigger, "jobs.tick")
    async with consumer.consume("jobs.tick") as events, scheduler:
        await clock.advance(timedelta(hours=1))
        (event,) = await drain(events)
    assert (event.topic, event.event_type) == ("jobs.tick", "jobs.tick")


@pytest.mark.parametrize(
    ("first_day", "expected"),
    [
        (
            datetime(2025, 3, 28, tzinfo=BERLIN),  # spring forward on March 30
            ["03-28 02:30+0100", "03-29 02:30+0100", "03-30 03:00+0200", "03-31 02:30+0200"],
        ),
        (
            datetime(2025, 10, 24, tzinfo=BERLIN),  # fall back on October 26
            ["10-24 02:30+0200", "10-25 02:30+0200", "10-26 02:30+0200", "10-27 02:30+0100"],
        ),
    ],
    ids=["spring-forward", "fall-back"],
)
async def test_daily_job_runs_once_a_day_across_dst(
    publisher: InMemoryPublisher,
    consumer: InMemoryConsumer,
    first_day: datetime,
    expected: list[str],
) -> None:
    """A daily 02:30 Berlin job runs exactly once on every day around a DST change."""
    clock = ManualClock(first_day)
    scheduler = Scheduler(publisher, clock=clock)
    trigger = create_cron_trigger("30 2 * * *", stamped(clock), timezone="Europe/Berlin")
    await scheduler.register_trigger("nightly", trigger, "jobs.tick")
    async with consumer.consume("jobs.tick") as events, scheduler:
        await clock.advance(timedelta(days=4))
        received = await drain(events)
    assert [e.timestamp.astimezone(BERLIN).strftime("%m-%d %H:%M%z") for e in received] == expected


async def test_scheduler_records_each_fire_in_the_state(
    publisher: InMemoryPublisher, clock: ManualClock
) -> None:
    """After a fire the state holds its scheduled time, for the misfire policy."""
    state = MemoryScheduleState()
    scheduler = Scheduler(publisher, clock=clock, state=state)
    await scheduler.register_trigger(
        "hourly", create_cron_trigger("0 * * * *", stamped(clock)), "jobs.tick"
    )
    async with scheduler:
        await clock.advance(timedelta(minutes=90))
    assert state.last_fire("hourly") == START + timedelta(hours=1)


async def test_misfire_run_once_fires_once_for_all_missed_times(
    publisher: InMemoryPublisher, consumer: InMemoryConsumer, clock: ManualClock
) -> None:
    """Three days down: a `run_once` hourly job fires once at start, then on schedule."""
    state = MemoryScheduleState({"hourly": START - timedelta(days=3)})
    scheduler = Scheduler(publisher, clock=clock, state=state)
    trigger = create_cron_trigger("0 * * * *", stamped(clock), misfire="run_once")
    await scheduler.register_trigger("hourly", trigger, "jobs.tick")
    async with consumer.consume("jobs.tick") as events, scheduler:
        caught_up = await drain(events)
        await clock.advance(timedelta(hours=1))
        resumed = await drain(events)
    assert [e.timestamp for e in caught_up] == [START]
    assert [e.timestamp for e in resumed] == [START + timedelta(hours=1)]


async def test_misfire_skip_waits_for_the_next_time(
    publisher: InMemoryPublisher, consumer: InMemoryConsumer, clock: ManualClock
) -> None:
    """Three days down: a `skip` hourly job fires nothing at start, only at the next hour."""
    state = MemoryScheduleState({"hourly": START - timedelta(days=3)})
    scheduler = Scheduler(publisher, clock=clock, state=state)
    trigger = create_cron_trigger("0 * * * *", stamped(clock), misfire="skip")
    await scheduler.register_trigger("hourly", trigger, "jobs.tick")
    async with consumer.consume("jobs.tick") as events, scheduler:
        caught_up = await drain(events)
        await clock.advance(timedelta(hours=1))
        resumed = await drain(events)
    assert caught_up == []
    assert [e.timestamp for e in resumed] == [START + timedelta(hours=1)]
    (info,) = scheduler.triggers()
    assert info.stats.skipped_total == 1


async def test_thousand_cron_triggers_share_one_timer_task(
    publisher: InMemoryPublisher, clock: ManualClock
) -> None:
    """Registering 1,000 cron triggers adds one task, and every trigger still fires."""
    scheduler = Scheduler(publisher, clock=clock)
    await scheduler.start()
    tasks_before = len(asyncio.all_tasks())
    for i in range(1_000):
        trigger = create_cron_trigger(f"{i % 60} * * * *", stamped(clock))
        await scheduler.register_trigger(f"job-{i}", trigger, "jobs.tick")
    assert len(asyncio.all_tasks()) - tasks_before <= 1
    await clock.advance(timedelta(hours=1))
    assert {info.stats.fires_total for info in scheduler.triggers()} == {1}
    await scheduler.stop()


async def test_triggers_lists_kind_topic_and_next_fire(
    publisher: InMemoryPublisher, consumer: InMemoryConsumer, clock: ManualClock
) -> None:
    """`triggers()` shows each trigger's kind, target, source and next cron fire."""
    scheduler = Scheduler(publisher, clock=clock)
    cron = create_cron_trigger("30 9 * * *", stamped(clock), timezone="Europe/Berlin")
    await scheduler.register_trigger("morning", cron, "jobs.morning")
    await scheduler.register_trigger(
        "on_upload", create_event_trigger(consumer, "files.*", lambda e: e), "jobs.ingest"
    )
    await scheduler.register_trigger("backfill", create_api_trigger(), "jobs.backfill")
    listing = {
        (i.name, i.kind, i.target_topic, i.source, i.next_fire) for i in scheduler.triggers()
    }
    assert listing == {
        (
            "morning",
            "cron",
            "jobs.morning",
            "30 9 * * * (Europe/Berlin)",
            START.replace(hour=7, minute=30),
        ),
        ("on_upload", "event", "jobs.ingest", "files.*", None),
        ("backfill", "api", "jobs.backfill", "", None),
    }


# --- event, API and manual triggers -------------------------------------------------------


async def _until(condition: Callable[[], object], what: str) -> None:
    """Yield to the loop until `condition()` holds (a deadline turns a hang into a failure)."""
    deadline = asyncio.get_running_loop().time() + 10
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_a_durable_trigger_dead_letters_the_event_it_cannot_fire_and_fires_the_rest(
    broker: InMemoryBroker, consumer: InMemoryConsumer
) -> None:
    """An event the factory fails on (bad data) is dead-lettered alone, with the reason, at
    its first delivery; the events around it fire in order; the circuit stays closed."""

    def make(event: EventBase) -> EventBase:
        return EventBase(topic="jobs.count", payload={"n": int(event.payload["n"])})

    scheduler = Scheduler(broker, failure_threshold=1)
    trigger = create_event_trigger(broker, "data.*", make, group="counting")
    await scheduler.register_trigger("count", trigger, "jobs.count")
    async with consumer.consume("jobs.count") as fired, scheduler:
        for n in ("1", "two", "3", "four", "5"):
            await broker.publish("data.in", EventBase(topic="data.in", payload={"n": n}))
        got = [await asyncio.wait_for(anext(fired), 10) for _ in range(3)]
        await _until(lambda: scheduler.triggers()[0].stats.dead_lettered_total == 2, "burials")
    assert [e.payload["n"] for e in got] == [1, 3, 5]
    letters = await broker.dead_letters("counting")
    assert [(letter.deliveries, letter.event and letter.event.payload) for letter in letters] == [
        (1, {"n": "two"}),
        (1, {"n": "four"}),
    ]
    assert letters[0].error.startswith("trigger count (fire): ValueError: invalid literal")
    (info,) = scheduler.triggers()
    assert (info.circuit, info.stats.failures_total, info.stats.skipped_total) == ("closed", 0, 0)


async def test_a_durable_trigger_whose_group_has_another_pattern_says_how_to_fix_it(
    redis_server: RedisServer,
) -> None:
    """A group keeps its pattern: a trigger reading it with another one (its pipeline's
    `on=` changed since the group was made, on a bus that keeps groups) is reported
    unhealthy, saying to rename it or delete the group."""
    bus = RedisBroker(redis_server.url, prefix="sched-renamed", topic_refresh=0.05)
    old = bus.durable("data.old.*", group="renamed")
    reading = asyncio.ensure_future(anext(old))  # registers the group with its pattern
    await asyncio.sleep(0.2)
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    await old.aclose()
    scheduler = Scheduler(bus)
    trigger = create_event_trigger(bus, "data.new.*", lambda e: e, group="renamed")
    await scheduler.register_trigger("copy", trigger, "jobs.copy")
    try:
        async with scheduler:
            await _until(lambda: scheduler.health().triggers["copy"].problem, "the problem")
            health = scheduler.health().triggers["copy"]
    finally:
        await bus.close()
    assert not health.healthy
    assert "'data.old.*', not 'data.new.*'" in str(health.problem)
    assert "give the trigger (the pipeline) a new name" in str(health.problem)


class FlakyBus:
    """A publisher whose bus is unreachable for the first `down` publishes."""

    def __init__(self, broker: InMemoryBroker, down: int) -> None:
        self.broker = broker
        self.down = down

    async def publish(self, topic: str, event: EventBase) -> None:
        if self.down:
            self.down -= 1
            raise BusUnavailableError("redis://10.0.0.9:6379/0", 0.0, "Connection refused")
        await self.broker.publish(topic, event)


async def test_a_durable_trigger_holds_events_through_an_outage_and_fires_each_once(
    broker: InMemoryBroker, consumer: InMemoryConsumer
) -> None:
    """An outage is not poison: the event is retried with backoff (the circuit opens, and
    holds the rest instead of skipping them) until the bus is back; then every event fires
    once, in order, and nothing is dead-lettered."""
    flaky = FlakyBus(broker, down=4)
    scheduler = Scheduler(flaky, failure_threshold=2, reset_timeout=timedelta(seconds=0.1))
    trigger = create_event_trigger(broker, "data.*", lambda e: e, group="copying")
    await scheduler.register_trigger("copy", trigger, "jobs.copy")
    opened: list[str] = []

    def outage_over() -> bool:
        opened.append(scheduler.health().triggers["copy"].circuit)
        return flaky.down == 0

    async with consumer.consume("jobs.copy") as fired, scheduler:
        for n in range(3):
            await broker.publish("data.in", EventBase(topic="data.in", payload={"n": n}))
        await _until(lambda: flaky.down < 3, "the first failures")
        await _until(outage_over, "the outage to pass")
        got = [await asyncio.wait_for(anext(fired), 10) for _ in range(3)]
    assert [e.payload["n"] for e in got] == [0, 1, 2]
    assert "open" in opened or "half_open" in opened
    (info,) = scheduler.triggers()
    assert (info.stats.failures_total, info.stats.skipped_total) == (4, 0)
    assert info.stats.dead_lettered_total == 0
    assert info.circuit == "closed"
    assert await broker.dead_letters("copying") == []


async def test_event_trigger_fires_on_matching_events_that_pass_the_filter(
    publisher: InMemoryPublisher, consumer: InMemoryConsumer
) -> None:
    """Only matching events that pass the filter fire; the result correlates to its cause."""
    scheduler = Scheduler(publisher)
    trigger = create_event_trigger(
        consumer,
        "data.*.extracted",
        lambda event: EventBase(topic="etl.transform", payload={"rows": event.payload["rows"]}),
        filter=lambda event: event.payload["rows"] > 0,
    )
    await scheduler.register_trigger("transform", trigger, "etl.transform")
    empty = EventBase(topic="data.sales.extracted", payload={"rows": 0})
    full = EventBase(topic="data.sales.extracted", payload={"rows": 5})
    async with consumer.consume("etl.transform") as events, scheduler:
        await publisher.publish(empty.topic, empty)
        await publisher.publish(full.topic, full)
        await publisher.publish("data.other", EventBase(topic="data.other", payload={"rows": 9}))
        published = await anext(events)
    assert published.payload == {"rows": 5}
    assert published.correlation_id == full.event_id
    assert published.source == "dp.scheduler/transform"


async def test_api_trigger_publishes_the_payload(
    publisher: InMemoryPublisher, consumer: InMemoryConsumer
) -> None:
    """Without a factory, firing an API trigger publishes its payload on the target topic."""
    scheduler = Scheduler(publisher)
    await scheduler.register_trigger("backfill", create_api_trigger(), "jobs.backfill")
    async with consumer.consume("jobs.backfill") as events, scheduler:
        returned = await scheduler.fire("backfill", {"day": "2025-06-01"})
        received = await anext(events)
    assert received is returned
    assert (received.topic, received.payload) == ("jobs.backfill", {"day": "2025-06-01"})


async def test_manual_trigger_builds_its_event_from_the_payload(
    publisher: InMemoryPublisher,
) -> None:
    """A manual trigger's factory receives the payload of the call."""
    scheduler = Scheduler(publisher)
    trigger = create_manual_trigger(
        lambda payload: EventBase(topic="jobs.rerun", payload={"run": payload["run_id"]})
    )
    await scheduler.register_trigger("rerun", trigger, "jobs.rerun")
    async with scheduler:
        event = await scheduler.fire("rerun", {"run_id": "r-1"})
    assert event.payload == {"run": "r-1"}


async def test_firing_an_unknown_trigger_lists_the_api_triggers(
    publisher: InMemoryPublisher, clock: ManualClock
) -> None:
    """The error names the unknown trigger and the API and manual triggers one can fire."""
    scheduler = Scheduler(publisher, clock=clock)
    await scheduler.register_trigger("backfill", create_api_trigger(), "jobs.backfill")
    await scheduler.register_trigger("rerun", create_manual_trigger(), "jobs.rerun")
    await scheduler.register_trigger(
        "hourly", create_cron_trigger("@hourly", stamped(clock)), "jobs.tick"
    )
    async with scheduler:
        with pytest.raises(TriggerNotFoundError, match=r"'backfil'.*'backfill', 'rerun'"):
            await scheduler.fire("backfil")


async def test_a_cron_trigger_cannot_be_fired_by_a_call(
    publisher: InMemoryPublisher, clock: ManualClock
) -> None:
    """`fire()` refuses a cron trigger and says why."""
    scheduler = Scheduler(publisher, clock=clock)
    await scheduler.register_trigger(
        "hourly", create_cron_trigger("@hourly", stamped(clock)), "jobs.tick"
    )
    async with scheduler:
        with pytest.raises(TriggerNotFoundError, match="'hourly' is a cron trigger"):
            await scheduler.fire("hourly")


async def test_fire_needs_a_running_scheduler(publisher: InMemoryPublisher) -> None:
    """A stopped scheduler refuses to fire."""
    scheduler = Scheduler(publisher)
    await scheduler.register_trigger("backfill", create_api_trigger(), "jobs.backfill")
    with pytest.raises(SchedulerError, match="not running"):
        await scheduler.fire("backfill")


# --- registration errors ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "nightly report", "daily/report", "bericht-ä", "x" * 201])
async def test_trigger_names_are_validated(publisher: InMemoryPublisher, name: str) -> None:
    """Names are letters, digits, '_', '.' and '-'; the error names the trigger."""
    scheduler = Scheduler(publisher)
    with pytest.raises(InvalidTriggerError) as raised:
        await scheduler.register_trigger(name, create_api_trigger(), "jobs.run")
    assert raised.value.name == name


async def test_trigger_names_are_unique(publisher: InMemoryPublisher) -> None:
    """A second trigger under a taken name is refused."""
    scheduler = Scheduler(publisher)
    await scheduler.register_trigger("backfill", create_api_trigger(), "jobs.run")
    with pytest.raises(DuplicateTriggerError, match="'backfill'"):
        await scheduler.register_trigger("backfill", create_manual_trigger(), "jobs.run")


async def test_target_topic_is_validated(publisher: InMemoryPublisher) -> None:
    """A malformed target topic fails with the events' topic error."""
    scheduler = Scheduler(publisher)
    with pytest.raises(InvalidTopicError, match=re.escape("'jobs..run'")):
        await scheduler.register_trigger("backfill", create_api_trigger(), "jobs..run")


async def test_event_trigger_may_not_fire_on_its_own_events(
    publisher: InMemoryPublisher, consumer: InMemoryConsumer
) -> None:
    """A trigger whose pattern matches its own target topic would loop; it is refused."""
    scheduler = Scheduler(publisher)
    trigger = create_event_trigger(consumer, "jobs.**", lambda e: e)
    with pytest.raises(InvalidTriggerError, match="would fire it again"):
        await scheduler.register_trigger("loop", trigger, "jobs.run")


async def test_only_triggers_can_be_registered(publisher: InMemoryPublisher) -> None:
    """Registering something else says how to build a trigger."""
    scheduler = Scheduler(publisher)
    with pytest.raises(InvalidTriggerError, match="create_cron_trigger"):
        await scheduler.register_trigger("x", "0 * * * *", "jobs.run")  # type: ignore[arg-type]


# --- failures and the circuit breaker -----------------------------------------------------


async def test_failing_factory_is_counted_and_other_triggers_keep_firing(
    publisher: InMemoryPublisher, consumer: InMemoryConsumer, clock: ManualClock
) -> None:
    """A trigger whose factory raises is counted; the scheduler and other triggers go on."""
    scheduler = Scheduler(publisher, clock=clock)
    await scheduler.register_trigger(
        "broken", create_cron_trigger("*/10 * * * *", failing), "jobs.a"
    )
    await scheduler.register_trigger(
        "healthy", create_cron_trigger("*/10 * * * *", stamped(clock)), "jobs.tick"
    )
    async with consumer.consume("jobs.tick") as events, scheduler:
        await clock.advance(timedelta(minutes=30))
        assert len(await drain(events)) == 3
    stats = {i.name: i.stats for i in scheduler.triggers()}
    assert (stats["broken"].failures_total, stats["broken"].fires_total) == (3, 0)
    assert stats["broken"].last_error == "RuntimeError: database is down"
    assert (stats["healthy"].failures_total, stats["healthy"].fires_total) == (0, 3)


async def test_failure_is_logged(publisher: InMemoryPublisher) -> None:
    """A failure is logged on `dp.scheduler` with the trigger's name and the error."""
    handler = Records(logging.ERROR)
    logger = logging.getLogger("dp.scheduler")  # not caplog: the CLI may stop propagation
    logger.addHandler(handler)
    scheduler = Scheduler(publisher)
    await scheduler.register_trigger("broken", create_api_trigger(lambda p: failing()), "jobs.a")
    try:
        async with scheduler:
            with pytest.raises(RuntimeError):
                await scheduler.fire("broken")
    finally:
        logger.removeHandler(handler)
    (record,) = handler.records
    assert isinstance(record.msg, dict)
    assert (record.msg["event"], record.msg["trigger"]) == ("trigger_failed", "broken")
    assert record.msg["error"] == "RuntimeError: database is down"


async def test_circuit_opens_after_consecutive_failures(
    publisher: InMemoryPublisher, clock: ManualClock
) -> None:
    """After `failure_threshold` failures in a row the trigger stops firing and is unhealthy."""
    scheduler = Scheduler(
        publisher, clock=clock, failure_threshold=3, reset_timeout=timedelta(hours=1)
    )
    await scheduler.register_trigger("broken", create_cron_trigger("* * * * *", failing), "jobs.a")
    async with scheduler:
        await clock.advance(timedelta(minutes=10))
        health = scheduler.health()
    (info,) = scheduler.triggers()
    assert (info.stats.failures_total, info.stats.skipped_total) == (3, 7)
    assert health.status == "degraded"
    broken = health.triggers["broken"]
    assert (broken.healthy, broken.circuit, broken.consecutive_failures) == (False, "open", 3)
    assert broken.last_error == "RuntimeError: database is down"
    assert broken.retry_at == START + timedelta(minutes=3, hours=1)


async def test_circuit_half_opens_after_the_timeout_and_closes_on_success(
    publisher: InMemoryPublisher, clock: ManualClock
) -> None:
    """After `reset_timeout` one trial fire is let through; its success closes the circuit."""
    outcomes = iter([RuntimeError("down"), RuntimeError("down"), None, None])

    def flaky() -> EventBase:
        error = next(outcomes)
        if error is not None:
            raise error
        return EventBase(topic="jobs.tick")

    scheduler = Scheduler(
        publisher, clock=clock, failure_threshold=2, reset_timeout=timedelta(minutes=4, seconds=30)
    )
    await scheduler.register_trigger("flaky", create_cron_trigger("* * * * *", flaky), "jobs.tick")
    async with scheduler:
        await clock.advance(timedelta(minutes=2))
        assert scheduler.health().triggers["flaky"].circuit == "open"
        await clock.advance(timedelta(minutes=4, seconds=30))  # 00:06:30, the retry time
        assert scheduler.health().triggers["flaky"].circuit == "half_open"
        await clock.advance(timedelta(seconds=30))  # the 00:07 fire is the trial
        health = scheduler.health()
    assert health.ok
    assert (health.triggers["flaky"].circuit, health.triggers["flaky"].consecutive_failures) == (
        "closed",
        0,
    )


async def test_failed_trial_fire_reopens_the_circuit(
    publisher: InMemoryPublisher, clock: ManualClock
) -> None:
    """A failing trial fire opens the circuit again for another `reset_timeout`."""
    scheduler = Scheduler(
        publisher, clock=clock, failure_threshold=2, reset_timeout=timedelta(minutes=5)
    )
    await scheduler.register_trigger("broken", create_cron_trigger("* * * * *", failing), "jobs.a")
    async with scheduler:
        await clock.advance(timedelta(minutes=7))  # fails at :01 and :02, trial at :07 fails
        health = scheduler.health().triggers["broken"]
    assert (health.circuit, health.consecutive_failures) == ("open", 3)
    assert health.retry_at == START + timedelta(minutes=12)


async def test_firing_an_open_trigger_says_when_it_retries(
    publisher: InMemoryPublisher, clock: ManualClock
) -> None:
    """`fire()` on an open circuit raises with the retry time and the last error."""
    scheduler = Scheduler(
        publisher, clock=clock, failure_threshold=1, reset_timeout=timedelta(minutes=1)
    )
    await scheduler.register_trigger("broken", create_api_trigger(lambda p: failing()), "jobs.a")
    async with scheduler:
        with pytest.raises(RuntimeError):
            await scheduler.fire("broken")
        with pytest.raises(CircuitOpenError, match=r"'broken' is open.*database is down") as raised:
            await scheduler.fire("broken")
    assert raised.value.retry_at == START + timedelta(minutes=1)


async def test_event_trigger_reports_a_closed_broker(
    broker: InMemoryBroker, publisher: InMemoryPublisher, consumer: InMemoryConsumer
) -> None:
    """When its consumer's stream ends, an event trigger is reported unhealthy."""
    scheduler = Scheduler(publisher)
    await scheduler.register_trigger(
        "transform", create_event_trigger(consumer, "data.*", lambda e: e), "etl.transform"
    )
    async with scheduler:
        await broker.close()
        await asyncio.sleep(0)
        health = scheduler.health()
    assert health.status == "degraded"
    assert health.triggers["transform"].problem is not None
    assert "stream ended" in health.triggers["transform"].problem


async def test_metrics_count_fires_and_failures(
    publisher: InMemoryPublisher, clock: ManualClock
) -> None:
    """`metrics()` gives Prometheus samples per trigger."""
    scheduler = Scheduler(publisher, clock=clock)
    await scheduler.register_trigger(
        "hourly", create_cron_trigger("@hourly", stamped(clock)), "jobs.tick"
    )
    async with scheduler:
        await clock.advance(timedelta(hours=2))
    samples = {(s.name, s.labels["trigger"]): s.value for s in scheduler.metrics()}
    assert samples[("scheduler_trigger_fires_total", "hourly")] == 2
    assert samples[("scheduler_trigger_failures_total", "hourly")] == 0


# --- life cycle ---------------------------------------------------------------------------


async def test_stop_cancels_every_task_it_started(
    publisher: InMemoryPublisher, consumer: InMemoryConsumer, clock: ManualClock
) -> None:
    """After `stop()` no scheduler task is left and nothing warns."""
    tasks_before = asyncio.all_tasks()
    scheduler = Scheduler(publisher, clock=clock)
    await scheduler.register_trigger(
        "hourly", create_cron_trigger("@hourly", stamped(clock)), "jobs.tick"
    )
    await scheduler.register_trigger(
        "transform", create_event_trigger(consumer, "data.*", lambda e: e), "etl.transform"
    )
    await scheduler.start()
    assert len(asyncio.all_tasks()) == len(tasks_before) + 2  # the timer and one consumer
    await scheduler.stop()
    assert asyncio.all_tasks() == tasks_before
    assert (scheduler.running, scheduler.health().status) == (False, "stopped")


async def test_unregister_stops_a_trigger(
    publisher: InMemoryPublisher, consumer: InMemoryConsumer, clock: ManualClock
) -> None:
    """An unregistered cron trigger fires no more."""
    scheduler = Scheduler(publisher, clock=clock)
    await scheduler.register_trigger(
        "hourly", create_cron_trigger("@hourly", stamped(clock)), "jobs.tick"
    )
    async with consumer.consume("jobs.tick") as events, scheduler:
        await clock.advance(timedelta(hours=1))
        await scheduler.unregister("hourly")
        await clock.advance(timedelta(hours=2))
        assert len(await drain(events)) == 1
    assert scheduler.triggers() == []


async def test_unregistering_an_unknown_trigger_names_it(publisher: InMemoryPublisher) -> None:
    """Unregistering a name that is not registered fails with the name."""
    scheduler = Scheduler(publisher)
    with pytest.raises(TriggerNotFoundError, match="'nightly'"):
        await scheduler.unregister("nightly")


async def test_starting_twice_is_an_error(publisher: InMemoryPublisher) -> None:
    """`start()` on a running scheduler says to stop it first."""
    async with Scheduler(publisher) as scheduler:
        with pytest.raises(SchedulerError, match="already running"):
            await scheduler.start()


async def test_trigger_registered_while_running_fires(
    publisher: InMemoryPublisher, consumer: InMemoryConsumer, clock: ManualClock
) -> None:
    """A cron trigger registered on a running scheduler fires even before older ones."""
    scheduler = Scheduler(publisher, clock=clock)
    await scheduler.register_trigger(
        "daily", create_cron_trigger("@daily", stamped(clock, "jobs.daily")), "jobs.daily"
    )
    async with consumer.consume("jobs.tick") as events, scheduler:
        await scheduler.register_trigger(
            "soon", create_cron_trigger("5 0 * * *", stamped(clock)), "jobs.tick"
        )
        await clock.advance(timedelta(minutes=5))
        (event,) = await drain(events)
    assert event.timestamp == START + timedelta(minutes=5)


# --- clocks -------------------------------------------------------------------------------


async def test_manual_clock_wakes_sleepers_at_their_deadlines_in_order() -> None:
    """Each sleeper wakes seeing its own deadline as the time."""
    clock = ManualClock(START)
    woke: list[tuple[str, datetime]] = []

    async def sleeper(name: str, minutes: int) -> None:
        await clock.sleep_until(START + timedelta(minutes=minutes))
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(sleeper("late", 20)), asyncio.create_task(sleeper("early", 10))]
    await clock.advance(timedelta(hours=1))
    await asyncio.gather(*tasks)
    assert woke == [
        ("early", START + timedelta(minutes=10)),
        ("late", START + timedelta(minutes=20)),
    ]
    assert clock.now() == START + timedelta(hours=1)


async def test_system_clock_is_utc_and_sleeps_until_a_time() -> None:
    """The system clock reads aware UTC time and returns at once for past deadlines."""
    clock = SystemClock()
    now = clock.now()
    assert now.tzinfo is UTC
    await clock.sleep_until(now - timedelta(seconds=1))
    await clock.sleep_until(clock.now() + timedelta(milliseconds=1))
    assert clock.now() > now


# --- state --------------------------------------------------------------------------------


def test_file_state_keeps_last_fire_times_across_instances(tmp_path: Path) -> None:
    """What one `FileScheduleState` records, a new one on the same file reads back."""
    path = tmp_path / "state" / "schedule.json"
    FileScheduleState(path).record_fires({"nightly": datetime(2025, 3, 30, 1, tzinfo=UTC)})
    assert FileScheduleState(path).last_fire("nightly") == datetime(2025, 3, 30, 1, tzinfo=UTC)
    assert FileScheduleState(path).last_fire("other") is None
    assert json.loads(path.read_text())["last_fire"] == {"nightly": "2025-03-30T01:00:00Z"}
    assert [p.name for p in path.parent.iterdir()] == ["schedule.json"]  # no temporary left


def test_file_state_refuses_a_corrupt_file(tmp_path: Path) -> None:
    """A file that is not a state file is reported with its path, not silently reset."""
    path = tmp_path / "schedule.json"
    path.write_text("{not json")
    with pytest.raises(ScheduleStateError, match="not valid JSON") as raised:
        FileScheduleState(path).last_fire("nightly")
    assert raised.value.path == path


async def test_file_state_drives_the_misfire_policy_after_a_restart(
    publisher: InMemoryPublisher, consumer: InMemoryConsumer, tmp_path: Path
) -> None:
    """A restarted scheduler reads the file and catches up what it missed while down."""
    path = tmp_path / "schedule.json"
    clock = ManualClock(START)
    first = Scheduler(publisher, clock=clock, state=FileScheduleState(path))
    await first.register_trigger(
        "hourly", create_cron_trigger("@hourly", stamped(clock)), "jobs.tick"
    )
    async with first:
        await clock.advance(timedelta(hours=1))
    await clock.set(START + timedelta(days=1))  # down for a day
    second = Scheduler(publisher, clock=clock, state=FileScheduleState(path))
    await second.register_trigger(
        "hourly", create_cron_trigger("@hourly", stamped(clock)), "jobs.tick"
    )
    async with consumer.consume("jobs.tick") as events, second:
        (caught_up,) = await drain(events)
    assert caught_up.timestamp == START + timedelta(days=1)


async def test_start_with_a_corrupt_state_file_fails_and_stays_stopped(
    publisher: InMemoryPublisher, clock: ManualClock, tmp_path: Path
) -> None:
    """An unreadable state file stops `start()` with the file's path; nothing keeps running."""
    path = tmp_path / "schedule.json"
    path.write_text('{"version": 1, "last_fire": {"hourly": "yesterday"}}')
    tasks_before = asyncio.all_tasks()
    scheduler = Scheduler(publisher, clock=clock, state=FileScheduleState(path))
    await scheduler.register_trigger(
        "hourly", create_cron_trigger("@hourly", stamped(clock)), "jobs.tick"
    )
    with pytest.raises(ScheduleStateError, match="'hourly' is not ISO 8601"):
        await scheduler.start()
    assert not scheduler.running
    assert asyncio.all_tasks() == tasks_before
