"""Durable subscription groups: their names, and the in-memory implementation.

A group is a named, durable subscription shared by competing consumers. The in-memory group
holds the undelivered events in an ordinary subscriber mailbox (so publishing reaches it like
any subscriber), plus what the consumers hold: the pending deliveries, oldest first, the
deliveries waiting to be retried, and the dead letters. The Redis broker (`dp.events.redis`)
keeps the same state in Redis: stream consumer groups, their pending lists, a dead-letter
stream.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import socket
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Self

from dp.errors import GroupError, NotPendingError
from dp.events.event import EventBase
from dp.events.mailbox import Mailbox
from dp.events.ports import DeadLetter

__all__ = ["InMemoryDurableSubscription", "default_consumer_name", "validate_group"]

_GROUP = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_consumer_numbers = itertools.count(1)


def validate_group(
    group: str, *, max_deliveries: int = 1, claim_idle: float = 1.0, start: str = "now"
) -> str:
    """Return `group` if it is a valid group name and the options make sense.

    Raises:
        GroupError: naming the group and what is wrong.
    """
    if not isinstance(group, str) or len(group) > 200 or not _GROUP.fullmatch(group):
        raise GroupError(
            str(group),
            "a group name is dot-separated segments of letters, digits, '_' and '-' "
            "(at most 200 characters), e.g. 'dp.service'",
        )
    if not isinstance(max_deliveries, int) or max_deliveries < 1:
        raise GroupError(group, f"max_deliveries must be an int >= 1, not {max_deliveries!r}")
    if not claim_idle > 0:
        raise GroupError(group, f"claim_idle must be > 0 seconds, not {claim_idle!r}")
    if start not in ("now", "earliest"):
        raise GroupError(group, f"start must be 'now' or 'earliest', not {start!r}")
    return group


def default_consumer_name() -> str:
    """`<host>-<pid>-<n>`: unique per subscription, and readable in `XINFO CONSUMERS`."""
    return f"{socket.gethostname()}-{os.getpid()}-{next(_consumer_numbers)}"


def not_acknowledged(claim_idle: float, deliveries: int) -> str:
    """The error of a dead letter whose consumers never settled it."""
    return (
        f"not acknowledged within {claim_idle:g}s after each of {deliveries} deliveries "
        "(its consumers died or took longer than claim_idle)"
    )


class _Delivery:
    """One pending event of a group."""

    __slots__ = ("delivered_at", "deliveries", "error", "event", "seq")

    def __init__(self, seq: int, event: EventBase) -> None:
        self.seq = seq
        self.event = event
        self.deliveries = 0
        self.delivered_at = 0.0
        self.error = ""


class MemoryGroup:
    """A group's state inside an `InMemoryBroker`."""

    def __init__(self, name: str, box: Mailbox, clock: Callable[[], float]) -> None:
        self.name = name
        self.box = box  # the undelivered events; the broker publishes into it
        self.clock = clock
        self.retry: deque[_Delivery] = deque()  # nacked and replayed: delivered first
        self.pending: dict[int, _Delivery] = {}  # seq -> delivery, oldest delivery first
        self.dead: dict[str, DeadLetter] = {}
        self._seq = itertools.count(1)

    def take(self, claim_idle: float, max_deliveries: int) -> _Delivery | None:
        """The next delivery for a consumer: a retry, a claimable pending one, or a new one."""
        now = self.clock()
        if self.retry:
            return self._deliver(self.retry.popleft(), now)
        while self.pending:
            oldest = next(iter(self.pending.values()))
            if now - oldest.delivered_at < claim_idle:
                break
            del self.pending[oldest.seq]
            if oldest.deliveries >= max_deliveries:
                error = oldest.error or not_acknowledged(claim_idle, oldest.deliveries)
                self.bury(oldest, error)
                continue
            return self._deliver(oldest, now)
        buffer = self.box.buffer
        if buffer:
            event = buffer.popleft()
            if self.box.putters:
                self.box.wake_putters()
            return self._deliver(_Delivery(next(self._seq), event), now)
        return None

    def _deliver(self, delivery: _Delivery, now: float) -> _Delivery:
        delivery.deliveries += 1
        delivery.delivered_at = now
        self.pending[delivery.seq] = delivery
        return delivery

    def next_claim_in(self, claim_idle: float) -> float | None:
        """Seconds until the oldest pending delivery may be claimed (None: nothing pending)."""
        for oldest in self.pending.values():
            return max(0.0, oldest.delivered_at + claim_idle - self.clock())
        return None

    def bury(self, delivery: _Delivery, error: str) -> None:
        letter_id = str(delivery.seq)
        event = delivery.event
        self.dead[letter_id] = DeadLetter(
            id=letter_id,
            group=self.name,
            topic=event.topic,
            event=event,
            raw=event.to_json(),
            error=error,
            deliveries=delivery.deliveries,
            failed_at=datetime.now(UTC),
        )

    def replay(self, ids: Sequence[str] | None) -> int:
        chosen = list(self.dead) if ids is None else [i for i in ids if i in self.dead]
        for letter_id in chosen:
            letter = self.dead.pop(letter_id)
            assert letter.event is not None  # the in-memory bus only buries decoded events
            self.retry.append(_Delivery(next(self._seq), letter.event))
        if chosen:
            self.wake()
        return len(chosen)

    def wake(self) -> None:
        self.box.wake_getter()


