"""The event system's ports: what the engine, the scheduler and the service program against.

Adapters satisfy these structurally (no base class): the in-memory broker in
`dp.events.memory`, the in-memory and multiprocess queues in `dp.events.queues`, Redis Streams
and Kafka later. Keep callers on these types and an adapter can be swapped by configuration.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, TypeVar, runtime_checkable

from dp.errors import QueueEmptyError
from dp.events.event import EventBase

__all__ = [
    "Broker",
    "BrokerConsumer",
    "BrokerStats",
    "BusHealth",
    "Consumer",
    "DeadLetter",
    "DurableSubscription",
    "Publisher",
    "Queue",
    "QueueEmptyError",
    "StartFrom",
    "Subscription",
]

T = TypeVar("T")

StartFrom = Literal["now", "earliest"]
"""Where a durable group created now starts: with the events published from now on, or
with every event the bus still holds. An existing group always goes on from its position."""


@runtime_checkable
class Subscription(Protocol):
    """A live subscription: iterate it for the events matching its pattern, in publish order.

    Iteration ends when the broker closes (after the buffered events) or the subscription is
    closed. Closing it, or dropping the last reference to it, unsubscribes.
    """

    @property
    def pattern(self) -> str:
        """The subscription pattern, e.g. `sales.*.created`."""
        ...

    def __aiter__(self) -> AsyncIterator[EventBase]: ...

    async def __anext__(self) -> EventBase: ...

    async def aclose(self) -> None:
        """Unsubscribe; buffered events are discarded."""
        ...


@runtime_checkable
class DurableSubscription(Subscription, Protocol):
    """One consumer of a named group: each event matching the pattern goes to one consumer.

    The group outlives its consumers: events published while none runs wait for the next.
    An event stays pending until `ack`; `nack` (the handler failed) delivers it again at once,
    and an event a consumer neither acks nor nacks (it died, or hangs) goes to another consumer
    once it has been pending longer than `claim_idle` seconds. The delivery after the
    `max_deliveries`-th moves it to the group's dead letters instead, with its last error.
    """

    @property
    def group(self) -> str:
        """The group's name, e.g. `dp.service`."""
        ...

    async def ack(self, *events: EventBase) -> None:
        """Settle `events` (delivered by this subscription): they are never delivered again.

        Raises:
            NotPendingError: for an event this subscription did not deliver or already settled.
        """
        ...

    async def nack(self, event: EventBase, error: str) -> None:
        """The handler failed with `error`: deliver `event` again, or dead-letter it."""
        ...

    async def dead_letter(self, event: EventBase, error: str) -> None:
        """`event` is poison (it can never be handled, e.g. it fails validation): move it to
        the group's dead letters now, with `error` as the reason; the others are unaffected."""
        ...

    async def keep(self) -> None:
        """This consumer is alive and still works on what it holds (e.g. it waits for a
        dependency to come back): reset the idle time of every event it was given, so none
        is claimed by another consumer or dead-lettered as never acknowledged meanwhile."""
        ...

    def deliveries(self, event: EventBase) -> int:
        """How many times the pending `event` has been delivered, this time included."""
        ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a group gave up on after `deliveries` failed deliveries.

    Attributes:
        id: the dead letter's id, for `replay_dead_letters`.
        group: the durable subscription group that failed it.
        topic: where it was published.
        event: the event, or None when its entry could not be decoded (see `raw`).
        raw: the event as it was stored (the JSON wire format).
        error: the last handler error, or why it was given up.
        deliveries: how many times it was delivered.
        failed_at: when it was dead-lettered (UTC).
    """

    id: str
    group: str
    topic: str
    event: EventBase | None
    raw: str
    error: str
    deliveries: int
    failed_at: datetime


@runtime_checkable
class Publisher(Protocol):
    """Sends events: `await publisher.publish("sales.orders.created", event)`."""

    async def publish(self, topic: str, event: EventBase) -> None:
        """Publish `event` on `topic`, which must be the event's own topic."""
        ...


@runtime_checkable
class Consumer(Protocol):
    """Receives events: `async for event in consumer.consume("sales.*.created")`."""

    def consume(self, pattern: str) -> AsyncIterator[EventBase]:
        """Subscribe to `pattern` now and iterate the matching events."""
        ...


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """Counters of a broker, for `/health`, metrics and tests.

    Attributes:
        published: events accepted by `publish` since the broker was created.
        subscriptions: live subscriptions.
        dropped: events discarded by `drop_oldest` subscribers, over the broker's lifetime.
        retained: topics whose last event is retained now.
        error: why publishing fails now (the last failure, until a publish succeeds);
            "" while it works, and always on the in-memory bus.
    """

    published: int
    subscriptions: int
    dropped: int
    retained: int
    error: str = ""


