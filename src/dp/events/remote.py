"""What the brokers over a network (Redis Streams, Kafka) share: checking what is published,
the `publish_nowait` outbox and its sender, the registry of live subscriptions, and the life
cycle. Each adapter adds only its own specifics: how to publish a batch, how to make its two
kinds of subscription, and how to disconnect.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Generic, Protocol, Self, TypeVar

from dp.errors import (
    BrokerClosedError,
    BusUnavailableError,
    EventFormatError,
    InvalidTopicError,
    QueueFullError,
)
from dp.events.event import EventBase
from dp.events.groups import default_consumer_name, validate_group
from dp.events.ports import BrokerStats, DurableSubscription, StartFrom, Subscription
from dp.events.topics import compile_pattern, validate_topic
from dp.logs import get_logger

__all__ = ["BufferedReader", "RemoteBroker", "check_topic"]

_log = get_logger("dp.events")


PlainT = TypeVar("PlainT", bound=Subscription)
DurableT = TypeVar("DurableT", bound=DurableSubscription)
ItemT = TypeVar("ItemT")
_RETRY_FIRST = 0.05  # seconds the outbox sender waits after a failed publish, doubling
_RETRY_MAX = 2.0  # up to this


def check_topic(topic: str, event: EventBase) -> None:
    """`topic` is a valid topic and the event's own.

    Raises:
        InvalidTopicError: naming the topic and how to publish the event instead.
    """
    validate_topic(topic)
    if event.topic != topic:
        raise InvalidTopicError(
            topic,
            f"the event's own topic is {event.topic!r}; publish it there, or derive a "
            f"copy with dataclasses.replace(event, topic={topic!r})",
        )


class RemoteBroker(Generic[PlainT, DurableT]):
    """The shared half of a networked broker; see `RedisBroker` and `KafkaBroker`.

    Subclasses set `url`, `outbox` (how many `publish_nowait` events may wait) and
    `outbox_batch` (events the sender publishes per call) and implement `_publish_many`,
    `probe`, `_plain`, `_group` and `_disconnect`.

    Health: a publish that fails records why (`stats().error`, what `/health` shows) until
    one succeeds; while it is failing, `health()` probes the bus in the background, so it
    recovers even when nothing else publishes.
    """

    url: str
    outbox: int
    outbox_batch: int
    send_timeout: float  # how long `close()` waits for the outbox to be sent

    def __init__(self) -> None:
        self._closed = False
        self._subscriptions: set[Subscription] = set()
        self._known_topics: set[str] = set()
        self._outbox: deque[EventBase] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._published = 0
        self._dropped = 0  # publish_nowait events still unsent when the broker closed
        self._failure = ""  # why the last publish failed; "" once one succeeded
        self._prober: asyncio.Task[None] | None = None

    # --- to implement -------------------------------------------------------------------------

    async def _publish_many(self, events: Sequence[EventBase], *, topic: str | None) -> None:
        raise NotImplementedError

    async def probe(self) -> None:
        """Check that publishing works now (a round trip to the bus), or raise why not.

        Raises:
            BusRefusedError: the bus refuses this broker's settings (names the one to change).
            BusUnavailableError: the bus cannot be reached.
        """
        raise NotImplementedError

    def _plain(self, pattern: str, replay_retained: bool) -> PlainT:
        raise NotImplementedError

    def _group(
        self,
        pattern: str,
        group: str,
        consumer: str,
        claim_idle: float,
        max_deliveries: int,
        start: StartFrom,
    ) -> DurableT:
        raise NotImplementedError

    async def _disconnect(self) -> None:
        raise NotImplementedError

    def _outbox_name(self) -> str:
        return f"the outbox of {self.url}"

    # --- publishing ---------------------------------------------------------------------------

    async def publish(self, topic: str, event: EventBase) -> None:
        """Publish `event` on `topic` (the event's own topic) and wait until the bus has it.

        Raises:
            InvalidTopicError: malformed topic, or not the event's topic.
            BrokerClosedError: the broker is closed.
            BusUnavailableError: the bus did not take it in time (see the adapter).
        """
        await self.publish_many([event], topic=topic)

    async def publish_many(self, events: Sequence[EventBase], *, topic: str | None = None) -> None:
        """Publish the events in order and wait until the bus has all of them.

        Raises:
            InvalidTopicError: malformed topic, or not the event's topic.
            BrokerClosedError: the broker is closed.
            BusUnavailableError: the bus did not take them in time (see the adapter), or
                refuses them (`BusRefusedError`, naming the setting to change).
        """
        try:
            await self._publish_many(events, topic=topic)
        except BusUnavailableError as exc:
            self._failed(exc)
            raise
        self._recovered()

    def _failed(self, exc: BusUnavailableError) -> None:
        if not self._failure:
            _log.warning("bus.publish_failing", url=self.url, error=str(exc))
        self._failure = str(exc)

    def _recovered(self) -> None:
        if self._failure:
            self._failure = ""
            _log.info("bus.publish_recovered", url=self.url)

    def _check_open(self, topic: str | None, events: Sequence[EventBase]) -> None:
        """Raise `BrokerClosedError` when closed; check every event's topic."""
        if self._closed:
            raise BrokerClosedError(topic or (events[0].topic if events else "?"))
        for event in events:
            check_topic(topic or event.topic, event)

    def publish_nowait(self, topic: str, event: EventBase) -> None:
        """Queue `event` for a background sender, which publishes queued events in order, in
        batches. During an outage (or while the bus refuses them) the events stay queued and
        the sender retries with backoff; `close()` sends what is queued first, for up to
        `send_timeout` seconds, and only what is still unsent then is logged
        (`bus.publish_failed`, at error level) and counted in `stats().dropped`.

        Raises:
            InvalidTopicError: malformed topic, or not the event's topic.
            BrokerClosedError: the broker is closed.
            QueueFullError: `outbox` events are already waiting (the bus is slow or down).
        """
        self._check_open(topic, [event])
        if len(self._outbox) >= self.outbox:
            raise QueueFullError(self._outbox_name(), self.outbox)
        self._outbox.append(event)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_outbox())

    async def _send_outbox(self) -> None:
        """Publish the outbox's head batch; only a success removes it (order is kept)."""
        outbox = self._outbox
        delay = _RETRY_FIRST
        while outbox:
            batch = list(itertools.islice(outbox, self.outbox_batch))
            try:
                await self.publish_many(batch)
            except BusUnavailableError:
                if self._closed:
                    return
                await asyncio.sleep(delay)  # publish_many logged the failure once
                delay = min(delay * 2, _RETRY_MAX)
                continue
            except BrokerClosedError:
                return
            except EventFormatError:  # one event breaks dp.limits' rule: send the others
                handled = await self._send_apart(batch)
                for _ in range(handled):
                    outbox.popleft()
                if handled < len(batch):  # the bus failed meanwhile: retry the rest later
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                continue
            for _ in batch:
                outbox.popleft()
            delay = _RETRY_FIRST

    async def _send_apart(self, batch: list[EventBase]) -> int:
        """Publish `batch` one event at a time, dropping (and counting) each event that can
        never be sent; return how many were handled before the bus failed, if it did."""
        for handled, event in enumerate(batch):
            try:
                await self.publish_many([event])
            except EventFormatError as exc:
                self._dropped += 1
                _log.error("bus.publish_failed", events=1, error=str(exc))
            except (BusUnavailableError, BrokerClosedError):
                return handled
        return len(batch)

    def stats(self) -> BrokerStats:
        """Counters: events published, live subscriptions, `publish_nowait` events lost,
        topics this broker has published to, and why publishing fails now ("" if it works)."""
        return BrokerStats(
            self._published,
            len(self._subscriptions),
            self._dropped,
            len(self._known_topics),
            self._failure,
        )

    async def health(self, wait: float = 1.0) -> str:
        """Why publishing fails now, "" when it works. While it fails, one probe at a time
        runs in the background (waited for up to `wait` seconds): its success clears the
        failure, so health recovers when the bus does, even with nothing to publish."""
        if self._closed:
            return "the broker is closed"
        if self._failure:
            if self._prober is None or self._prober.done():
                self._prober = asyncio.get_running_loop().create_task(self._probe_once())
            await asyncio.wait([self._prober], timeout=wait)
        return self._failure

    async def _probe_once(self) -> None:
        try:
            await self.probe()
        except BusUnavailableError as exc:
            self._failed(exc)
        except BrokerClosedError:
            pass
        else:
            self._recovered()

    # --- subscribing --------------------------------------------------------------------------

    def subscribe(self, pattern: str, *, replay_retained: bool = False) -> PlainT:
        """Subscribe to `pattern`: the events published from this call on (with
        `replay_retained`, each matching topic's last event first). See the adapter.

        Raises:
            InvalidTopicError: malformed pattern.
            BrokerClosedError: the broker is closed.
        """
        compile_pattern(pattern)
        if self._closed:
            raise BrokerClosedError(pattern)
        subscription = self._plain(pattern, replay_retained)
        self._subscriptions.add(subscription)
        return subscription

    def durable(
        self,
        pattern: str,
        *,
        group: str,
        consumer: str | None = None,
        claim_idle: float = 60.0,
        max_deliveries: int = 5,
        start: StartFrom = "now",
    ) -> DurableT:
        """Join the durable group `group` on `pattern`. See `DurableSubscription` and the
        adapter's `_group`.

        Raises:
            GroupError: malformed name or options.
            InvalidTopicError: malformed pattern.
            BrokerClosedError: the broker is closed.
        """
        validate_group(group, max_deliveries=max_deliveries, claim_idle=claim_idle, start=start)
        compile_pattern(pattern)
        if self._closed:
            raise BrokerClosedError(pattern)
        name = consumer or default_consumer_name()
        subscription = self._group(pattern, group, name, claim_idle, max_deliveries, start)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop `subscription`'s reading; its iteration ends."""
        if subscription in self._subscriptions:
            self._subscriptions.discard(subscription)
            close = getattr(subscription, "close", None)
            if close is not None:
                close()

    def forget(self, subscription: Subscription) -> None:
        """Drop `subscription` from the live ones (it closed itself)."""
        self._subscriptions.discard(subscription)

    # --- life cycle ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed

    async def close(self) -> None:
        """Send the outbox, stop every subscription (durable ones settle what was acked; what
        plain ones buffered is still yielded), and disconnect."""
        if self._closed:
            return
        if self._sender is not None and not self._sender.done():
            await asyncio.wait([self._sender], timeout=self.send_timeout)
        for task in (self._sender, self._prober):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._outbox:
            self._dropped += len(self._outbox)
            _log.error(
                "bus.publish_failed",
                events=len(self._outbox),
                error=self._failure or "the broker closed before they were sent",
            )
            self._outbox.clear()
        self._closed = True
        for subscription in list(self._subscriptions):
            stop = getattr(subscription, "stop", None)
            if stop is not None:
                await stop()
        self._subscriptions.clear()
        await self._disconnect()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _Registry(Protocol):
    def forget(self, subscription: Subscription) -> None: ...


