"""What the run store records, and the `RunStore` port the engine, the CLI and the API use.

A run is one execution of a plan; a task run is one task (or one chunk of a task mapped over a
stream) within it. The records are plain mutable dataclasses: adapters copy them in and out,
so changing a record you got back never changes what is stored.
"""

from __future__ import annotations

import os
import reprlib
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, overload, runtime_checkable

from dp.errors import InvalidArgumentError, StoreError
from dp.ids import check_id
from dp.statuses import LIVE_RUN, RunStatus, TaskStatus

#: RunStatus and TaskStatus live in dp.statuses; they are re-exported here for the code that
#: imported them from the store before.
__all__ = [
    "HOST",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "SourceRecord",
    "TaskRunRecord",
    "TaskStatus",
    "is_stale",
    "owner_of",
    "pid_alive",
    "tick_key",
]

#: this machine's name, recorded as the owner of the runs (and attempts) it executes
HOST = socket.gethostname()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class RunRecord:
    """One run of a plan: what was run, why, with which parameters, and how it ended.

    Attributes:
        run_id: Unique id following `dp.ids` (it names the run's results folder).
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
        epoch: The ownership epoch: 0 until a process takes the run, then raised by one at
            every take-over (`RunStore.claim_run`). Writes carrying an older epoch are refused.
        owner_host: The machine of the process that owns the run.
        owner_pid: That process's id.
        lease_until: Until when the owner's lease holds; a live owner renews it. A running run
            whose lease ran out, or whose owner process is gone, is stale (`is_stale`).
        results: Where the run's results are, as a results URL without credentials
            (`file:///srv/dp/results`, `s3://bucket/prefix?endpoint=...`); "" if not known.
        scheduled_for: The time a cron run was due (UTC); None for runs not started by a
            schedule. A retry keeps its parent's: it is a run for the same time.
        schedule_tz: The schedule's time zone (`Europe/Berlin`), the zone tasks see
            `scheduled_for` in; None with `scheduled_for`.
        parent_run_id: The run this one retries (`dp runs retry`); None for a first run.

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
    epoch: int = 0
    owner_host: str | None = None
    owner_pid: int | None = None
    lease_until: datetime | None = None
    results: str = ""
    scheduled_for: datetime | None = None
    schedule_tz: str | None = None
    parent_run_id: str | None = None


@dataclass(slots=True)
class TaskRunRecord:
    """One attempt of a task, or of one instance of a task mapped over a stream, in a run.

    `get_task_runs` returns each task's latest attempt; `get_attempts` every attempt, the
    earlier ones (failed and retried, or interrupted and resumed) included.

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
        host: The machine the attempt ran on.
        pid: The process that ran it.
        queue: The broker queue the attempt was sent to (Celery executor; None elsewhere).
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
    host: str | None = None
    pid: int | None = None
    queue: str | None = None


@dataclass(slots=True)
class SourceRecord:
    """What the store keeps of one polling source: its cursor, last poll, circuit and lease.

    Attributes:
        name: The source's name.
        topic: Where its events are published.
        every: Its interval in seconds.
        cursor: The cursor the next poll gets (any JSON value); committed after the events.
        polled_at: When the last poll ended.
        last_error: The last failure, as `Type: message`; None after a success.
        failures: Consecutive failures since the last success.
        circuit: `"closed"` (polling) or `"open"` (backing off after `max_failures`).
        holder: The instance polling it (`host:pid:token`), while its lease lasts.
        lease_until: When the holder's lease runs out; another instance may take it then.
    """

    name: str
    topic: str = ""
    every: float = 0.0
    cursor: Any = None
    polled_at: datetime | None = None
    last_error: str | None = None
    failures: int = 0
    circuit: str = "closed"
    holder: str | None = None
    lease_until: datetime | None = None


