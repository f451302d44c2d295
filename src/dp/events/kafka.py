"""The Kafka event bus: `KafkaBroker("kafka://host:9092,host2:9092")` (`pip install dp[kafka]`).

Mapping (see the README's "Kafka bus" for producers in other languages):

    topic          a dp topic is the Kafka topic of the same name (dp's names are valid ones)
    value          the event's JSON wire format (`EventBase.to_json`), UTF-8
    key            the event's `correlation_id`, else its `event_id`: the events of one run
                   or one business process stay in one partition, in order
    headers        `content-type: application/json` (read by nobody; for tools)
    timestamp      the producer's clock (CreateTime); plain subscriptions start from it

dp's own topics start with `_dp.` (patterns never match them):

    _dp.probe             empty records: `probe()` (dp serve's start, /health while failing)
    _dp.groups            durable groups: key = group, value = {"pattern", "start"} (ms)
    _dp.dlq.<group>       the group's dead letters; headers dp-topic, dp-error,
                          dp-deliveries; a record with header dp-replayed=<offset> marks one
                          replayed
    _dp.replay.<group>    dead letters replayed to the group, read besides its topics

A durable subscription is a Kafka consumer group of the same name, subscribed by regex, whose
offsets are committed only after the handler acknowledged (`dp.events.kafka_reader`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeAlias

from dp.errors import (
    BrokerClosedError,
    BusRefusedError,
    BusUnavailableError,
    EventFormatError,
    GroupError,
)
from dp.events.event import EventBase
from dp.events.kafka_options import bootstrap_servers, parse_kafka_url
from dp.events.ports import Broker, DeadLetter, StartFrom
from dp.events.remote import RemoteBroker
from dp.events.topics import validate_pattern
from dp.logs import get_logger

try:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import (
        BrokerResponseError,
        ClusterAuthorizationFailedError,
        KafkaError,
    )
    from aiokafka.partitioner import DefaultPartitioner, murmur2
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the Kafka event bus needs aiokafka; install it with: pip install 'dp[kafka]'"
    ) from exc

if TYPE_CHECKING:
    from dp.events.kafka_reader import KafkaDurableSubscription, KafkaSubscription

__all__ = ["KafkaBroker", "bootstrap_servers", "pattern_regex"]

_log = get_logger("dp.events.kafka")
INTERNAL = "_dp."
GROUPS_TOPIC = "_dp.groups"
PROBE_TOPIC = "_dp.probe"
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
_TOPIC_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS
_UNSUPPORTED_COMPRESSION = 76  # UNSUPPORTED_COMPRESSION_TYPE (aiokafka has no class for it)


def pattern_regex(pattern: str) -> str:
    """The regular expression over whole topic names that matches what `pattern` matches."""
    validate_pattern(pattern)
    parts: list[str] = []
    concrete = False  # whether a segment was emitted, so the next needs a dot
    previous = ""
    for segment in pattern.split("."):
        if segment == "**":
            if previous != "**":
                parts.append(r"(?:\.[^.]+)*" if concrete else r"(?:[^.]+\.)*")
        else:
            if concrete:
                parts.append(r"\.")
            parts.append("[^.]+" if segment == "*" else re.escape(segment))
            concrete = True
        previous = segment
    body = "".join(parts)
    if not concrete:  # only '**': every topic
        body = r"[^.]+(?:\.[^.]+)*"
    return body


class KafkaBroker(RemoteBroker["KafkaSubscription", "KafkaDurableSubscription"]):
    """Topic publish/subscribe on Kafka (or a Kafka-protocol broker), durable groups included.

    Args:
        url: `kafka://host:port[,host2:port2][?option=value&...]`: the bootstrap servers and
            the options of `dp.events.kafka_options` (acks, idempotence, compression,
            linger, request_timeout, partitions, replication, topic_refresh,
            session_timeout, fetch_wait, prefetch, outbox, namespace). The URL is the only
            way to set them, so `--bus`, `DP_BUS_URL` and `dp.toml` reach every one.

    Raises:
        InvalidBusURLError: a malformed URL, or an option with a bad value (named).
    """

    def __init__(self, url: str = "kafka://127.0.0.1:9092") -> None:
        super().__init__()
        self.url = url
        self.bootstrap, self.options = parse_kafka_url(url)
        options = self.options
        self.namespace = options.namespace
        self.groups_topic = f"{self.namespace}{GROUPS_TOPIC}"
        self.acks = options.producer_acks
        self.idempotence = options.idempotence
        self.compression = options.compression
        self.linger = options.linger
        self.request_timeout = options.request_timeout
        self.partitions = options.partitions
        self.replication = options.replication
        self.topic_refresh = options.topic_refresh
        self.session_timeout = options.session_timeout
        self.prefetch = options.prefetch
        self.fetch_wait = options.fetch_wait
        self.outbox = options.outbox
        self.outbox_batch = 512
        self.send_timeout = self.request_timeout
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._connecting = asyncio.Lock()
        self._admin_lock = asyncio.Lock()  # its own: the producer's is held while it starts

    # --- names ----------------------------------------------------------------------------

    def kafka_topic(self, topic: str) -> str:
        """The Kafka topic of the dp topic `topic`: `<namespace><topic>`."""
        return self.namespace + topic

    def dp_topic(self, name: str) -> str | None:
        """The dp topic of the Kafka topic `name`; None for other namespaces and dp's own."""
        if not name.startswith(self.namespace):
            return None
        topic = name[len(self.namespace) :]
        return None if topic.startswith(INTERNAL) else topic

    def dlq_topic(self, group: str) -> str:
        return f"{self.namespace}{INTERNAL}dlq.{group}"

    def replay_topic(self, group: str) -> str:
        return f"{self.namespace}{INTERNAL}replay.{group}"

    # --- connection ---------------------------------------------------------------------------

    def client_options(self) -> dict[str, object]:
        """Options every aiokafka client of this broker shares."""
        return {
            "bootstrap_servers": self.bootstrap,
            "request_timeout_ms": int(self.request_timeout * 1000),
            "metadata_max_age_ms": max(int(self.topic_refresh * 1000), 50),
        }

    async def producer(self) -> AIOKafkaProducer:
        """The broker's producer, started on first use.

        Raises:
            BusRefusedError: the broker answered, but refused the producer's settings
                (e.g. idempotence); the message names the URL option to change.
            BusUnavailableError: the broker did not answer within `request_timeout`.
        """
        if self._producer is None:
            async with self._connecting:
                if self._producer is None:
                    producer = AIOKafkaProducer(
                        **self.client_options(),
                        acks=self.acks,
                        enable_idempotence=self.idempotence,
                        compression_type=self.compression,
                        linger_ms=int(self.linger * 1000),
                        partitioner=partition_of,
                    )
                    await self._start(producer)
                    self._producer = producer
        return self._producer

    async def _start(self, client: AIOKafkaProducer | AIOKafkaConsumer) -> None:
        started = time.monotonic()
        try:
            await asyncio.wait_for(client.start(), self.request_timeout)
        except asyncio.CancelledError:  # the subscription stopped while connecting
            await client.stop()
            raise
        except (KafkaError, OSError, TimeoutError) as exc:
            await client.stop()
            raise self._unavailable(exc, started, starting=client) from exc

    def _unavailable(
        self, exc: BaseException, started: float, *, starting: object = None
    ) -> BusUnavailableError:
        """The error for `exc`: a refusal naming the option to change when the broker
        answered with one, else unreachable."""
        waited = time.monotonic() - started
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, BrokerResponseError):
            if self.idempotence and (
                isinstance(starting, AIOKafkaProducer)
                or isinstance(exc, ClusterAuthorizationFailedError)
            ):
                return BusRefusedError(
                    self.url,
                    f"the broker refused idempotent producers (InitProducerId: {reason})",
                    "add ?idempotence=false to the bus URL",
                )
            if exc.errno == _UNSUPPORTED_COMPRESSION and self.compression:
                return BusRefusedError(
                    self.url,
                    f"the broker refused compression={self.compression} ({reason})",
                    "use another ?compression= in the bus URL, or none",
                )
        return BusUnavailableError(self.url, waited, reason)

    async def consumer(self, **options: object) -> AIOKafkaConsumer:
        """A started consumer with this broker's options plus `options`."""
        options.setdefault("fetch_max_wait_ms", int(self.fetch_wait * 1000))
        consumer = AIOKafkaConsumer(**self.client_options(), **options)
        await self._start(consumer)
        return consumer

    async def admin(self) -> AIOKafkaAdminClient:
        """The broker's admin client, started on first use (one, under its own lock:
        concurrent first publishes must not each start one and leak all but the last)."""
        if self._admin is None:
            async with self._admin_lock:
                if self._admin is None:
                    admin = AIOKafkaAdminClient(
                        bootstrap_servers=self.bootstrap,
                        request_timeout_ms=int(self.request_timeout * 1000),
                    )
                    started = time.monotonic()
                    try:
                        await asyncio.wait_for(admin.start(), self.request_timeout)
                    except BaseException as exc:
                        await admin.close()  # its half-open connections too
                        if isinstance(exc, KafkaError | OSError | TimeoutError):
                            raise self._unavailable(exc, started) from exc
                        raise
                    self._admin = admin
        return self._admin

    async def ensure_topics(self, *topics: str) -> None:
        """Create the `topics` this broker has not seen yet (existing ones are fine)."""
        missing = [t for t in topics if t not in self._known_topics]
        if not missing:
            return
        admin = await self.admin()
        started = time.monotonic()
        try:
            response = await admin.create_topics(
                [NewTopic(t, self.partitions, self.replication) for t in missing]
            )
        except (KafkaError, OSError) as exc:
            raise self._unavailable(exc, started) from exc
        for name, code, *rest in response.topic_errors:
            if code not in (0, _TOPIC_EXISTS):
                message = rest[0] if rest else ""
                raise BusUnavailableError(
                    self.url,
                    time.monotonic() - started,
                    f"cannot create topic {name!r}: error {code} {message}",
                )
        self._known_topics.update(missing)

    # --- publishing ---------------------------------------------------------------------------

    async def _publish_many(self, events: Sequence[EventBase], *, topic: str | None) -> None:
        """Produce the events in order (batched by the producer) and wait for the broker's
        acknowledgement of all of them (`acks`).

        Raises:
            InvalidTopicError: malformed topic, or not the event's topic.
            BrokerClosedError: the broker is closed.
            BusUnavailableError: Kafka did not acknowledge within `request_timeout`.
        """
        self._check_open(topic, events)
        await self.ensure_topics(*{self.kafka_topic(e.topic) for e in events})
        producer = await self.producer()
        started = time.monotonic()
        try:
            ns = self.namespace
            futures = [await producer.send(ns + e.topic, **wire(e)) for e in events]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise self._unavailable(exc, started) from exc
        self._published += len(events)

    async def probe(self) -> None:
        """Produce one empty record to `_dp.probe` (which no pattern matches): the producer
        starts (the idempotent one asks for a producer id) and the broker takes a write.

        Raises:
            BusRefusedError: the broker refuses these producer settings, naming the option.
            BusUnavailableError: the broker did not answer within `request_timeout`.
        """
        if self._closed:
            raise BrokerClosedError(PROBE_TOPIC)
        topic = f"{self.namespace}{PROBE_TOPIC}"
        await self.ensure_topics(topic)
        producer = await self.producer()
        started = time.monotonic()
        try:
            await producer.send_and_wait(topic, value=b"")
        except KafkaError as exc:
            raise self._unavailable(exc, started) from exc

    # --- subscribing --------------------------------------------------------------------------

    def _plain(self, pattern: str, replay_retained: bool) -> KafkaSubscription:
        """The subscription starts, on its first read, at the first record of each matching
        partition whose timestamp is at or after `subscribe()` (Kafka's offsets-for-times),
        so clocks of producers and consumers must agree to within the events' spacing.
        Pattern subscriptions see new topics within `topic_refresh` seconds and read them
        from the same point."""
        from dp.events.kafka_reader import KafkaSubscription

        return KafkaSubscription(self, pattern, replay_retained=replay_retained)

    def _group(
        self,
        pattern: str,
        group: str,
        consumer: str,
        claim_idle: float,
        max_deliveries: int,
        start: StartFrom,
    ) -> KafkaDurableSubscription:
        """The Kafka consumer group `group`: registered (in `_dp.groups`) by its first read, it
        starts with the records from `durable()` on (`start="earliest"`: from each
        partition's first record). Offsets are committed after `ack` only.
        An event pending longer than `claim_idle` is delivered again by this consumer; a
        consumer that leaves or stops heartbeating hands its partitions to the others (a
        rebalance), which resume from the last commit."""
        from dp.events.kafka_reader import KafkaDurableSubscription

        return KafkaDurableSubscription(
            self,
            pattern,
            group=group,
            consumer=consumer,
            claim_idle=claim_idle,
            max_deliveries=max_deliveries,
            start=start,
        )

    # --- reading whole topics -----------------------------------------------------------------

    async def read_topic(self, topic: str) -> list[tuple[int, Record]]:
        """Every record of the (single-partition) internal `topic`: (offset, record) pairs;
        empty when the topic does not exist."""
        consumer = await self.consumer(enable_auto_commit=False)
        try:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                return []
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            await consumer.seek_to_beginning(*tps)
            records: list[tuple[int, Record]] = []
            remaining = {tp for tp in tps if ends[tp] > 0}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, messages in batch.items():
                    for message in messages:
                        records.append((message.offset, message))
                        if message.offset + 1 >= ends[tp]:
                            remaining.discard(tp)
            return records
        finally:
            await consumer.stop()

    async def groups(self) -> dict[str, dict[str, object]]:
        """The registered durable groups: name -> {"pattern": ..., "start": ms}."""
        found: dict[str, dict[str, object]] = {}
        for _, record in await self.read_topic(self.groups_topic):
            if record.key is None or record.value is None:
                continue
            info = json.loads(record.value)
            name = record.key.decode()
            if name not in found:  # the first registration wins
                found[name] = info
        return found

    async def register_group(self, group: str, pattern: str, start_ms: int) -> int:
        """Register `group` on `pattern` unless it is; return the group's start (ms).

        Raises:
            GroupError: the group is registered with another pattern.
        """
        info = (await self.groups()).get(group)
        if info is None:
            await self.ensure_topics(self.groups_topic)
            producer = await self.producer()
            value = json.dumps({"pattern": pattern, "start": start_ms}).encode()
            await producer.send_and_wait(self.groups_topic, value=value, key=group.encode())
            info = (await self.groups())[group]  # a concurrent registration may have won
        if info["pattern"] != pattern:
            raise GroupError(
                group,
                f"it exists with pattern {info['pattern']!r}, not {pattern!r}; use another "
                "group name for another pattern",
            )
        start = info["start"]
        assert isinstance(start, int)
        return start

    async def _group_info(self, group: str) -> dict[str, object]:
        groups = await self.groups()
        if group not in groups:
            known = ", ".join(sorted(groups)) or "none"
            raise GroupError(group, f"no such group in {self.url} (known: {known})")
        return groups[group]

    # --- dead letters -------------------------------------------------------------------------

    async def bury(self, group: str, topic: str, raw: bytes, error: str, deliveries: int) -> None:
        """Produce a dead letter of `group` (raw record value, its topic and last error)."""
        dlq = self.dlq_topic(group)
        await self.ensure_topics(dlq)
        producer = await self.producer()
        headers = [
            ("dp-topic", topic.encode()),
            ("dp-error", error.encode()),
            ("dp-deliveries", str(deliveries).encode()),
        ]
        await producer.send_and_wait(dlq, value=raw, headers=headers)
        _log.warning("bus.dead_letter", group=group, topic=topic, error=error)

    async def _letters(self, group: str) -> list[DeadLetter]:
        await self._group_info(group)
        records = await self.read_topic(self.dlq_topic(group))
        replayed: set[str] = set()
        letters: list[DeadLetter] = []
        for offset, record in records:
            headers = dict(record.headers or ())
            if headers.get("dp-replayed", b"") != b"":
                replayed.add(headers["dp-replayed"].decode())
                continue
            raw = (record.value or b"").decode(errors="replace")
            try:
                event: EventBase | None = EventBase.from_json(raw)
            except EventFormatError:
                event = None
            letters.append(
                DeadLetter(
                    id=str(offset),
                    group=group,
                    topic=headers.get("dp-topic", b"").decode(errors="replace"),
                    event=event,
                    raw=raw,
                    error=headers.get("dp-error", b"").decode(errors="replace"),
                    deliveries=int(headers.get("dp-deliveries", b"0") or 0),
                    failed_at=datetime.fromtimestamp(record.timestamp / 1000, UTC),
                )
            )
        return [letter for letter in letters if letter.id not in replayed]

    async def dead_letters(self, group: str, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest `limit` dead letters of `group` (read from `_dp.dlq.<group>`).

        Raises:
            GroupError: no such group.
        """
        return (await self._letters(group))[:limit]

    async def replay_dead_letters(self, group: str, ids: Sequence[str] | None = None) -> int:
        """Deliver dead letters (these `ids`, or all) to `group` again; unknown ids are skipped.

        Each is produced to `_dp.replay.<group>`, which the group reads besides its topics,
        and marked replayed in `_dp.dlq.<group>`.

        Raises:
            GroupError: no such group.
        """
        letters = await self._letters(group)
        chosen = [x for x in letters if ids is None or x.id in set(ids)]
        if not chosen:
            return 0
        replay, dlq = self.replay_topic(group), self.dlq_topic(group)
        await self.ensure_topics(replay, dlq)
        producer = await self.producer()
        for letter in chosen:
            await producer.send_and_wait(replay, value=letter.raw.encode())
            await producer.send_and_wait(
                dlq, value=b"", headers=[("dp-replayed", letter.id.encode())]
            )
        _log.info("bus.dead_letters_replayed", group=group, count=len(chosen))
        return len(chosen)

    # --- life cycle ---------------------------------------------------------------------------

    async def _disconnect(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        if self._admin is not None:
            await self._admin.close()

    def __repr__(self) -> str:
        return f"<KafkaBroker {self.bootstrap}>"


_by_key = DefaultPartitioner()


def partition_of(key: bytes | None, partitions: list[int], available: list[int]) -> int:
    """Kafka's default placement (murmur2 of the key, as the Java client does), without
    hashing when the topic has one partition, and with the hashes of recent keys (a run's
    events share their correlation id) remembered: aiokafka's murmur2 is pure Python."""
    if len(partitions) == 1:
        return partitions[0]
    if key is None:
        placed: int = _by_key(key, partitions, available)
        return placed
    return partitions[_key_hash(key) % len(partitions)]


@functools.lru_cache(maxsize=4096)
def _key_hash(key: bytes) -> int:
    hashed: int = murmur2(key) & 0x7FFFFFFF
    return hashed


def wire(event: EventBase) -> dict[str, object]:
    """The producer arguments of `event`: value, key and headers."""
    return {
        "value": event.to_json().encode(),
        "key": (event.correlation_id or event.event_id).encode(),
        "headers": [("content-type", b"application/json")],
    }


if TYPE_CHECKING:

    def _satisfies_the_port(broker: KafkaBroker) -> Broker:
        return broker  # mypy checks KafkaBroker against the Broker protocol here
