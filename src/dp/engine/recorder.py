"""`RunRecorder`: writes a run's progress to the run store off the hot path.

Task state changes are coalesced by task (only the latest state of each is written) and
flushed in batches from a worker thread every `interval` seconds and at the end of the
run, so recording costs one transaction per batch, not one per state change.

Every write carries the run's ownership epoch: once another process took the run over, the
store refuses them (`FencedError`), and the recorder stops writing and tells the run. The
changes of a run's own status (started, finished) are awaited, never left in the
background, so the record follows the run's life cycle in order.

A store may refuse a record for what it holds (PostgreSQL refuses a NUL byte in a task's
output with `DataError`). A refused batch is written again record by record, to find the
culprit; the culprit is stored with its text replaced by a note saying why, and the run is
told (`on_refused`), so it fails with one log line naming the run, the task and the store's
error, instead of dying silently and being resumed forever. A batch that fails even with
its text replaced is an outage, not a refusal: it is kept and written again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from dp.engine.model import TaskRunResult
from dp.errors import FencedError
from dp.logs import get_logger
from dp.safetext import describe_exception
from dp.store.records import RunRecord, RunStatus, RunStore, TaskRunRecord, TaskStatus

__all__ = ["RunRecorder", "task_run_record"]

_log = get_logger("dp.engine")


class RunRecorder:
    """Batches one run's writes to a `RunStore`; does nothing without a store."""

    def __init__(self, store: RunStore | None, run_id: str, interval: float = 0.2) -> None:
        self.store = store
        self.run_id = run_id
        self.interval = interval
        #: the ownership epoch every write carries; None: not owned yet (nothing is written)
        self.epoch: int | None = None
        #: called (on the loop) when a write finds the run taken over by a newer owner
        self.on_fenced: Callable[[FencedError], None] | None = None
        self.fenced: FencedError | None = None
        self._dirty: dict[tuple[str, str], TaskRunResult] = {}
        self._attempts: list[TaskRunRecord] = []
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        #: records of a batch the store could not take (an outage), for the next write
        self._pending_records: dict[tuple[str, str], TaskRunRecord] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        #: create_run already wrote status running (the run had a slot at once)
        self.started_recorded = False
        #: `time.monotonic()` when this process took the run (its lease runs from then)
        self.owned_at: float | None = None
        #: why the store refused one of the run's records (the run fails); None: it did not
        self.refused: str | None = None
        #: called (on the loop) once, when the store refused a record of the run
        self.on_refused: Callable[[str], None] | None = None

    async def create_run(self, record: RunRecord) -> None:
        """Record a new run before it starts (synchronously: resume relies on it)."""
        if self.store is not None:
            self.owned_at = time.monotonic()
            await asyncio.to_thread(self.store.create_run, record)
            self.epoch = record.epoch

    async def claim(self, *, host: str, pid: int, lease_until: datetime, expected: int) -> int:
        """Take the run over from its earlier owner (resume): a new epoch fences that owner."""
        assert self.store is not None
        self.owned_at = time.monotonic()
        self.epoch = await asyncio.to_thread(
            self.store.claim_run,
            self.run_id,
            host=host,
            pid=pid,
            lease_until=lease_until,
            expected_epoch=expected,
            status=RunStatus.QUEUED,
        )
        return self.epoch

    async def run_started(self, started_at: datetime, metadata: dict[str, Any]) -> None:
        """Mark the run running (unless `create_run` already recorded it so), before any of
        its tasks is recorded, so a late write can never undo its end."""
        if self.store is not None and not self.started_recorded:
            async with self._lock:
                await self._write(
                    self.store.update_run,
                    self.run_id,
                    status=RunStatus.RUNNING,
                    started_at=started_at,
                    metadata=metadata,
                    epoch=self.epoch,
                )
            self.started_recorded = True

    def task_changed(self, result: TaskRunResult) -> None:
        if self.store is not None:
            self._dirty[result.key] = result

    def attempt_ended(self, record: TaskRunRecord) -> None:
        """Keep an attempt that the next one (a retry, a resume) supersedes."""
        if self.store is not None:
            self._attempts.append(record)

    def start_flushing(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.store is not None and self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_periodically())

    async def run_finished(
        self, status: RunStatus, finished_at: datetime, error: str | None
    ) -> bool:
        """Write everything pending and the run's final status; False if it was refused
        because another owner took the run over meanwhile."""
        if self.store is None:
            return True
        async with self._lock:
            # under the lock: a periodic flush still writing (in its thread) finishes first,
            # so an older batch can never land after the final one
            if self._flusher is not None:
                self._flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._flusher
                self._flusher = None
            batch, attempts = self._take_batch()
            if self.refused is not None:  # refused earlier: the run fails, saying why
                status, error = RunStatus.FAILED, self.refused
            try:
                # the last task states and the run's end: one transaction
                return await self._write(
                    self.store.update_run,
                    self.run_id,
                    status=status,
                    finished_at=finished_at,
                    error=error,
                    task_runs=batch,
                    attempts=attempts,
                    epoch=self.epoch,
                )
            except Exception as exc:
                return await self._finish_refused(status, finished_at, error, batch, attempts, exc)

    async def _finish_refused(
        self,
        status: RunStatus,
        finished_at: datetime,
        error: str | None,
        batch: list[TaskRunRecord],
        attempts: list[TaskRunRecord],
        exc: Exception,
    ) -> bool:
        """The run's last write failed: store what can be, and end the run failed if the
        store refused a record of it; re-raise `exc` if nothing can be written (an outage)."""
        assert self.store is not None
        if batch or attempts:
            outage = await asyncio.to_thread(self._write_apart, batch, attempts)
            if outage and self.fenced is None:
                raise exc  # the store fails whatever we write: not ours to decide here
        if self.fenced is not None:
            return False
        if self.refused is not None:
            status, error = RunStatus.FAILED, self.refused
        try:
            await asyncio.to_thread(
                self.store.update_run,
                self.run_id,
                status=status,
                finished_at=finished_at,
                error=error,
                epoch=self.epoch,
            )
            return True
        except FencedError:
            return False
        except Exception as again:
            if error is None or storable(error) == error:
                raise exc from again
            store_error = _first_line(again)
        # the run's own error text was refused (it quotes a task's error)
        self._refuse(f"the run store refused the run's error text: {store_error}", "")
        assert self.refused is not None
        await asyncio.to_thread(
            self.store.update_run,
            self.run_id,
            status=RunStatus.FAILED,
            finished_at=finished_at,
            error=storable(self.refused),
            epoch=self.epoch,
        )
        return True

    async def flush(self) -> None:
        if (
            not self._dirty and not self._attempts and not self._pending_records
        ) or self.store is None:
            return
        async with self._lock:
            batch, attempts = self._take_batch()
            try:
                await self._write(
                    self.store.save_task_runs, batch, attempts=attempts, epoch=self.epoch
                )
            except Exception:
                outage = await asyncio.to_thread(self._write_apart, batch, attempts)
                if outage and self.fenced is None:
                    # not a refused record: the store is down for a moment; write it later
                    _log.warning(
                        "store.flush_failed", run_id=self.run_id, records=len(batch), exc_info=True
                    )
                    self._requeue(batch, attempts)

    def _requeue(self, batch: list[TaskRunRecord], attempts: list[TaskRunRecord]) -> None:
        """Keep an unwritten batch for the next write (newer states of a task win)."""
        self._attempts[:0] = attempts
        for record in batch:
            key = (record.task_name, record.instance)
            if key not in self._dirty:
                self._pending_records[key] = record

    def _write_apart(
        self, batch: Sequence[TaskRunRecord], attempts: Sequence[TaskRunRecord]
    ) -> bool:
        """In a thread, after a batch failed: write its records one at a time. A record the
        store refuses as it is, takes with its text replaced, and refuses as it is once more,
        was refused for what it holds: it stays stored with its text replaced, and the run is
        told (`_refuse`). Returns True for an outage: a write failed whatever it held (the
        rest of the batch is left to the caller)."""
        assert self.store is not None
        for record, is_attempt in [*((a, True) for a in attempts), *((r, False) for r in batch)]:
            if self.fenced is not None:
                return False
            try:
                self._save_one(record, is_attempt)
                continue
            except FencedError as fenced:
                self.fenced = fenced
                return False
            except Exception as exc:
                store_error = _first_line(exc)
            note = storable(f"<not stored as it was: the run store refused it: {store_error}>")
            stripped = dataclasses.replace(
                record,
                error=note,
                traceback=None,
                output="",
                result_ids=[storable(rid) for rid in record.result_ids],
            )
            try:
                self._save_one(stripped, is_attempt)
            except FencedError as fenced:
                self.fenced = fenced
                return False
            except Exception:
                return True  # refused even without its text: the store itself fails
            try:  # and as it was, once more: a store that just came back takes it now
                self._save_one(record, is_attempt)
                continue
            except FencedError as fenced:
                self.fenced = fenced
                return False
            except Exception as exc:
                store_error = _first_line(exc)
            self._refuse(
                f"the run store refused the record of task {record.task_name!r}: {store_error}",
                record.task_name,
            )
        return False

    def _save_one(self, record: TaskRunRecord, is_attempt: bool) -> None:
        assert self.store is not None
        if is_attempt:
            self.store.save_task_runs([], attempts=[record], epoch=self.epoch)
        else:
            self.store.save_task_runs([record], epoch=self.epoch)

    def _refuse(self, message: str, task_name: str) -> None:
        """Note (once) that the store refused a record: one log line, and the run told."""
        if self.refused is not None:
            return
        self.refused = storable(message)
        _log.error(
            "run.store_refused", run_id=self.run_id, task_name=task_name or None, error=message
        )
        callback = self.on_refused
        if callback is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(callback, self.refused)

    async def _write(self, method: Callable[..., None], *args: Any, **kwargs: Any) -> bool:
        """One write in a thread; False, and the run told once, if the run was taken over."""
        if self.fenced is not None:
            return False
        try:
            await asyncio.to_thread(method, *args, **kwargs)
        except FencedError as fenced:
            self.fenced = fenced
            _log.warning("run.fenced", run_id=self.run_id, epoch=self.epoch, now=fenced.current)
            if self.on_fenced is not None:
                self.on_fenced(fenced)
            return False
        return True

    def _take_batch(self) -> tuple[list[TaskRunRecord], list[TaskRunRecord]]:
        """The latest state of every task changed since the last write, as records, and the
        attempts superseded since then."""
        batch = [task_run_record(self.run_id, r) for r in self._dirty.values()]
        if self._pending_records:
            batch[:0] = self._pending_records.values()
            self._pending_records = {}
        self._dirty = {}
        attempts, self._attempts = self._attempts, []
        return batch, attempts

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()


def task_run_record(
    run_id: str, result: TaskRunResult, status: TaskStatus | None = None
) -> TaskRunRecord:
    return TaskRunRecord(
        run_id=run_id,
        task_name=result.task_name,
        instance=result.instance,
        status=result.status if status is None else status,
        attempt=result.attempts,
        started_at=result.started_at,
        finished_at=result.finished_at,
        duration=result.duration,
        error=result.error,
        traceback=result.traceback,
        result_ids=list(result.result_ids),
        output=result.output,
        host=result.host,
        pid=result.pid,
        queue=result.queue,
    )


def _first_line(exc: BaseException) -> str:
    """The store's error in one line (SQLAlchemy appends the statement and its parameters,
    which may hold the very text that was refused)."""
    lines = describe_exception(exc, limit=500).splitlines()
    return lines[0] if lines else type(exc).__name__


def storable(text: str) -> str:
    """`text` with what stores refuse in text escaped (NUL bytes, lone surrogates): the note
    a refused record is stored with must itself be storable."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
