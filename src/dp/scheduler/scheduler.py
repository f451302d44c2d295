"""The scheduler: drives triggers and publishes the events they make.

All cron triggers share one timer task that sleeps until the earliest next fire time in a
heap, so ten thousand schedules cost one task and a heap entry each. Each event trigger has
one task consuming its subscription. API and manual triggers cost nothing until fired.

A failing event factory (or publish) is logged and counted against its trigger only. After
`failure_threshold` consecutive failures the trigger's circuit opens: it stops firing and
`health()` reports it. After `reset_timeout` the next fire is a trial (half-open); success
closes the circuit, failure opens it again.

An event trigger holds the event it is firing while its circuit is open and fires it when
the circuit lets it through: no event is skipped. Its failures are classified (`is_outage`):
an outage (the bus unreachable) counts against the circuit and the event is retried with
backoff until it fires; anything else is the event's own fault (its filter or factory fails
on it, it cannot be encoded) and, on a durable trigger, dead-letters that event at once,
with the reason, without counting against the circuit or delaying the others.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta
from functools import partial
from types import TracebackType
from typing import Any, Literal, Self

from dp.errors import (
    CircuitOpenError,
    DuplicateTriggerError,
    InvalidArgumentError,
    InvalidTriggerError,
    SchedulerError,
    SchedulerNotRunningError,
    TriggerNotFoundError,
)
from dp.events import (
    Broker,
    Consumer,
    DurableSubscription,
    EventBase,
    Publisher,
    compile_pattern,
    validate_topic,
)
from dp.ids import id_problem
from dp.logs import get_logger
from dp.scheduler.clock import Clock, SystemClock
from dp.scheduler.durable import GroupFiring
from dp.scheduler.entry import Breaker, Entry, address, built, stats
from dp.scheduler.health import (
    MetricSample,
    SchedulerHealth,
    TriggerHealth,
    TriggerInfo,
)
from dp.scheduler.state import MemoryScheduleState, ScheduleState
from dp.scheduler.triggers import (
    APITrigger,
    CronTrigger,
    EventTrigger,
    ManualTrigger,
    Trigger,
    TriggerKind,
)

__all__ = ["Scheduler"]

_log = get_logger("dp.scheduler")
_CALLED_KINDS = ("api", "manual")


class Scheduler:
    """Publishes the events of cron, event, API and manual triggers.

    Example::

        scheduler = Scheduler(InMemoryPublisher(broker))
        nightly = create_cron_trigger("30 2 * * *", make_event, timezone="Europe/Berlin")
        await scheduler.register_trigger("nightly", nightly, "etl.nightly")
        async with scheduler:  # start() ... stop()
            ...

    Args:
        publisher: where the events go.
        clock: the time source (default: the system clock); tests pass a `ManualClock`.
        state: where cron triggers' last fire times are kept for the misfire policy
            (default: in memory, so nothing is caught up after a restart).
        failure_threshold: consecutive failures that open a trigger's circuit.
        reset_timeout: how long an open circuit waits before allowing a trial fire.
    """

    def __init__(
        self,
        publisher: Publisher,
        *,
        clock: Clock | None = None,
        state: ScheduleState | None = None,
        failure_threshold: int = 5,
        reset_timeout: timedelta = timedelta(seconds=60),
    ) -> None:
        if failure_threshold < 1:
            raise InvalidArgumentError("failure_threshold", failure_threshold, "at least 1")
        if reset_timeout < timedelta(0):
            raise InvalidArgumentError("reset_timeout", reset_timeout, "zero or positive")
        self._publisher = publisher
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._state: ScheduleState = state if state is not None else MemoryScheduleState()
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._breaker = Breaker(failure_threshold, reset_timeout)
        self._entries: dict[str, Entry] = {}
        # (due timestamp, tie-breaker, entry, entry generation); stale items are skipped.
        self._heap: list[tuple[float, int, Entry, int]] = []
        self._order = itertools.count()
        self._timer: asyncio.Task[None] | None = None
        self._timer_wakes_at: float | None = None  # set while the timer sleeps
        self._retired: set[asyncio.Task[None]] = set()
        self._timer_problem: str | None = None
        self._running = False

    @property
    def clock(self) -> Clock:
        """The time source."""
        return self._clock

    @property
    def running(self) -> bool:
        """Whether `start()` was called and `stop()` not since."""
        return self._running

    # --- registration ---------------------------------------------------------------------

    async def register_trigger(self, name: str, trigger: Trigger, target_topic: str) -> None:
        """Register `trigger` under `name`; its events are published on `target_topic`.

        Registering on a running scheduler activates the trigger at once.

        Raises:
            InvalidTriggerError: if the name is malformed or the trigger unusable.
            DuplicateTriggerError: if the name is taken.
            InvalidTopicError: if `target_topic` is not a valid topic.
        """
        problem = id_problem(name)  # names are keys of the schedule state
        if problem is not None:
            raise InvalidTriggerError(
                str(name),
                f"the name {problem}; names are 1 to 200 letters, digits, '_', '.' or '-', "
                "e.g. 'nightly_report'",
            )
        if name in self._entries:
            raise DuplicateTriggerError(name)
        validate_topic(target_topic)
        kind = _kind_of(name, trigger)
        if isinstance(trigger, EventTrigger) and compile_pattern(trigger.source_topic)(
            target_topic
        ):
            raise InvalidTriggerError(
                name,
                f"it listens to {trigger.source_topic!r}, which matches its own target topic "
                f"{target_topic!r}, so each event it publishes would fire it again; publish "
                "to a topic outside the pattern",
            )
        entry = Entry(name, trigger, kind, target_topic)
        if self._running:
            self._activate(entry)  # may raise (unreadable state, closed broker): not registered
        self._entries[name] = entry
        if self._running and (self._kick_timer() or entry.task is not None):
            await asyncio.sleep(0)  # let the new task reach its first wait
        _log.info("trigger_registered", trigger=name, kind=kind, target_topic=target_topic)

    async def unregister(self, name: str) -> None:
        """Remove the trigger `name`; a running event trigger stops consuming.

        Raises:
            TriggerNotFoundError: if no trigger has that name.
        """
        entry = self._entries.pop(name, None)
        if entry is None:
            raise TriggerNotFoundError(name, sorted(self._entries), what="registered triggers")
        entry.generation += 1
        task, entry.task = entry.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        _log.info("trigger_unregistered", trigger=name)

    def triggers(self) -> list[TriggerInfo]:
        """Every registered trigger with its next fire time (cron) and counters."""
        now = self._clock.now()
        infos = []
        for entry in self._entries.values():
            trigger = entry.trigger
            next_fire = None
            source = ""
            if isinstance(trigger, CronTrigger):
                next_fire = entry.due if self._running else _next_or_none(trigger, now)
                source = f"{trigger.expression} ({trigger.timezone})"
            elif isinstance(trigger, EventTrigger):
                source = trigger.source_topic
            infos.append(
                TriggerInfo(
                    entry.name,
                    entry.kind,
                    entry.target_topic,
                    source,
                    next_fire,
                    self._breaker.circuit(entry, now),
                    stats(entry),
                    trigger.name,
                )
            )
        return infos

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start firing: schedule cron triggers (catching up missed fires) and subscribe.

        Raises:
            SchedulerError: if the scheduler is already running.
        """
        if self._running:
            raise SchedulerError("the scheduler is already running; call stop() before start()")
        self._running = True
        self._timer_problem = None
        try:
            for entry in self._entries.values():
                self._activate(entry)
        except BaseException:
            await self.stop()
            raise
        self._kick_timer()
        await asyncio.sleep(0)  # let the new tasks reach their first wait
        _log.info("scheduler_started", triggers=len(self._entries))

    async def stop(self) -> None:
        """Stop firing: cancel the timer and the consumers and wait for them to end."""
        if not self._running:
            return
        self._running = False
        tasks = [*self._retired]
        if self._timer is not None:
            tasks.append(self._timer)
        self._timer = None
        for entry in self._entries.values():
            entry.generation += 1
            if entry.task is not None:
                tasks.append(entry.task)
                entry.task = None
        self._heap.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        _log.info("scheduler_stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- firing by call -------------------------------------------------------------------

    async def fire(self, name: str, payload: Mapping[str, Any] | None = None) -> EventBase:
        """Fire the API or manual trigger `name` with `payload`; return the published event.

        A failing factory or publish is counted against the trigger, then re-raised.

        Raises:
            TriggerNotFoundError: if `name` is not an API or manual trigger.
            CircuitOpenError: if the trigger's circuit is open.
            SchedulerError: if the scheduler is not running.
        """
        entry = self._entries.get(name)
        if entry is None or entry.kind not in _CALLED_KINDS:
            fireable = sorted(n for n, e in self._entries.items() if e.kind in _CALLED_KINDS)
            raise TriggerNotFoundError(
                name,
                fireable,
                kind=None if entry is None else entry.kind,
                what="API and manual triggers",
            )
        if not self._running:
            raise SchedulerNotRunningError(name)
        trigger = entry.trigger
        assert isinstance(trigger, APITrigger | ManualTrigger)  # by kind
        data = dict(payload or {})
        factory = trigger.event_factory
        build: Callable[[], EventBase]
        if factory is None:
            build = partial(EventBase, topic=entry.target_topic, payload=data, source=entry.source)
        else:
            build = partial(factory, data)
        now = self._clock.now()
        if not self._breaker.admit(entry, now):
            assert entry.retry_at is not None  # set when the circuit opened
            raise CircuitOpenError(name, entry.retry_at, entry.consecutive, entry.last_error)
        event = await self._publish(entry, build, now, reraise=True)
        assert event is not None  # reraise=True raises instead of returning None
        return event

    # --- health ---------------------------------------------------------------------------

    def health(self) -> SchedulerHealth:
        """Overall status and each trigger's circuit, failures and last error."""
        now = self._clock.now()
        triggers = {}
        for entry in self._entries.values():
            circuit = self._breaker.circuit(entry, now)
            problem = entry.problem
            if entry.kind == "cron" and self._timer_problem is not None:
                problem = self._timer_problem
            triggers[entry.name] = TriggerHealth(
                entry.name,
                entry.kind,
                circuit == "closed" and problem is None,
                circuit,
                entry.consecutive,
                entry.last_error,
                entry.retry_at if circuit != "closed" else None,
                problem,
            )
        if not self._running:
            status: Literal["ok", "degraded", "stopped"] = "stopped"
        elif all(t.healthy for t in triggers.values()):
            status = "ok"
        else:
            status = "degraded"
        return SchedulerHealth(status, triggers)

    def metrics(self) -> list[MetricSample]:
        """Samples for Prometheus, named like dp's other metrics (`..._total` counters)."""
        now = self._clock.now()
        samples = []
        for entry in self._entries.values():
            labels = {"trigger": entry.name, "kind": entry.kind}
            samples += [
                MetricSample("scheduler_trigger_fires_total", labels, entry.fires),
                MetricSample("scheduler_trigger_failures_total", labels, entry.failures),
                MetricSample("scheduler_trigger_skipped_total", labels, entry.skipped),
                MetricSample("scheduler_trigger_dead_lettered_total", labels, entry.dead_lettered),
                MetricSample(
                    "scheduler_trigger_circuit_open",
                    labels,
                    0.0 if self._breaker.circuit(entry, now) == "closed" else 1.0,
                ),
            ]
        return samples

    # --- internals: activation and the timer ----------------------------------------------

    def _activate(self, entry: Entry) -> None:
        trigger = entry.trigger
        entry.problem = None
        if isinstance(trigger, CronTrigger):
            now = self._clock.now()
            last = self._state.last_fire(entry.name)
            # A last fire in the past makes the first due time a missed one, which the timer
            # then handles by the misfire policy.
            after = last if last is not None and last < now else now
            self._schedule(entry, after)
        elif isinstance(trigger, EventTrigger) and trigger.group is not None:
            join = partial(_join, trigger)
            firing = GroupFiring(
                entry, join, publisher=self._publisher, clock=self._clock, breaker=self._breaker
            )
            entry.task = asyncio.create_task(
                firing.run(join()), name=f"dp.scheduler.event:{entry.name}"
            )
        elif isinstance(trigger, EventTrigger):
            # Subscribing here, before any await, means no event published from now on
            # is missed.
            assert isinstance(trigger.consumer, Consumer)  # checked by EventTrigger
            events = trigger.consumer.consume(trigger.source_topic)
            entry.task = asyncio.create_task(
                self._consume(entry, events), name=f"dp.scheduler.event:{entry.name}"
            )

    def _schedule(self, entry: Entry, after: datetime) -> None:
        trigger = entry.trigger
        assert isinstance(trigger, CronTrigger)
        try:
            due = trigger.next_fire(after)
        except Exception as exc:  # a schedule that ran out of dates must not stop the others
            entry.due = None
            entry.problem = f"no next fire time: {exc}"
            _log.error("trigger_schedule_failed", trigger=entry.name, error=str(exc))
            return
        entry.due = due
        entry.generation += 1
        heapq.heappush(self._heap, (due.timestamp(), next(self._order), entry, entry.generation))

    def _kick_timer(self) -> bool:
        """Make sure the timer runs and wakes up for the earliest due time.

        Returns whether a new timer task was started.
        """
        if not self._running or not self._heap:
            return False
        timer = self._timer
        if timer is not None and not timer.done():
            wakes_at = self._timer_wakes_at
            if wakes_at is None or self._heap[0][0] >= wakes_at:
                return False  # busy firing (it rechecks the heap) or waking early enough
            # It sleeps past the new earliest time: replace it. Cancelling a sleep is harmless.
            timer.cancel()
            self._timer_wakes_at = None
            self._retired.add(timer)
            timer.add_done_callback(self._retired.discard)
        self._timer = asyncio.create_task(self._run_timer(), name="dp.scheduler.timer")
        return True

    async def _run_timer(self) -> None:
        heap = self._heap
        try:
            while heap:
                now = self._clock.now()
                now_ts = now.timestamp()
                fired: dict[str, datetime] = {}
                try:
                    while heap and heap[0][0] <= now_ts:
                        _, _, entry, generation = heapq.heappop(heap)
                        if generation == entry.generation:
                            await self._fire_cron(entry, fired)
                finally:  # also when stop() cancels mid-batch: what fired stays recorded
                    if fired:
                        self._record(fired)
                if not heap:
                    break
                _, _, entry, generation = heap[0]
                if generation != entry.generation or entry.due is None:  # unregistered
                    heapq.heappop(heap)
                    continue
                self._timer_wakes_at = heap[0][0]
                try:
                    await self._clock.sleep_until(entry.due)
                finally:
                    if self._timer is asyncio.current_task():
                        self._timer_wakes_at = None
        except Exception as exc:  # a bug here must show in health(), not vanish with the task
            self._timer_problem = f"the cron timer stopped: {type(exc).__name__}: {exc}"
            _log.exception("scheduler_timer_failed", error=str(exc))

    async def _fire_cron(self, entry: Entry, fired: dict[str, datetime]) -> None:
        trigger = entry.trigger
        assert isinstance(trigger, CronTrigger)
        assert entry.due is not None
        due = entry.due
        now = self._clock.now()
        missed = now - due > trigger.misfire_grace
        if missed and trigger.misfire == "skip":
            entry.skipped += 1
            _log.warning(
                "trigger_misfire_skipped", trigger=entry.name, missed=due.isoformat(), now=now
            )
        elif self._breaker.admit(entry, now):
            if missed:
                _log.warning(
                    "trigger_misfire_run_once", trigger=entry.name, missed=due.isoformat(), now=now
                )
            event = await self._publish(entry, trigger.event_factory, now, scheduled_for=due)
            if event is not None:
                # After a catch-up, remember now: the missed times are all covered.
                fired[entry.name] = now if missed else due
        if self._entries.get(entry.name) is entry and self._running:
            self._schedule(entry, now if missed else due)

    def _record(self, fired: dict[str, datetime]) -> None:
        try:
            self._state.record_fires(fired)
        except Exception as exc:  # losing a record only risks one extra catch-up fire
            _log.error("schedule_state_write_failed", error=str(exc), triggers=sorted(fired))

    # --- internals: event triggers --------------------------------------------------------

    async def _consume(self, entry: Entry, events: AsyncIterator[EventBase]) -> None:
        trigger = entry.trigger
        assert isinstance(trigger, EventTrigger)
        accept = trigger.filter
        try:
            async for source in events:
                await self._breaker.hold(entry, self._clock)
                now = self._clock.now()
                if accept is not None:
                    try:
                        if not accept(source):
                            continue
                    except Exception as exc:
                        self._breaker.failed(entry, exc, now, what="filter")
                        continue
                await self._publish(
                    entry,
                    partial(trigger.event_factory, source),
                    now,
                    correlation_id=source.event_id,
                )
        except Exception as exc:
            entry.problem = f"its consumer failed: {type(exc).__name__}: {exc}"
            _log.error("trigger_consumer_failed", trigger=entry.name, error=str(exc))
        else:
            entry.problem = "its consumer's stream ended (was the broker closed?)"
            _log.warning("trigger_consumer_ended", trigger=entry.name)
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    # --- internals: firing and the circuit breaker ----------------------------------------

    async def _publish(
        self,
        entry: Entry,
        build: Callable[[], EventBase],
        now: datetime,
        *,
        correlation_id: str | None = None,
        scheduled_for: datetime | None = None,
        reraise: bool = False,
    ) -> EventBase | None:
        """Build the event, address it and publish it; count the outcome."""
        try:
            event = address(entry, built(build()), correlation_id, scheduled_for)
            await self._publisher.publish(entry.target_topic, event)
        except Exception as exc:
            self._breaker.failed(entry, exc, now, what="fire")
            if reraise:
                raise
            return None
        self._breaker.succeeded(entry, now)
        return event

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<Scheduler {state}, {len(self._entries)} triggers>"


def _kind_of(name: str, trigger: object) -> TriggerKind:
    if isinstance(trigger, CronTrigger | EventTrigger | APITrigger | ManualTrigger):
        return trigger.kind
    raise InvalidTriggerError(
        name,
        f"{type(trigger).__name__} is not a trigger the scheduler can drive; build one with "
        "create_cron_trigger, create_event_trigger, create_api_trigger or "
        "create_manual_trigger",
    )


def _join(trigger: EventTrigger) -> DurableSubscription:
    """Join the durable group of `trigger` (a `Broker` and a group: see `EventTrigger`)."""
    broker = trigger.consumer
    assert isinstance(broker, Broker)
    assert trigger.group is not None
    return broker.durable(
        trigger.source_topic,
        group=trigger.group,
        start=trigger.start,
        claim_idle=trigger.claim_idle,
    )


def _next_or_none(trigger: CronTrigger, now: datetime) -> datetime | None:
    try:
        return trigger.next_fire(now)
    except Exception:  # reported by health() once running; a listing must not fail
        return None
