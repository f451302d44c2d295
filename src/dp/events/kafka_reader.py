"""The Kafka bus's subscriptions: plain ones (a group-less consumer assigning the matching
partitions itself) and durable ones (a Kafka consumer group subscribed by regex).

A durable subscription commits, per partition, the offset of its oldest record not yet
settled (acked, or dead-lettered), so a crash or a rebalance re-delivers exactly what was not
handled: at least once. Commits are coalesced in the reader (within `_COMMIT_EVERY`
seconds of an ack), sent in the background while the reader fetches on, and flushed when the
subscription stops or loses a partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError

from dp.errors import EventFormatError, NotPendingError
from dp.events.event import EventBase
from dp.events.groups import not_acknowledged
from dp.events.kafka import INTERNAL, Record, pattern_regex
from dp.events.ports import StartFrom
from dp.events.remote import BufferedReader
from dp.logs import get_logger

if TYPE_CHECKING:
    from dp.events.kafka import KafkaBroker

__all__ = ["KafkaDurableSubscription", "KafkaSubscription"]

_log = get_logger("dp.events.kafka")
_COMMIT_EVERY = 0.1  # seconds: how long an acked offset may wait to be committed


async def start_offsets(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition], start_ms: int
) -> dict[TopicPartition, int]:
    """Where to start reading each partition for the records from `start_ms` on: Kafka's
    offsets-for-times, else the end (read first, so a record appended meanwhile is kept).

    Callers still skip records older than `start_ms` until the first newer one: brokers that
    answer the lookup loosely (Tansu answers the partition's first offset) stay correct.
    """
    tps = list(partitions)
    if not tps:
        return {}
    ends = await consumer.end_offsets(tps)
    found = await consumer.offsets_for_times(dict.fromkeys(tps, start_ms))
    offsets = {}
    for tp in tps:
        hit = found.get(tp)
        offsets[tp] = ends[tp] if hit is None else min(hit.offset, ends[tp])
    return offsets


def decode(record: Record, *, own_topic: str | None) -> EventBase:
    """The event in a record; with `own_topic`, it must say that topic.

    Raises:
        EventFormatError: the value is not a dp event, or names another topic.
    """
    if record.value is None:
        raise EventFormatError(f"record {record.topic}/{record.partition}@{record.offset} is empty")
    event = EventBase.from_json(record.value)
    if own_topic is not None and event.topic != own_topic:
        raise EventFormatError(
            f"event {event.event_id} says topic {event.topic!r} but is on the Kafka topic "
            f"{record.topic!r}; produce it to its own topic"
        )
    return event


class _Reader(BufferedReader[Record]):
    """What both subscriptions share: the consumer the reader task reads with."""

    def __init__(self, broker: KafkaBroker, pattern: str) -> None:
        super().__init__(broker, pattern, broker.prefetch)
        self._broker = broker
        self._start_ms = int(time.time() * 1000) - 1
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping: asyncio.Task[None] | None = None

    def _release(self) -> None:
        """Disconnect in the background; the broker's `close()` waits for that, as the
        subscription stays among its live ones until it is done."""
        try:
            self._shut_down()
        except RuntimeError:  # no running loop: nothing was started
            super()._release()

    async def stop(self) -> None:
        """Stop reading, wait for the reader, settle what was acked, disconnect (once)."""
        await self._shut_down()

    def _shut_down(self) -> asyncio.Task[None]:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._shutdown())
        return self._stopping

    async def _shutdown(self) -> None:
        try:
            await BufferedReader.stop(self)
            await self._settle_all()
            await self._disconnect()
        finally:
            BufferedReader._release(self)

    async def _settle_all(self) -> None:
        """What a subscription does between its reader's end and the disconnect."""

    async def _disconnect(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()


class KafkaSubscription(_Reader):
    """A plain subscription: every matching partition, from the subscription's start."""

    def __init__(self, broker: KafkaBroker, pattern: str, *, replay_retained: bool) -> None:
        super().__init__(broker, pattern)
        self._replay_retained = replay_retained

    async def __anext__(self) -> EventBase:
        while True:
            record = await self._next_item()
            if record is None:
                continue
            try:
                return decode(record, own_topic=self._broker.dp_topic(record.topic))
            except EventFormatError as exc:
                _log.warning("bus.bad_record", topic=record.topic, error=str(exc))

    async def _read(self) -> None:
        broker = self._broker
        consumer = await broker.consumer(enable_auto_commit=False)
        self._consumer = consumer
        assigned: set[TopicPartition] = set()
        skip: dict[TopicPartition, int] = {}  # retained records already yielded
        early: set[TopicPartition] = set()  # not yet past a record from start_ms on
        first = True
        refreshed = 0.0
        while not self._closed:
            if time.monotonic() - refreshed >= broker.topic_refresh:
                refreshed = time.monotonic()
                new = await self._new_partitions(consumer, assigned)
                if new:
                    consumer.assign(list(assigned | new))
                    if first and self._replay_retained:
                        skip = await self._yield_retained(consumer, new)
                    for tp, offset in (await start_offsets(consumer, new, self._start_ms)).items():
                        consumer.seek(tp, offset)
                    assigned |= new
                    early |= new
                first = False
            if not assigned:
                await asyncio.sleep(broker.topic_refresh)
                continue
            batch = await consumer.getmany(timeout_ms=int(broker.topic_refresh * 1000))
            for tp, records in batch.items():
                for record in records:
                    if tp in early:
                        if record.timestamp < self._start_ms:
                            continue
                        early.discard(tp)
                    if record.offset > skip.get(tp, -1):
                        self._buffer.append(record)
            await self._fill(())

    async def _new_partitions(
        self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]
    ) -> set[TopicPartition]:
        # The fresh metadata itself: `consumer.partitions_for_topic` only knows the topics
        # the consumer already uses.
        try:
            cluster = await consumer._client.fetch_all_metadata()
        except KafkaError as exc:  # the broker is down: keep reading what is assigned,
            _log.warning("bus.metadata_failed", pattern=self._pattern, error=str(exc))
            return set()  # and look again at the next refresh (aiokafka reconnects)
        new = set()
        for topic in cluster.topics():
            name = self._broker.dp_topic(topic)
            if name is None or not self._matches(name):
                continue
            for partition in cluster.partitions_for_topic(topic) or ():
                tp = TopicPartition(topic, partition)
                if tp not in assigned:
                    new.add(tp)
        return new

    async def _yield_retained(
        self, consumer: AIOKafkaConsumer, partitions: set[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Queue each topic's last record (the newest of its partitions' last ones), oldest
        first; return the offsets queued, which the live reading skips."""
        ends = await consumer.end_offsets(list(partitions))
        wanted = {tp: end - 1 for tp, end in ends.items() if end > 0}
        for tp, offset in wanted.items():
            consumer.seek(tp, offset)
        last: dict[TopicPartition, Record] = {}
        deadline = time.monotonic() + self._broker.request_timeout
        while len(last) < len(wanted) and time.monotonic() < deadline:
            batch = await consumer.getmany(*[tp for tp in wanted if tp not in last], timeout_ms=200)
            for tp, records in batch.items():
                for record in records:
                    if record.offset == wanted[tp]:
                        last[tp] = record
        newest: dict[str, Record] = {}
        for record in last.values():
            if record.topic not in newest or record.timestamp > newest[record.topic].timestamp:
                newest[record.topic] = record
        # Kafka's timestamps are milliseconds: events published within one tie, and the
        # event's own (microsecond) timestamp orders them, oldest first
        await self._fill(sorted(newest.values(), key=lambda r: (r.timestamp, _event_time(r))))
        return {tp: record.offset for tp, record in last.items()}


@dataclass(slots=True)
class _Pending:
    """One record a durable subscription handed out (or will again)."""

    tp: TopicPartition
    epoch: int
    record: Record
    event: EventBase
    deliveries: int = 0
    delivered_at: float = 0.0
    error: str = ""


@dataclass(slots=True)
class _Partition:
    """A partition this consumer owns, between two rebalances."""

    epoch: int
    fetched: int  # the offset after the last record read
    committed: int
    unsettled: set[int] = field(default_factory=set)
    since: int | None = None  # skip records older than this (ms) until a newer one

    def position(self) -> int:
        """What to commit: the oldest unsettled offset, else the next one to read."""
        return min(self.unsettled) if self.unsettled else self.fetched


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, subscription: KafkaDurableSubscription) -> None:
        self.subscription = subscription

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.subscription._revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.subscription._assigned(assigned)


class KafkaDurableSubscription(_Reader):
    """One member of the Kafka consumer group `group`. See `DurableSubscription`."""

    def __init__(
        self,
        broker: KafkaBroker,
        pattern: str,
        *,
        group: str,
        consumer: str,
        claim_idle: float,
        max_deliveries: int,
        start: StartFrom = "now",
    ) -> None:
        super().__init__(broker, pattern)
        if start == "earliest":
            self._start_ms = 0  # a new group reads each partition from its first record
        self._group = group
        self._name = consumer
        self.claim_idle = claim_idle
        self.max_deliveries = max_deliveries
        self._replay_topic = broker.replay_topic(group)
        self._group_start = self._start_ms
        self._pending: dict[str, _Pending] = {}  # event id -> delivery, oldest first
        self._retry: deque[_Pending] = deque()
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._epochs = 0
        self._committing = asyncio.Lock()
        self._committer: asyncio.Task[None] | None = None
        self._dirty = False

    @property
    def group(self) -> str:
        return self._group

    # --- iteration ----------------------------------------------------------------------------

    async def __anext__(self) -> EventBase:
        while True:
            if self._retry:
                return self._deliver(self._retry.popleft())
            due = self._due()
            if due is not None:
                del self._pending[due.event.event_id]
                if due.deliveries >= self.max_deliveries:
                    error = due.error or not_acknowledged(self.claim_idle, due.deliveries)
                    await self._bury(due.tp, due.record, error, due.deliveries)
                    continue
                return self._deliver(due)
            record = await self._next_item(self._wait())
            if record is None:
                continue
            tp = TopicPartition(record.topic, record.partition)
            owned = self._partitions.get(tp)
            if owned is None or record.offset not in owned.unsettled:
                continue  # read before a rebalance took the partition away
            replayed = record.topic == self._replay_topic
            try:
                own = None if replayed else self._broker.dp_topic(record.topic)
                event = decode(record, own_topic=own)
            except EventFormatError as exc:
                await self._bury(tp, record, str(exc), 1)
                continue
            if (not replayed and not self._matches(event.topic)) or (
                event.event_id in self._pending
            ):
                self._settle(tp, record.offset)  # not ours, or a duplicate of a pending one
                continue
            return self._deliver(_Pending(tp, owned.epoch, record, event))

    def _deliver(self, pending: _Pending) -> EventBase:
        pending.deliveries += 1
        pending.delivered_at = time.monotonic()
        self._pending[pending.event.event_id] = pending
        return pending.event

    def _due(self) -> _Pending | None:
        for pending in self._pending.values():
            if time.monotonic() - pending.delivered_at >= self.claim_idle:
                return pending
            return None
        return None

    def _wait(self) -> float | None:
        for pending in self._pending.values():
            return max(0.0, pending.delivered_at + self.claim_idle - time.monotonic()) + 0.001
        return None

    # --- settling -----------------------------------------------------------------------------

    async def ack(self, *events: EventBase) -> None:
        """Settle `events`; their offsets are committed within `_COMMIT_EVERY` seconds (at
        once when the subscription stops), once every older record is settled too."""
        for event in events:
            if event.event_id not in self._pending:
                raise NotPendingError(self._group, event.event_id)
        for event in events:
            pending = self._pending.pop(event.event_id)
            self._settle(pending.tp, pending.record.offset, pending.epoch)

    async def nack(self, event: EventBase, error: str) -> None:
        """Deliver `event` again at once, or dead-letter it after `max_deliveries`."""
        pending = self._pending.pop(event.event_id, None)
        if pending is None:
            raise NotPendingError(self._group, event.event_id)
        pending.error = error
        if pending.deliveries >= self.max_deliveries:
            await self._bury(pending.tp, pending.record, error, pending.deliveries)
        else:
            self._retry.append(pending)

    async def dead_letter(self, event: EventBase, error: str) -> None:
        """`event` is poison: dead-letter its record now, with `error` as the reason."""
        pending = self._pending.pop(event.event_id, None)
        if pending is None:
            raise NotPendingError(self._group, event.event_id)
        await self._bury(pending.tp, pending.record, error, pending.deliveries)

    async def keep(self) -> None:
        """Reset the idle time of the events this consumer holds, so that none is delivered
        again (or dead-lettered as never acknowledged) while its handler waits."""
        now = time.monotonic()
        for event_id in list(self._pending):
            pending = self._pending.pop(event_id)
            pending.delivered_at = now
            self._pending[event_id] = pending  # to the end: oldest delivery first

    def deliveries(self, event: EventBase) -> int:
        """How many times this consumer delivered the pending `event` (a rebalance starts
        the count again: Kafka keeps offsets, not per-record counts)."""
        pending = self._pending.get(event.event_id)
        return 0 if pending is None else pending.deliveries

    async def _bury(self, tp: TopicPartition, record: Record, error: str, deliveries: int) -> None:
        topic = self._broker.dp_topic(record.topic) or record.topic
        await self._broker.bury(self._group, topic, record.value or b"", error, deliveries)
        self._settle(tp, record.offset)

    def _settle(self, tp: TopicPartition, offset: int, epoch: int | None = None) -> None:
        owned = self._partitions.get(tp)
        if owned is None or (epoch is not None and owned.epoch != epoch):
            return  # the partition moved on: its new owner re-delivers from the last commit
        owned.unsettled.discard(offset)
        self._dirty = True

    def _commit_soon(self) -> None:
        """Commit in the background, so the reader keeps fetching during the round trip."""
        if self._dirty and (self._committer is None or self._committer.done()):
            self._committer = asyncio.get_running_loop().create_task(self._commit())

    async def _commit(self) -> None:
        async with self._committing:  # one at a time, so a commit never goes backwards
            consumer = self._consumer
            if consumer is None or not self._dirty:
                return
            self._dirty = False
            offsets = {
                tp: owned.position()
                for tp, owned in self._partitions.items()
                if owned.position() > owned.committed
            }
            if not offsets:
                return
            try:
                await consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:
                _log.warning("bus.commit_failed", group=self._group, error=str(exc))
                return  # after a rebalance the new owners re-deliver from the last commit
            for tp, offset in offsets.items():
                if tp in self._partitions:
                    self._partitions[tp].committed = offset

    # --- reading ------------------------------------------------------------------------------

    async def _read(self) -> None:
        broker = self._broker
        self._group_start = await broker.register_group(self._group, self._pattern, self._start_ms)
        await broker.ensure_topics(self._replay_topic)
        session = int(broker.session_timeout * 1000)
        consumer = await broker.consumer(
            group_id=broker.namespace + self._group,
            client_id=self._name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session,
            heartbeat_interval_ms=max(session // 3, 10),
            rebalance_timeout_ms=session,
            max_poll_interval_ms=max(int(self.claim_idle * 1000) * 10, 300_000),
        )
        self._consumer = consumer
        ns = re.escape(broker.namespace)
        topics = rf"^{ns}(?!{re.escape(INTERNAL)})(?:{pattern_regex(self._pattern)})$"
        replay = rf"^{re.escape(self._replay_topic)}$"
        consumer.subscribe(pattern=f"{topics}|{replay}", listener=_Rebalance(self))
        last_commit = time.monotonic()
        while not self._closed:
            batch = await consumer.getmany(timeout_ms=int(_COMMIT_EVERY * 1000))
            for tp, records in batch.items():
                owned = self._partitions.get(tp)
                if owned is None:
                    continue
                for record in records:
                    if owned.since is not None:
                        if record.timestamp < owned.since:
                            owned.fetched = record.offset + 1
                            continue
                        owned.since = None
                    owned.unsettled.add(record.offset)
                    owned.fetched = record.offset + 1
                    self._buffer.append(record)
            await self._fill(())
            if time.monotonic() - last_commit >= _COMMIT_EVERY:
                last_commit = time.monotonic()
                self._commit_soon()

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        fresh = []
        for tp in assigned:
            committed = await consumer.committed(tp)
            self._epochs += 1
            if committed is None:
                fresh.append(tp)
                self._partitions[tp] = _Partition(self._epochs, 0, -1)
            else:
                self._partitions[tp] = _Partition(self._epochs, committed, committed)
        for tp, offset in (await start_offsets(consumer, fresh, self._group_start)).items():
            consumer.seek(tp, offset)
            self._partitions[tp].fetched = offset
            self._partitions[tp].since = self._group_start

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        self._dirty = True
        await self._commit()
        for tp in revoked:
            self._partitions.pop(tp, None)
        kept = [r for r in self._buffer if TopicPartition(r.topic, r.partition) not in revoked]
        self._buffer.clear()
        self._buffer.extend(kept)
        self._pending = {k: p for k, p in self._pending.items() if p.tp not in revoked}
        self._retry = deque(p for p in self._retry if p.tp not in revoked)

    async def _settle_all(self) -> None:
        """Commit what was settled before leaving the group."""
        self._dirty = True
        with contextlib.suppress(Exception):
            await self._commit()


def _event_time(record: Record) -> str:
    """The event's own timestamp in a record (ISO 8601 UTC, so text order is time order), or
    "" when the record does not decode (it is ordered by the broker's timestamp alone)."""
    try:
        return decode(record, own_topic=None).timestamp.isoformat()
    except (EventFormatError, ValueError):  # not a dp event (or one breaking the input rule)
        return ""