@runtime_checkable
class Broker(Protocol):
    """Routes published events to every subscription whose pattern matches the topic.

    `subscribe` and `unsubscribe` are plain calls so a subscription exists before the first
    `await`: nothing published after `subscribe()` returns is missed. Adapters that need the
    network do that work on the first read.
    """

    def subscribe(self, pattern: str, *, replay_retained: bool = False) -> Subscription:
        """Subscribe to `pattern`; with `replay_retained`, start with the retained events."""
        ...

    def durable(
        self,
        pattern: str,
        *,
        group: str,
        consumer: str | None = None,
        claim_idle: float = 60.0,
        max_deliveries: int = 5,
        start: StartFrom = "now",
    ) -> DurableSubscription:
        """Join (or create) the durable group `group` on `pattern` as one more consumer.

        A new group starts with the events published after this call (`start="now"`), or
        with every matching event the bus still holds (`"earliest"`); an existing group
        goes on from where it is, whatever `start` says. `claim_idle` must be
        longer than the handler may take: a pending event idle for that long goes to another
        consumer. `consumer` names this consumer (default: host, process and a counter).

        Raises:
            GroupError: the group name is malformed, or the group exists with another pattern.
        """
        ...

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to `subscription`; unknown or already closed ones are ignored."""
        ...

    async def dead_letters(self, group: str, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest `limit` dead letters of `group`."""
        ...

    async def replay_dead_letters(self, group: str, ids: Sequence[str] | None = None) -> int:
        """Deliver dead letters (these `ids`, or all) to `group` again; return how many."""
        ...

    async def publish(self, topic: str, event: EventBase) -> None:
        """Deliver `event` to every matching subscription."""
        ...

    def publish_nowait(self, topic: str, event: EventBase) -> None:
        """Accept `event` for delivery without waiting, from sync code on the event loop
        (run listeners publish lifecycle events this way).

        Raises:
            QueueFullError: the event cannot be accepted now (it is not published).
            BrokerClosedError: the broker is closed.
        """
        ...

    @property
    def closed(self) -> bool:
        """Whether `close()` was called (or the broker failed for good)."""
        ...

    def stats(self) -> BrokerStats:
        """A snapshot of the broker's counters."""
        ...

    async def close(self) -> None:
        """Refuse new events and end every subscription's iteration."""
        ...


@runtime_checkable
class BusHealth(Protocol):
    """A bus over a network, whose publishing can fail while dp runs (Redis, Kafka):
    `/health` asks it, `dp serve` probes it at start."""

    async def health(self, wait: float = 1.0) -> str:
        """Why publishing fails now; "" when it works."""
        ...

    async def probe(self) -> None:
        """Raise `BusUnavailableError` (or `BusRefusedError`) unless publishing works now."""
        ...


class BrokerConsumer:
    """The `Consumer` port over any `Broker`: `consume(pattern)` subscribes at once."""

    __slots__ = ("broker",)

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def consume(self, pattern: str) -> Subscription:
        """`async for event in consumer.consume("sales.*.created")`."""
        return self.broker.subscribe(pattern)


@runtime_checkable
class Queue(Protocol[T]):
    """A FIFO of items between tasks or processes (the engine's task and completion channel).

    `close()` is final: `put` then raises `QueueClosedError`, and `get` returns what is left,
    then raises `QueueClosedError` too, which is how a consumer learns to stop.
    """

    async def put(self, item: T) -> None:
        """Add `item`, waiting while a bounded queue is full."""
        ...

    async def get(self) -> T:
        """Remove and return the oldest item, waiting while the queue is empty."""
        ...

    def put_nowait(self, item: T) -> None:
        """Add `item` or raise `QueueFullError` at once."""
        ...

    def get_nowait(self) -> T:
        """Remove and return the oldest item or raise `QueueEmptyError` at once."""
        ...

    def qsize(self) -> int:
        """Approximate number of items waiting."""
        ...

    def empty(self) -> bool:
        """Whether no item is waiting (approximate across processes)."""
        ...

    def close(self) -> None:
        """Close the queue for every user of it."""
        ...
