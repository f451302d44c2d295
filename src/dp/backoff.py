"""`Backoff`: how long to wait before retrying something that failed because a dependency
was down. One helper for every retry loop that waits out an outage (the event triggers, the
start-event consumer, the Redis bus's connection retries)."""

from __future__ import annotations

import asyncio

__all__ = ["Backoff"]


class Backoff:
    """Capped exponential delays: `first`, twice that, ... up to `cap` seconds.

    Example::

        backoff = Backoff(first=0.05, cap=5.0)
        while True:
            try:
                return await call()
            except ConnectionError:
                await backoff.sleep()
    """

    __slots__ = ("_next", "cap", "first")

    def __init__(self, *, first: float = 0.05, cap: float = 5.0) -> None:
        self.first = first
        self.cap = max(cap, first)
        self._next = first

    def delay(self) -> float:
        """The next delay; each call doubles the one after, up to `cap`."""
        delay = self._next
        self._next = min(delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        """After a success: the next delay is `first` again."""
        self._next = self.first

    async def sleep(self) -> float:
        """Sleep the next delay; return it."""
        delay = self.delay()
        await asyncio.sleep(delay)
        return delay
