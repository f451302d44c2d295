"""`StoreCheck`: whether the run store answers, asked at most once a second.

The API refuses what it could not record while the store is down: `POST /events` answers 503
rather than 202 for an event no run could be recorded for yet, and `/health/ready` fails. A
check pings the store (`RunStore.ping`, bounded by `DP_STORE_TIMEOUT`); its answer is kept
for `fresh` seconds, and callers that ask while a ping is under way share it, so a burst of
requests during an outage costs one ping, not one each.
"""

from __future__ import annotations

import asyncio
import time

from dp.errors import StoreUnavailableError
from dp.store.records import RunStore

__all__ = ["StoreCheck"]


class StoreCheck:
    """Pings `store` (None: nothing to check) at most every `fresh` seconds."""

    def __init__(self, store: RunStore | None, *, fresh: float = 1.0) -> None:
        self.store = store
        self.fresh = fresh
        self._checked_at = -float("inf")
        self._error: StoreUnavailableError | None = None
        self._pinging: asyncio.Future[StoreUnavailableError | None] | None = None

    async def require(self) -> None:
        """Return if the store answers; else raise its `StoreUnavailableError` (HTTP 503)."""
        error = await self.error()
        if error is not None:
            raise error

    async def error(self) -> StoreUnavailableError | None:
        """Why the store is unavailable, or None when it answers (or there is none)."""
        if self.store is None:
            return None
        if time.monotonic() - self._checked_at < self.fresh:
            return self._error
        if self._pinging is None:
            self._pinging = asyncio.ensure_future(self._ping(self.store))
        return await asyncio.shield(self._pinging)

    def failed(self, error: StoreUnavailableError) -> None:
        """Note an outage another call met, so the next checks answer it without a ping."""
        self._error, self._checked_at = error, time.monotonic()

    async def _ping(self, store: RunStore) -> StoreUnavailableError | None:
        try:
            await asyncio.to_thread(store.ping)
            error = None
        except StoreUnavailableError as exc:
            error = exc
        except Exception as exc:  # a store of another kind failing: unavailable all the same
            reason = f"{type(exc).__name__}: {exc}"
            error = StoreUnavailableError(repr(store), "reach the database", reason)
        finally:
            self._pinging = None
        self._error, self._checked_at = error, time.monotonic()
        return error