@runtime_checkable
class RunStore(Protocol):
    """Records runs and task runs: `MemoryRunStore` for tests, `SQLRunStore` for real use.

    Methods are synchronous and thread-safe; the engine calls them from a background thread.
    Every run id is checked, and a malformed one raises `InvalidIdError`. Any method raises
    `StoreUnavailableError` (a `DependencyUnavailableError`) when the store's database cannot
    be reached or does not answer in time: an outage to retry, not an error of the data.
    """

    def create_run(self, record: RunRecord) -> None:
        """Record a new run.

        Raises:
            DuplicateRunError: The event id already started a run (the error names that run),
                a run of the same pipeline is recorded for the same `scheduled_for` (not
                counting retries: `tick_key`), or the run id is taken. Concurrent creators of
                one event id or tick: exactly one wins.
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
        attempts: Sequence[TaskRunRecord] = (),
        epoch: int | None = None,
    ) -> None:
        """Change the given fields of a run (`metadata` is replaced whole); `None` keeps one.

        `task_runs` and `attempts` are saved as by `save_task_runs`, in the same transaction:
        the engine records a run's end and its last task states in one write.

        Raises:
            RunNotFoundError: No run has this id.
            FencedError: `epoch` is given and the run is at another epoch; nothing changed.
        """
        ...

    def save_task_runs(
        self,
        records: Sequence[TaskRunRecord],
        *,
        attempts: Sequence[TaskRunRecord] = (),
        epoch: int | None = None,
    ) -> None:
        """Insert or replace task runs, keyed by (run_id, task_name, instance), all at once.

        This is the engine's batched hot path: one transaction for the whole batch. When a key
        occurs twice in the batch, the later record wins. `attempts` are earlier attempts that
        a retry or a resume superseded, kept by (run_id, task_name, instance, attempt).
        With `epoch`, every run of the batch must still be at that epoch.

        Raises:
            RunNotFoundError: A record's run is not recorded; nothing was saved.
            FencedError: `epoch` is given and a run is at another epoch; nothing was saved.
        """
        ...

    def claim_run(
        self,
        run_id: str,
        *,
        host: str,
        pid: int,
        lease_until: datetime,
        expected_epoch: int | None = None,
        status: RunStatus = RunStatus.RUNNING,
        started_at: datetime | None = None,
    ) -> int:
        """Become the run's owner: raise its epoch by one, record the owner and its lease.

        Whatever an older owner writes with its epoch is refused from then on. With
        `expected_epoch`, the claim is a compare-and-set: of several processes claiming the
        same run at the same epoch, exactly one wins and the others get `FencedError`.

        Returns:
            The new epoch.

        Raises:
            RunNotFoundError: No run has this id.
            FencedError: The run is no longer at `expected_epoch`.
        """
        ...

    def renew_lease(self, run_id: str, *, epoch: int, lease_until: datetime) -> None:
        """Extend the owner's lease; the owner calls it well before the lease runs out.

        Raises:
            RunNotFoundError: No run has this id.
            FencedError: The run is at another epoch: someone took it over.
        """
        ...

    def get_attempts(self, run_id: str) -> list[TaskRunRecord]:
        """Return every attempt of every task of a run, by task name, instance and attempt.

        Raises:
            RunNotFoundError: No run has this id.
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
        trigger: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Return runs newest first (`created_at`, then `run_id`, both descending).

        `trigger` matches a run's trigger exactly or its kind: `cron` matches `cron:<name>`.
        """
        ...

    def count_runs(
        self,
        *,
        status: RunStatus | Sequence[RunStatus] | None = None,
        pipeline: str | None = None,
        trigger: str | None = None,
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

    def last_fire(self, name: str) -> datetime | None:
        """When the cron trigger `name` last fired (UTC), or None: the store is the
        scheduler's `ScheduleState`, shared by every `dp serve` on one database."""
        ...

    def record_fires(self, fires: Mapping[str, datetime]) -> None:
        """Remember these fire times; a time earlier than the one stored (another instance
        fired later already) leaves the stored one."""
        ...

    def claim_source(self, name: str, *, holder: str, now: datetime, lease_until: datetime) -> bool:
        """Take or renew the lease of source `name` (creating its row) unless another holder's
        lease lasts past `now`; whether `holder` holds it now. Of concurrent claimers of a
        free source, exactly one wins."""
        ...

    def save_source(self, record: SourceRecord) -> bool:
        """Store the source's cursor, last poll, error and circuit, if `record.holder` still
        holds its lease (the lease itself is left as it is); False if it does not."""
        ...

    def release_source(self, name: str, *, holder: str) -> None:
        """Give up `holder`'s lease of source `name` (at shutdown), so another instance
        takes it over at once; nothing if it holds none."""
        ...

    def get_source(self, name: str) -> SourceRecord | None:
        """The stored state of source `name`, or None if it was never polled."""
        ...

    def list_sources(self) -> list[SourceRecord]:
        """Every source's stored state, by name."""
        ...

    def ping(self) -> None:
        """Check that the store can be reached (readiness probes, the API's outage check).

        Raises:
            StoreUnavailableError: It cannot; the message names the store and the reason.
        """
        ...

    def close(self) -> None:
        """Release connections; the store must not be used afterwards."""
        ...


