"""`SourcePoller`: polls each `@source` on its interval and publishes what it saw.

Each source has a task of its own, so a slow or hanging source never delays another one, nor
the scheduler's cron timer. A poll runs under its timeout, on the scheduler's `Clock` (so
tests walk it with a `ManualClock`): async sources on the event loop, sync ones on a daemon
thread of their own (a hung sync function keeps its thread, and the source is not polled again
until it returns; it never occupies the threads the service's store calls use).

One poll, in order:

1. take or renew the source's lease in the store (several `dp serve`: one polls it);
2. call the function with the committed cursor;
3. publish its events, each with an id derived from the source and the payload;
4. commit the new cursor, fenced by the lease.

A crash between 3 and 4 re-polls from the old cursor: the same payloads make the same event
ids, and the service starts no second run for them.

Failures (an exception, a timeout, a publish or store error) are logged with their traceback
and counted; after `max_failures` in a row the circuit opens, `dp.sources.<name>.unhealthy` is
published, and polls back off exponentially (`every * 2**n`, up to `max_backoff`). The first
successful poll closes it and publishes `dp.sources.<name>.healthy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import os
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, runtime_checkable

from dp.backoff import Backoff
from dp.errors import InvalidArgumentError, PollTimeoutError, SourceBusyError
from dp.events import EventBase, Publisher
from dp.logs import get_logger
from dp.scheduler.circuit import Circuit
from dp.scheduler.clock import Clock, SystemClock
from dp.scheduler.health import MetricSample
from dp.sources import Source, collect, items_of
from dp.store.memory import MemoryRunStore
from dp.store.records import HOST, SourceRecord

__all__ = [
    "PollTimeoutError",
    "SourceBusyError",
    "SourceHealth",
    "SourceInfo",
    "SourcePoller",
    "SourceState",
]

_log = get_logger("dp.sources")

#: How long an instance's lease of a source lasts without renewal.
DEFAULT_SOURCE_LEASE = 30.0

SourceCircuit = Literal["closed", "open"]


@runtime_checkable
class SourceState(Protocol):
    """Where cursors and leases live: every `RunStore` is one (`dp_sources`)."""

    def claim_source(
        self, name: str, *, holder: str, now: datetime, lease_until: datetime
    ) -> bool: ...

    def save_source(self, record: SourceRecord) -> bool: ...

    def release_source(self, name: str, *, holder: str) -> None: ...

    def get_source(self, name: str) -> SourceRecord | None: ...

    def list_sources(self) -> list[SourceRecord]: ...


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """Whether one source works, as `/health` reports it."""

    name: str
    healthy: bool
    circuit: SourceCircuit
    consecutive_failures: int
    last_error: str | None
    retry_at: datetime | None
    polled_here: bool


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """One source as `GET /sources` lists it: its definition, the store's record of it, and
    this instance's counters (zero unless this instance polls it).

    Attributes:
        name, topic, every, timeout, max_failures: its definition.
        circuit: `"closed"` or `"open"`.
        cursor: the committed cursor.
        last_poll_at: when the last poll ended (by whichever instance polled it).
        last_error: the last failure, None after a success.
        consecutive_failures: failures since the last success.
        holder: the instance polling it, while its lease lasts.
        polled_here: whether this instance holds its lease.
        next_poll_at: when this instance polls it next.
        polls_total, failures_total, events_total: this instance's counters.
    """

    name: str
    topic: str
    every: float
    timeout: float
    max_failures: int
    circuit: SourceCircuit
    cursor: Any
    last_poll_at: datetime | None
    last_error: str | None
    consecutive_failures: int
    holder: str | None
    polled_here: bool
    next_poll_at: datetime | None
    polls_total: int
    failures_total: int
    events_total: int
    description: str = ""


class _Entry:
    """A source and this instance's bookkeeping of it."""

    __slots__ = (
        "breaker",
        "cursor",
        "events",
        "failures",
        "held",
        "inflight",
        "last_error",
        "next_due",
        "polled_at",
        "polls",
        "renew_at",
        "source",
        "task",
        "waiting",
    )

    def __init__(self, source: Source) -> None:
        self.source = source
        self.cursor: Any = None
        self.held = False
        self.renew_at: datetime | None = None
        self.next_due: datetime | None = None
        self.polled_at: datetime | None = None
        #: opened after `max_failures` in a row; while open, the polls are its trials, spaced
        #: by the backoff (`_next_due`), so it never turns half-open on its own
        self.breaker = Circuit()
        self.last_error: str | None = None
        self.polls = 0
        self.failures = 0
        self.events = 0
        self.inflight: threading.Event | None = None  # set once a sync poll's call returned
        self.task: asyncio.Task[None] | None = None
        self.waiting = False  # asleep on the clock between polls

    @property
    def circuit(self) -> SourceCircuit:
        return "closed" if self.breaker.state == "closed" else "open"

    @property
    def consecutive(self) -> int:
        return self.breaker.consecutive


