"""Triggers: what makes the scheduler publish an event, and how that event is made.

A trigger only describes; the `Scheduler` drives it. Four kinds:

* `CronTrigger`: on a cron schedule, in a time zone (`create_cron_trigger`).
* `EventTrigger`: on each event matching a topic pattern (`create_event_trigger`).
* `APITrigger`: when `await scheduler.fire(name, payload)` is called by the HTTP API.
* `ManualTrigger`: the same, fired from code or the command line.

Each has an event factory that builds the event to publish: cron factories take no
argument, event factories take the event that arrived, API and manual factories take the
call's payload. The scheduler publishes the result on the trigger's target topic.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from dp.errors import ArgumentTypeError, InvalidArgumentError
from dp.events import Broker, Consumer, EventBase, StartFrom, validate_pattern
from dp.events.groups import validate_group
from dp.scheduler.cron import CronSchedule

__all__ = [
    "APITrigger",
    "CronEventFactory",
    "CronTrigger",
    "EventFilter",
    "EventTrigger",
    "ManualTrigger",
    "Misfire",
    "PayloadEventFactory",
    "SourceEventFactory",
    "Trigger",
    "TriggerKind",
    "create_api_trigger",
    "create_cron_trigger",
    "create_event_trigger",
    "create_manual_trigger",
]

TriggerKind = Literal["cron", "api", "event", "manual"]

Misfire = Literal["run_once", "skip"]
"""What a cron trigger does about fire times missed while the scheduler was down or blocked:
fire once for all of them, then resume the schedule (`run_once`), or wait for the next
future time (`skip`)."""

CronEventFactory = Callable[[], EventBase]
"""Builds a cron trigger's event."""
SourceEventFactory = Callable[[EventBase], EventBase]
"""Builds an event trigger's event from the event that arrived."""
PayloadEventFactory = Callable[[dict[str, Any]], EventBase]
"""Builds an API or manual trigger's event from the payload of the call."""
EventFilter = Callable[[EventBase], bool]
"""Decides whether an arriving event fires an event trigger."""


@runtime_checkable
class Trigger(Protocol):
    """What every trigger has; the scheduler drives the four kinds in this module."""

    @property
    def kind(self) -> TriggerKind:
        """`"cron"`, `"api"`, `"event"` or `"manual"`."""
        ...

    @property
    def name(self) -> str | None:
        """A human-readable label for listings and logs (the registration name is separate)."""
        ...


class CronTrigger:
    """Fires on a cron schedule. Build one with `create_cron_trigger`.

    Attributes:
        schedule: the parsed expression and its time zone.
        event_factory: called with no argument at each fire time.
        misfire: see `Misfire`.
        misfire_grace: how late a fire may run before it counts as missed.
        name: a label for listings and logs.
    """

    __slots__ = ("event_factory", "misfire", "misfire_grace", "name", "schedule")

    kind: Literal["cron"] = "cron"

    def __init__(
        self,
        schedule: CronSchedule,
        event_factory: CronEventFactory,
        *,
        misfire: Misfire = "run_once",
        misfire_grace: timedelta = timedelta(seconds=1),
        name: str | None = None,
    ) -> None:
        if misfire not in get_args(Misfire):
            choices = " or ".join(repr(c) for c in get_args(Misfire))
            raise InvalidArgumentError("misfire", misfire, choices)
        if misfire_grace < timedelta(0):
            raise InvalidArgumentError("misfire_grace", misfire_grace, "zero or positive")
        _check_callable("event_factory", event_factory)
        self.schedule = schedule
        self.event_factory = event_factory
        self.misfire: Misfire = misfire
        self.misfire_grace = misfire_grace
        self.name = name

    @property
    def expression(self) -> str:
        """The cron expression."""
        return self.schedule.expression

    @property
    def timezone(self) -> str:
        """The IANA zone the expression is read in."""
        return self.schedule.timezone

    def next_fire(self, after: datetime) -> datetime:
        """The first fire time strictly after `after`, in UTC."""
        return self.schedule.next_fire(after)

    def __repr__(self) -> str:
        return (
            f"CronTrigger({self.expression!r}, timezone={self.timezone!r}, "
            f"misfire={self.misfire!r})"
        )


