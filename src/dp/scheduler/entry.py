"""A registered trigger's bookkeeping, the circuit breaker over it, and how its events are
addressed: what the scheduler's timer, its event consumers and `fire()` share.

The breaker (`dp.scheduler.circuit.Circuit`, the poller's too): after `failure_threshold`
consecutive failures a trigger's circuit opens; after `reset_timeout` the next fire is a trial
(half-open), whose success closes the circuit and whose failure opens it again. A cron trigger
skips (and counts) the fires its open circuit refuses (`admit`); an event trigger waits
instead (`hold`), so none of its events is skipped.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from dp.errors import ArgumentTypeError, InvalidArgumentError
from dp.events import EventBase
from dp.logs import get_logger
from dp.scheduler.circuit import Circuit
from dp.scheduler.clock import Clock
from dp.scheduler.health import CircuitState, TriggerStats
from dp.scheduler.triggers import Trigger, TriggerKind

__all__ = ["Breaker", "Entry", "address", "built", "cron_event_id", "stats"]

_log = get_logger("dp.scheduler")
_DEFAULT_SOURCE = next(f.default for f in dataclasses.fields(EventBase) if f.name == "source")


class Entry:
    """A registered trigger and its mutable bookkeeping."""

    __slots__ = (
        "breaker",
        "dead_lettered",
        "due",
        "failures",
        "fires",
        "generation",
        "kind",
        "last_error",
        "last_fire_at",
        "name",
        "problem",
        "skipped",
        "source",
        "target_topic",
        "task",
        "trigger",
    )

    def __init__(self, name: str, trigger: Trigger, kind: TriggerKind, target_topic: str) -> None:
        self.name = name
        self.trigger = trigger
        self.kind: TriggerKind = kind
        self.target_topic = target_topic
        self.source = f"dp.scheduler/{name}"
        self.due: datetime | None = None
        self.generation = 0  # bumped whenever heap items for this entry become stale
        self.task: asyncio.Task[None] | None = None
        self.fires = 0
        self.failures = 0
        self.skipped = 0
        self.dead_lettered = 0
        self.last_fire_at: datetime | None = None
        self.last_error: str | None = None
        self.breaker = Circuit()
        self.problem: str | None = None

    @property
    def circuit(self) -> CircuitState:
        return self.breaker.state

    @property
    def consecutive(self) -> int:
        return self.breaker.consecutive

    @property
    def retry_at(self) -> datetime | None:
        return self.breaker.retry_at


def stats(entry: Entry) -> TriggerStats:
    """The entry's counters."""
    return TriggerStats(
        entry.fires,
        entry.failures,
        entry.skipped,
        entry.consecutive,
        entry.last_fire_at,
        entry.last_error,
        entry.dead_lettered,
    )


class Breaker:
    """The circuit breaker of every trigger of one scheduler."""

    __slots__ = ("failure_threshold", "reset_timeout")

    def __init__(self, failure_threshold: int, reset_timeout: timedelta) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout

    def admit(self, entry: Entry, now: datetime) -> bool:
        """Whether the circuit lets a fire through now; counts a skip when it does not."""
        was = entry.breaker.state
        if not entry.breaker.allows(now):
            entry.skipped += 1
            return False
        if was == "open":
            _log.info("trigger_circuit_half_open", trigger=entry.name)
        return True

    async def hold(self, entry: Entry, clock: Clock) -> None:
        """Wait while the circuit is open; then let one trial through (half-open)."""
        breaker = entry.breaker
        if breaker.state != "open":
            return
        assert breaker.retry_at is not None
        if clock.now() < breaker.retry_at:
            await clock.sleep_until(breaker.retry_at)
        breaker.trial()
        _log.info("trigger_circuit_half_open", trigger=entry.name)

    @staticmethod
    def succeeded(entry: Entry, now: datetime) -> None:
        """A fire went through: count it and close the circuit."""
        entry.fires += 1
        entry.last_fire_at = now
        if entry.breaker.succeeded():
            _log.info("trigger_circuit_closed", trigger=entry.name)

    def failed(self, entry: Entry, exc: Exception, now: datetime, *, what: str) -> None:
        """A fire failed at stage `what`: count it, log it, open the circuit if due."""
        entry.failures += 1
        breaker = entry.breaker
        opened = breaker.failed(self.failure_threshold, now + self.reset_timeout)
        entry.last_error = f"{type(exc).__name__}: {exc}"
        _log.error(
            "trigger_failed",
            trigger=entry.name,
            kind=entry.kind,
            stage=what,
            consecutive_failures=entry.consecutive,
            error=entry.last_error,
            exc_info=exc,
        )
        if opened:
            assert entry.retry_at is not None
            _log.error(
                "trigger_circuit_opened",
                trigger=entry.name,
                consecutive_failures=entry.consecutive,
                retry_at=entry.retry_at.isoformat(),
            )

    @staticmethod
    def circuit(entry: Entry, now: datetime) -> CircuitState:
        """The circuit as seen now: an open one whose timeout passed reports half-open."""
        return entry.breaker.seen(now)


