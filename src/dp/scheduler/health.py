"""What the scheduler reports about its triggers: listings, health and metrics.

These are frozen snapshots, safe to hand to the HTTP API (`dataclasses.asdict` turns them
into JSON-ready dicts, datetimes aside).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple

from dp.scheduler.triggers import TriggerKind

__all__ = [
    "CircuitState",
    "MetricSample",
    "SchedulerHealth",
    "TriggerHealth",
    "TriggerInfo",
    "TriggerStats",
]

CircuitState = Literal["closed", "open", "half_open"]
"""A trigger's circuit breaker: firing (`closed`), stopped after repeated failures (`open`),
or letting one trial fire through (`half_open`)."""


@dataclass(frozen=True, slots=True)
class TriggerStats:
    """Counters of one trigger since it was registered.

    Attributes:
        fires_total: events published.
        failures_total: fires whose factory, filter or publish raised.
        skipped_total: fires not attempted: a cron trigger's circuit open, or a missed time
            with `skip` (an event trigger holds its events instead).
        consecutive_failures: failures since the last success.
        last_fire_at: when the last event was published (UTC).
        last_error: the last failure, as `Type: message`.
        dead_lettered_total: events of a durable event trigger that could never fire (its
            filter or factory failed on them, they could not be encoded): dead-lettered.
    """

    fires_total: int
    failures_total: int
    skipped_total: int
    consecutive_failures: int
    last_fire_at: datetime | None
    last_error: str | None
    dead_lettered_total: int = 0


@dataclass(frozen=True, slots=True)
class TriggerInfo:
    """One registered trigger, as `Scheduler.triggers()` lists it.

    Attributes:
        name: the registration name.
        kind: `"cron"`, `"event"`, `"api"` or `"manual"`.
        target_topic: where its events are published.
        source: the cron expression and zone, or the event pattern; "" for API and manual.
        next_fire: the next fire time of a cron trigger (UTC), else None.
        circuit: the circuit breaker's state.
        stats: its counters.
        label: the trigger's own `name`, if it was given one.
    """

    name: str
    kind: TriggerKind
    target_topic: str
    source: str
    next_fire: datetime | None
    circuit: CircuitState
    stats: TriggerStats
    label: str | None = None


@dataclass(frozen=True, slots=True)
class TriggerHealth:
    """Whether one trigger works.

    Attributes:
        name: the registration name.
        kind: the trigger kind.
        healthy: circuit closed and nothing stopped it.
        circuit: the circuit breaker's state.
        consecutive_failures: failures since the last success.
        last_error: the last failure, as `Type: message`.
        retry_at: when an open circuit allows a trial fire.
        problem: what stopped it otherwise (e.g. its consumer's stream ended).
    """

    name: str
    kind: TriggerKind
    healthy: bool
    circuit: CircuitState
    consecutive_failures: int
    last_error: str | None
    retry_at: datetime | None
    problem: str | None


@dataclass(frozen=True, slots=True)
class SchedulerHealth:
    """The scheduler's health, for `/health`.

    Attributes:
        status: `"ok"` when running and every trigger is healthy, `"degraded"` when running
            with unhealthy triggers, `"stopped"` when not running.
        triggers: every trigger's health, by name.
    """

    status: Literal["ok", "degraded", "stopped"]
    triggers: Mapping[str, TriggerHealth]

    @property
    def ok(self) -> bool:
        """Whether the status is `"ok"`."""
        return self.status == "ok"

    @property
    def unhealthy(self) -> list[TriggerHealth]:
        """The triggers that are not healthy."""
        return [t for t in self.triggers.values() if not t.healthy]


class MetricSample(NamedTuple):
    """One Prometheus sample: `name{labels} value`."""

    name: str
    labels: dict[str, str]
    value: float
