"""`Service`: pipelines started by cron, events and HTTP, run by an orchestrator.

Everything that starts a pipeline is an event on its start topic,
`dp.pipelines.<name>.start`, whose payload holds the run parameters: cron triggers publish
there, event triggers turn matching events into start events (keeping the source event's id
as `correlation_id`), and anyone may publish there directly. One consumer turns start events
into runs; HTTP calls start runs directly, so an overloaded service can answer 429 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from dp.engine import Orchestrator, RunHandle, TooManyPipelinesError
from dp.engine.retry import Lineage
from dp.errors import (
    DependencyUnavailableError,
    DPError,
    InvalidPipelineError,
    NoRunStoreError,
    PipelineBusyError,
    PipelineNotFoundError,
    PipelineProblemsError,
    RetryError,
    ServiceUnavailableError,
)
from dp.events import (
    Broker,
    BrokerConsumer,
    Consumer,
    EventBase,
    InMemoryBroker,
    Publisher,
)
from dp.events.ports import BusHealth
from dp.io import IOManager
from dp.logs import get_logger
from dp.pipelines import Pipeline, PipelineRegistry
from dp.planner import ExecutionPlan
from dp.scheduler import Scheduler, create_cron_trigger, create_event_trigger
from dp.scheduler.poller import SourcePoller
from dp.service.lifecycle import LifecycleEvents, Metrics
from dp.service.starts import START_GROUP, StartEvents
from dp.service.storecheck import StoreCheck
from dp.statuses import LIVE_RUN, RunStatus
from dp.store.records import is_stale

__all__ = [
    "START_GROUP",
    "PipelineBusyError",
    "Service",
    "ServiceUnavailableError",
    "trigger_group",
]

_log = get_logger("dp.service")


def trigger_group(trigger: str) -> str:
    """The durable group an `on=` trigger reads through, e.g. `dp.pipelines.count.on` for the
    trigger `count.on`: one per pipeline and pattern, shared by every instance."""
    return f"dp.pipelines.{trigger}"


class Service:
    """Binds pipelines to their triggers and runs them.

    Args:
        pipelines: the pipeline definitions.
        orchestrator: runs the pipelines (its store records them; its limits apply).
        broker: the event bus, any `Broker` (default: a new `InMemoryBroker`).
        scheduler: fires cron and event triggers (default: a `Scheduler` on the broker).
        target: the task file or module, recorded with each run so it can be resumed.
        resume_interrupted: on start, resume runs a previous process left interrupted, and
            from then on adopt the runs of any instance on the same store that died (their
            lease ran out): several `dp serve` on one database finish each other's runs.
        grace: seconds `stop()` lets running pipelines finish before interrupting them.
        sources: polls the `@source`s and publishes their events on the broker (default:
            none); `/health` and `GET /sources` report them.
        claim_idle: seconds an event this instance took (a start event, or an `on=` event)
            may stay unacknowledged before another instance of its group takes it over;
            events held through an outage are kept from that meanwhile.
        open_results: opens the results a run recorded elsewhere than the orchestrator's
            (its results URL); the server hands down the configuration's (default: none, and
            such results are not served).
    """

    def __init__(
        self,
        pipelines: PipelineRegistry | Iterable[Pipeline],
        *,
        orchestrator: Orchestrator,
        broker: Broker | None = None,
        scheduler: Scheduler | None = None,
        target: str = "",
        resume_interrupted: bool = True,
        grace: float = 30.0,
        task_events: bool = True,
        sources: SourcePoller | None = None,
        claim_idle: float = 60.0,
        open_results: Callable[[str], IOManager] | None = None,
    ) -> None:
        self.pipelines = {p.name: p for p in pipelines}
        self.open_results = open_results
        self.sources = sources
        self.orchestrator = orchestrator
        self.broker: Broker = broker if broker is not None else InMemoryBroker()
        self.publisher: Publisher = self.broker
        self.consumer: Consumer = BrokerConsumer(self.broker)
        if scheduler is None:
            scheduler = Scheduler(self.publisher)
        self.scheduler: Scheduler = scheduler
        self.target = target
        self.resume_interrupted = resume_interrupted
        self.grace = grace
        self.claim_idle = claim_idle
        self.metrics = Metrics(scheduler, sources)
        #: whether the run store answers (pinged at most once a second)
        self.store_check = StoreCheck(orchestrator.store)
        self.accepting = False
        self.started_at: float | None = None
        self._plans: dict[str, ExecutionPlan] = {}
        self._param_names: dict[str, frozenset[str]] = {}
        self._running: Tally[str] = Tally()
        self._starter: asyncio.Task[None] | None = None
        self._adopter: asyncio.Task[None] | None = None
        orchestrator.listeners.extend(
            [LifecycleEvents(self.broker, task_events=task_events), self.metrics]
        )

    # --- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Plan every pipeline (failing early), register triggers, start consuming."""
        problems: list[InvalidPipelineError] = []
        for definition in self.pipelines.values():
            try:
                plan = definition.plan()
            except InvalidPipelineError as exc:
                problems.append(exc)
                continue
            names = frozenset(p.name for p in plan.run_parameters)
            unknown = sorted(set(definition.params) - names)
            if unknown:
                problems.append(
                    InvalidPipelineError(
                        definition.name,
                        f"default params {unknown} are not run parameters of its tasks "
                        f"(they take {sorted(names) or 'none'})",
                    )
                )
            self._plans[definition.name] = plan
            self._param_names[definition.name] = names
        if problems:
            raise PipelineProblemsError(problems)
        await self._register_triggers()
        starts = StartEvents(self, self.broker, claim_idle=self.claim_idle)
        self._starter = asyncio.get_running_loop().create_task(
            starts.run(), name="dp-service-starts"
        )
        self._starter.add_done_callback(_report_end)
        await self.scheduler.start()
        if self.sources is not None:
            await self.sources.start()
        self.accepting = True
        self.started_at = time.time()
        if self.resume_interrupted and self.orchestrator.store is not None:
            await self._resume_interrupted()
            leases = self.orchestrator.leases
            every = leases.seconds / 2 if leases is not None else 15.0
            self._adopter = asyncio.get_running_loop().create_task(
                self._adopt_forever(every), name="dp-service-adopt"
            )
        _log.info("service.started", pipelines=sorted(self.pipelines))

    async def stop(self, grace: float | None = None) -> None:
        """Stop triggers and new runs; let running pipelines finish for `grace` seconds,
        then interrupt the rest (recorded as interrupted: the next start resumes them)."""
        grace = self.grace if grace is None else grace
        self.accepting = False
        if self.sources is not None:
            with contextlib.suppress(Exception):
                await self.sources.stop()
        with contextlib.suppress(Exception):
            await self.scheduler.stop()
        for background in (self._starter, self._adopter):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):  # logged
                    await background
        handles = self.orchestrator.active_runs()
        pending = [h.task for h in handles if h.task is not None]
        if pending:
            _log.info("service.draining", runs=len(pending), grace=grace)
            _, still_running = await asyncio.wait(pending, timeout=grace)
            for handle in handles:
                if handle.task in still_running:
                    self.orchestrator.cancel(handle.run_id, status=RunStatus.INTERRUPTED)
            if still_running:
                await asyncio.wait(still_running, timeout=10)
        await self.orchestrator.shutdown()
        await self.broker.close()
        _log.info("service.stopped")

    # --- starting runs -----------------------------------------------------------------------

    def pipeline(self, name: str) -> Pipeline:
        try:
            return self.pipelines[name]
        except KeyError:
            raise PipelineNotFoundError(name, sorted(self.pipelines)) from None

    def plan(self, name: str) -> ExecutionPlan:
        self.pipeline(name)
        return self._plans[name]

    def run_parameters(self, name: str) -> frozenset[str]:
        """The run parameters of pipeline `name` (what an event payload may set)."""
        self.pipeline(name)
        return self._param_names[name]

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
    ) -> RunHandle:
        """Start a run of pipeline `name` now (or queue it); returns once it is recorded.
        A cron tick's run gives `scheduled_for` (aware) and the schedule's zone.

        Raises:
            PipelineError: unknown pipeline.
            ServiceUnavailableError: the service is not accepting runs.
            PipelineBusyError, TooManyPipelinesError: too many runs (HTTP 429).
            MissingRunParameterError, InvalidRunParameterError, PlanError: bad parameters.
            DuplicateRunError: this event (or run id) already started a run.
        """
        definition = self.pipeline(name)
        if not self.accepting:
            raise ServiceUnavailableError("the service is not accepting runs (shutting down)")
        limit = definition.max_concurrent_runs
        if limit is not None and self._running[name] >= limit:
            self.metrics.rejections.labels(name, "pipeline_busy").inc()
            raise PipelineBusyError(name, limit)
        merged = {**definition.params, **(params or {})}
        self._running[name] += 1  # counted before the await, so concurrent starts see it
        try:
            handle = await self.orchestrator.submit_pipeline(
                self._plans[name],
                merged,
                run_id=run_id,
                pipeline=name,
                target=self.target,
                selection=definition.selection(),
                trigger=trigger,
                event_id=event_id,
                metadata=metadata,
                lineage=Lineage(scheduled_for, schedule_tz) if scheduled_for else None,
            )
        except BaseException as exc:
            self._running[name] -= 1
            if isinstance(exc, TooManyPipelinesError):
                self.metrics.rejections.labels(name, "too_many_pipelines").inc()
            raise
        self._track(name, handle)
        return handle

    async def retry_run(self, run_id: str, from_task: str | None = None) -> RunHandle:
        """Re-run a recorded run of a served pipeline from its failure (`submit_retry`).

        Raises:
            RunNotFoundError: no such run.
            RetryError: its pipeline is not served here, or it cannot be retried.
            ServiceUnavailableError, PipelineBusyError, TooManyPipelinesError: as `start_run`.
        """
        store = self.orchestrator.store
        if store is None:
            raise RetryError(run_id, "this service records no runs")
        record = await asyncio.to_thread(store.get_run, run_id)
        name = record.pipeline
        if name not in self._plans:
            raise RetryError(
                run_id, f"its pipeline {name!r} is not served here (serving {sorted(self._plans)})"
            )
        if not self.accepting:
            raise ServiceUnavailableError("the service is not accepting runs (shutting down)")
        limit = self.pipeline(name).max_concurrent_runs
        if limit is not None and self._running[name] >= limit:
            self.metrics.rejections.labels(name, "pipeline_busy").inc()
            raise PipelineBusyError(name, limit)
        self._running[name] += 1
        try:
            handle = await self.orchestrator.submit_retry(
                run_id, from_task=from_task, plan=self._plans[name]
            )
        except BaseException:
            self._running[name] -= 1
            raise
        self._track(name, handle)
        return handle

    def _track(self, name: str, handle: RunHandle) -> None:
        """Release the run's place in its pipeline's count when it ends."""
        assert handle.task is not None

        def finished(_: object) -> None:
            self._running[name] -= 1
            self._refresh_gauges()

        handle.task.add_done_callback(finished)
        self._refresh_gauges()

    def _refresh_gauges(self) -> None:
        self.metrics.active_pipelines.set(self.orchestrator.active_pipelines)
        self.metrics.queued_pipelines.set(self.orchestrator.queued_pipelines)

    async def publish(
        self,
        topic: str,
        payload: Mapping[str, Any] | None = None,
        *,
        event_type: str = "",
        event_id: str | None = None,
        source: str = "api",
        correlation_id: str | None = None,
    ) -> EventBase:
        """Publish an event on the service's bus (it may start pipelines)."""
        options: dict[str, Any] = {}
        if event_id:
            options["event_id"] = event_id
        event = EventBase(
            topic=topic,
            payload=dict(payload or {}),
            event_type=event_type,
            source=source,
            correlation_id=correlation_id,
            **options,
        )
        await self.publisher.publish(topic, event)
        self.metrics.messages.labels(topic).inc()
        return event

    # --- triggers ------------------------------------------------------------------------------

    async def _register_triggers(self) -> None:
        for definition in self.pipelines.values():
            try:
                await self._register_pipeline_triggers(definition)
            except DPError as exc:  # leave no half-registered set behind
                for info in self.scheduler.triggers():
                    await self.scheduler.unregister(info.name)
                raise InvalidPipelineError(definition.name, f"has a bad trigger: {exc}") from exc

    async def _register_pipeline_triggers(self, definition: Pipeline) -> None:
        topic = definition.start_topic
        for index, cron in enumerate(definition.schedules):
            name = f"{definition.name}.cron{index}" if index else f"{definition.name}.cron"
            cron_trigger = create_cron_trigger(
                cron.expression,
                _cron_event(topic, f"cron:{name}"),
                timezone=cron.timezone,
                misfire=cron.misfire,
                name=name,
            )
            await self.scheduler.register_trigger(name, cron_trigger, topic)
        for index, spec in enumerate(definition.events):
            name = f"{definition.name}.on{index}" if index else f"{definition.name}.on"
            event_trigger = create_event_trigger(
                self.broker,
                spec.pattern,
                _forwarded_event(topic),
                filter=spec.accepts,
                group=trigger_group(name),
                start=spec.start,
                claim_idle=self.claim_idle,
            )
            await self.scheduler.register_trigger(name, event_trigger, topic)

    async def _resume_interrupted(self, *, only_orphans: bool = False) -> None:
        """Resume this service's pipelines' runs that were interrupted or lost their owner;
        with `only_orphans`, skip runs whose owner still holds its lease (no log noise)."""
        store = self.orchestrator.store
        assert store is not None
        records = await asyncio.to_thread(
            store.list_runs,
            status=[RunStatus.INTERRUPTED, *LIVE_RUN],
            limit=1000,
        )
        active = {handle.run_id for handle in self.orchestrator.active_runs()}
        for record in records:
            if record.pipeline not in self._plans or record.run_id in active:
                continue
            if only_orphans and record.status != RunStatus.INTERRUPTED and not is_stale(record):
                continue
            try:
                await self.resume_run(record.run_id)
            except DPError as exc:  # another instance won the claim, or its owner lives
                _log.info("service.not_resumed", run_id=record.run_id, reason=str(exc))

    async def _adopt_forever(self, every: float) -> None:
        """Take over, now and then, the runs of instances that died (their lease ran out).
        Claims are compare-and-set in the store: of several instances, exactly one wins."""
        while True:
            await asyncio.sleep(every)
            try:
                await self._resume_interrupted(only_orphans=True)
            except DependencyUnavailableError as exc:  # the store is down: try next time
                _log.warning("service.adopt_failed", error=str(exc))
            except Exception:  # anything else: with its traceback, and try next time
                _log.warning("service.adopt_failed", exc_info=True)

    async def resume_run(self, run_id: str, *, force: bool = False) -> RunHandle:
        """Resume an interrupted run of one of the pipelines (or of a task file) in the
        background; tasks whose results are stored do not run again.

        Raises:
            RunNotFoundError: no such run.
            ResumeError: it finished, is still running, or its tasks changed.
            ServiceUnavailableError: the service is not accepting runs.
            NoRunStoreError: the service records no runs.
        """
        if not self.accepting:
            raise ServiceUnavailableError("the service is not accepting runs (shutting down)")
        store = self.orchestrator.store
        if store is None:
            raise NoRunStoreError()
        record = await asyncio.to_thread(store.get_run, run_id)
        plan = self._plans.get(record.pipeline)
        handle = await self.orchestrator.submit_resume(run_id, plan=plan, force=force)
        self._running[record.pipeline] += 1
        self._track(record.pipeline, handle)
        _log.info("service.resumed", run_id=run_id, pipeline=record.pipeline)
        return handle

    # --- health ----------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """Liveness and readiness of each part, and an overall status.

        `ok` when everything works; `degraded` when a trigger's or a source's circuit is open
        (it stopped firing, or backs off) but runs can start; `unavailable` when runs cannot
        start (not accepting, bus closed or failing to publish, store unreachable).
        """
        outage = await self.store_check.error()
        store_ok = outage is None
        store_error = None if outage is None else f"{type(outage).__name__}: {outage}"
        scheduler = dataclasses.asdict(self.scheduler.health())
        sources = {
            name: dataclasses.asdict(health)
            for name, health in (self.sources.health() if self.sources else {}).items()
        }
        bus_error = "the broker is closed" if self.broker.closed else ""
        if isinstance(self.broker, BusHealth):  # a networked bus: is publishing failing?
            bus_error = await self.broker.health()
        bus_ok = not bus_error
        ready = self.accepting and bus_ok and store_ok
        degraded = scheduler["status"] != "ok" or not all(s["healthy"] for s in sources.values())
        return {
            "status": "unavailable" if not ready else ("degraded" if degraded else "ok"),
            "live": True,
            "ready": ready,
            "accepting_runs": self.accepting,
            "uptime_seconds": None if self.started_at is None else time.time() - self.started_at,
            "active_pipelines": self.orchestrator.active_pipelines,
            "queued_pipelines": self.orchestrator.queued_pipelines,
            "bus": {**_stats(self.broker), "ok": bus_ok, "error": bus_error or None},
            "store": {"ok": store_ok, "error": store_error, "url": _store_url(self)},
            "unavailable": [name for name, ok in (("store", store_ok), ("bus", bus_ok)) if not ok],
            "scheduler": scheduler,
            "sources": sources,
        }


def _report_end(task: asyncio.Task[None]) -> None:
    """Log why the start-event consumer ended, if not by cancellation."""
    if not task.cancelled() and task.exception() is not None:
        _log.error("service.start_events_stopped", error=repr(task.exception()))


def _store_url(service: Service) -> str | None:
    store = service.orchestrator.store
    return None if store is None else getattr(store, "public_url", type(store).__name__)


def _stats(broker: Broker) -> dict[str, Any]:
    stats = dataclasses.asdict(broker.stats())
    return {k: v for k, v in stats.items() if isinstance(v, int | float | str)}


def _cron_event(topic: str, source: str) -> Any:
    def make() -> EventBase:
        return EventBase(topic=topic, payload={}, source=source)

    return make


def _forwarded_event(topic: str) -> Any:
    def make(event: EventBase) -> EventBase:
        # The start event's id is derived from the source event's, so a redelivered source
        # event makes the same start event, which starts no second run.
        return EventBase(
            topic=topic,
            payload=dict(event.payload),
            source=f"event:{event.topic}",
            correlation_id=event.event_id,
            event_id=f"{event.event_id}@{topic}",
        )

    return make
