"""Executors behind one port: inline (sequential) and in-process (asyncio + threads).

The multi-process executor is in `dp.engine.process`. An executor receives `ExecutableTask`s
and reports back to the run's `TaskSink`, always on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from typing import Protocol, runtime_checkable

from dp.engine.model import ExecutableTask, TaskOutcome
from dp.engine.worker import Worker
from dp.io import IOManager

__all__ = ["Executor", "InProcessExecutor", "InlineExecutor", "TaskSink", "timeout_outcome"]


class TaskSink(Protocol):
    """The run a task belongs to, as an executor sees it."""

    def on_chunk(self, task: ExecutableTask, result_id: str) -> None: ...

    def on_done(self, task: ExecutableTask, outcome: TaskOutcome) -> None: ...


@runtime_checkable
class Executor(Protocol):
    """Runs tasks somewhere and reports their chunks and outcomes to the task's sink."""

    name: str
    #: how many tasks of one run it is useful to keep in flight at once
    capacity: int

    async def start(self, io_manager: IOManager) -> None:
        """Get ready to run tasks (idempotent); called on the loop that will use it."""
        ...

    def submit(self, task: ExecutableTask, sink: TaskSink) -> None:
        """Start `task` without blocking; the outcome arrives later via `sink.on_done`."""
        ...

    async def shutdown(self) -> None:
        """Stop workers and release resources."""
        ...


def timeout_outcome(task: ExecutableTask, seconds: float, note: str = "") -> TaskOutcome:
    """The outcome of an attempt stopped for running longer than its timeout."""
    return TaskOutcome(
        task.task_name,
        task.instance,
        False,
        [],
        time.time() - seconds,
        seconds,
        error=f"TimeoutError: task {task.describe()!r} did not finish within {seconds:g}s{note}",
        retryable=True,
    )


class InlineExecutor:
    """Runs one task at a time in the caller's thread: for tests, debugging and tiny DAGs.

    Async task timeouts are enforced; a sync task cannot be interrupted here, so its
    timeout is not (use the in-process or process executor for that).
    """

    name = "inline"
    capacity = 1 << 30  # queueing costs nothing: tasks run strictly one after another

    def __init__(self, *, capture_output: bool = True) -> None:
        self.capture_output = capture_output
        self._queue: deque[tuple[ExecutableTask, TaskSink]] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self._worker: Worker | None = None

    async def start(self, io_manager: IOManager) -> None:
        if self._worker is None or self._worker.io_manager is not io_manager:
            self._worker = Worker(io_manager, capture_output=self.capture_output)

    def submit(self, task: ExecutableTask, sink: TaskSink) -> None:
        self._queue.append((task, sink))
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        worker = self._worker
        assert worker is not None, "InlineExecutor.start() was not awaited"
        queue = self._queue
        try:
            while queue:
                task, sink = queue.popleft()
                meta = task.metadata

                def on_chunk(
                    result_id: str, task: ExecutableTask = task, sink: TaskSink = sink
                ) -> None:
                    sink.on_chunk(task, result_id)

                chunk_cb = on_chunk if meta.stream_output else None
                if not meta.is_async:
                    outcome = worker.execute(task, chunk_cb)
                elif meta.timeout is None:
                    outcome = await worker.execute_async(task, chunk_cb)
                else:
                    try:
                        async with asyncio.timeout(meta.timeout):
                            outcome = await worker.execute_async(task, chunk_cb)
                    except TimeoutError:
                        outcome = timeout_outcome(task, meta.timeout)
                sink.on_done(task, outcome)
        finally:
            self._drainer = None

    async def shutdown(self) -> None:
        self._queue.clear()
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer


class _Attempt:
    """One submitted attempt; the first of completion and timeout wins, the other is dropped."""

    __slots__ = ("finished", "sink", "task", "timer")

    def __init__(self, task: ExecutableTask, sink: TaskSink) -> None:
        self.task = task
        self.sink = sink
        self.finished = False
        self.timer: asyncio.TimerHandle | None = None