def pid_alive(pid: object) -> bool:
    """Whether a process with this id exists on this machine."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def owner_of(record: RunRecord) -> tuple[str | None, int | None]:
    """The (host, pid) that owns a run; runs recorded by dp before schema 2 kept it in
    `metadata["owner"]`."""
    if record.owner_host is not None:
        return record.owner_host, record.owner_pid
    legacy = (record.metadata or {}).get("owner") or {}
    host, pid = legacy.get("host"), legacy.get("pid")
    return (host if isinstance(host, str) else None, pid if isinstance(pid, int) else None)


def is_stale(record: RunRecord, *, now: datetime | None = None) -> bool:
    """Whether a run that says it is running (or queued) has lost its owner: the owner process
    is gone from this machine, or its lease ran out without being renewed. A stale run can be
    resumed (`dp runs resume`); an interrupted one was stopped on purpose and is not stale."""
    if record.status not in LIVE_RUN:
        return False
    host, pid = owner_of(record)
    if host == HOST and pid is not None and pid != os.getpid() and not pid_alive(pid):
        return True
    lease = record.lease_until
    return lease is not None and _as_utc(lease) < (now or datetime.now(UTC))


def tick_key(record: RunRecord) -> tuple[str, datetime] | None:
    """What makes a scheduled run unique: `(pipeline, scheduled_for)`, for a run a schedule
    started (a retry shares its parent's tick and is not held to it); None for others."""
    if record.scheduled_for is None or record.parent_run_id is not None:
        return None
    return (record.pipeline, _as_utc(record.scheduled_for))


def _check_run_id(run_id: object) -> str:
    return check_id("run id", run_id)


def _check_source(name: object) -> str:
    return check_id("source name", name)


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


def _fire_time(name: str, when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidArgumentError(
            "when", when, f"an aware datetime (the fire time of trigger {name!r} has no time zone)"
        )
    return when.astimezone(UTC)


def _status_filter(status: RunStatus | Sequence[RunStatus] | None) -> frozenset[RunStatus] | None:
    if status is None:
        return None
    if isinstance(status, str):
        return frozenset({RunStatus(status)})
    return frozenset(RunStatus(s) for s in status)


def _trigger_matches(trigger: str, wanted: str | None) -> bool:
    return wanted is None or trigger == wanted or trigger.startswith(wanted + ":")


def _check_page(limit: int, offset: int) -> None:
    for argument, value in (("limit", limit), ("offset", offset)):
        if value < 0:
            raise InvalidArgumentError(argument, value, ">= 0 (limit and offset count rows)")


def _not_json_error(value: Any, exc: Exception) -> StoreError:
    return StoreError(
        f"cannot store {reprlib.repr(value)} as JSON: {exc}. Run params, selection, metadata, "
        "plan and task result ids must be JSON-serialisable."
    )
