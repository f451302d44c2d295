"""What travels through the engine: tasks to execute, their outcomes, and run results."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from dp.errors import InvalidArgumentError, StoreUnavailableError
from dp.store.records import RunStatus, TaskStatus
from dp.tasks import TaskMetadata

if TYPE_CHECKING:
    from dp.io import IOManager
    from dp.planner import ExecutionPlan

__all__ = [
    "ExecutableTask",
    "ExecutionContext",
    "RunHandle",
    "RunListener",
    "RunResult",
    "TaskOutcome",
    "TaskRunResult",
    "chunk_result_id",
    "manifest_result_id",
]

#: Result id of a plain task's single result.
OUTPUT = "output"

#: An input: `(upstream_task, result_id)`, or `(upstream_task, (result_id, ...))` for a
#: parameter that collects a whole stream.
Input = tuple[str, str | tuple[str, ...]]


def chunk_result_id(base: str, index: int) -> str:
    """Result id of the `index`-th chunk yielded by a task whose own result id is `base`."""
    return f"chunk-{index:06d}" if base == OUTPUT else f"{base}.chunk-{index:06d}"


def manifest_result_id(base: str) -> str:
    """Result id of the list of chunk ids a finished stream saves, so resume can trust it."""
    return "chunks" if base == OUTPUT else f"{base}.chunks"


def mapped_result_id(input_result_id: str) -> str:
    """Result id of a task mapped over a stream, for the instance fed by `input_result_id`."""
    return f"map-{input_result_id}"


@dataclass(slots=True)
class ExecutableTask:
    """One attempt of one task (or one instance of a mapped task), as handed to a worker.

    Workers receive references, never data: `inputs` maps each parameter to the upstream
    task and result id(s) to load through the IO manager.
    """

    run_id: str
    task_name: str
    task_result_id: str
    metadata: TaskMetadata
    inputs: dict[str, Input] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    retry_count: int = 0
    instance: str = ""
    #: the run's ownership epoch when this attempt was handed out (see `RunStore.claim_run`)
    epoch: int = 0
    #: attempts an earlier owner already made (a resumed task goes on counting from there)
    attempt_offset: int = 0
    #: upstream task -> the run whose stored results its inputs are (a retry reads the
    #: results it reuses where its parent stored them); absent: this run
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def attempt(self) -> int:
        return self.attempt_offset + self.retry_count + 1

    @property
    def key(self) -> tuple[str, str]:
        return (self.task_name, self.instance)

    def describe(self) -> str:
        suffix = f"[{self.instance}]" if self.instance else ""
        return f"{self.task_name}{suffix}"


@dataclass(slots=True)
class TaskOutcome:
    """How one attempt ended. Small on purpose: it is what workers send back."""

    task_name: str
    instance: str
    ok: bool
    result_ids: list[str] = field(default_factory=list)
    started_at: float = 0.0  # time.time() of the start
    duration: float = 0.0
    error: str | None = None
    traceback: str | None = None
    output: str = ""
    retryable: bool = True
    host: str | None = None  # where the attempt ran
    pid: int | None = None


@dataclass(slots=True)
class TaskRunResult:
    """The final state of one task (or mapped instance) in a run."""

    task_name: str
    status: TaskStatus
    instance: str = ""
    attempts: int = 0
    duration: float | None = None
    #: epoch seconds (cheap to take on the hot path); see `started_at` / `finished_at`
    start_time: float | None = None
    end_time: float | None = None
    error: str | None = None
    traceback: str | None = None
    result_ids: list[str] = field(default_factory=list)
    output: str = ""
    host: str | None = None
    pid: int | None = None
    #: the broker queue the attempt waits in or was taken from (Celery executor)
    queue: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.task_name, self.instance)

    @property
    def started_at(self) -> datetime | None:
        return None if self.start_time is None else datetime.fromtimestamp(self.start_time, UTC)

    @property
    def finished_at(self) -> datetime | None:
        return None if self.end_time is None else datetime.fromtimestamp(self.end_time, UTC)


@dataclass(slots=True)
class RunResult:
    """What `Orchestrator.start_pipeline` returns: the run's status and every task's fate."""

    run_id: str
    dag_id: str
    status: RunStatus
    tasks: dict[tuple[str, str], TaskRunResult] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    #: the outage that kept the run's end out of the store (it stays resumable there)
    unrecorded: StoreUnavailableError | None = None

    def __repr__(self) -> str:  # asyncio reprs task results: keep it short for big runs
        return (
            f"RunResult(run_id={self.run_id!r}, status={self.status.value!r}, "
            f"tasks={len(self.tasks)}, error={self.error!r})"
        )

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.SUCCEEDED

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def task(self, name: str, instance: str = "") -> TaskRunResult:
        """The result of task `name` (or of one instance of a mapped task)."""
        return self.tasks[(name, instance)]

    def statuses(self) -> dict[str, TaskStatus]:
        """Status per task name; a mapped task shows its worst instance."""
        worst: dict[str, TaskStatus] = {}
        for (name, _), result in self.tasks.items():
            seen = worst.get(name)
            if seen is None or _rank(result.status) > _rank(seen):
                worst[name] = result.status
        return worst

    def instances(self, name: str) -> list[TaskRunResult]:
        """Every instance of a task mapped over a stream, in the stream's order."""
        return [r for (task_name, _), r in self.tasks.items() if task_name == name]


