"""Pipelines: a named task selection bound to the triggers that start it.

Defined next to the tasks, in the same Python file::

    pipeline("daily_sales", tags=["sales"], cron="0 3 * * *", timezone="Europe/Berlin")
    pipeline("on_order", tasks=["score_order"], on="sales.orders.created")
    pipeline("load", tasks=["load"], on=OnEvent("dp.run.succeeded", where={"pipeline": "extract"}))

`dp serve FILE` starts each pipeline on its cron schedules, on events matching its patterns
(the event payload becomes the run parameters), and on HTTP calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from dp.errors import (
    DPError,
    InvalidPipelineError,
    PipelineError,
    PipelineNotFoundError,
)
from dp.events.event import EventBase
from dp.events.ports import StartFrom
from dp.events.topics import validate_pattern
from dp.ids import name_problem
from dp.planner import DAGBuilder, ExecutionPlan, Planner
from dp.tasks import TaskRegistry

__all__ = [
    "Cron",
    "OnEvent",
    "Pipeline",
    "PipelineError",
    "PipelineRegistry",
    "get_pipelines",
    "pipeline",
]


@dataclass(frozen=True, slots=True)
class Cron:
    """A cron schedule: 5 fields (or 6 with seconds), in an IANA time zone."""

    expression: str
    timezone: str = "UTC"
    misfire: Literal["run_once", "skip"] = "run_once"


@dataclass(frozen=True, slots=True)
class OnEvent:
    """Start on events whose topic matches `pattern` (`*` one segment, `**` any).

    `where` keeps only events whose payload has these key/value pairs; `filter` is any
    predicate on the event. The event's payload becomes the run parameters (keys that are
    not run parameters of the pipeline are ignored).

    On a Redis or Kafka bus the pipeline reads the pattern through its own durable group
    (shared by every `dp serve` instance): events published while no instance runs are run
    when one starts. `start` says where that group begins the first time the pipeline is
    served: `"now"` (events from then on) or `"earliest"` (also what the bus still holds).
    """

    pattern: str
    where: Mapping[str, Any] = field(default_factory=dict)
    filter: Callable[[EventBase], bool] | None = None
    start: StartFrom = "now"

    def accepts(self, event: EventBase) -> bool:
        payload = event.payload
        if any(payload.get(key) != value for key, value in self.where.items()):
            return False
        return self.filter is None or bool(self.filter(event))


@dataclass(frozen=True)
class Pipeline:
    """A named selection of tasks (by tags and/or names) and what starts it."""

    name: str
    tags: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    schedules: tuple[Cron, ...] = ()
    events: tuple[OnEvent, ...] = ()
    api: bool = True
    params: Mapping[str, Any] = field(default_factory=dict)
    max_concurrent_runs: int | None = None
    description: str = ""
    registry: TaskRegistry | None = field(default=None, repr=False, compare=False)

    @property
    def start_topic(self) -> str:
        """Events on this topic start the pipeline (their payload: the run parameters)."""
        return f"dp.pipelines.{self.name}.start"

    def plan(self) -> ExecutionPlan:
        """Plan the pipeline's tasks; errors name the pipeline."""
        try:
            return Planner(DAGBuilder(self.registry)).create_execution_plan(
                tags=self.tags or None, task_names=self.tasks or None
            )
        except DPError as exc:
            raise InvalidPipelineError(self.name, f"cannot be planned: {exc}") from exc

    def selection(self) -> dict[str, list[str]]:
        return {"tags": list(self.tags), "task_names": list(self.tasks)}


class PipelineRegistry:
    """Pipelines by name. `get_pipelines()` is the one `pipeline(...)` fills by default."""

    def __init__(self) -> None:
        self._pipelines: dict[str, Pipeline] = {}

    def register(self, definition: Pipeline) -> Pipeline:
        existing = self._pipelines.get(definition.name)
        if existing is not None and existing != definition:
            raise InvalidPipelineError(
                definition.name,
                "it is already defined differently; give one of them another name.",
            )
        self._pipelines[definition.name] = definition
        return definition

    def get(self, name: str) -> Pipeline:
        try:
            return self._pipelines[name]
        except KeyError:
            raise PipelineNotFoundError(name, sorted(self._pipelines)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._pipelines

    def __iter__(self) -> Iterator[Pipeline]:
        return iter(list(self._pipelines.values()))

    def __len__(self) -> int:
        return len(self._pipelines)

    def names(self) -> list[str]:
        return list(self._pipelines)

    def clear(self) -> None:
        self._pipelines.clear()


_default_pipelines = PipelineRegistry()


def get_pipelines() -> PipelineRegistry:
    """The process-wide pipeline registry that `pipeline(...)` fills by default."""
    return _default_pipelines


def pipeline(
    name: str,
    *,
    tags: Iterable[str] = (),
    tasks: Iterable[str] = (),
    cron: str | Cron | Sequence[str | Cron] = (),
    timezone: str = "UTC",
    on: str | OnEvent | Sequence[str | OnEvent] = (),
    start: StartFrom = "now",
    api: bool = True,
    params: Mapping[str, Any] | None = None,
    max_concurrent_runs: int | None = None,
    description: str = "",
    registry: TaskRegistry | None = None,
    pipelines: PipelineRegistry | None = None,
) -> Pipeline:
    """Define and register a pipeline.

    Args:
        name: Letters, digits, '_' and '-'; used in topics and URLs.
        tags: Run the tasks with any of these tags (and their upstream).
        tasks: Run these tasks (and their upstream). Neither: every task of the registry.
        cron: Cron expression(s) or `Cron(...)`s that start it.
        timezone: Time zone of plain-string cron expressions.
        on: Topic pattern(s) or `OnEvent(...)`s whose events start it.
        start: Where the durable group of a plain-string `on=` pattern begins the first time
            the pipeline is served: `"now"`, or `"earliest"` to also run the events the bus
            already holds (see `OnEvent`).
        api: Whether HTTP calls may start it.
        params: Default run parameters (an event's payload or an API body overrides them).
        max_concurrent_runs: Runs of this pipeline at once; more are refused (HTTP 429).
        registry: Task registry to plan from (default: the process-wide one).
        pipelines: Pipeline registry to add it to (default: `get_pipelines()`).
    """
    problem = name_problem(name)  # it becomes a topic segment and a URL part
    if problem is not None:
        raise InvalidPipelineError(
            name, f"invalid pipeline name: it {problem}; use 1-100 letters, digits, '_' or '-'."
        )
    schedules = tuple(
        item if isinstance(item, Cron) else Cron(item, timezone) for item in _listed(cron)
    )
    events = tuple(
        item if isinstance(item, OnEvent) else OnEvent(item, start=start) for item in _listed(on)
    )
    for spec in events:
        try:
            validate_pattern(spec.pattern)
        except DPError as exc:
            raise InvalidPipelineError(name, str(exc)) from exc
        if spec.start not in ("now", "earliest"):
            raise InvalidPipelineError(
                name, f"start must be 'now' or 'earliest', not {spec.start!r}."
            )
    if max_concurrent_runs is not None and max_concurrent_runs < 1:
        raise InvalidPipelineError(name, "max_concurrent_runs must be >= 1.")
    definition = Pipeline(
        name=name,
        tags=tuple(tags),
        tasks=tuple(tasks),
        schedules=schedules,
        events=events,
        api=api,
        params=MappingProxyType(dict(params or {})),
        max_concurrent_runs=max_concurrent_runs,
        description=description,
        registry=registry,
    )
    return (pipelines if pipelines is not None else _default_pipelines).register(definition)


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | Cron | OnEvent):
        return [value]
    return list(value)
