"""`LeaseKeeper`: keeps the leases of an orchestrator's runs alive from a thread of its own.

A run's owner holds a lease in the run store (`RunRecord.lease_until`); a run whose lease ran
out is stale, and another process may take it over (`dp runs resume`, a second `dp serve`).
Renewing from a thread, not the event loop, keeps the lease alive while the loop is busy (an
inline task, a long synchronous listener). When a renewal finds that the run was taken over,
the run is told on its loop, and it stops without writing anything more.

An owner that was frozen (SIGSTOP, a VM pause, a long GC) may wake after its lease ran out and
someone else took the run over, before any write of its own has been refused. So a run never
hands out a task while its lease has lapsed on this process's own monotonic clock: it asks for
a renewal first, and either goes on (still the owner) or learns it was fenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from dp.errors import DependencyUnavailableError, FencedError, InvalidArgumentError
from dp.logs import get_logger
from dp.store.records import RunStore

__all__ = ["DEFAULT_LEASE_SECONDS", "LeaseKeeper"]

_log = get_logger("dp.engine")

#: How long a run's owner may go without renewing before the run counts as stale.
DEFAULT_LEASE_SECONDS = 30.0


class _Held:
    __slots__ = (
        "epoch",
        "fenced",
        "loop",
        "on_fenced",
        "on_renewed",
        "outage",
        "valid_until",
        "waiting",
    )

    def __init__(
        self,
        epoch: int,
        loop: asyncio.AbstractEventLoop,
        on_fenced: Callable[[FencedError], None],
        on_renewed: Callable[[], None],
        valid_until: float,
    ) -> None:
        self.epoch = epoch
        self.loop = loop
        self.on_fenced = on_fenced
        self.on_renewed = on_renewed
        self.valid_until = valid_until  # time.monotonic() until which the lease surely holds
        self.waiting = False  # the run waits for a renewal before it hands out more tasks
        self.fenced = False  # a renewal found the run taken over: it is not ours any more
        self.outage = False  # renewals fail because the store is down (logged once)


class LeaseKeeper:
    """Renews every held run's lease each `seconds / 3` until the run lets it go."""

    def __init__(self, store: RunStore, seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        if seconds <= 0:
            raise InvalidArgumentError("seconds", seconds, "> 0 (the lease's length)")
        self.store = store
        self.seconds = seconds
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def lease_until(self) -> datetime:
        """The end of a lease taken or renewed now."""
        return datetime.now(UTC) + timedelta(seconds=self.seconds)

    def hold(
        self,
        run_id: str,
        epoch: int,
        *,
        on_fenced: Callable[[FencedError], None],
        on_renewed: Callable[[], None],
        taken_at: float,
    ) -> None:
        """Keep renewing `run_id` at `epoch`, taken (created or claimed) at `taken_at`
        (`time.monotonic()`). `on_fenced` and `on_renewed` (after a renewal the run waited
        for) are called on the caller's loop."""
        valid_until = taken_at + self.seconds
        with self._lock:
            loop = asyncio.get_running_loop()
            self._held[run_id] = _Held(epoch, loop, on_fenced, on_renewed, valid_until)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._renew_forever, name="dp-lease", daemon=True
                )
                self._thread.start()

    def rebind(
        self,
        run_id: str,
        *,
        on_fenced: Callable[[FencedError], None],
        on_renewed: Callable[[], None],
    ) -> None:
        """Tell someone else from now on (the run that started after waiting for a slot)."""
        with self._lock:
            held = self._held.get(run_id)
            if held is not None:
                held.on_fenced, held.on_renewed = on_fenced, on_renewed

    def lapsed(self, run_id: str) -> bool:
        """Whether the run's lease may have run out; if so, a renewal is asked for at once
        and the run is called back (`on_renewed` or `on_fenced`) when it is known."""
        held = self._held.get(run_id)
        if held is None:
            return False
        if held.fenced:  # known lost, though the run may not have been told yet
            return True
        if time.monotonic() < held.valid_until:
            return False
        held.waiting = True
        self._wake.set()
        return True

    def release(self, run_id: str) -> None:
        """Stop renewing `run_id` (its run ended); the thread ends soon after the last run."""
        with self._lock:
            # the thread ends at its next round with nothing held, not now: back-to-back runs
            # (one event after another) keep one thread instead of starting one each
            self._held.pop(run_id, None)

    def _renew_forever(self) -> None:
        while True:
            self._wake.wait(self.seconds / 3)
            with self._lock:
                if not self._held:  # decided under the lock: `hold` then starts a new thread
                    self._thread = None
                    return
                self._wake.clear()
                held = [(run_id, lease) for run_id, lease in self._held.items() if not lease.fenced]
            for run_id, lease in held:
                self._renew(run_id, lease)

    def _renew(self, run_id: str, lease: _Held) -> None:
        started = time.monotonic()
        try:
            self.store.renew_lease(run_id, epoch=lease.epoch, lease_until=self.lease_until())
            lease.valid_until = started + self.seconds
            lease.outage = False
            if lease.waiting:
                lease.waiting = False
                with contextlib.suppress(RuntimeError):
                    lease.loop.call_soon_threadsafe(lease.on_renewed)
        except FencedError as fenced:
            # kept, marked, until the run lets go: a run that asks meanwhile hears it is lost
            lease.fenced = True
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to tell
                lease.loop.call_soon_threadsafe(lease.on_fenced, fenced)
        except DependencyUnavailableError as exc:  # the lease has slack: try again
            if not lease.outage:  # one line per outage, not a traceback every round
                lease.outage = True
                _log.warning("run.lease_renewal_failed", run_id=run_id, error=str(exc))
        except Exception:  # anything else: say what, with its traceback, and try again
            _log.warning("run.lease_renewal_failed", run_id=run_id, exc_info=True)