class SourcePoller:
    """Polls sources and publishes their events; see the module docstring.

    Example::

        poller = SourcePoller(get_sources(), broker, state=store)
        await poller.start()
        ...
        await poller.stop()

    Args:
        sources: the sources to poll.
        publisher: where their events go.
        state: where cursors and leases are kept (default: in memory, this process only).
        clock: the time source (default: the system clock); tests pass a `ManualClock`.
        holder: this instance's name in the leases (default: `host:pid:random`).
        lease: seconds a lease lasts; renewed every third of it; another instance takes a
            source over once its holder's lease ran out.
    """

    def __init__(
        self,
        sources: Iterable[Source],
        publisher: Publisher,
        *,
        state: SourceState | None = None,
        clock: Clock | None = None,
        holder: str | None = None,
        lease: float = DEFAULT_SOURCE_LEASE,
    ) -> None:
        if lease <= 0:
            raise InvalidArgumentError("lease", lease, "a positive number of seconds")
        if state is None:
            state = MemoryRunStore()
        self._entries = {s.name: _Entry(s) for s in sources}
        self._publisher = publisher
        self.state: SourceState = state
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.holder = holder or f"{HOST}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease = timedelta(seconds=lease)
        self._running = False

    @property
    def clock(self) -> Clock:
        """The time source."""
        return self._clock

    @property
    def running(self) -> bool:
        """Whether `start()` was called and `stop()` not since."""
        return self._running

    @property
    def busy(self) -> list[str]:
        """The sources polling or talking to the store right now (the others wait for their
        next poll); tests wait for none before moving a `ManualClock`."""
        return [
            name
            for name, e in self._entries.items()
            if e.task is not None and not e.task.done() and not e.waiting
        ]

    def __len__(self) -> int:
        return len(self._entries)

    async def start(self) -> None:
        """Start polling every source, each in its own task."""
        if self._running:
            return
        self._running = True
        for entry in self._entries.values():
            entry.task = asyncio.create_task(
                self._drive(entry), name=f"dp.sources:{entry.source.name}"
            )
        await asyncio.sleep(0)
        _log.info("sources_started", sources=sorted(self._entries), holder=self.holder)

    async def stop(self) -> None:
        """Stop polling; give up the leases held, so another instance takes over at once."""
        if not self._running:
            return
        self._running = False
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for entry in self._entries.values():
            entry.task = None
            if entry.held:
                entry.held = False
                with contextlib.suppress(Exception):  # it runs out by itself anyway
                    await asyncio.to_thread(
                        self.state.release_source, entry.source.name, holder=self.holder
                    )
        _log.info("sources_stopped")

    # --- what is reported --------------------------------------------------------------------

    def health(self) -> dict[str, SourceHealth]:
        """Each source's health as this instance sees it (healthy unless its circuit is open
        here)."""
        report = {}
        for name, entry in self._entries.items():
            report[name] = SourceHealth(
                name,
                entry.circuit == "closed",
                entry.circuit,
                entry.consecutive,
                entry.last_error,
                entry.next_due if entry.circuit == "open" else None,
                entry.held,
            )
        return report

    async def sources(self) -> list[SourceInfo]:
        """Every source with the store's record of it (whoever polls it) and local counters."""
        stored = {r.name: r for r in await asyncio.to_thread(self.state.list_sources)}
        infos = []
        for name, entry in self._entries.items():
            definition = entry.source
            record = stored.get(name) or SourceRecord(name)
            circuit: SourceCircuit = "open" if record.circuit == "open" else "closed"
            holder = record.holder
            now = self._clock.now()
            if record.lease_until is not None and record.lease_until <= now:
                holder = None
            infos.append(
                SourceInfo(
                    name=name,
                    topic=definition.topic,
                    every=definition.every,
                    timeout=definition.timeout,
                    max_failures=definition.max_failures,
                    circuit=entry.circuit if entry.held else circuit,
                    cursor=entry.cursor if entry.held else record.cursor,
                    last_poll_at=entry.polled_at if entry.held else record.polled_at,
                    last_error=entry.last_error if entry.held else record.last_error,
                    consecutive_failures=entry.consecutive if entry.held else record.failures,
                    holder=holder,
                    polled_here=entry.held,
                    next_poll_at=entry.next_due if entry.held else None,
                    polls_total=entry.polls,
                    failures_total=entry.failures,
                    events_total=entry.events,
                    description=definition.description,
                )
            )
        return infos

    def metrics(self) -> list[MetricSample]:
        """Prometheus samples: polls, failures and events per source, and open circuits."""
        samples = []
        for name, entry in self._entries.items():
            labels = {"source": name}
            samples += [
                MetricSample("source_polls_total", labels, entry.polls),
                MetricSample("source_poll_failures_total", labels, entry.failures),
                MetricSample("source_events_total", labels, entry.events),
                MetricSample(
                    "source_circuit_open", labels, 1.0 if entry.circuit == "open" else 0.0
                ),
            ]
        return samples

    # --- the loop of one source ----------------------------------------------------------

    async def _drive(self, entry: _Entry) -> None:
        clock = self._clock
        every = timedelta(seconds=entry.source.every)
        while True:
            now = clock.now()
            renew = not entry.held or entry.renew_at is None or now >= entry.renew_at
            if renew and not await self._hold(entry, now):
                await self._wait(entry, now + min(self.lease / 3, every))
                continue
            assert entry.renew_at is not None
            due = entry.next_due if entry.next_due is not None else now
            if now < due:
                await self._wait(entry, min(due, entry.renew_at))
                continue
            await self._poll(entry)
            entry.next_due = self._next_due(entry, due, clock.now())

    async def _wait(self, entry: _Entry, until: datetime) -> None:
        entry.waiting = True
        try:
            await self._clock.sleep_until(until)
        finally:
            entry.waiting = False

    async def _hold(self, entry: _Entry, now: datetime) -> bool:
        """Take or renew the lease; on taking it, load the committed cursor and circuit."""
        name = entry.source.name
        try:
            held = await asyncio.to_thread(
                self.state.claim_source,
                name,
                holder=self.holder,
                now=now,
                lease_until=now + self.lease,
            )
            if held and not entry.held:
                record = await asyncio.to_thread(self.state.get_source, name)
                if record is not None:
                    entry.cursor = record.cursor
                    entry.breaker.restore(
                        "open" if record.circuit == "open" else "closed", record.failures
                    )
                    entry.last_error = record.last_error
                    entry.polled_at = record.polled_at
                entry.next_due = now
                _log.info("source_acquired", source=name, holder=self.holder)
        except Exception as exc:  # the store is down for a moment: poll nothing, try again
            _log.warning("source_lease_failed", source=name, error=str(exc), exc_info=exc)
            held = False
        if entry.held and not held:
            _log.warning("source_lost", source=name, holder=self.holder)
        entry.held = held
        entry.renew_at = now + self.lease / 3 if held else None
        return held

    def _next_due(self, entry: _Entry, due: datetime, now: datetime) -> datetime:
        every = entry.source.every
        if entry.circuit == "open":
            beyond = max(entry.consecutive - entry.source.max_failures, 0)
            backoff = Backoff(first=every * 2, cap=entry.source.max_backoff)
            return now + timedelta(seconds=backoff.delay(beyond + 1))
        # Fixed rate, keeping the phase: a poll that overran skips the ticks it covered.
        ticks = max(1, math.ceil((now - due).total_seconds() / every + 1e-9))
        return due + timedelta(seconds=every * ticks)

    async def _poll(self, entry: _Entry) -> None:
        definition = entry.source
        entry.polls += 1
        try:
            events, cursor = await self._call(entry)
            for event in events:
                await self._publisher.publish(definition.topic, event)
                entry.events += 1
        except Exception as exc:
            await self._failed(entry, exc)
            return
        now = self._clock.now()
        entry.cursor, entry.polled_at = cursor, now
        recovered, entry.last_error = entry.breaker.succeeded(), None
        try:
            await self._save(entry)  # the cursor is committed only after its events went out
        except Exception as exc:
            await self._failed(entry, exc)
            return
        if events:
            _log.debug("source_polled", source=definition.name, events=len(events))
        if recovered:
            _log.info("source_circuit_closed", source=definition.name)
            await self._announce(entry, definition.healthy_topic, {"source": definition.name})

    async def _call(self, entry: _Entry) -> tuple[list[EventBase], Any]:
        """Call the source under its timeout; its events and the cursor after them."""
        definition = entry.source
        cursor = entry.cursor
        args = (cursor,) if definition.takes_cursor else ()
        work: asyncio.Future[list[Any]]
        if definition.is_async:
            work = asyncio.ensure_future(_call_async(definition, args))
        else:
            if entry.inflight is not None and not entry.inflight.is_set():
                raise SourceBusyError(definition.name)
            work, entry.inflight = _call_in_thread(definition, args)
        deadline = self._clock.now() + timedelta(seconds=definition.timeout)
        timer: asyncio.Future[Any] = asyncio.ensure_future(self._clock.sleep_until(deadline))
        racers: list[asyncio.Future[Any]] = [work, timer]
        try:
            await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            timed_out = not work.done()
            if timed_out:  # its task ends by itself once it takes the cancellation in
                work.cancel()
        if timed_out:
            raise PollTimeoutError(definition.name, definition.timeout)
        return collect(definition, work.result(), cursor)

    async def _failed(self, entry: _Entry, exc: Exception) -> None:
        definition = entry.source
        entry.failures += 1
        opened = entry.breaker.failed(definition.max_failures)
        entry.last_error = f"{type(exc).__name__}: {exc}"
        entry.polled_at = self._clock.now()
        _log.error(
            "source_poll_failed",
            source=definition.name,
            consecutive_failures=entry.consecutive,
            error=entry.last_error,
            exc_info=exc,
        )
        with contextlib.suppress(Exception):  # the store being down may be the failure
            await self._save(entry)
        if opened:
            _log.error(
                "source_circuit_opened",
                source=definition.name,
                consecutive_failures=entry.consecutive,
            )
            await self._announce(
                entry,
                definition.unhealthy_topic,
                {
                    "source": definition.name,
                    "consecutive_failures": entry.consecutive,
                    "error": entry.last_error,
                },
            )

    async def _save(self, entry: _Entry) -> None:
        definition = entry.source
        record = SourceRecord(
            definition.name,
            topic=definition.topic,
            every=definition.every,
            cursor=entry.cursor,
            polled_at=entry.polled_at,
            last_error=entry.last_error,
            failures=entry.consecutive,
            circuit=entry.circuit,
            holder=self.holder,
        )
        if not await asyncio.to_thread(self.state.save_source, record):
            entry.held = False  # another instance took it over: it polls from now on
            _log.warning("source_lost", source=definition.name, holder=self.holder)

    async def _announce(self, entry: _Entry, topic: str, payload: dict[str, Any]) -> None:
        event = EventBase(topic=topic, payload=payload, source=f"source:{entry.source.name}")
        try:
            await self._publisher.publish(topic, event)
        except Exception as exc:  # the bus may be what fails; the log and /health still say it
            _log.warning("source_health_event_failed", topic=topic, error=str(exc))

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<SourcePoller {state}, {len(self._entries)} sources>"