class BufferedReader(Generic[ItemT]):
    """What the subscriptions of both share: a background reader task filling a bounded
    local buffer, and the iterator's side of it (no queue hop: the iterator pops what the
    reader appended, and waits only when the buffer is empty).

    Subclasses implement `_read` (the reader task: `_fill` what it reads) and `__anext__`
    (with `_next_item`). An error of the reader reaches the iterator after what was read.
    """

    def __init__(self, broker: _Registry, pattern: str, limit: int) -> None:
        self._registry = broker
        self._pattern = pattern
        self._matches = compile_pattern(pattern)
        self._limit = max(limit, 1)
        self._buffer: deque[ItemT] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._error: BaseException | None = None

    @property
    def pattern(self) -> str:
        """The subscription pattern."""
        return self._pattern

    @property
    def closed(self) -> bool:
        """Whether the subscription, or its broker, was closed (or its reader ended)."""
        return self._closed

    def __aiter__(self) -> Self:
        return self

    # --- the reader's side --------------------------------------------------------------------

    async def _read(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        try:
            await self._read()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced to the iterator by _next_item
            self._error = exc
        finally:
            self._closed = True
            self._wake()

    def _wake(self) -> None:
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    def _push(self, item: ItemT, *, front: bool = False) -> None:
        """Add one item (at the front: delivered next) and wake the iterator."""
        if front:
            self._buffer.appendleft(item)
        else:
            self._buffer.append(item)
        self._wake()

    async def _fill(self, items: Iterable[ItemT]) -> None:
        """Append what was read; wait while the buffer holds `limit` items or more."""
        self._buffer.extend(items)
        if self._buffer:
            self._wake()
        while len(self._buffer) >= self._limit and not self._closed:
            self._room.clear()
            await self._room.wait()

    # --- the iterator's side ------------------------------------------------------------------

    async def _next_item(self, timeout: float | None = None) -> ItemT | None:
        """The next item read (None after `timeout` seconds without one).

        Raises:
            StopAsyncIteration: the subscription closed and its buffer is empty.
            Exception: what ended the reader, once its buffer is empty.
        """
        buffer = self._buffer
        if not buffer:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(
                    self._run(), name=f"dp-reader-{self._pattern}"
                )
            self._getter = asyncio.get_running_loop().create_future()
            try:
                if timeout is None:
                    await self._getter
                else:
                    await asyncio.wait([self._getter], timeout=timeout)
            finally:
                self._getter = None
            if not buffer:
                if self._error is not None:
                    raise self._error
                if self._closed:
                    raise StopAsyncIteration
                return None
        item = buffer.popleft()
        if len(buffer) <= self._limit // 2 and not self._room.is_set():
            self._room.set()
        return item

    # --- life cycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading now; buffered events are discarded and iteration ends."""
        self._closed = True
        self._buffer.clear()
        if self._task is not None:
            self._task.cancel()
        self._room.set()
        self._wake()
        self._release()

    def _release(self) -> None:
        """Leave the broker's live subscriptions (after `close`)."""
        self._registry.forget(self)  # type: ignore[arg-type]

    async def stop(self) -> None:
        """Stop reading and wait for the reader; what is buffered is still yielded."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._room.set()
        self._wake()

    async def aclose(self) -> None:
        """Unsubscribe; buffered events are discarded."""
        self.close()
        await self.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
