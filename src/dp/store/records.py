"""What the run store records, and the `RunStore` port the engine, the CLI and the API use.

A run is one execution of a plan; a task run is one task (or one chunk of a task mapped over a
stream) within it. The records are plain mutable dataclasses: adapters copy them in and out,
so changing a record you got back never changes what is stored.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, overload, runtime_checkable

from dp.errors import InvalidIdError, StoreError

__all__ = ["RunRecord", "RunStatus", "RunStore", "TaskRunRecord", "TaskStatus"]

_MAX_RUN_ID_LENGTH = 200
_RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # the IO manager uses run ids as folders
_RUN_ID_CHAR = re.compile(r"[A-Za-z0-9_.-]")


class RunStatus(StrEnum):
    """Where a run is in its life cycle."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIAL = "partial"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the run is over for good; an interrupted run can still be resumed."""
        return self in _FINISHED


_FINISHED = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.PARTIAL, RunStatus.CANCELLED}
)


class TaskStatus(StrEnum):
    """Where one task (or one mapped instance of it) is within a run."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class RunRecord:
    """One run of a plan: what was run, why, with which parameters, and how it ended.

    Attributes:
        run_id: Unique id, `[A-Za-z0-9_][A-Za-z0-9_.-]*`, at most 200 characters.
        dag_id: The plan's `dag_id`; resuming checks the plan still has it.
        pipeline: The pipeline name, or the task file for an ad-hoc run.
        target: What to import to rebuild the plan on resume (a file path or a module).
        selection: Which tasks were selected, e.g. `{"tags": [...], "task_names": [...]}`.
        params: The run parameters.
        status: The run's status.
        trigger: What started it: `manual`, `cron:<name>`, `api:<name>` or `event:<topic>`.
        event_id: The event that started the run; one event starts at most one run.
        created_at: When the run was recorded.
        started_at: When its first task started.
        finished_at: When it ended.
        error: Why it failed, in one line.
        metadata: Anything else worth keeping.
        plan: `ExecutionPlan.to_dict()`, for the UI and for resume checks.

    The dicts must be JSON-serialisable and are stored as JSON, so tuples come back as lists
    and keys as strings. Datetimes come back in UTC; a naive datetime is taken to be UTC.
    """

    run_id: str
    dag_id: str
    pipeline: str = ""
    target: str = ""
    selection: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    status: RunStatus = RunStatus.QUEUED
    trigger: str = "manual"
    event_id: str | None = None
    created_at: datetime = field(default_factory=_now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TaskRunRecord:
    """The state of one task, or of one instance of a task mapped over a stream, in a run.

    Attributes:
        run_id: The run it belongs to.
        task_name: The task's registered name.
        instance: `""` for a plain task; the input chunk's result id for a mapped task.
        status: The task's status.
        attempt: Which attempt this is, 1 for the first; 0 before it starts.
        started_at: When the last attempt started.
        finished_at: When the last attempt ended.
        duration: Seconds the last attempt took.
        error: One-line error, e.g. `ValueError: bad row 3`.
        traceback: The full traceback of that error.
        result_ids: The ids of the results it stored.
        output: Its captured stdout and stderr, already truncated by the engine.
    """

    run_id: str
    task_name: str
    instance: str = ""
    status: TaskStatus = TaskStatus.PENDING
    attempt: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration: float | None = None
    error: str | None = None
    traceback: str | None = None
    result_ids: list[str] = field(default_factory=list)
    output: str = ""


@runtime_checkable
class RunStore(Protocol):
    """Records runs and task runs: `MemoryRunStore` for tests, `SQLRunStore` for real use.

    Methods are synchronous and thread-safe; the engine calls them from a background thread.
    Every run id is checked, and a malformed one raises `InvalidIdError`.
    """

    def create_run(self, record: RunRecord) -> None:
        """Record a new run.

        Raises:
            DuplicateRunError: The event id already started a run (the error names that run),
                or the run id is taken. Concurrent creators of one event id: exactly one wins.
            StoreError: A dict field is not JSON-serialisable.
        """
        ...

    def update_run(
        self,
        run_id: str,
        *,
        status: RunStatus | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        error: str | None = None,
        metadata: dict[str, Any] | None = None,
        task_runs: Sequence[TaskRunRecord] = (),
    ) -> None:
        """Change the given fields of a run (`metadata` is replaced whole); `None` keeps one.

        `task_runs` are saved as by `save_task_runs`, in the same transaction: the engine
        records a run's end and its last task states in one write.

        Raises:
            RunNotFoundError: No run has this id.
        """
        ...

    def save_task_runs(self, records: Sequence[TaskRunRecord]) -> None:
        """Insert or replace task runs, keyed by (run_id, task_name, instance), all at once.

        This is the engine's batched hot path: one transaction for the whole batch. When a key
        occurs twice in the batch, the later record wins.

        Raises:
            RunNotFoundError: A record's run is not recorded; nothing was saved.
        """
        ...

    def get_run(self, run_id: str) -> RunRecord:
        """Return a run.

        Raises:
            RunNotFoundError: No run has this id.
        """
        ...

    def list_runs(
        self,
        *,
        status: RunStatus | Sequence[RunStatus] | None = None,
        pipeline: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Return runs newest first (`created_at`, then `run_id`, both descending)."""
        ...

    def count_runs(
        self, *, status: RunStatus | Sequence[RunStatus] | None = None, pipeline: str | None = None
    ) -> int:
        """Return how many runs match the same filters as `list_runs`."""
        ...

    def find_run_by_event(self, event_id: str) -> RunRecord | None:
        """Return the run the event started, or `None`."""
        ...

    def get_task_runs(self, run_id: str) -> list[TaskRunRecord]:
        """Return a run's task runs by start time (unstarted last), task name and instance.

        Raises:
            RunNotFoundError: No run has this id.
        """
        ...

    def delete_run(self, run_id: str) -> None:
        """Forget a run and its task runs.

        Raises:
            RunNotFoundError: No run has this id.
        """
        ...

    def close(self) -> None:
        """Release connections; the store must not be used afterwards."""
        ...