_SEVERITY = {
    TaskStatus.SUCCEEDED: 0,
    TaskStatus.PENDING: 1,
    TaskStatus.QUEUED: 2,
    TaskStatus.RUNNING: 3,
    TaskStatus.SKIPPED: 4,
    TaskStatus.CANCELLED: 5,
    TaskStatus.INTERRUPTED: 6,
    TaskStatus.LOST: 6,
    TaskStatus.FAILED: 7,
}


def _rank(status: TaskStatus) -> int:
    return _SEVERITY[status]


@dataclass(slots=True)
class ExecutionContext:
    """Everything about one run that is not about a single task."""

    run_id: str
    dag_id: str
    plan: ExecutionPlan
    io_manager: IOManager
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    trigger: str = "manual"
    pipeline: str = ""
    #: a cron run's tick (and its zone); None for other runs, whose tasks get `created_at`
    scheduled_for: datetime | None = None
    schedule_tz: str | None = None
    #: when the run was recorded (on resume: first recorded)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: the run this one retries, and the tasks whose results it reuses: task -> the run
    #: that stored them (the parent, or the run the parent reused them from)
    parent_run_id: str | None = None
    reuse: dict[str, str] = field(default_factory=dict)

    def task_time(self) -> list[str]:
        """What a task's `scheduled_for` is made of, as JSON travels: `[UTC ISO, zone]`."""
        when = self.scheduled_for or self.created_at
        return [when.astimezone(UTC).isoformat(), self.schedule_tz or "UTC"]


def scheduled_time(value: object) -> datetime:
    """The aware datetime a task's `scheduled_for` receives, in its schedule's zone, from
    `ExecutionContext.task_time` (already a datetime when nothing serialised it)."""
    if isinstance(value, datetime):
        return value
    if not (isinstance(value, list | tuple) and len(value) == 2):
        raise InvalidArgumentError("scheduled_for", value, "[UTC ISO time, zone] (dp sends it)")
    from zoneinfo import ZoneInfo

    when, zone = value
    return datetime.fromisoformat(str(when)).astimezone(ZoneInfo(str(zone)))


class RunHandle:
    """A submitted run: its id and context now, its `RunResult` when it ends."""

    def __init__(self, context: ExecutionContext) -> None:
        self.context = context
        self.task: asyncio.Task[RunResult] | None = None
        #: how the run ends if its task is cancelled: interrupted (shutdown, resumable) unless
        #: `Orchestrator.cancel` says cancelled
        self.stop_status = RunStatus.INTERRUPTED

    @property
    def run_id(self) -> str:
        return self.context.run_id

    def done(self) -> bool:
        return self.task is not None and self.task.done()

    async def result(self) -> RunResult:
        """Wait for the run to end. Cancelling this wait does not stop the run."""
        assert self.task is not None
        return await asyncio.shield(self.task)


class RunListener(Protocol):
    """Observes runs (progress displays, lifecycle events, metrics). Methods are called on the
    event loop's thread and must be quick; they take keyword arguments only and must accept
    unknown ones (`**_`), so new arguments never break a listener."""

    def on_run_start(self, *, context: ExecutionContext, **_: Any) -> None: ...

    def on_task_update(
        self, *, context: ExecutionContext, task: TaskRunResult, **_: Any
    ) -> None: ...

    def on_run_end(self, *, context: ExecutionContext, result: RunResult, **_: Any) -> None: ...