class InProcessExecutor:
    """Async tasks run on the event loop, sync tasks on a pool of threads.

    Threads hand results back in batches: a finished task appends to a queue and wakes the
    loop only if no wake-up is pending, so a busy run costs far fewer loop wake-ups than
    tasks. A sync task past its timeout is reported failed at once, but Python cannot stop a
    thread: it keeps running in the background and its late result is discarded. Use the
    process executor when stuck tasks must really be killed.
    """

    name = "inprocess"

    def __init__(self, *, max_threads: int | None = None, capture_output: bool = True) -> None:
        self.max_threads = max_threads or 8
        self.capacity = self.max_threads * 2
        self.capture_output = capture_output
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: Worker | None = None
        self._jobs: queue.SimpleQueue[_Attempt | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._finished: deque[tuple[_Attempt, TaskOutcome | str]] = deque()
        self._wakeup_pending = False
        self._async_tasks: set[asyncio.Task[None]] = set()

    async def start(self, io_manager: IOManager) -> None:
        self._loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.io_manager is not io_manager:
            self._worker = Worker(io_manager, capture_output=self.capture_output)
        while len(self._threads) < self.max_threads:
            thread = threading.Thread(
                target=self._thread_main, name=f"dp-task-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def submit(self, task: ExecutableTask, sink: TaskSink) -> None:
        loop = self._loop
        assert loop is not None, "start() was not awaited"
        attempt = _Attempt(task, sink)
        timeout = task.metadata.timeout
        if task.metadata.is_async:
            running = loop.create_task(self._run_async(attempt))
            self._async_tasks.add(running)
            running.add_done_callback(self._async_tasks.discard)
            return
        if timeout is not None:
            attempt.timer = loop.call_later(timeout, self._timed_out, attempt, timeout)
        self._jobs.put(attempt)

    def _thread_main(self) -> None:
        jobs = self._jobs
        while True:
            attempt = jobs.get()
            if attempt is None:
                return
            worker = self._worker
            assert worker is not None
            task = attempt.task
            on_chunk = None
            if task.metadata.stream_output:

                def on_chunk(result_id: str, attempt: _Attempt = attempt) -> None:
                    self._hand_back(attempt, result_id)

            self._hand_back(attempt, worker.execute(task, on_chunk))

    def _hand_back(self, attempt: _Attempt, item: TaskOutcome | str) -> None:
        """From a pool thread: queue a chunk id or an outcome for the loop thread."""
        self._finished.append((attempt, item))
        if not self._wakeup_pending:
            self._wakeup_pending = True
            loop = self._loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(self._drain_finished)

    def _drain_finished(self) -> None:
        self._wakeup_pending = False
        finished = self._finished
        while finished:
            attempt, item = finished.popleft()
            if isinstance(item, str):
                self._chunk(attempt, item)
            else:
                self._done(attempt, item)

    async def _run_async(self, attempt: _Attempt) -> None:
        worker = self._worker
        assert worker is not None
        task = attempt.task

        def on_chunk(result_id: str) -> None:
            self._chunk(attempt, result_id)

        chunk_cb = on_chunk if task.metadata.stream_output else None
        timeout = task.metadata.timeout
        try:
            async with asyncio.timeout(timeout):
                outcome = await worker.execute_async(task, chunk_cb)
        except TimeoutError:
            outcome = timeout_outcome(task, timeout or 0.0)
        self._done(attempt, outcome)

    def _chunk(self, attempt: _Attempt, result_id: str) -> None:
        if not attempt.finished:
            attempt.sink.on_chunk(attempt.task, result_id)

    def _done(self, attempt: _Attempt, outcome: TaskOutcome) -> None:
        if attempt.finished:
            return
        attempt.finished = True
        if attempt.timer is not None:
            attempt.timer.cancel()
        attempt.sink.on_done(attempt.task, outcome)

    def _timed_out(self, attempt: _Attempt, seconds: float) -> None:
        if attempt.finished:
            return
        attempt.finished = True
        note = "; its thread cannot be stopped and keeps running, its result will be discarded"
        attempt.sink.on_done(attempt.task, timeout_outcome(attempt.task, seconds, note))

    async def shutdown(self) -> None:
        for running in list(self._async_tasks):
            running.cancel()
        if self._async_tasks:
            await asyncio.gather(*self._async_tasks, return_exceptions=True)
        for _ in self._threads:
            self._jobs.put(None)
        self._threads = []
        self._loop = None