def _check_run_id(run_id: object) -> str:
    if type(run_id) is str and len(run_id) <= _MAX_RUN_ID_LENGTH and _RUN_ID.fullmatch(run_id):
        return run_id
    if type(run_id) is not str:
        reason = f"must be a str, not {type(run_id).__qualname__}"
    elif not run_id:
        reason = "must not be empty"
    elif len(run_id) > _MAX_RUN_ID_LENGTH:
        reason = f"is {len(run_id)} characters long, more than {_MAX_RUN_ID_LENGTH}"
    elif not _RUN_ID.fullmatch(run_id[0]):
        reason = f"must start with a letter, a digit or '_', not {run_id[0]!r}"
    else:
        bad = next(c for c in run_id if not _RUN_ID_CHAR.fullmatch(c))
        reason = f"contains {bad!r}; only letters, digits and '_', '.', '-' are allowed"
    raise InvalidIdError("run id", run_id, reason)


# SQLite keeps no time zone, so every adapter stores and returns UTC to behave alike.
@overload
def _as_utc(value: datetime) -> datetime: ...
@overload
def _as_utc(value: None) -> None: ...
@overload
def _as_utc(value: datetime | None) -> datetime | None: ...


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _status_filter(status: RunStatus | Sequence[RunStatus] | None) -> frozenset[RunStatus] | None:
    if status is None:
        return None
    if isinstance(status, str):
        return frozenset({RunStatus(status)})
    return frozenset(RunStatus(s) for s in status)


def _check_page(limit: int, offset: int) -> None:
    if limit < 0 or offset < 0:
        raise ValueError(f"limit and offset must be >= 0, got limit={limit}, offset={offset}")


def _not_json_error(value: Any, exc: Exception) -> StoreError:
    return StoreError(
        f"cannot store {reprlib.repr(value)} as JSON: {exc}. Run params, selection, metadata, "
        "plan and task result ids must be JSON-serialisable."
    )
