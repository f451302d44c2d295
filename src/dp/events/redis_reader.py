"""The subscriptions of `RedisBroker`: a reader task per subscription feeding a local buffer.

`RedisSubscription` reads with `XREAD` from the position of its creation; a
`RedisDurableSubscription` is a consumer in a consumer group, reading with `XREADGROUP`,
claiming idle pending entries with `XAUTOCLAIM`, and dead-lettering entries delivered too
often. Both survive Redis restarts: the reader retries with backoff until the broker closes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from dp.backoff import Backoff
from dp.errors import EventFormatError, GroupError, NotPendingError
from dp.events.event import EventBase
from dp.events.groups import not_acknowledged
from dp.events.ports import StartFrom, Subscription
from dp.events.redis_entries import CONNECTION_ERRORS, Entries, decode_entry, parse_id, text
from dp.events.remote import BufferedReader
from dp.logs import get_logger

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["RedisDurableSubscription", "RedisStreams", "RedisSubscription"]

T = TypeVar("T")


class RedisStreams(Protocol):
    """What the readers need of their broker (`RedisBroker`): its client, its keys, its
    settings and its retrying call. A port, so this module does not import the broker that
    imports it."""

    @property
    def redis(self) -> aioredis.Redis: ...
    @property
    def closed(self) -> bool: ...
    @property
    def batch(self) -> int: ...
    @property
    def topic_refresh(self) -> float: ...
    @property
    def publish_timeout(self) -> float | None: ...
    @property
    def topics_key(self) -> str: ...
    @property
    def groups_key(self) -> str: ...
    @property
    def last_ids(self) -> dict[str, bytes]: ...

    def forget(self, subscription: Subscription) -> None: ...
    def stream_key(self, topic: str) -> str: ...
    def topic_of(self, key: bytes | str) -> str: ...
    def dlq_key(self, group: str) -> str: ...
    def replay_key(self, group: str) -> str: ...
    def errors_key(self, group: str) -> str: ...
    async def call(
        self, op: Callable[[aioredis.Redis], Awaitable[T]], *, wait: float | None
    ) -> T: ...
    async def start_id_at(self, local_time: float) -> str: ...
    async def retained(
        self, pattern: str = "**", *, until: Callable[[str], str] | None = None
    ) -> list[EventBase]: ...


_log = get_logger("dp.events.redis")
_BACKOFF = Backoff(first=0.02, cap=1.0)  # between tries to read after a lost connection

# (event, stream key, entry id, deliveries so far)
_Item = tuple[EventBase, bytes, bytes, int]
Found = list[tuple[bytes, Entries]]


class _Reader(BufferedReader[_Item]):
    """What both subscriptions share: the reader's retry loop and the streams it reads."""

    def __init__(self, broker: RedisStreams, pattern: str) -> None:
        super().__init__(broker, pattern, broker.batch)
        self._broker = broker
        self._exact = "*" not in pattern
        self._created = time.time()
        self._started = False
        self._streams: dict[bytes, bytes | str] = {}  # stream key -> where to read from
        self._next_refresh = 0.0
        self._wait = broker.topic_refresh

    async def __anext__(self) -> EventBase:
        item = await self._next_item()
        assert item is not None
        return self._take(item)

    def _take(self, item: _Item) -> EventBase:
        return item[0]

    async def _read(self) -> None:
        broker = self._broker
        failures = 0
        while not self._closed and not broker.closed:
            try:
                if not self._started:
                    await self._start()
                    self._started = True
                if time.monotonic() >= self._next_refresh:
                    await self._refresh()
                    self._next_refresh = (
                        float("inf") if self._exact else time.monotonic() + broker.topic_refresh
                    )
                await self._poll()
                await self._fill(())  # waits while the buffer is full
                failures = 0
            except CONNECTION_ERRORS as exc:
                _log.info("bus.reader_retrying", pattern=self._pattern, error=str(exc))
                failures += 1
                await asyncio.sleep(_BACKOFF.delay(failures))
                self._lost_connection()

    def _lost_connection(self) -> None:
        """After a reconnect, look again (Redis may have restarted without our groups)."""
        self._next_refresh = 0.0

    async def _start(self) -> None:
        raise NotImplementedError

    async def _refresh(self) -> None:
        raise NotImplementedError

    async def _poll(self) -> None:
        raise NotImplementedError

    async def _matching_keys(self) -> list[bytes]:
        broker = self._broker
        if self._exact:
            return [broker.stream_key(self._pattern).encode()]
        names = await broker.redis.smembers(broker.topics_key)
        return [
            broker.stream_key(topic).encode()
            for topic in sorted(text(name) for name in names)
            if self._matches(topic)
        ]


