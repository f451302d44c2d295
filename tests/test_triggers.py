"""Trigger factories: what each builds, and the bad input they refuse."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from dp.errors import InvalidTopicError
from dp.events import EventBase, InMemoryBroker, InMemoryConsumer
from dp.scheduler import (
    APITrigger,
    CronTrigger,
    EventTrigger,
    InvalidCronError,
    InvalidTimezoneError,
    ManualTrigger,
    Trigger,
    create_api_trigger,
    create_cron_trigger,
    create_event_trigger,
    create_manual_trigger,
)


def report() -> EventBase:
    return EventBase(topic="reports.daily")


def test_cron_trigger_reads_its_expression_in_its_time_zone() -> None:
    """A cron trigger knows its expression, zone and misfire policy, and its next fire."""
    trigger = create_cron_trigger("0 9 * * *", report, timezone="Europe/Berlin", misfire="skip")
    assert isinstance(trigger, CronTrigger)
    assert (trigger.kind, trigger.expression, trigger.timezone) == (
        "cron",
        "0 9 * * *",
        "Europe/Berlin",
    )
    assert trigger.misfire == "skip"
    assert trigger.next_fire(datetime(2025, 1, 10, tzinfo=UTC)) == datetime(
        2025, 1, 10, 8, tzinfo=UTC
    )


def test_cron_trigger_defaults_to_utc_and_run_once() -> None:
    """Without options a cron trigger reads UTC and catches up missed fires once."""
    trigger = create_cron_trigger("*/5 * * * *", report)
    assert (trigger.timezone, trigger.misfire) == ("UTC", "run_once")


def test_cron_trigger_refuses_a_bad_expression() -> None:
    """A malformed expression fails when the trigger is created, naming the expression."""
    with pytest.raises(InvalidCronError, match="'0 25 \\* \\* \\*'"):
        create_cron_trigger("0 25 * * *", report)


def test_cron_trigger_refuses_an_unknown_time_zone() -> None:
    """An unknown zone fails when the trigger is created, naming the zone."""
    with pytest.raises(InvalidTimezoneError, match="'Europe/Atlantis'"):
        create_cron_trigger("0 9 * * *", report, timezone="Europe/Atlantis")


def test_cron_trigger_refuses_an_unknown_misfire_policy() -> None:
    """The misfire policy is `run_once` or `skip`."""
    with pytest.raises(ValueError, match="'run_once' or 'skip'"):
        create_cron_trigger("0 9 * * *", report, misfire="all")  # type: ignore[arg-type]


def test_event_factory_must_be_callable() -> None:
    """Passing an event instead of a factory is caught at once."""
    with pytest.raises(TypeError, match="event_factory must be callable"):
        create_cron_trigger("0 9 * * *", report())  # type: ignore[arg-type]


def test_event_trigger_keeps_its_pattern_and_filter() -> None:
    """An event trigger listens to a pattern, optionally filtered."""
    consumer = InMemoryConsumer(InMemoryBroker())

    def big(event: EventBase) -> bool:
        return bool(event.payload.get("rows", 0) > 100)

    trigger = create_event_trigger(
        consumer, "data.*.extracted", lambda e: EventBase(topic="etl.transform"), filter=big
    )
    assert isinstance(trigger, EventTrigger)
    assert (trigger.kind, trigger.source_topic, trigger.filter) == (
        "event",
        "data.*.extracted",
        big,
    )


def test_event_trigger_refuses_a_bad_pattern() -> None:
    """A malformed source pattern fails with the events' own topic error."""
    consumer = InMemoryConsumer(InMemoryBroker())
    with pytest.raises(InvalidTopicError, match=re.escape("'data..extracted'")):
        create_event_trigger(consumer, "data..extracted", lambda e: e)


def test_api_and_manual_triggers() -> None:
    """API and manual triggers need no factory; the scheduler then publishes the payload."""
    api, manual = create_api_trigger(), create_manual_trigger(name="backfill")
    assert isinstance(api, APITrigger)
    assert isinstance(manual, ManualTrigger)
    assert (api.kind, api.event_factory) == ("api", None)
    assert (manual.kind, manual.name) == ("manual", "backfill")


def test_every_trigger_satisfies_the_protocol() -> None:
    """All four kinds are `Trigger`s."""
    consumer = InMemoryConsumer(InMemoryBroker())
    triggers: list[Trigger] = [
        create_cron_trigger("@daily", report),
        create_event_trigger(consumer, "a.b", lambda e: e),
        create_api_trigger(),
        create_manual_trigger(),
    ]
    assert [t.kind for t in triggers] == ["cron", "event", "api", "manual"]
    assert all(isinstance(t, Trigger) for t in triggers)


def test_a_durable_event_trigger_needs_a_broker_and_a_valid_group() -> None:
    """`group` reads through the broker's durable group: a plain consumer, a malformed
    group or an unknown start is refused, saying what to give instead."""
    broker = InMemoryBroker()
    trigger = create_event_trigger(broker, "data.*", lambda e: e, group="g", start="earliest")
    assert (trigger.group, trigger.start) == ("g", "earliest")
    with pytest.raises(TypeError, match="consumer must be a Broker"):
        create_event_trigger(InMemoryConsumer(broker), "data.*", lambda e: e, group="g")
    with pytest.raises(ValueError, match="dot-separated segments"):
        create_event_trigger(broker, "data.*", lambda e: e, group="bad group")
    with pytest.raises(ValueError, match="start must be 'now' or 'earliest'"):
        create_event_trigger(broker, "data.*", lambda e: e, group="g", start="latest")  # type: ignore[arg-type]
