"""Run listeners the service attaches to its orchestrator: lifecycle events and metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dp.engine import ExecutionContext, RunResult, TaskRunResult
from dp.errors import DPError
from dp.events import Broker, EventBase
from dp.limits import storable_text
from dp.logs import get_logger
from dp.scheduler import MetricSample, Scheduler
from dp.store.records import TaskStatus

if TYPE_CHECKING:
    from dp.scheduler.poller import SourcePoller

__all__ = ["LifecycleEvents", "Metrics"]

_log = get_logger("dp.service")

_TASK_TOPICS = {
    TaskStatus.RUNNING: "dp.task.started",
    TaskStatus.SUCCEEDED: "dp.task.succeeded",
    TaskStatus.FAILED: "dp.task.failed",
    TaskStatus.SKIPPED: "dp.task.skipped",
    TaskStatus.CANCELLED: "dp.task.cancelled",
}


class LifecycleEvents:
    """Publishes `dp.run.started`, `dp.run.<status>` and `dp.task.<status>` on the bus, so
    pipelines (and anyone else) can react to runs: chain pipelines, alert, audit."""

    def __init__(self, broker: Broker, *, task_events: bool = True) -> None:
        self.broker = broker
        self.task_events = task_events

    def on_run_start(self, *, context: ExecutionContext, **_: Any) -> None:
        self._publish(
            "dp.run.started",
            {
                "run_id": context.run_id,
                "pipeline": context.pipeline,
                "dag_id": context.dag_id,
                "trigger": context.trigger,
            },
            context.run_id,
        )

    def on_task_update(self, *, context: ExecutionContext, task: TaskRunResult, **_: Any) -> None:
        topic = _TASK_TOPICS.get(task.status)
        if topic is None or not self.task_events:
            return
        self._publish(
            topic,
            {
                "run_id": context.run_id,
                "pipeline": context.pipeline,
                "task": task.task_name,
                "instance": task.instance,
                "attempt": task.attempts,
                "status": task.status.value,
                "error": storable_text(task.error),  # a task's text may hold anything
                "duration": task.duration,
            },
            context.run_id,
        )

    def on_run_end(self, *, context: ExecutionContext, result: RunResult, **_: Any) -> None:
        self._publish(
            f"dp.run.{result.status.value}",
            {
                "run_id": result.run_id,
                "pipeline": context.pipeline,
                "dag_id": result.dag_id,
                "status": result.status.value,
                "trigger": context.trigger,
                "error": storable_text(result.error),
                "duration": result.duration,
            },
            context.run_id,
        )

    def _publish(self, topic: str, payload: dict[str, Any], run_id: str) -> None:
        if self.broker.closed:
            return
        try:
            self.broker.publish_nowait(
                topic, EventBase(topic=topic, payload=payload, source="dp", correlation_id=run_id)
            )
        except DPError as exc:  # a full subscriber must not stall the run: drop and say so
            _log.warning("lifecycle.event_dropped", topic=topic, run_id=run_id, error=str(exc))


class Metrics:
    """Prometheus metrics of one service (in its own registry, so services do not collide).

    Names follow the robustness notes: `pipeline_executions_total{pipeline,status}`,
    `active_pipelines`, `queued_pipelines`, `pipeline_duration_seconds{pipeline}`, and at task
    level `task_executions_total{pipeline,status}`, `task_retries_total{pipeline}` and
    `task_duration_seconds{pipeline}`; the
    bus counts `databus_messages_total{topic}` for what the service publishes, triggers count
    `trigger_fires_total{trigger}` (runs they started), rejected starts
    `pipeline_rejections_total{pipeline,reason}`. Trigger failures are the scheduler's to
    count: `scheduler_trigger_failures_total{trigger}`. Polling sources count
    `source_polls_total{source}`, `source_poll_failures_total{source}` and
    `source_events_total{source}` (this instance's polls), and `source_circuit_open{source}`.
    """

    def __init__(
        self, scheduler: Scheduler | None = None, sources: SourcePoller | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        if scheduler is not None:
            r.register(_SampleMetrics(scheduler.metrics, "Scheduler trigger", _SCHEDULER_FAMILIES))
        if sources is not None:
            r.register(_SampleMetrics(sources.metrics, "Polling source", _SOURCE_FAMILIES))
        self.pipeline_executions = Counter(
            "pipeline_executions", "Finished pipeline runs", ["pipeline", "status"], registry=r
        )
        self.active_pipelines = Gauge("active_pipelines", "Runs executing now", registry=r)
        self.queued_pipelines = Gauge("queued_pipelines", "Runs waiting for a slot", registry=r)
        self.pipeline_duration = Histogram(
            "pipeline_duration_seconds", "Run duration", ["pipeline"], registry=r
        )
        self.task_executions = Counter(
            "task_executions", "Finished task runs", ["pipeline", "status"], registry=r
        )
        self.task_retries = Counter(
            "task_retries",
            "Attempts of a task beyond its first (retries after a failure, re-runs after an "
            "interruption)",
            ["pipeline"],
            registry=r,
        )
        self.task_duration = Histogram(
            "task_duration_seconds",
            "Task attempt duration",
            ["pipeline"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, float("inf")),
            registry=r,
        )
        self.messages = Counter(
            "databus_messages", "Events published through the service", ["topic"], registry=r
        )
        self.trigger_fires = Counter(
            "trigger_fires", "Runs started by a trigger", ["trigger"], registry=r
        )
        self.rejections = Counter(
            "pipeline_rejections", "Run starts refused", ["pipeline", "reason"], registry=r
        )

    # RunListener
    def on_run_start(self, **_: Any) -> None:
        pass

    def on_task_update(self, *, context: ExecutionContext, task: TaskRunResult, **_: Any) -> None:
        if task.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED):
            self.task_executions.labels(context.pipeline, task.status.value).inc()
            if task.attempts > 1:
                self.task_retries.labels(context.pipeline).inc(task.attempts - 1)
            if task.duration is not None:
                self.task_duration.labels(context.pipeline).observe(task.duration)

    def on_run_end(self, *, context: ExecutionContext, result: RunResult, **_: Any) -> None:
        self.pipeline_executions.labels(context.pipeline, result.status.value).inc()
        if result.duration is not None:
            self.pipeline_duration.labels(context.pipeline).observe(result.duration)


#: the families of the scheduler's and the poller's samples, served (empty) before the first
#: sample too, so a dashboard or alert on them finds them on a service without such triggers
_SCHEDULER_FAMILIES = (
    "scheduler_trigger_fires_total",
    "scheduler_trigger_failures_total",
    "scheduler_trigger_skipped_total",
    "scheduler_trigger_circuit_open",
)
_SOURCE_FAMILIES = (
    "source_polls_total",
    "source_poll_failures_total",
    "source_events_total",
    "source_circuit_open",
)


class _SampleMetrics:
    """A Prometheus collector serving `MetricSample`s (the scheduler's fires, failures, skipped
    fire times and open circuits per trigger; a poller's polls, failures, events and open
    circuits per source) next to the service's own metrics, read at scrape time."""

    def __init__(
        self, read: Callable[[], list[MetricSample]], what: str, names: tuple[str, ...]
    ) -> None:
        self.read = read
        self.what = what
        self.names = names

    def describe(self) -> list[Metric]:
        return []  # the triggers are known only once registered; nothing to check up front

    def collect(self) -> list[Metric]:
        samples = self.read()
        labels = {s.name: sorted(s.labels) for s in samples}
        families = {name: self._family(name, labels.get(name, [])) for name in self.names}
        for sample in samples:
            family = families.get(sample.name)
            if family is None:
                family = families[sample.name] = self._family(sample.name, labels[sample.name])
            family.add_metric([sample.labels[k] for k in labels[sample.name]], sample.value)
        return list(families.values())

    def _family(self, name: str, keys: list[str]) -> CounterMetricFamily | GaugeMetricFamily:
        if name.endswith("_total"):
            return CounterMetricFamily(
                name.removesuffix("_total"), f"{self.what} counter", labels=keys
            )
        return GaugeMetricFamily(name, f"{self.what} state", labels=keys)