class InMemoryDurableSubscription:
    """One consumer of an in-memory group; see `DurableSubscription` for the semantics."""

    __slots__ = ("_closed", "_group", "_mine", "claim_idle", "consumer", "max_deliveries")

    def __init__(
        self, group: MemoryGroup, *, consumer: str, claim_idle: float, max_deliveries: int
    ) -> None:
        self._group = group
        self._mine: dict[int, list[_Delivery]] = {}  # id(event) -> its pending deliveries
        self._closed = False
        self.consumer = consumer
        self.claim_idle = claim_idle
        self.max_deliveries = max_deliveries

    @property
    def pattern(self) -> str:
        """The group's pattern."""
        return self._group.box.pattern

    @property
    def group(self) -> str:
        """The group's name."""
        return self._group.name

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> EventBase:
        group = self._group
        box = group.box
        while True:
            if self._closed:
                raise StopAsyncIteration
            delivery = group.take(self.claim_idle, self.max_deliveries)
            if delivery is not None:
                self._mine.setdefault(id(delivery.event), []).append(delivery)
                return delivery.event
            if box.closed:
                raise StopAsyncIteration
            # Several consumers wait on one future; asyncio.wait never cancels it for the others.
            if box.getter is None or box.getter.done():
                box.getter = asyncio.get_running_loop().create_future()
            await asyncio.wait([box.getter], timeout=group.next_claim_in(self.claim_idle))

    def _settle(self, event: EventBase) -> _Delivery:
        held = self._mine.get(id(event))
        if not held:
            raise NotPendingError(self._group.name, event.event_id)
        delivery = held.pop(0)
        if not held:
            del self._mine[id(event)]
        return delivery

    async def ack(self, *events: EventBase) -> None:
        """Settle `events`: they are never delivered again."""
        for event in events:
            delivery = self._settle(event)
            self._group.pending.pop(delivery.seq, None)

    async def nack(self, event: EventBase, error: str) -> None:
        """The handler failed: deliver `event` again at once, or dead-letter it."""
        delivery = self._settle(event)
        group = self._group
        if group.pending.pop(delivery.seq, None) is None:
            return  # another consumer claimed it meanwhile; it is theirs now
        delivery.error = error
        if delivery.deliveries >= self.max_deliveries:
            group.bury(delivery, error)
        else:
            group.retry.append(delivery)
            group.wake()

    async def dead_letter(self, event: EventBase, error: str) -> None:
        """`event` is poison: dead-letter it now with `error`."""
        delivery = self._settle(event)
        if self._group.pending.pop(delivery.seq, None) is not None:
            self._group.bury(delivery, error)

    async def keep(self) -> None:
        """Reset the idle time of the events this consumer holds (it is alive)."""
        pending = self._group.pending
        now = self._group.clock()
        for held in self._mine.values():
            for delivery in held:
                if pending.pop(delivery.seq, None) is not None:
                    delivery.delivered_at = now
                    pending[delivery.seq] = delivery  # to the end: oldest delivery first

    def deliveries(self, event: EventBase) -> int:
        """How many times the pending `event` was delivered, this time included."""
        held = self._mine.get(id(event))
        if not held:
            raise NotPendingError(self._group.name, event.event_id)
        return held[0].deliveries

    async def aclose(self) -> None:
        """Leave the group; events this consumer holds go to others after `claim_idle`."""
        self._closed = True
        self._group.wake()

    def __repr__(self) -> str:
        return f"<InMemoryDurableSubscription {self.group!r} {self.pattern!r} {self.consumer}>"