class EventTrigger:
    """Fires on each event matching `source_topic`. Build one with `create_event_trigger`.

    Attributes:
        consumer: where the events come from: a `Consumer` (a plain subscription, from the
            moment the scheduler starts), or a `Broker` when `group` is given.
        source_topic: the subscription pattern, e.g. `data.*.extracted`.
        event_factory: called with the arriving event.
        filter: if given, only events for which it returns True fire the trigger.
        name: a label for listings and logs.
        group: read through this durable group of the broker: events published while no
            scheduler runs are fired when one starts, each event is acknowledged once fired,
            and one that can never fire (its factory or filter fails on it) is dead-lettered.
        start: where the group starts when it is created (see `StartFrom`).
        claim_idle: seconds an event this trigger took may stay unacknowledged before another
            consumer of the group takes it over (see `Broker.durable`).
    """

    __slots__ = (
        "claim_idle",
        "consumer",
        "event_factory",
        "filter",
        "group",
        "name",
        "source_topic",
        "start",
    )

    kind: Literal["event"] = "event"

    def __init__(
        self,
        consumer: Consumer | Broker,
        source_topic: str,
        event_factory: SourceEventFactory,
        *,
        filter: EventFilter | None = None,
        name: str | None = None,
        group: str | None = None,
        start: StartFrom = "now",
        claim_idle: float = 60.0,
    ) -> None:
        validate_pattern(source_topic)
        _check_callable("event_factory", event_factory)
        if filter is not None:
            _check_callable("filter", filter)
        if group is not None:
            validate_group(group, start=start, claim_idle=claim_idle)
            if not callable(getattr(consumer, "durable", None)):
                raise ArgumentTypeError(
                    "consumer", consumer, "a Broker", hint="a durable group is read from a Broker"
                )
        elif not callable(getattr(consumer, "consume", None)):
            raise ArgumentTypeError(
                "consumer", consumer, "a Consumer", hint="or give a Broker and a group"
            )
        self.consumer = consumer
        self.source_topic = source_topic
        self.event_factory = event_factory
        self.filter = filter
        self.name = name
        self.group = group
        self.start: StartFrom = start
        self.claim_idle = claim_idle

    def __repr__(self) -> str:
        return f"EventTrigger({self.source_topic!r})"


class _CalledTrigger:
    __slots__ = ("event_factory", "name")

    def __init__(
        self, event_factory: PayloadEventFactory | None = None, *, name: str | None = None
    ) -> None:
        if event_factory is not None:
            _check_callable("event_factory", event_factory)
        self.event_factory = event_factory
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class APITrigger(_CalledTrigger):
    """Fired by `await scheduler.fire(name, payload)` from the HTTP API.

    Attributes:
        event_factory: called with the payload; None publishes an `EventBase` carrying it.
        name: a label for listings and logs.
    """

    __slots__ = ()

    kind: Literal["api"] = "api"


class ManualTrigger(_CalledTrigger):
    """Fired by `await scheduler.fire(name, payload)` from code or the command line.

    Attributes:
        event_factory: called with the payload; None publishes an `EventBase` carrying it.
        name: a label for listings and logs.
    """

    __slots__ = ()

    kind: Literal["manual"] = "manual"


def create_cron_trigger(
    cron_expression: str,
    event_factory: CronEventFactory,
    *,
    timezone: str = "UTC",
    misfire: Misfire = "run_once",
    misfire_grace: timedelta = timedelta(seconds=1),
    name: str | None = None,
) -> CronTrigger:
    """A trigger firing on `cron_expression`, read in `timezone`'s wall-clock time.

    Example::

        nightly = create_cron_trigger(
            "30 2 * * *", lambda: EventBase(topic="etl.nightly"), timezone="Europe/Berlin"
        )

    See `dp.scheduler.cron` for the syntax (a 6th, leading field gives seconds) and for how
    fire times behave when clocks change for DST.

    Raises:
        InvalidCronError: if the expression is malformed or can never fire.
        InvalidTimezoneError: if the zone is unknown.
    """
    return CronTrigger(
        CronSchedule(cron_expression, timezone),
        event_factory,
        misfire=misfire,
        misfire_grace=misfire_grace,
        name=name,
    )


def create_event_trigger(
    consumer: Consumer | Broker,
    source_topic: str,
    event_factory: SourceEventFactory,
    *,
    filter: EventFilter | None = None,
    name: str | None = None,
    group: str | None = None,
    start: StartFrom = "now",
    claim_idle: float = 60.0,
) -> EventTrigger:
    """A trigger firing on each event on topics matching `source_topic`.

    The published event's `correlation_id` is the arriving event's id unless the factory
    sets one. With `group` (and a `Broker` as `consumer`) the trigger is durable: see
    `EventTrigger`.

    Raises:
        InvalidTopicError: if `source_topic` is not a valid pattern.
        GroupError: if `group` is not a valid group name or `start` not a `StartFrom`.
    """
    return EventTrigger(
        consumer,
        source_topic,
        event_factory,
        filter=filter,
        name=name,
        group=group,
        start=start,
        claim_idle=claim_idle,
    )


def create_api_trigger(
    event_factory: PayloadEventFactory | None = None, *, name: str | None = None
) -> APITrigger:
    """A trigger fired through the HTTP API (`scheduler.fire`)."""
    return APITrigger(event_factory, name=name)


def create_manual_trigger(
    event_factory: PayloadEventFactory | None = None, *, name: str | None = None
) -> ManualTrigger:
    """A trigger fired from code or the command line (`scheduler.fire`)."""
    return ManualTrigger(event_factory, name=name)


def _check_callable(what: str, value: object) -> None:
    if not callable(value):
        raise ArgumentTypeError(what, value, "callable")
