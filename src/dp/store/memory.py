"""`MemoryRunStore`: the run store in a few dicts, for tests and throwaway runs."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from dp.errors import DuplicateRunError, FencedError, RunNotFoundError, StoreError
from dp.limits import storable_text
from dp.store.records import (
    RunRecord,
    RunStatus,
    SourceRecord,
    TaskRunRecord,
    TaskStatus,
    _as_utc,
    _check_page,
    _check_run_id,
    _check_source,
    _fire_time,
    _not_json_error,
    _status_filter,
    _trigger_matches,
    tick_key,
)

__all__ = ["MemoryRunStore"]

_TaskKey = tuple[str, str]  # (task_name, instance)
_AttemptKey = tuple[str, str, int]  # (task_name, instance, attempt)
_NEVER = datetime.min.replace(tzinfo=UTC)


class MemoryRunStore:
    """A `RunStore` held in memory; nothing survives the process.

    It keeps the same contract as `SQLRunStore`, down to storing the dict fields as JSON
    (tuples come back as lists), so tests written against it hold for the real store.
    Records are copied in and out: changing one never changes what is stored.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, RunRecord] = {}
        self._events: dict[str, str] = {}  # event id -> run id
        self._ticks: dict[tuple[str, datetime], str] = {}  # (pipeline, tick) -> run id
        self._tasks: dict[str, dict[_TaskKey, TaskRunRecord]] = {}
        self._attempts: dict[str, dict[_AttemptKey, TaskRunRecord]] = {}
        self._fires: dict[str, datetime] = {}
        self._sources: dict[str, SourceRecord] = {}

    def create_run(self, record: RunRecord) -> None:
        """Record a new run; see `RunStore.create_run`."""
        _check_run_id(record.run_id)
        stored = _copy_run(record)
        with self._lock:
            if record.event_id is not None and record.event_id in self._events:
                raise DuplicateRunError(self._events[record.event_id], record.event_id)
            tick = tick_key(record)
            if tick is not None and tick in self._ticks:
                raise DuplicateRunError(self._ticks[tick], record.event_id)
            if record.run_id in self._runs:
                raise DuplicateRunError(record.run_id)
            self._runs[record.run_id] = stored
            if tick is not None:
                self._ticks[tick] = record.run_id
            self._tasks[record.run_id] = {}
            self._attempts[record.run_id] = {}
            if record.event_id is not None:
                self._events[record.event_id] = record.run_id

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
        """Change the given fields of a run; see `RunStore.update_run`."""
        _check_run_id(run_id)
        new_metadata = None if metadata is None else _json_copy(metadata)
        if any(r.run_id != run_id for r in (*task_runs, *attempts)):
            raise StoreError(f"update_run({run_id!r}) got task runs of another run")
        tasks = [_copy_task_run(r) for r in task_runs]
        earlier = [_copy_task_run(r) for r in attempts]
        with self._lock:
            run = self._get(run_id)
            _check_epoch(run, epoch)
            self._put_task_runs(tasks, earlier)
            if status is not None:
                run.status = RunStatus(status)
            if started_at is not None:
                run.started_at = _as_utc(started_at)
            if finished_at is not None:
                run.finished_at = _as_utc(finished_at)
            if error is not None:
                run.error = storable_text(error)
            if new_metadata is not None:
                run.metadata = new_metadata

    def save_task_runs(
        self,
        records: Sequence[TaskRunRecord],
        *,
        attempts: Sequence[TaskRunRecord] = (),
        epoch: int | None = None,
    ) -> None:
        """Insert or replace task runs in one step; see `RunStore.save_task_runs`."""
        copies = [_copy_task_run(r) for r in records]
        earlier = [_copy_task_run(r) for r in attempts]
        for record in (*copies, *earlier):
            _check_run_id(record.run_id)
        with self._lock:
            # Check every run first, so that a bad batch saves nothing, like a rolled-back one.
            for run_id in dict.fromkeys(r.run_id for r in (*copies, *earlier)):
                _check_epoch(self._get(run_id), epoch)
            self._put_task_runs(copies, earlier)

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
        """Become the run's owner at a new epoch; see `RunStore.claim_run`."""
        _check_run_id(run_id)
        with self._lock:
            run = self._get(run_id)
            _check_epoch(run, expected_epoch)
            run.epoch += 1
            run.owner_host, run.owner_pid = host, pid
            run.lease_until = _as_utc(lease_until)
            run.status = RunStatus(status)
            if started_at is not None:
                run.started_at = _as_utc(started_at)
            return run.epoch

    def renew_lease(self, run_id: str, *, epoch: int, lease_until: datetime) -> None:
        """Extend the owner's lease; see `RunStore.renew_lease`."""
        _check_run_id(run_id)
        with self._lock:
            run = self._get(run_id)
            _check_epoch(run, epoch)
            run.lease_until = _as_utc(lease_until)

    def get_attempts(self, run_id: str) -> list[TaskRunRecord]:
        """Return copies of every attempt of a run; see `RunStore.get_attempts`."""
        _check_run_id(run_id)
        with self._lock:
            self._get(run_id)
            every = [*self._attempts[run_id].values(), *self._tasks[run_id].values()]
            attempts = [_copy_task_run(t) for t in every]
        attempts.sort(key=lambda t: (t.task_name, t.instance, t.attempt))
        return attempts

    def _put_task_runs(self, records: list[TaskRunRecord], attempts: list[TaskRunRecord]) -> None:
        for record in records:
            self._tasks[record.run_id][record.task_name, record.instance] = record
        for record in attempts:
            key = (record.task_name, record.instance, record.attempt)
            self._attempts[record.run_id][key] = record

    def get_run(self, run_id: str) -> RunRecord:
        """Return a copy of a run; see `RunStore.get_run`."""
        _check_run_id(run_id)
        with self._lock:
            return _copy_run(self._get(run_id))

    def list_runs(
        self,
        *,
        status: RunStatus | Sequence[RunStatus] | None = None,
        pipeline: str | None = None,
        trigger: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Return copies of runs, newest first; see `RunStore.list_runs`."""
        _check_page(limit, offset)
        with self._lock:
            runs = self._matching(status, pipeline, trigger)
            runs.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
            return [_copy_run(r) for r in runs[offset : offset + limit]]

    def count_runs(
        self,
        *,
        status: RunStatus | Sequence[RunStatus] | None = None,
        pipeline: str | None = None,
        trigger: str | None = None,
    ) -> int:
        """Return how many runs match; see `RunStore.count_runs`."""
        with self._lock:
            return len(self._matching(status, pipeline, trigger))

    def find_run_by_event(self, event_id: str) -> RunRecord | None:
        """Return a copy of the run the event started, or `None`."""
        with self._lock:
            run_id = self._events.get(event_id)
            return None if run_id is None else _copy_run(self._runs[run_id])

    def get_task_runs(self, run_id: str) -> list[TaskRunRecord]:
        """Return copies of a run's task runs in order; see `RunStore.get_task_runs`."""
        _check_run_id(run_id)
        with self._lock:
            self._get(run_id)
            tasks = [_copy_task_run(t) for t in self._tasks[run_id].values()]
        tasks.sort(key=_task_order)
        return tasks

    def delete_run(self, run_id: str) -> None:
        """Forget a run and its task runs; see `RunStore.delete_run`."""
        _check_run_id(run_id)
        with self._lock:
            run = self._get(run_id)
            del self._runs[run_id], self._tasks[run_id], self._attempts[run_id]
            if run.event_id is not None:
                del self._events[run.event_id]
            tick = tick_key(run)
            if tick is not None:
                self._ticks.pop(tick, None)

    def last_fire(self, name: str) -> datetime | None:
        """When the cron trigger `name` last fired; see `RunStore.last_fire`."""
        with self._lock:
            return self._fires.get(name)

    def record_fires(self, fires: Mapping[str, datetime]) -> None:
        """Remember fire times, keeping the later; see `RunStore.record_fires`."""
        given = {name: _fire_time(name, when) for name, when in fires.items()}
        with self._lock:
            for name, when in given.items():
                stored = self._fires.get(name)
                self._fires[name] = when if stored is None else max(stored, when)

    def claim_source(self, name: str, *, holder: str, now: datetime, lease_until: datetime) -> bool:
        """Take or renew a source's lease; see `RunStore.claim_source`."""
        _check_source(name)
        with self._lock:
            row = self._sources.setdefault(name, SourceRecord(name))
            if not _lease_free(row, holder, _as_utc(now)):
                return False
            row.holder, row.lease_until = holder, _as_utc(lease_until)
            return True

    def save_source(self, record: SourceRecord) -> bool:
        """Store a source's state if its holder still holds it; see `RunStore.save_source`."""
        _check_source(record.name)
        copied = _copy_source(record)
        with self._lock:
            row = self._sources.get(record.name)
            if row is None or row.holder is None or row.holder != record.holder:
                return False
            copied.lease_until = row.lease_until
            self._sources[record.name] = copied
            return True

    def release_source(self, name: str, *, holder: str) -> None:
        """Give up a source's lease; see `RunStore.release_source`."""
        with self._lock:
            row = self._sources.get(name)
            if row is not None and row.holder == holder:
                row.holder, row.lease_until = None, None

    def get_source(self, name: str) -> SourceRecord | None:
        """A source's stored state; see `RunStore.get_source`."""
        with self._lock:
            row = self._sources.get(name)
            return None if row is None else _copy_source(row)

    def list_sources(self) -> list[SourceRecord]:
        """Every source's stored state; see `RunStore.list_sources`."""
        with self._lock:
            return [_copy_source(self._sources[name]) for name in sorted(self._sources)]

    def ping(self) -> None:
        """Always reachable: it is in this process."""

    def close(self) -> None:
        """Nothing to release; present to satisfy `RunStore`."""

    def _get(self, run_id: str) -> RunRecord:
        try:
            return self._runs[run_id]
        except KeyError:
            raise RunNotFoundError(run_id) from None

    def _matching(
        self,
        status: RunStatus | Sequence[RunStatus] | None,
        pipeline: str | None,
        trigger: str | None = None,
    ) -> list[RunRecord]:
        statuses = _status_filter(status)
        return [
            r
            for r in self._runs.values()
            if (statuses is None or r.status in statuses)
            and (pipeline is None or r.pipeline == pipeline)
            and _trigger_matches(r.trigger, trigger)
        ]


def _check_epoch(run: RunRecord, epoch: int | None) -> None:
    if epoch is not None and run.epoch != epoch:
        raise FencedError(run.run_id, epoch, run.epoch)


def _task_order(task: TaskRunRecord) -> tuple[bool, datetime, str, str]:
    # Unstarted tasks sort last, as `ORDER BY started_at NULLS LAST` does in SQL.
    started = task.started_at
    return (started is None, started or _NEVER, task.task_name, task.instance)


def _json_copy(value: Any) -> Any:
    # A JSON round trip both deep-copies and gives exactly what the SQL store would return.
    try:
        return json.loads(json.dumps(value, allow_nan=False))  # as the SQL store refuses NaN
    except (TypeError, ValueError) as exc:
        raise _not_json_error(value, exc) from None


def _copy_run(record: RunRecord) -> RunRecord:
    return dataclasses.replace(
        record,
        selection=_json_copy(record.selection),
        params=_json_copy(record.params),
        status=RunStatus(record.status),
        created_at=_as_utc(record.created_at),
        started_at=_as_utc(record.started_at),
        finished_at=_as_utc(record.finished_at),
        metadata=_json_copy(record.metadata),
        plan=_json_copy(record.plan),
        lease_until=_as_utc(record.lease_until),
        scheduled_for=_as_utc(record.scheduled_for),
        error=storable_text(record.error),
    )


def _copy_task_run(record: TaskRunRecord) -> TaskRunRecord:
    return dataclasses.replace(
        record,
        status=TaskStatus(record.status),
        started_at=_as_utc(record.started_at),
        finished_at=_as_utc(record.finished_at),
        result_ids=_json_copy(record.result_ids),
        # as every store keeps what a task produced (dp.limits)
        error=storable_text(record.error),
        traceback=storable_text(record.traceback),
        output=storable_text(record.output) or "",
    )


def _copy_source(record: SourceRecord) -> SourceRecord:
    return dataclasses.replace(
        record,
        cursor=_json_copy(record.cursor),
        last_error=storable_text(record.last_error),
        polled_at=_as_utc(record.polled_at),
        lease_until=_as_utc(record.lease_until),
    )


def _lease_free(row: SourceRecord, holder: str, now: datetime) -> bool:
    return (
        row.holder is None
        or row.holder == holder
        or row.lease_until is None
        or row.lease_until <= now
    )
