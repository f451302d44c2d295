"""`RunRecorder`: writes a run's progress to the run store off the hot path.

Task state changes are coalesced by task (only the latest state of each is written) and
flushed in batches from a worker thread every `interval` seconds and at the end of the
run, so recording costs one transaction per batch, not one per state change.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

from dp.engine.model import TaskRunResult
from dp.logs import get_logger
from dp.store.records import RunRecord, RunStatus, TaskRunRecord

__all__ = ["RunRecorder"]

_log = get_logger("dp.engine")


class RunRecorder:
    """Batches one run's writes to a `RunStore`; does nothing without a store."""

    def __init__(self, store: Any | None, run_id: str, interval: float = 0.2) -> None:
        self.store = store
        self.run_id = run_id
        self.interval = interval
        self._dirty: dict[tuple[str, str], TaskRunResult] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._writes: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        #: create_run already wrote status running (the run had a slot at once)
        self.started_recorded = False

    async def create_run(self, record: RunRecord) -> None:
        """Record a new run before it starts (synchronously: resume relies on it)."""
        if self.store is not None:
            await asyncio.to_thread(self.store.create_run, record)

    def run_started(self, started_at: datetime, metadata: dict[str, Any]) -> None:
        """Mark the run running (unless `create_run` already recorded it so)."""
        if self.store is not None and not self.started_recorded:
            self._spawn(
                self.store.update_run,
                self.run_id,
                status=RunStatus.RUNNING,
                started_at=started_at,
                metadata=metadata,
            )

    def task_changed(self, result: TaskRunResult) -> None:
        if self.store is not None:
            self._dirty[result.key] = result

    def start_flushing(self) -> None:
        if self.store is not None and self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_periodically())

    async def run_finished(
        self, status: RunStatus, finished_at: datetime, error: str | None
    ) -> None:
        """Write everything pending and the run's final status."""
        if self.store is None:
            return
        async with self._lock:
            # under the lock: a periodic flush still writing (in its thread) finishes first,
            # so an older batch can never land after the final one
            if self._flusher is not None:
                self._flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._flusher
                self._flusher = None
            batch = self._take_batch()
            # the last task states and the run's end: one transaction
            await asyncio.to_thread(
                self.store.update_run,
                self.run_id,
                status=status,
                finished_at=finished_at,
                error=error,
                task_runs=batch,
            )

    async def flush(self) -> None:
        if not self._dirty or self.store is None:
            return
        async with self._lock:
            batch = self._take_batch()
            try:
                await asyncio.to_thread(self.store.save_task_runs, batch)
            except Exception:
                _log.exception("store.flush_failed", run_id=self.run_id, records=len(batch))

    def _take_batch(self) -> list[TaskRunRecord]:
        """The latest state of every task changed since the last write, as records."""
        batch = [_record(self.run_id, r) for r in self._dirty.values()]
        self._dirty = {}
        return batch

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    def _spawn(self, func: Any, *args: Any, **kwargs: Any) -> None:
        async def call() -> None:
            async with self._lock:
                try:
                    await asyncio.to_thread(func, *args, **kwargs)
                except Exception:
                    _log.exception("store.write_failed", run_id=self.run_id)

        write = asyncio.get_running_loop().create_task(call())
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)


def _record(run_id: str, result: TaskRunResult) -> TaskRunRecord:
    return TaskRunRecord(
        run_id=run_id,
        task_name=result.task_name,
        instance=result.instance,
        status=result.status,
        attempt=result.attempts,
        started_at=result.started_at,
        finished_at=result.finished_at,
        duration=result.duration,
        error=result.error,
        traceback=result.traceback,
        result_ids=list(result.result_ids),
        output=result.output,
    )
