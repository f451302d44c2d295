"""Start events into runs: the consumer of `dp.pipelines.<name>.start` in the durable group
`dp.service`, shared by every instance on the bus.

Each start event's run is recorded before the event is acknowledged. Each failure is
classified (`is_outage`): an outage (the store or the bus unreachable) is retried with
backoff, the event held and kept from being claimed, until the dependency returns; it is
never dead-lettered. Anything else is the event's own fault (an unknown pipeline, run
parameters that fail validation, a value the store cannot hold): that one event is
dead-lettered at once with the reason, and `dp.run.rejected` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from functools import partial
from typing import Any, Literal, Protocol

from dp.backoff import Backoff
from dp.engine import RunHandle, TooManyPipelinesError
from dp.errors import (
    DuplicateRunError,
    ExecutorSetupError,
    PipelineBusyError,
    PipelineError,
    PlanError,
    ServiceUnavailableError,
    is_outage,
)
from dp.events import Broker, DurableSubscription, EventBase
from dp.logs import get_logger
from dp.pipelines import Pipeline
from dp.scheduler.durable import settle_pending
from dp.scheduler.entry import parse_tick
from dp.service.lifecycle import Metrics

__all__ = ["START_GROUP", "START_PATTERN", "RunStarter", "StartEvents"]

_log = get_logger("dp.service")

START_PATTERN = "dp.pipelines.*.start"
START_GROUP = "dp.service"
"""The durable group of the start-event consumers: instances on one bus share the events."""
_BACKOFF = Backoff(first=0.05, cap=5.0)  # between tries of a start event held in an outage


class RunStarter(Protocol):
    """What the start-event consumer needs of the service (`Service` is one)."""

    @property
    def pipelines(self) -> Mapping[str, Pipeline]: ...

    @property
    def accepting(self) -> bool: ...

    @property
    def metrics(self) -> Metrics: ...

    def run_parameters(self, name: str) -> frozenset[str]: ...

    async def start_run(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        *,
        trigger: str = "api",
        event_id: str | None = None,
        run_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        scheduled_for: datetime | None = None,
        schedule_tz: str | None = None,
    ) -> RunHandle: ...

    async def publish(
        self,
        topic: str,
        payload: Mapping[str, Any] | None = None,
        *,
        event_type: str = "",
        event_id: str | None = None,
        source: str = "api",
        correlation_id: str | None = None,
    ) -> EventBase: ...


class StartEvents:
    """Consumes start events as one member of the group `dp.service` (see the module)."""

    def __init__(self, service: RunStarter, broker: Broker, *, claim_idle: float) -> None:
        self.service = service
        self.broker = broker
        self.claim_idle = claim_idle
        self._seen: OrderedDict[str, None] = OrderedDict()  # recent dedupe keys

    def join(self) -> DurableSubscription:
        """Join the group `dp.service` as one more consumer."""
        return self.broker.durable(START_PATTERN, group=START_GROUP, claim_idle=self.claim_idle)

    async def run(self) -> None:
        """Turn start events into runs; acknowledge each once its run is recorded.

        Each failure is classified (`is_outage`). An outage (the store or the bus
        unreachable) is retried with backoff, the event held and kept from being claimed,
        until the dependency returns: it is never dead-lettered. Anything else is the event's
        own fault (an unknown pipeline, run parameters that fail validation, a value the store
        cannot hold): that one event is dead-lettered at once with the reason, and a
        `dp.run.rejected` event says so. An event left unacknowledged (shutdown, or an
        instance that died) is delivered again, here or to another instance of the group;
        its event id makes that a no-op if the run was recorded after all.
        """
        subscription = self.join()
        failures = 0
        while True:
            try:
                async for event in subscription:
                    await self._settle(subscription, event)
                    failures = 0
                return  # the broker closed
            except Exception as exc:
                if not is_outage(exc):
                    raise
                _log.warning(
                    "service.start_events_unreadable", error=f"{type(exc).__name__}: {exc}"
                )
                await subscription.aclose()
                failures += 1
                await asyncio.sleep(_BACKOFF.delay(failures))
                subscription = self.join()

    async def _settle(self, subscription: DurableSubscription, event: EventBase) -> None:
        name = event.topic.split(".")[2]
        failures = 0
        settle: Callable[[], Awaitable[None]] | None = None
        while settle is None:
            try:
                rejected = await self.start_from_event(name, event, held=subscription)
            except Exception as exc:
                if not _held_back(exc):
                    _log.exception(
                        "service.start_event_failed", topic=event.topic, event_id=event.event_id
                    )
                    rejected = f"{type(exc).__name__}: {exc}"
                elif self.service.accepting:
                    _log.warning(
                        "service.start_event_waiting",
                        pipeline=name,
                        event_id=event.event_id,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    with contextlib.suppress(Exception):  # best effort: the bus may be down
                        await subscription.keep()
                    failures += 1
                    await asyncio.sleep(_BACKOFF.delay(failures))
                    continue
                else:
                    return  # shutting down: it stays pending, delivered again later
            if rejected is False:
                return  # shutting down: it stays pending, delivered again later
            if rejected is None:
                settle = partial(subscription.ack, event)
            else:
                settle = partial(self._dead_letter, subscription, name, event, rejected)
        await settle_pending(
            subscription,
            settle,
            log_event="service.start_event_unsettled",
            still_wanted=lambda: self.service.accepting,
            event_id=event.event_id,
        )

    async def _dead_letter(
        self, subscription: DurableSubscription, name: str, event: EventBase, reason: str
    ) -> None:
        """Dead-letter a start event that can never become a run, and say so on the bus."""
        await self._reject(name, event, reason)
        await subscription.dead_letter(event, reason)

    async def start_from_event(
        self, name: str, event: EventBase, *, held: DurableSubscription | None = None
    ) -> str | Literal[False] | None:
        """Start the run of a start event. Returns None once the run is recorded (or was
        already), the reason when the event can never start one, False when it must be
        delivered again (the service is stopping). `held` is kept alive meanwhile.

        Raises:
            Exception: what failed; `is_outage` tells an outage from a bad event.
        """
        if name not in self.service.pipelines:
            return f"no pipeline named {name!r} (serving {sorted(self.service.pipelines)})"
        key = f"{name}/{event.event_id}"
        if key in self._seen:
            _log.info("service.duplicate_event", pipeline=name, event_id=event.event_id)
            return None
        accepted = self.service.run_parameters(name)
        params = {k: v for k, v in event.payload.items() if k in accepted}
        trigger = (
            event.source if event.source.startswith(("cron:", "event:")) else f"event:{event.topic}"
        )
        tick: tuple[datetime, str] | tuple[None, None] = (None, None)
        if trigger.startswith("cron:") and "scheduled_for" in event.payload:
            try:  # a cron tick: the run records the time it is for, and its zone
                tick = parse_tick(event.payload["scheduled_for"])
            except ValueError as exc:
                return str(exc)
        delay = 0.01
        while True:
            try:
                await self.service.start_run(
                    name,
                    params,
                    trigger=trigger,
                    event_id=key,
                    metadata={"event": {"id": event.event_id, "topic": event.topic}},
                    scheduled_for=tick[0],
                    schedule_tz=tick[1],
                )
            except DuplicateRunError:
                _log.info("service.duplicate_event", pipeline=name, event_id=event.event_id)
            except (TooManyPipelinesError, PipelineBusyError):
                # backpressure: stop reading start events until there is room again
                if held is not None:
                    with contextlib.suppress(Exception):  # best effort, as in an outage
                        await held.keep()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                if self.service.accepting:
                    continue
                return False
            except (PlanError, PipelineError) as exc:
                return str(exc)
            except ServiceUnavailableError:
                return False
            self._remember(key)
            self.service.metrics.trigger_fires.labels(trigger).inc()
            return None

    def _remember(self, key: str) -> None:
        self._seen[key] = None
        if len(self._seen) > 10_000:
            self._seen.popitem(last=False)

    async def _reject(self, name: str, event: EventBase, reason: str) -> None:
        """A start event that cannot become a run: say so on the bus (it is dead-lettered)."""
        self.service.metrics.rejections.labels(name, "invalid").inc()
        # The id the publisher knows: a forwarded start event carries it as correlation_id.
        event_id = event.correlation_id or event.event_id
        _log.warning(
            "service.start_rejected",
            pipeline=name,
            event_id=event_id,
            start_event_id=event.event_id,
            error=reason,
        )
        await self.service.publish(
            "dp.run.rejected",
            {"pipeline": name, "event_id": event_id, "topic": event.topic, "error": reason},
            source="dp.service",
            correlation_id=event.correlation_id or event.event_id,
        )


def _held_back(exc: Exception) -> bool:
    """Whether `exc` says nothing about the event: an outage, or an executor that cannot
    start (its broker unreachable, or misconfigured): every event would fail alike, so the
    event waits instead of being dead-lettered."""
    return is_outage(exc) or isinstance(exc, ExecutorSetupError)