class RedisSubscription(_Reader):
    """Events matching a pattern, published after the subscription was made (`XREAD`)."""

    def __init__(self, broker: RedisStreams, pattern: str, *, replay_retained: bool) -> None:
        super().__init__(broker, pattern)
        self._replay_retained = replay_retained
        self._start_id = "0-0"
        # What this process published before subscribing is not new, even within the
        # millisecond (or clock skew) of the time cut.
        self._published_before = dict(broker.last_ids)

    def _start_for(self, topic: str) -> str:
        """Read `topic` after this id: the time cut, or this process's last publish."""
        mine = self._published_before.get(topic)
        if mine is None:
            return self._start_id
        return max(self._start_id, mine.decode(), key=parse_id)

    async def _start(self) -> None:
        broker = self._broker
        self._start_id = await broker.start_id_at(self._created)
        if self._replay_retained:
            for event in await broker.retained(self._pattern, until=self._start_for):
                self._buffer.append((event, b"", b"", 1))
            self._wake()

    async def _refresh(self) -> None:
        broker = self._broker
        for key in await self._matching_keys():
            if key not in self._streams:
                self._streams[key] = self._start_for(broker.topic_of(key))

    async def _poll(self) -> None:
        broker = self._broker
        if not self._streams:
            await asyncio.sleep(broker.topic_refresh)
            return
        block = max(1, int(self._wait * 1000)) if not self._exact else 1_000
        found = cast(
            Found,
            await broker.redis.xread(self._streams, count=broker.batch, block=block),  # type: ignore[arg-type]
        )
        for key, entries in found or ():
            topic = broker.topic_of(key)
            for entry_id, fields in entries:
                self._streams[key] = entry_id
                try:
                    event = decode_entry(fields, topic)
                except EventFormatError as exc:
                    _log.warning(
                        "bus.bad_entry", topic=topic, entry=entry_id.decode(), error=str(exc)
                    )
                    continue
                self._buffer.append((event, key, entry_id, 1))
        if self._buffer:
            self._wake()

    def __repr__(self) -> str:
        return f"<RedisSubscription {self._pattern!r}>"


