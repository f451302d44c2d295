"""`Backoff` and `retry_outage`: waiting out an outage of a dependency, for a bounded time.

An outage (`DependencyUnavailableError`: the run store, the bus or the results store cannot
be reached) usually passes; bad input never does. So only outages are retried, with delays
that double from `first` up to `cap`, and for no longer than the caller can afford; then the
last outage is raised for the caller to report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from dp.errors import DependencyUnavailableError

__all__ = ["Backoff", "retry_outage"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delays: `first`, then twice as long each time, never more than `cap`."""

    first: float = 0.05
    cap: float = 2.0
    factor: float = 2.0

    def delay(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row (1 for the first)."""
        return min(self.first * self.factor ** min(max(failures - 1, 0), 64), self.cap)


async def retry_outage(
    call: Callable[[], Awaitable[T]],
    *,
    within: float,
    backoff: Backoff = Backoff(),
    on_outage: Callable[[DependencyUnavailableError, int], None] | None = None,
) -> T:
    """Await `call()` until it succeeds, retrying outages with `backoff` for up to `within`
    seconds; any other error is raised at once.

    `on_outage(error, failures)` hears each outage before the wait (to log the first one).

    Raises:
        DependencyUnavailableError: the dependency was still down after `within` seconds.
    """
    started = time.monotonic()
    failures = 0
    while True:
        try:
            return await call()
        except DependencyUnavailableError as exc:
            failures += 1
            if on_outage is not None:
                on_outage(exc, failures)
            delay = backoff.delay(failures)
            if time.monotonic() - started + delay > within:
                raise
            await asyncio.sleep(delay)