def cron_event_id(trigger: str, scheduled_for: datetime) -> str:
    """The id of the event a cron trigger publishes for the tick due at `scheduled_for`."""
    return f"cron-{trigger}-{scheduled_for.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def tick_text(scheduled_for: datetime, zone: str) -> str:
    """A tick as its event's payload carries it (`scheduled_for`), in RFC 9557 form:
    `2026-03-29T03:30:00+02:00[Europe/Berlin]`, the wall-clock time, offset and zone."""
    from zoneinfo import ZoneInfo

    return f"{scheduled_for.astimezone(ZoneInfo(zone)).isoformat()}[{zone}]"


def parse_tick(text: object) -> tuple[datetime, str]:
    """The tick (UTC) and zone in a `tick_text`.

    Raises:
        InvalidArgumentError: `text` is not one, saying what it should look like.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if isinstance(text, str) and text.endswith("]") and "[" in text:
        when, _, zone = text[:-1].partition("[")
        try:
            moment = datetime.fromisoformat(when)
            ZoneInfo(zone)
        except (ValueError, ZoneInfoNotFoundError):
            pass
        else:
            if moment.utcoffset() is not None:
                return moment.astimezone(UTC), zone
    raise InvalidArgumentError(
        "scheduled_for",
        text,
        "a tick like '2026-03-29T03:30:00+02:00[Europe/Berlin]' (time, offset, [IANA zone])",
    )


def built(event: object) -> EventBase:
    """What an event factory returned, if it is an event."""
    if not isinstance(event, EventBase):
        raise ArgumentTypeError("the value event_factory returns", event, "an EventBase")
    return event


def address(
    entry: Entry,
    event: EventBase,
    correlation_id: str | None,
    scheduled_for: datetime | None = None,
) -> EventBase:
    """The event with the trigger's topic, source and correlation id filled in; a cron
    tick's id names the trigger and the time it was due, so every scheduler instance
    firing the same tick publishes the same event id (consumers dedupe by it: one run), and
    its payload's `scheduled_for` says the tick and the schedule's zone (`tick_text`)."""
    changes: dict[str, Any] = {}
    if scheduled_for is not None:
        changes["event_id"] = cron_event_id(entry.name, scheduled_for)
        schedule = getattr(entry.trigger, "schedule", None)
        zone = getattr(schedule, "timezone", "UTC")
        changes["payload"] = {**event.payload, "scheduled_for": tick_text(scheduled_for, zone)}
    if event.topic != entry.target_topic:
        changes["topic"] = entry.target_topic
        if type(event) is EventBase and event.event_type == event.topic:
            changes["event_type"] = ""  # re-derived from the new topic
    if event.source == _DEFAULT_SOURCE:
        changes["source"] = entry.source
    if correlation_id is not None and event.correlation_id is None:
        changes["correlation_id"] = correlation_id
    return dataclasses.replace(event, **changes) if changes else event