class RedisDurableSubscription(_Reader):
    """One consumer of a consumer group; see `DurableSubscription` for the semantics."""

    def __init__(
        self,
        broker: RedisStreams,
        pattern: str,
        *,
        group: str,
        consumer: str,
        claim_idle: float,
        max_deliveries: int,
        start: StartFrom = "now",
    ) -> None:
        super().__init__(broker, pattern)
        self._group = group
        self._from = start
        self.consumer = consumer
        self.claim_idle = claim_idle
        self.max_deliveries = max_deliveries
        self._start_id = "0-0"
        self._pending: dict[int, list[_Item]] = {}  # id(event) -> its deliveries
        self._claim_every = max(0.05, claim_idle / 2)
        self._next_claim = time.monotonic() + self._claim_every
        self._wait = min(broker.topic_refresh, self._claim_every)
        self._replay = broker.replay_key(group).encode()

    @property
    def group(self) -> str:
        """The group's name."""
        return self._group

    def _take(self, item: _Item) -> EventBase:
        self._pending.setdefault(id(item[0]), []).append(item)
        return item[0]

    async def _start(self) -> None:
        broker = self._broker
        start = "0-0" if self._from == "earliest" else await broker.start_id_at(self._created)
        mine = json.dumps({"pattern": self._pattern, "start": start})
        redis = broker.redis
        await redis.hsetnx(broker.groups_key, self._group, mine)
        stored = json.loads(await redis.hget(broker.groups_key, self._group))  # type: ignore[arg-type]
        if stored["pattern"] != self._pattern:
            raise GroupError(
                self._group,
                f"it exists with pattern {stored['pattern']!r}, not {self._pattern!r}; "
                "use another group name for another pattern",
            )
        self._start_id = stored["start"]

    async def _refresh(self) -> None:
        keys = [*await self._matching_keys(), self._replay]
        new = [key for key in keys if key not in self._streams]
        if not new:
            return
        pipe = self._broker.redis.pipeline(transaction=False)
        for key in new:
            start = "0-0" if key == self._replay else self._start_id
            pipe.xgroup_create(key, self._group, start, mkstream=True)
        for key, result in zip(new, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result
            self._streams[key] = ">"

    def _lost_connection(self) -> None:
        super()._lost_connection()
        self._streams.clear()  # re-create the groups if Redis lost them (no persistence)

    async def _poll(self) -> None:
        broker = self._broker
        if time.monotonic() >= self._next_claim:
            # What waits in the buffer was read, not handed out: never idle in the
            # sense of claim_idle, so it is not claimed from this (live) consumer.
            await self._touch(self._buffer)
            await self._claim()
            self._next_claim = time.monotonic() + self._claim_every
        try:
            found = cast(
                Found,
                await broker.redis.xreadgroup(
                    self._group,
                    self.consumer,
                    self._streams,  # type: ignore[arg-type]
                    count=broker.batch,
                    block=max(1, int(self._wait * 1000)),
                ),
            )
        except Exception as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._lost_connection()  # a stream or group was deleted: create them again
            return
        for key, entries in found or ():
            await self._accept(key, entries, deliveries=None)

    async def _accept(
        self, key: bytes, entries: Entries, *, deliveries: dict[bytes, int] | None
    ) -> None:
        topic = None if key == self._replay else self._broker.topic_of(key)
        for entry_id, fields in entries:
            count = 1 if deliveries is None else deliveries.get(entry_id, 1)
            try:
                event = decode_entry(fields, topic)
            except EventFormatError as exc:
                await self._bury(key, entry_id, fields, str(exc), count)
                continue
            if count > self.max_deliveries:
                error = await self._broker.redis.hget(
                    self._broker.errors_key(self._group), _field(key, entry_id)
                )
                reason = text(error) if error else not_acknowledged(self.claim_idle, count - 1)
                await self._bury(key, entry_id, fields, reason, count - 1)
                continue
            self._buffer.append((event, key, entry_id, count))
        if self._buffer:
            self._wake()

    async def _claim(self) -> None:
        """Take over entries idle longer than `claim_idle` (their consumer died or hangs)."""
        redis = self._broker.redis
        keys = list(self._streams)
        idle = int(self.claim_idle * 1000)
        pipe = redis.pipeline(transaction=False)
        for key in keys:
            pipe.xautoclaim(key, self._group, self.consumer, idle, "0-0", count=self._broker.batch)
        results = await pipe.execute(raise_on_error=False)
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, Exception):
                if "NOGROUP" in str(result):
                    self._lost_connection()
                    return
                raise result
            entries: Entries = [(i, f) for i, f in result[1] if f is not None]
            deleted = list(result[2]) if len(result) > 2 else []
            if deleted:  # trimmed or XDEL-ed while pending: nothing left to deliver
                _log.warning(
                    "bus.pending_entries_gone",
                    group=self._group,
                    stream=key.decode(),
                    count=len(deleted),
                )
                await redis.xack(key, self._group, *deleted)
            if not entries:
                continue
            details = await redis.xpending_range(
                key, self._group, entries[0][0], entries[-1][0], len(entries) + 1000, self.consumer
            )
            counts = {cast(bytes, d["message_id"]): int(d["times_delivered"]) for d in details}
            _log.info("bus.claimed", group=self._group, stream=key.decode(), count=len(entries))
            await self._accept(key, entries, deliveries=counts)

    async def _bury(
        self, key: bytes, entry_id: bytes, fields: dict[bytes, bytes], error: str, deliveries: int
    ) -> None:
        """Move an entry to the group's dead letters, atomically with its acknowledgement."""
        broker = self._broker
        letter = {
            "event": fields.get(b"event", b""),
            "topic": broker.topic_of(key) if key != self._replay else _topic_in(fields),
            "error": error,
            "deliveries": deliveries,
            "stream": key,
            "entry": entry_id,
        }

        async def move(redis: aioredis.Redis) -> None:
            pipe = redis.pipeline(transaction=True)
            pipe.xadd(broker.dlq_key(self._group), letter)  # type: ignore[arg-type]
            pipe.xack(key, self._group, entry_id)
            pipe.hdel(broker.errors_key(self._group), _field(key, entry_id))
            await pipe.execute()

        await broker.call(move, wait=broker.publish_timeout)
        _log.warning(
            "bus.dead_lettered",
            group=self._group,
            topic=letter["topic"],
            deliveries=deliveries,
            error=error,
        )

    def _settle(self, event: EventBase) -> _Item:
        held = self._pending.get(id(event))
        if not held:
            raise NotPendingError(self._group, event.event_id)
        item = held.pop(0)
        if not held:
            del self._pending[id(event)]
        return item

    async def ack(self, *events: EventBase) -> None:
        """Acknowledge `events` (`XACK`, one round trip); waits out outages like publish.

        Raises:
            NotPendingError: an event this subscription did not deliver or already settled.
            BusUnavailableError: Redis stayed unreachable for `publish_timeout` seconds
                (the events stay pending and are delivered again).
        """
        items = [self._settle(event) for event in events]
        broker = self._broker
        errors = broker.errors_key(self._group)

        async def send(redis: aioredis.Redis) -> None:
            if len(items) == 1 and items[0][3] == 1:
                await redis.xack(items[0][1], self._group, items[0][2])
                return
            pipe = redis.pipeline(transaction=False)
            by_stream: dict[bytes, list[bytes]] = {}
            for _, key, entry_id, deliveries in items:
                by_stream.setdefault(key, []).append(entry_id)
                if deliveries > 1:
                    pipe.hdel(errors, _field(key, entry_id))
            for key, ids in by_stream.items():
                pipe.xack(key, self._group, *ids)
            await pipe.execute()

        await broker.call(send, wait=broker.publish_timeout)

    async def nack(self, event: EventBase, error: str) -> None:
        """The handler failed: deliver `event` again at once (`XCLAIM` to this consumer,
        which counts a delivery), or dead-letter it after `max_deliveries`."""
        _, key, entry_id, deliveries = item = self._settle(event)
        broker = self._broker
        if deliveries >= self.max_deliveries:
            await self._bury(key, entry_id, await self._stored(key, entry_id), error, deliveries)
            return

        async def claim(redis: aioredis.Redis) -> list[object]:
            pipe = redis.pipeline(transaction=False)
            pipe.hset(broker.errors_key(self._group), _field(key, entry_id), error)
            pipe.xclaim(key, self._group, self.consumer, 0, [entry_id])
            result: list[object] = await pipe.execute()
            return result

        _, claimed = await broker.call(claim, wait=broker.publish_timeout)
        if claimed:  # else: acknowledged or trimmed meanwhile
            self._push((item[0], key, entry_id, deliveries + 1), front=True)

    async def dead_letter(self, event: EventBase, error: str) -> None:
        """`event` is poison: move its entry to the dead letters now (one transaction with
        its `XACK`), with `error` as the reason."""
        _, key, entry_id, deliveries = self._settle(event)
        await self._bury(key, entry_id, await self._stored(key, entry_id), error, deliveries)

    async def _stored(self, key: bytes, entry_id: bytes) -> dict[bytes, bytes]:
        """The entry's fields as stored: a dead letter keeps the event as it came, even one
        that cannot be encoded again (a lone surrogate in its payload)."""
        broker = self._broker
        found = cast(
            Entries,
            await broker.call(
                lambda r: r.xrange(key, entry_id, entry_id), wait=broker.publish_timeout
            ),
        )
        return found[0][1] if found else {}

    async def keep(self) -> None:
        """Reset the idle time of every entry this consumer holds, pending or buffered
        (`XCLAIM ... JUSTID`, which counts no delivery), so that none is claimed meanwhile.

        Raises:
            redis.ConnectionError: Redis is unreachable (the entries stay as they are).
        """
        await self._touch([item for items in self._pending.values() for item in items])
        await self._touch(self._buffer)

    async def _touch(self, items: Iterable[_Item]) -> None:
        """Reset the idle time of these entries, held by this consumer."""
        held: dict[bytes, list[bytes]] = {}
        for _, key, entry_id, _ in items:
            held.setdefault(key, []).append(entry_id)
        if not held:
            return
        pipe = self._broker.redis.pipeline(transaction=False)
        for key, ids in held.items():
            pipe.xclaim(key, self._group, self.consumer, 0, ids, justid=True)  # type: ignore[arg-type]
        await pipe.execute(raise_on_error=False)

    def deliveries(self, event: EventBase) -> int:
        """How many times the pending `event` was delivered, this time included."""
        held = self._pending.get(id(event))
        if not held:
            raise NotPendingError(self._group, event.event_id)
        return held[0][3]

    def __repr__(self) -> str:
        return f"<RedisDurableSubscription {self._group!r} {self._pattern!r} {self.consumer}>"


def _field(key: bytes, entry_id: bytes) -> bytes:
    return key + b"/" + entry_id


def _topic_in(fields: dict[bytes, bytes]) -> str:
    try:
        return decode_entry(fields, None).topic
    except EventFormatError:
        return ""
