"""A subscriber's buffer in the in-memory bus, and what publishing does when it is full.

Its own module because both the broker (`memory.py`, which publishes into it) and the durable
groups (`groups.py`, whose consumers read from it) use it; neither imports the other's half.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from typing import Literal

from dp.events.event import EventBase
from dp.events.topics import Predicate

__all__ = ["Mailbox", "Overflow"]

Overflow = Literal["block", "drop_oldest", "raise"]
"""What publishing does when a subscriber's buffer is full: wait for room (backpressure),
discard the subscriber's oldest event, or raise `QueueFullError`."""


class Mailbox:
    """A subscriber's buffer and wake-up state, as the broker sees it."""

    __slots__ = (
        "buffer",
        "closed",
        "dropped",
        "getter",
        "limit",
        "matches",
        "maxsize",
        "overflow",
        "pattern",
        "putters",
    )

    def __init__(self, pattern: str, matches: Predicate, maxsize: int, overflow: Overflow) -> None:
        self.pattern = pattern
        self.matches = matches
        self.maxsize = maxsize
        self.limit = maxsize if maxsize > 0 else sys.maxsize
        self.overflow = overflow
        self.buffer: deque[EventBase] = deque()
        self.getter: asyncio.Future[None] | None = None  # set only while the consumer waits
        self.putters: list[asyncio.Future[None]] = []  # publishers waiting for room
        self.dropped = 0
        self.closed = False

    def wake_getter(self) -> None:
        getter, self.getter = self.getter, None
        if getter is not None and not getter.done():
            getter.set_result(None)

    def wake_putters(self) -> None:
        for putter in self.putters:
            if not putter.done():
                putter.set_result(None)
        self.putters.clear()

    def close(self) -> None:
        self.closed = True
        self.wake_getter()
        self.wake_putters()
