"""Durable event triggers: an event trigger reading through a durable group of the bus.

Each event is fired (the filter, the factory, the publish) and then acknowledged. Each
failure is classified (`is_outage`):

* an outage (the bus unreachable, a timeout) counts against the trigger's circuit breaker,
  and the event is held (kept from being claimed by another consumer) and retried with
  backoff until it fires; while the circuit is open the trigger waits, skipping nothing;
* anything else is the event's own fault (the filter or the factory fails on it, it cannot
  be encoded): that one event is dead-lettered at once with the reason, counted in
  `dead_lettered`, not as a failure, and the next event goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from functools import partial

from dp.backoff import Backoff
from dp.errors import BrokerClosedError, GroupError, is_outage
from dp.events import DurableSubscription, EventBase, Publisher
from dp.logs import get_logger
from dp.scheduler.clock import Clock
from dp.scheduler.entry import Breaker, Entry, address, built
from dp.scheduler.triggers import EventTrigger

__all__ = ["GroupFiring"]

_log = get_logger("dp.scheduler")
_BACKOFF = Backoff(first=0.05, cap=5.0)  # between tries of an event held through an outage


class GroupFiring:
    """Fires the events of one durable event trigger (see the module docstring)."""

    __slots__ = ("breaker", "clock", "entry", "join", "publisher")

    def __init__(
        self,
        entry: Entry,
        join: Callable[[], DurableSubscription],
        *,
        publisher: Publisher,
        clock: Clock,
        breaker: Breaker,
    ) -> None:
        self.entry = entry
        self.join = join
        self.publisher = publisher
        self.clock = clock
        self.breaker = breaker

    async def run(self, subscription: DurableSubscription) -> None:
        """Fire each event of the group, settling it once fired; when the bus cannot be
        read (an outage), join the group again after a backoff. Ends with the broker."""
        entry = self.entry
        failures = 0
        try:
            while True:
                try:
                    async for source in subscription:
                        await self._fire(subscription, source)
                        failures = 0
                except Exception as exc:
                    if not is_outage(exc) or isinstance(exc, BrokerClosedError):
                        raise
                    self.breaker.failed(entry, exc, self.clock.now(), what="read")
                    await subscription.aclose()
                    failures += 1
                    await asyncio.sleep(_BACKOFF.delay(failures))
                    subscription = self.join()
                    continue
                entry.problem = "its subscription ended (was the broker closed?)"
                _log.warning("trigger_consumer_ended", trigger=entry.name)
                return
        except GroupError as exc:  # the group exists with another pattern
            entry.problem = (
                f"its durable group cannot be read: {exc}. A group keeps the pattern it was "
                "created with: to read another pattern, give the trigger (the pipeline) a new "
                "name, which makes a new group, or delete the old group on the bus"
            )
            _log.error("trigger_consumer_failed", trigger=entry.name, error=entry.problem)
        except Exception as exc:
            entry.problem = f"its consumer failed: {type(exc).__name__}: {exc}"
            _log.error("trigger_consumer_failed", trigger=entry.name, error=str(exc))
        finally:
            await subscription.aclose()

    async def _fire(self, subscription: DurableSubscription, source: EventBase) -> None:
        """Fire `source` and acknowledge it, or dead-letter it if it can never fire."""
        entry = self.entry
        trigger = entry.trigger
        assert isinstance(trigger, EventTrigger)
        failures = 0
        settle: Callable[[], Awaitable[None]] | None = None
        while settle is None:
            await self.breaker.hold(entry, self.clock)
            now = self.clock.now()
            stage = "filter"
            try:
                if trigger.filter is None or trigger.filter(source):
                    stage = "fire"
                    made = built(trigger.event_factory(source))
                    await self.publisher.publish(
                        entry.target_topic, address(entry, made, source.event_id)
                    )
                    self.breaker.succeeded(entry, now)
                settle = partial(subscription.ack, source)
            except BrokerClosedError:
                raise  # shutting down: the event stays pending for the next consumer
            except Exception as exc:
                if not is_outage(exc):
                    settle = partial(self._poison, subscription, source, exc, stage)
                    break
                self.breaker.failed(entry, exc, now, what=stage)
                await _keep(subscription)
                failures += 1
                await asyncio.sleep(_BACKOFF.delay(failures))
        await settle_pending(
            subscription,
            settle,
            log_event="trigger_settle_failed",
            trigger=entry.name,
            event_id=source.event_id,
        )

    async def _poison(
        self, subscription: DurableSubscription, source: EventBase, exc: Exception, stage: str
    ) -> None:
        entry = self.entry
        reason = f"trigger {entry.name} ({stage}): {type(exc).__name__}: {exc}"
        entry.dead_lettered += 1
        _log.warning(
            "trigger_event_dead_lettered",
            trigger=entry.name,
            event_id=source.event_id,
            topic=source.topic,
            error=reason,
        )
        await subscription.dead_letter(source, reason)


async def settle_pending(
    subscription: DurableSubscription,
    settle: Callable[[], Awaitable[None]],
    *,
    log_event: str,
    still_wanted: Callable[[], bool] = lambda: True,
    **fields: object,
) -> None:
    """Settle a delivered event (ack it, or dead-letter it) through outages: an outage is
    waited out with backoff while the event is kept from being claimed; any other failure,
    or an outage once `still_wanted()` is false (shutting down), is logged and leaves the
    event pending, to be delivered again after `claim_idle`. The trigger's and the start
    consumer's one way of settling."""
    failures = 0
    while True:
        try:
            await settle()
            return
        except Exception as exc:
            if not is_outage(exc) or not still_wanted():
                _log.error(log_event, error=f"{type(exc).__name__}: {exc}", **fields)
                return
            await _keep(subscription)
            failures += 1
            await asyncio.sleep(_BACKOFF.delay(failures))


async def _keep(subscription: DurableSubscription) -> None:
    with contextlib.suppress(Exception):  # best effort: the bus may be what is down
        await subscription.keep()
