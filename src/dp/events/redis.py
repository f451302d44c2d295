"""The Redis Streams event bus: `RedisBroker("redis://127.0.0.1:6379/0")` (`pip install dp[redis]`).

Keys, with the default prefix `dp` (see the README's "Redis Streams bus" for producers in
other languages):

    dp:stream:<topic>   one stream per topic; each entry's field `event` is the JSON wire format
    dp:topics           a set of the topic names, which pattern subscribers poll for new topics
    dp:groups           a hash: durable group -> {"pattern": ..., "start": <first stream id>}
    dp:dlq:<group>      the group's dead letters (fields event, topic, error, deliveries, ...)
    dp:replay:<group>   dead letters replayed to the group, read besides its topics
    dp:errors:<group>   a hash: "<stream key>/<entry id>" -> the last handler error

A durable subscription is a consumer group (of the same name) on every stream its pattern
matches. The subscriptions themselves live in `dp.events.redis_reader`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar, cast

from dp.backoff import Backoff
from dp.errors import (
    BusUnavailableError,
    EventFormatError,
    GroupError,
    InvalidArgumentError,
    InvalidBusURLError,
)
from dp.events.event import EventBase
from dp.events.ports import Broker, DeadLetter, StartFrom
from dp.events.redis_entries import (
    CONNECTION_ERRORS,
    Entries,
    StreamId,
    after,
    check_url,
    decode_entry,
    format_id,
    just_before,
    mask,
    parse_id,
    text,
)
from dp.events.redis_reader import RedisDurableSubscription, RedisSubscription
from dp.events.remote import RemoteBroker
from dp.events.topics import compile_pattern, validate_topic
from dp.logs import get_logger

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the Redis event bus needs redis-py; install it with: pip install 'dp[redis]'"
    ) from exc

__all__ = ["RedisBroker"]

_log = get_logger("dp.events.redis")
_BACKOFF = Backoff(first=0.02, cap=1.0)  # between tries to reach Redis
T = TypeVar("T")

# Publishes a batch in one command and one reply, where a pipeline of XADDs would spend most
# of its time in redis-py's per-command packing and parsing.
# KEYS: the batch's streams, each once, then the topics set.
# ARGV: the events' JSON joined by newlines (compact JSON never holds a raw newline), each
# event's index into KEYS (space-separated), then the topics new to this broker.
_PUBLISH = """
local ids, keys = {}, {}
for index in string.gmatch(ARGV[2], '%d+') do
    keys[#keys + 1] = KEYS[tonumber(index)]
end
local start = 1
for i = 1, #keys do
    local stop = string.find(ARGV[1], '\\n', start, true) or (#ARGV[1] + 1)
    ids[i] = redis.call('XADD', keys[i], '*', 'event', string.sub(ARGV[1], start, stop - 1))
    start = stop + 1
end
if #ARGV > 2 then
    redis.call('SADD', KEYS[#KEYS], unpack(ARGV, 3))
end
return ids
"""


class RedisBroker(RemoteBroker["RedisSubscription", "RedisDurableSubscription"]):
    """Topic publish/subscribe on Redis Streams, durable groups included.

    Args:
        url: `redis://[user:password@]host:port/db`, `rediss://...` (TLS) or
            `unix:///path/to/redis.sock?db=0`.
        prefix: the first segment of every key dp uses (several dp installations can share
            one Redis with different prefixes).
        maxlen: keep about this many entries per topic stream (None: no length bound).
        max_age: keep entries for about this many seconds (None: no age bound).
            Trimming never removes an entry a durable group has not acknowledged, nor one
            it has not been delivered yet, nor the topic's last (retained) event.
        retain_ttl: seconds a topic's last event counts as retained for `replay_retained`.
        topic_refresh: seconds between a pattern subscription's looks for new topics.
        publish_timeout: seconds a publish (or ack) waits for Redis to come back before
            raising `BusUnavailableError`.
        batch: entries read per call (and the prefetch of a subscription).
        trim_every: trim a stream after this many publishes to it from this broker.
        outbox: how many `publish_nowait` events may wait to be sent.
        client: an existing `redis.asyncio.Redis` to use instead of `url`.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "dp",
        maxlen: int | None = 100_000,
        max_age: float | None = None,
        retain_ttl: float | None = 3_600.0,
        topic_refresh: float = 0.5,
        publish_timeout: float = 10.0,
        batch: int = 256,
        trim_every: int = 1_000,
        outbox: int = 10_000,
        client: aioredis.Redis | None = None,
    ) -> None:
        super().__init__()
        self.url = check_url(url) if client is None else url
        if not prefix or ":" in prefix or not prefix.isprintable():
            raise InvalidBusURLError(url, f"prefix {prefix!r} must be non-empty, without ':'")
        for name, value in (("maxlen", maxlen), ("max_age", max_age)):
            if value is not None and not value > 0:
                raise InvalidArgumentError(name, value, "> 0 or None")
        self.prefix = prefix
        self.maxlen = maxlen
        self.max_age = max_age
        self.retain_ttl = retain_ttl
        self.topic_refresh = topic_refresh
        self.publish_timeout = publish_timeout
        self.batch = batch
        self.trim_every = trim_every
        self.outbox = outbox
        self.outbox_batch = batch
        self.send_timeout = publish_timeout
        self.redis: aioredis.Redis = client or aioredis.Redis.from_url(
            url,
            socket_connect_timeout=2.0,
            socket_timeout=10.0,
            retry=Retry(NoBackoff(), 0),  # dp retries itself, with backoff and a deadline
        )
        self._publish_script = self.redis.register_script(_PUBLISH)
        self.topics_key = f"{prefix}:topics"
        self.groups_key = f"{prefix}:groups"
        self._stream_prefix = f"{prefix}:stream:"
        self.last_ids: dict[str, bytes] = {}  # topic -> id of the last entry published here
        self._unsettled: dict[str, int] = {}  # topic -> publishes since its last trim
        self._trims: dict[str, asyncio.Task[None]] = {}
        self._clock_offset: tuple[float, float] | None = None  # see _clock()
        self._clock_lock = asyncio.Lock()
        self._outage = False

    # --- keys -------------------------------------------------------------------------------

    def stream_key(self, topic: str) -> str:
        """The stream of `topic`: `<prefix>:stream:<topic>`."""
        return self._stream_prefix + topic

    def topic_of(self, key: bytes | str) -> str:
        text = key.decode() if isinstance(key, bytes) else key
        return text[len(self._stream_prefix) :]

    def dlq_key(self, group: str) -> str:
        return f"{self.prefix}:dlq:{group}"

    def replay_key(self, group: str) -> str:
        return f"{self.prefix}:replay:{group}"

    def errors_key(self, group: str) -> str:
        return f"{self.prefix}:errors:{group}"

    # --- connection ---------------------------------------------------------------------------

    async def call(self, op: Callable[[aioredis.Redis], Awaitable[T]], *, wait: float | None) -> T:
        """Run `op`, retrying lost connections with backoff for up to `wait` seconds.

        `wait=None` retries until the broker closes (the subscriptions' readers do that).

        Raises:
            BusUnavailableError: Redis stayed unreachable for `wait` seconds.
        """
        started = time.monotonic()
        failures = 0
        while True:
            try:
                result = await op(self.redis)
            except CONNECTION_ERRORS as exc:
                waited = time.monotonic() - started
                failures += 1
                delay = _BACKOFF.delay(failures)
                if self._closed or (wait is not None and waited + delay > wait):
                    reason = str(exc) or type(exc).__name__
                    raise BusUnavailableError(self.url, waited, reason) from exc
                if not self._outage:
                    self._outage = True
                    _log.warning("bus.unreachable", url=self.url, error=str(exc))
                await asyncio.sleep(delay)
                continue
            if self._outage:
                self._outage = False
                _log.info("bus.reconnected", url=self.url)
            return result

    async def server_ms(self) -> int:
        """Redis's clock in milliseconds, estimated locally after the first call."""
        offset, _ = await self._clock()
        return int(time.time() * 1000 + offset)

    async def _clock(self) -> tuple[float, float]:
        """(Redis time minus local time, the estimate's uncertainty), in milliseconds.

        Of three `TIME` round trips the fastest is kept; Redis read its clock somewhere
        within it, so the offset is right to half the round trip.
        """
        async with self._clock_lock:
            if self._clock_offset is None:
                best: tuple[float, float] | None = None
                for _ in range(3):
                    before = time.time()
                    seconds, micros = await self.redis.time()
                    after = time.time()
                    sample = (
                        seconds * 1000 + micros / 1000 - (before + after) * 500,
                        (after - before) * 500,
                    )
                    if best is None or sample[1] < best[1]:
                        best = sample
                self._clock_offset = best
        assert self._clock_offset is not None
        return self._clock_offset

    async def start_id_at(self, local_time: float) -> str:
        """The id to read after so that entries added from `local_time` (local clock) on
        are included, whatever the skew between this machine's clock and Redis's: the cut
        errs early by the estimate's uncertainty, plus a millisecond."""
        offset, uncertainty = await self._clock()
        return just_before(int(local_time * 1000 + offset - uncertainty) - 1)

    # --- publishing ---------------------------------------------------------------------------

    async def probe(self) -> None:
        """PING Redis (retried like a publish, for up to `publish_timeout` seconds).

        Raises:
            BusUnavailableError: Redis stayed unreachable.
        """

        async def ping(client: aioredis.Redis) -> object:
            return await client.ping()

        await self.call(ping, wait=self.publish_timeout)

    async def _publish_many(self, events: Sequence[EventBase], *, topic: str | None) -> None:
        """Append each event to its topic's stream in one round trip (order kept per topic).

        During a Redis outage the call retries with backoff for `publish_timeout` seconds.
        A retry after a connection lost mid-command can store the event twice: delivery is
        at least once, and consumers drop duplicates by `event_id`.

        Raises:
            InvalidTopicError: malformed topic, or not the event's topic.
            BrokerClosedError: the broker is closed.
            BusUnavailableError: Redis stayed unreachable for `publish_timeout` seconds.
        """
        self._check_open(topic, events)
        entries = []
        new_topics = []
        for event in events:
            if event.topic not in self._known_topics:
                new_topics.append(event.topic)
            entries.append((self.stream_key(event.topic), event.to_json()))

        async def send(client: aioredis.Redis) -> list[bytes]:
            if len(entries) == 1 and not new_topics:
                return [cast(bytes, await client.xadd(entries[0][0], {"event": entries[0][1]}))]
            # One script call instead of a pipeline of XADDs: a command and a reply in all,
            # where redis-py's per-command packing and parsing would dominate.
            streams: dict[str, int] = {}
            for key, _ in entries:
                streams.setdefault(key, len(streams) + 1)
            keys = [*streams, self.topics_key]
            events = "\n".join(data for _, data in entries)
            where = " ".join(str(streams[key]) for key, _ in entries)
            script = self._publish_script
            return cast(list[bytes], await script(keys, [events, where, *new_topics], client))

        ids = await self.call(send, wait=self.publish_timeout)
        self._published += len(events)
        self._known_topics.update(new_topics)
        last = self.last_ids
        for event, entry_id in zip(events, ids, strict=False):
            last[event.topic] = entry_id
        if self.maxlen is not None or self.max_age is not None:
            for event in events:
                self._count_for_trim(event.topic)

    # --- subscribing --------------------------------------------------------------------------

    def _plain(self, pattern: str, replay_retained: bool) -> RedisSubscription:
        """Not durable: events published while nobody reads are only there as long as
        retention keeps them. Pattern subscriptions find new topics within `topic_refresh`
        seconds and read them from the subscription's start."""
        return RedisSubscription(self, pattern, replay_retained=replay_retained)

    def _group(
        self,
        pattern: str,
        group: str,
        consumer: str,
        claim_idle: float,
        max_deliveries: int,
        start: StartFrom,
    ) -> RedisDurableSubscription:
        """A Redis consumer group `group` per matching stream. A new group starts at
        `durable()` (with `start="earliest"`: at each stream's first entry) and is
        registered by the first read (a subscription never read creates no group). A group
        taken by another pattern raises `GroupError` from the first read."""
        return RedisDurableSubscription(
            self,
            pattern,
            group=group,
            consumer=consumer,
            claim_idle=claim_idle,
            max_deliveries=max_deliveries,
            start=start,
        )

    async def topics(self, pattern: str = "**") -> list[str]:
        """The known topics matching `pattern`, sorted."""
        matches = compile_pattern(pattern)
        names = await self.call(lambda r: r.smembers(self.topics_key), wait=self.publish_timeout)
        return sorted(t for t in (text(n) for n in names) if matches(t))

    # --- retained events ----------------------------------------------------------------------

    async def retained(
        self, pattern: str = "**", *, until: Callable[[str], str] | None = None
    ) -> list[EventBase]:
        """The last event of each topic matching `pattern` still within `retain_ttl`, oldest
        first (with `until`, the last entry up to the id `until(topic)` of each topic)."""
        if "*" in pattern:
            topics = await self.topics(pattern)
        else:
            topics = [validate_topic(pattern)]
        if not topics:
            return []

        async def last_entries(client: aioredis.Redis) -> list[Entries]:
            pipe = client.pipeline(transaction=False)
            for topic in topics:
                newest = "+" if until is None else until(topic)
                pipe.xrevrange(self.stream_key(topic), newest, "-", count=1)
            return cast(list[Entries], await pipe.execute())

        found = await self.call(last_entries, wait=self.publish_timeout)
        oldest = None if self.retain_ttl is None else await self.server_ms() - self.retain_ttl * 1e3
        events = []
        for topic, entries in zip(topics, found, strict=True):
            if not entries:
                continue
            entry_id, fields = entries[0]
            if oldest is not None and parse_id(entry_id)[0] < oldest:
                continue
            try:
                events.append((parse_id(entry_id), decode_entry(fields, topic)))
            except EventFormatError as exc:
                _log.warning("bus.bad_entry", topic=topic, entry=entry_id.decode(), error=str(exc))
        # Ids of different streams tie within a millisecond; the events' own time breaks it.
        events.sort(key=lambda pair: (pair[0][0], pair[1].timestamp, pair[0][1]))
        return [event for _, event in events]

    async def last_event(self, topic: str) -> EventBase | None:
        """The last event published on `topic` if it is still retained, else None."""
        events = await self.retained(topic)
        return events[0] if events else None

    # --- dead letters -------------------------------------------------------------------------

    async def group_info(self, group: str) -> dict[str, str]:
        """The group's registration: its pattern and start id.

        Raises:
            GroupError: no such group.
        """
        raw = await self.call(lambda r: r.hget(self.groups_key, group), wait=self.publish_timeout)
        if raw is None:
            names = await self.call(lambda r: r.hkeys(self.groups_key), wait=self.publish_timeout)
            known = ", ".join(sorted(text(n) for n in names)) or "none"
            raise GroupError(group, f"no such group in {self.url} (known: {known})")
        info: dict[str, str] = json.loads(raw)
        return info

    async def dead_letters(self, group: str, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest `limit` dead letters of `group`.

        Raises:
            GroupError: no such group.
        """
        await self.group_info(group)
        key = self.dlq_key(group)
        entries = cast(
            Entries,
            await self.call(lambda r: r.xrange(key, count=limit), wait=self.publish_timeout),
        )
        return [self._dead_letter(group, entry_id, fields) for entry_id, fields in entries]

    def _dead_letter(self, group: str, entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
        raw = fields.get(b"event", b"").decode(errors="replace")
        topic = fields.get(b"topic", b"").decode(errors="replace")
        try:
            event: EventBase | None = decode_entry(fields, None)
        except EventFormatError:
            event = None
        return DeadLetter(
            id=entry_id.decode(),
            group=group,
            topic=topic,
            event=event,
            raw=raw,
            error=fields.get(b"error", b"").decode(errors="replace"),
            deliveries=int(fields.get(b"deliveries", b"0")),
            failed_at=datetime.fromtimestamp(parse_id(entry_id)[0] / 1000, UTC),
        )

    async def replay_dead_letters(self, group: str, ids: Sequence[str] | None = None) -> int:
        """Deliver dead letters (these `ids`, or all) to `group` again; unknown ids are skipped.

        Each one moves, in one transaction, from `<prefix>:dlq:<group>` to
        `<prefix>:replay:<group>`, which the group's consumers read besides their topics.

        Raises:
            GroupError: no such group.
        """
        await self.group_info(group)
        dlq, replay = self.dlq_key(group), self.replay_key(group)

        async def move(client: aioredis.Redis) -> int:
            entries: Entries
            if ids is None:
                entries = cast(Entries, await client.xrange(dlq))
            else:
                pipe = client.pipeline(transaction=False)
                for letter_id in ids:
                    pipe.xrange(dlq, letter_id, letter_id)
                entries = [e for found in await pipe.execute() for e in found]
            if not entries:
                return 0
            pipe = client.pipeline(transaction=True)
            for entry_id, fields in entries:
                pipe.xadd(replay, {"event": fields.get(b"event", b"")})
                pipe.xdel(dlq, entry_id)
            await pipe.execute()
            return len(entries)

        moved = await self.call(move, wait=self.publish_timeout)
        if moved:
            _log.info("bus.dead_letters_replayed", group=group, count=moved)
        return moved

    # --- retention ----------------------------------------------------------------------------

    def _count_for_trim(self, topic: str) -> None:
        count = self._unsettled.get(topic, 0) + 1
        if count < self.trim_every or topic in self._trims:
            self._unsettled[topic] = count
            return
        self._unsettled[topic] = 0
        task = asyncio.get_running_loop().create_task(self._trim_quietly(topic))
        self._trims[topic] = task
        task.add_done_callback(lambda _: self._trims.pop(topic, None))

    async def _trim_quietly(self, topic: str) -> None:
        try:
            await self.trim(topic)
        except Exception as exc:  # trimming is housekeeping; the next publishes try again
            _log.warning("bus.trim_failed", topic=topic, error=str(exc))

    async def trim(self, topic: str) -> int:
        """Apply `maxlen`/`max_age` to the stream of `topic` now; return entries removed.

        The cut is the oldest of: the retention bound, each group's oldest pending entry,
        the entry after each group's last delivered one, the start of every registered group
        whose pattern matches but which has no consumer group on the stream yet, and the
        topic's last entry. Trimming is `MINID ~`, which removes whole internal nodes only,
        so it may keep a few entries more, never fewer.
        """
        key = self.stream_key(topic)
        redis = self.redis
        length = await redis.xlen(key)
        if not length:
            return 0
        targets: list[StreamId] = []
        if self.maxlen is not None and length > self.maxlen:
            excess = min(length - self.maxlen, 100_000)
            cut = cast(Entries, await redis.xrange(key, count=excess))
            targets.append(after(parse_id(cut[-1][0])))
        if self.max_age is not None:
            targets.append((int(await self.server_ms() - self.max_age * 1000), 0))
        if not targets:
            return 0
        bounds = [max(targets)]
        newest = cast(Entries, await redis.xrevrange(key, count=1))
        bounds.append(parse_id(newest[0][0]))
        groups = await redis.xinfo_groups(key)
        on_stream = set()
        for info in groups:
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            on_stream.add(name)
            bounds.append(after(parse_id(info["last-delivered-id"])))
            if info["pending"]:
                summary = await redis.xpending(key, name)
                bounds.append(parse_id(summary["min"]))
        for name, raw in (await redis.hgetall(self.groups_key)).items():
            registered = json.loads(raw)
            if text(name) not in on_stream and compile_pattern(registered["pattern"])(topic):
                bounds.append(after(parse_id(registered["start"])))
        removed: int = await redis.xtrim(key, minid=format_id(min(bounds)), approximate=True)
        return removed

    # --- life cycle ---------------------------------------------------------------------------

    def _outbox_name(self) -> str:
        return f"the Redis outbox of {mask(self.url)}"

    async def _disconnect(self) -> None:
        if self._trims:
            await asyncio.wait(list(self._trims.values()), timeout=5)
        await self.redis.aclose()

    def __repr__(self) -> str:
        return f"<RedisBroker {mask(self.url)} prefix={self.prefix!r}>"


if TYPE_CHECKING:

    def _satisfies_the_port(broker: RedisBroker) -> Broker:
        return broker  # mypy checks RedisBroker against the Broker protocol here