async def _call_async(definition: Source, args: tuple[Any, ...]) -> list[Any]:
    func: Callable[..., Any] = definition.func
    if definition.is_async and not asyncio.iscoroutinefunction(func):
        return [item async for item in func(*args)]
    return _listed(definition, await func(*args))


def _call_in_thread(
    definition: Source, args: tuple[Any, ...]
) -> tuple[asyncio.Future[list[Any]], threading.Event]:
    """Run a sync source on a daemon thread: a hung one can neither block the loop nor keep
    the process from exiting."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[list[Any]] = loop.create_future()

    def settle(result: list[Any] | None, error: BaseException | None) -> None:
        if future.done():
            return  # timed out and cancelled meanwhile
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result or [])

    def run() -> None:
        try:
            outcome: tuple[list[Any] | None, BaseException | None] = (
                _listed(definition, definition.func(*args)),
                None,
            )
        except BaseException as exc:  # handed to the loop, which decides
            outcome = (None, exc)
        returned.set()  # before the loop hears of it: the next poll must not find it busy
        with contextlib.suppress(RuntimeError):  # the loop closed while a hung poll ran
            loop.call_soon_threadsafe(settle, *outcome)

    returned = threading.Event()
    thread = threading.Thread(target=run, name=f"dp-source-{definition.name}", daemon=True)
    thread.start()
    return future, returned


def _listed(definition: Source, result: Any) -> list[Any]:
    if inspect.isgenerator(result):
        return list(result)  # drained here: on its thread, for a sync source
    return items_of(definition, result)
