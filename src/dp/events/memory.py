"""The embedded, in-process event bus (the default of `pip install dp`).

`InMemoryBroker` gives each subscription its own bounded buffer, so one slow subscriber can
neither grow memory without bound nor, unless asked to (`overflow="block"`), stall the others.
The publish path is what a busy pipeline pays per event, so it does only O(matching
subscribers) work: the topic's subscriber list is cached, an event is appended to each
subscriber's deque, and a waiting consumer is woken only if it is actually waiting.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Self, get_args

from dp.errors import (
    BrokerClosedError,
    GroupError,
    InvalidArgumentError,
    InvalidTopicError,
    QueueFullError,
)
from dp.events.event import EventBase
from dp.events.groups import (
    InMemoryDurableSubscription,
    MemoryGroup,
    default_consumer_name,
    validate_group,
)
from dp.events.mailbox import Mailbox, Overflow
from dp.events.ports import BrokerStats, DeadLetter, StartFrom, Subscription
from dp.events.topics import compile_pattern, validate_topic

__all__ = [
    "BrokerStats",
    "InMemoryBroker",
    "InMemoryConsumer",
    "InMemoryPublisher",
    "InMemorySubscription",
    "Overflow",
]

_ROUTE_CACHE_SIZE = 10_000  # distinct topics remembered; cleared when full


class InMemoryBroker:
    """Topic-based publish/subscribe within one process and one event loop.

    Args:
        maxsize: default buffer size of each subscription (0 for unbounded).
        overflow: default policy when a subscription's buffer is full; see `Overflow`.
            `publish_nowait` cannot wait, so there a full `block` subscriber raises as well.
        retain: how many topics keep their last event for `last_event` and replay
            (least recently published evicted first; 0 disables retention).
        retain_ttl: seconds a retained event stays available (None: forever).
        clock: monotonic seconds, injectable so tests can expire retained events.
    """

    def __init__(
        self,
        *,
        maxsize: int = 1_000,
        overflow: Overflow = "block",
        retain: int = 1_000,
        retain_ttl: float | None = 3_600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_overflow(overflow)
        self.maxsize = maxsize
        self.overflow: Overflow = overflow
        self._retain = retain
        self._retain_ttl = retain_ttl
        self._clock = clock
        # topic -> (publish sequence number, publish time, event). A plain dict keeps publish
        # cheap; the least recently published entries are found by sorting, only on overflow.
        self._retained: dict[str, tuple[int, float, EventBase]] = {}
        self._mailboxes: tuple[Mailbox, ...] = ()
        self._routes: dict[str, tuple[Mailbox, ...]] = {}  # valid topic -> matching mailboxes
        self._groups: dict[str, MemoryGroup] = {}
        self._closed = False
        self._published = 0
        self._dropped = 0

    # --- subscribing ----------------------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        *,
        replay_retained: bool = False,
        maxsize: int | None = None,
        overflow: Overflow | None = None,
    ) -> InMemorySubscription:
        """Subscribe to `pattern`; iterate the returned subscription for the events.

        Args:
            pattern: e.g. `sales.*.created`, `sales.**`, `**`.
            replay_retained: start with the retained (unexpired) events matching `pattern`,
                oldest first.
            maxsize: this subscription's buffer size (default: the broker's).
            overflow: this subscription's overflow policy (default: the broker's).

        Raises:
            InvalidTopicError: if the pattern is malformed.
            BrokerClosedError: if the broker is closed.
        """
        if overflow is not None:
            _check_overflow(overflow)
        box = Mailbox(
            pattern,
            compile_pattern(pattern),
            self.maxsize if maxsize is None else maxsize,
            self.overflow if overflow is None else overflow,
        )
        if self._closed:
            raise BrokerClosedError(pattern)
        if replay_retained:
            events = self.retained(pattern)
            box.buffer.extend(events[-box.limit :])
        self._mailboxes = (*self._mailboxes, box)
        self._routes.clear()
        return InMemorySubscription(self, box)

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to `subscription`; its iteration ends, buffered events are dropped."""
        if isinstance(subscription, InMemorySubscription) and subscription._broker is self:
            subscription.close()

    # --- durable groups -------------------------------------------------------------------

    def durable(
        self,
        pattern: str,
        *,
        group: str,
        consumer: str | None = None,
        claim_idle: float = 60.0,
        max_deliveries: int = 5,
        start: StartFrom = "now",
        maxsize: int | None = None,
    ) -> InMemoryDurableSubscription:
        """Join the durable group `group` on `pattern` (see `Broker.durable`).

        The group lives as long as the broker: events published while it has no consumer
        wait in its buffer (`maxsize`, default the broker's, with the broker's overflow).
        Nothing survives the process, so `start` makes no difference: a new group starts
        empty, as the broker holds no past events.

        Raises:
            GroupError: the name or options are invalid, or the group has another pattern.
            InvalidTopicError: the pattern is malformed.
            BrokerClosedError: the broker is closed.
        """
        validate_group(group, max_deliveries=max_deliveries, claim_idle=claim_idle, start=start)
        matches = compile_pattern(pattern)
        if self._closed:
            raise BrokerClosedError(pattern)
        state = self._groups.get(group)
        if state is None:
            limit = self.maxsize if maxsize is None else maxsize
            box = Mailbox(pattern, matches, limit, self.overflow)
            state = self._groups[group] = MemoryGroup(group, box, self._clock)
            self._mailboxes = (*self._mailboxes, box)
            self._routes.clear()
        elif state.box.pattern != pattern:
            raise GroupError(
                group,
                f"it exists with pattern {state.box.pattern!r}, not {pattern!r}; "
                "use another group name for another pattern",
            )
        return InMemoryDurableSubscription(
            state,
            consumer=consumer or default_consumer_name(),
            claim_idle=claim_idle,
            max_deliveries=max_deliveries,
        )

    def _group(self, group: str) -> MemoryGroup:
        try:
            return self._groups[group]
        except KeyError:
            known = ", ".join(sorted(self._groups)) or "none"
            raise GroupError(group, f"no such group on this broker (known: {known})") from None

    async def dead_letters(self, group: str, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest `limit` dead letters of `group`.

        Raises:
            GroupError: no such group.
        """
        return list(self._group(group).dead.values())[:limit]

    async def replay_dead_letters(self, group: str, ids: Sequence[str] | None = None) -> int:
        """Deliver dead letters (these `ids`, or all) to `group` again; unknown ids are skipped.

        Raises:
            GroupError: no such group.
        """
        return self._group(group).replay(ids)

    def _remove(self, box: Mailbox) -> None:
        box.close()
        box.buffer.clear()
        if box in self._mailboxes:
            self._mailboxes = tuple(b for b in self._mailboxes if b is not box)
            self._routes.clear()

    # --- publishing -----------------------------------------------------------------------

    async def publish(self, topic: str, event: EventBase) -> None:
        """Deliver `event` to every subscription matching `topic`.

        Subscribers with room get the event at once. Then the call waits for room in full
        `block` subscribers, and finally raises if a `raise` subscriber was full.

        Raises:
            InvalidTopicError: if the topic is malformed or is not the event's topic.
            BrokerClosedError: if the broker is closed.
            QueueFullError: naming the first full subscriber with `overflow="raise"`.
        """
        stuck = self._deliver(topic, event)
        if stuck is not None:
            await self._deliver_stuck(topic, event, stuck)

    def publish_nowait(self, topic: str, event: EventBase) -> None:
        """Like `publish` but never waits: a full `block` subscriber raises like `raise`.

        It is the cheapest way to publish from sync code or a tight loop.
        """
        stuck = self._deliver(topic, event)
        if stuck is not None:
            raise QueueFullError(f"subscriber {stuck[0].pattern!r}", stuck[0].maxsize)

    def _deliver(self, topic: str, event: EventBase) -> list[Mailbox] | None:
        """Append `event` where there is room; return the full `block`/`raise` mailboxes."""
        if self._closed:
            raise BrokerClosedError(topic)
        try:
            mailboxes = self._routes[topic]
        except KeyError:
            mailboxes = self._route(topic)
        if event.topic != topic:
            raise InvalidTopicError(
                topic,
                f"the event's own topic is {event.topic!r}; publish it there, or derive a copy "
                f"with dataclasses.replace(event, topic={topic!r})",
            )
        self._published += 1
        if self._retain:
            self._retained[topic] = (self._published, self._clock(), event)
            if len(self._retained) > self._retain:
                self._evict()
        stuck = None
        for box in mailboxes:
            buffer = box.buffer
            if len(buffer) >= box.limit:
                if box.overflow != "drop_oldest":
                    if stuck is None:
                        stuck = [box]
                    else:
                        stuck.append(box)
                    continue
                buffer.popleft()
                box.dropped += 1
                self._dropped += 1
            buffer.append(event)
            getter = box.getter
            if getter is not None:
                box.getter = None
                if not getter.done():
                    getter.set_result(None)
        return stuck

    def _route(self, topic: str) -> tuple[Mailbox, ...]:
        validate_topic(topic)
        mailboxes = tuple(box for box in self._mailboxes if box.matches(topic))
        if len(self._routes) >= _ROUTE_CACHE_SIZE:
            self._routes.clear()
        self._routes[topic] = mailboxes
        return mailboxes

    async def _deliver_stuck(self, topic: str, event: EventBase, stuck: list[Mailbox]) -> None:
        refused = [box for box in stuck if box.overflow == "raise"]
        for box in stuck:
            if box.overflow != "block":
                continue
            while len(box.buffer) >= box.limit and not box.closed:
                if self._closed:
                    raise BrokerClosedError(topic)
                room = asyncio.get_running_loop().create_future()
                box.putters.append(room)
                try:
                    await room
                finally:
                    if not room.done():  # cancelled: forget our wake-up
                        box.putters.remove(room)
            if self._closed:
                raise BrokerClosedError(topic)
            if not box.closed:
                box.buffer.append(event)
                box.wake_getter()
        if refused:
            raise QueueFullError(f"subscriber {refused[0].pattern!r}", refused[0].maxsize)

    # --- retained events ------------------------------------------------------------------

    def last_event(self, topic: str) -> EventBase | None:
        """The last event published on `topic` if it is still retained, else None."""
        entry = self._retained.get(topic)
        if entry is None or self._expired(entry[1]):
            return None
        return entry[2]

    def retained(self, pattern: str = "**") -> list[EventBase]:
        """Retained events on topics matching `pattern`, least recently published first."""
        matches = compile_pattern(pattern)
        for topic in [t for t, (_, at, _) in self._retained.items() if self._expired(at)]:
            del self._retained[topic]
        entries = sorted(entry for topic, entry in self._retained.items() if matches(topic))
        return [event for _, _, event in entries]

    def _expired(self, published_at: float) -> bool:
        return self._retain_ttl is not None and self._clock() - published_at >= self._retain_ttl

    def _evict(self) -> None:
        # Dropping an eighth at a time keeps a stream of new topics O(log n) per publish;
        # below 16 topics it is exactly one, the least recently published.
        by_age = sorted(self._retained, key=lambda topic: self._retained[topic][0])
        for topic in by_age[: max(1, self._retain // 8)]:
            del self._retained[topic]

    # --- life cycle -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed

    def stats(self) -> BrokerStats:
        """A snapshot of the broker's counters."""
        return BrokerStats(
            self._published, len(self._mailboxes), self._dropped, len(self._retained)
        )

    async def close(self) -> None:
        """Refuse new events; subscribers receive what is buffered, then their iteration ends."""
        self._closed = True
        for box in self._mailboxes:
            box.close()
        self._mailboxes = ()
        self._routes.clear()


class InMemorySubscription:
    """The events matching one pattern: `async for event in subscription`.

    Iteration takes events straight from the buffer while there are any and only suspends
    when it is empty. Closing the subscription (`close`, `aclose`, `async with`, or dropping
    the last reference, e.g. by `break`-ing out of `async for` over `consume(...)`)
    unsubscribes it.
    """

    __slots__ = ("__weakref__", "_box", "_broker", "_unsubscribe")

    def __init__(self, broker: InMemoryBroker, box: Mailbox) -> None:
        self._broker = broker
        self._box = box
        self._unsubscribe = weakref.finalize(self, broker._remove, box)
        self._unsubscribe.atexit = False

    @property
    def pattern(self) -> str:
        """The subscription pattern."""
        return self._box.pattern

    @property
    def dropped(self) -> int:
        """Events this subscription lost to `overflow="drop_oldest"`."""
        return self._box.dropped

    @property
    def closed(self) -> bool:
        """Whether the subscription, or its broker, was closed."""
        return self._box.closed

    def qsize(self) -> int:
        """Events buffered and not yet consumed."""
        return len(self._box.buffer)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> EventBase:
        box = self._box
        buffer = box.buffer
        while not buffer:
            if box.closed:
                raise StopAsyncIteration
            getter = box.getter = asyncio.get_running_loop().create_future()
            try:
                await getter
            finally:
                if box.getter is getter:
                    box.getter = None
        event = buffer.popleft()
        if box.putters:
            box.wake_putters()
        return event

    def close(self) -> None:
        """Unsubscribe now; buffered events are discarded and iteration ends."""
        self._unsubscribe()

    async def aclose(self) -> None:
        """Unsubscribe (the async spelling, as for async generators)."""
        self._unsubscribe()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._unsubscribe()

    def __repr__(self) -> str:
        state = "closed" if self._box.closed else f"{len(self._box.buffer)} buffered"
        return f"<InMemorySubscription {self._box.pattern!r} {state}>"


class InMemoryPublisher:
    """The `Publisher` port over an `InMemoryBroker`."""

    __slots__ = ("_broker",)

    def __init__(self, broker: InMemoryBroker) -> None:
        self._broker = broker

    def publish(self, topic: str, event: EventBase) -> Coroutine[Any, Any, None]:
        """`await publisher.publish(topic, event)`; see `InMemoryBroker.publish`."""
        # Returning the broker's coroutine instead of awaiting it in our own saves a
        # coroutine frame per event.
        return self._broker.publish(topic, event)


class InMemoryConsumer:
    """The `Consumer` port over an `InMemoryBroker`."""

    __slots__ = ("_broker",)

    def __init__(self, broker: InMemoryBroker) -> None:
        self._broker = broker

    def consume(
        self,
        pattern: str,
        *,
        replay_retained: bool = False,
        maxsize: int | None = None,
        overflow: Overflow | None = None,
    ) -> InMemorySubscription:
        """Subscribe now; `async for event in consumer.consume("sales.*.created")`.

        See `InMemoryBroker.subscribe` for the options.
        """
        return self._broker.subscribe(
            pattern, replay_retained=replay_retained, maxsize=maxsize, overflow=overflow
        )


def _check_overflow(overflow: str) -> None:
    if overflow not in get_args(Overflow):
        choices = ", ".join(repr(c) for c in get_args(Overflow))
        raise InvalidArgumentError("overflow", overflow, f"one of {choices}")
