"""Executors behind one port: inline (sequential) and in-process (asyncio + threads).

The multi-process executor is in `dp.engine.process`. An executor receives `ExecutableTask`s
and reports back to the run's `TaskSink`, always on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from dp.engine.model import ExecutableTask, TaskOutcome
from dp.engine.worker import Worker
from dp.engine.writebehind import WriteBehind
from dp.io import InMemoryIOManager, IOManager

__all__ = [
    "Executor",
    "InProcessExecutor",
    "InlineExecutor",
    "QueueingExecutor",
    "TaskSink",
    "timeout_outcome",
]


class TaskSink(Protocol):
    """The run a task belongs to, as an executor sees it. Once `closed` (the run ended),
    executors may drop its tasks that have not started."""

    closed: bool

    def on_started(
        self, task: ExecutableTask, *, host: str | None = None, pid: int | None = None
    ) -> None:
        """A worker (process `pid` on `host`, when known) took `task` off its queue and
        started it (only a `QueueingExecutor` says so)."""
        ...

    def on_reserved(self, task: ExecutableTask, *, host: str, pid: int) -> None:
        """Worker `pid` on `host` holds `task`, not started yet (a `QueueingExecutor`)."""
        ...

    def on_lost(self, task: ExecutableTask, outcome: TaskOutcome) -> None:
        """The attempt of `task` was lost with its worker (`outcome` says where and how);
        the executor runs the task again as its next attempt (a `QueueingExecutor`)."""
        ...

    def on_chunk(self, task: ExecutableTask, result_id: str) -> None: ...

    def on_done(
        self,
        task: ExecutableTask,
        outcome: TaskOutcome,
        successor: ExecutableTask | None = None,
    ) -> None: ...

    def successor(self, task: ExecutableTask, outcome: TaskOutcome) -> ExecutableTask | None:
        """From a worker thread, as `task` succeeded: a task the thread may start at once in
        the same slot, reported later with `on_done(task, outcome, successor=)`."""
        ...


@runtime_checkable
class Executor(Protocol):
    """Runs tasks somewhere and reports their chunks and outcomes to the task's sink."""

    name: str

    @property
    def capacity(self) -> int:
        """How many tasks of one run it is useful to keep in flight now."""
        ...

    async def start(self, io_manager: IOManager) -> None:
        """Get ready to run tasks (idempotent); called on the loop that will use it."""
        ...

    def submit(self, task: ExecutableTask, sink: TaskSink) -> None:
        """Start `task` without blocking; the outcome arrives later via `sink.on_done`."""
        ...

    async def shutdown(self) -> None:
        """Stop workers and release resources."""
        ...


@runtime_checkable
class QueueingExecutor(Protocol):
    """An executor whose tasks wait in a broker's queue until a worker takes them (Celery).

    The run records such a task queued, with `queue_of(task)`, until the executor calls
    `sink.on_started(task)`; every other executor's tasks are running once submitted."""

    def queue_of(self, task: ExecutableTask) -> str:
        """The queue `task` is sent to."""
        ...


def _dropped(task: ExecutableTask) -> TaskOutcome:
    """The outcome of a task dropped because its run ended before it started."""
    return TaskOutcome(
        task.task_name, task.instance, False, [], time.time(), 0.0, "run ended", retryable=False
    )


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


def _store_for(io_manager: IOManager, write_behind: bool | None) -> WriteBehind | None:
    """The write-behind an in-process executor saves through: on by default (None), except
    for results kept in memory anyway (`InMemoryIOManager`), where it would only add a copy
    of the bookkeeping; `True` or `False` decides."""
    if write_behind is False or (
        write_behind is None and isinstance(io_manager, InMemoryIOManager)
    ):
        return None
    return WriteBehind(io_manager)


class InlineExecutor:
    """Runs one task at a time in the caller's thread: for tests, debugging and tiny DAGs.

    Async task timeouts are enforced; a sync task cannot be interrupted here, so its
    timeout is not (use the in-process or process executor for that).
    """

    name = "inline"
    capacity = 1 << 30  # queueing costs nothing: tasks run strictly one after another

    def __init__(self, *, capture_output: bool = True, write_behind: bool | None = None) -> None:
        self.capture_output = capture_output
        self.write_behind_wanted = write_behind
        #: results are stored behind the run from memory (None: saved as tasks finish)
        self.write_behind: WriteBehind | None = None
        self._queue: deque[tuple[ExecutableTask, TaskSink]] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self._worker: Worker | None = None
        self._io: IOManager | None = None

    async def start(self, io_manager: IOManager) -> None:
        if self._worker is None or self._io is not io_manager:
            self._io = io_manager
            self.write_behind = _store_for(io_manager, self.write_behind_wanted or False)
            store = self.write_behind or io_manager
            self._worker = Worker(store, capture_output=self.capture_output)

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
                if sink.closed:
                    continue
                meta = task.metadata
                chunk_cb = functools.partial(sink.on_chunk, task) if meta.stream_output else None
                started_at = time.time()
                try:
                    if not meta.is_async:
                        outcome = worker.execute(task, chunk_cb, sink)
                    elif meta.timeout is None:
                        outcome = await worker.execute_async(task, chunk_cb, sink)
                    else:
                        try:
                            async with asyncio.timeout(meta.timeout):
                                outcome = await worker.execute_async(task, chunk_cb, sink)
                        except TimeoutError:
                            outcome = timeout_outcome(task, meta.timeout)
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except BaseException as exc:  # the attempt ends, recorded, whatever happened
                    outcome = worker.crashed(task, exc, started_at)
                sink.on_done(task, outcome)
        finally:
            self._drainer = None

    async def shutdown(self) -> None:
        self._queue.clear()
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
        if self.write_behind is not None:
            await asyncio.to_thread(self.write_behind.stop)


class _Attempt:
    """One submitted attempt; the first of completion and timeout wins, the other is dropped."""

    __slots__ = ("finished", "queued_at", "sink", "task", "timer")

    def __init__(self, task: ExecutableTask, sink: TaskSink) -> None:
        self.task = task
        self.sink = sink
        self.finished = False
        self.timer: asyncio.TimerHandle | None = None
        self.queued_at = 0.0


#: bounds of the interval at which the loop collects tasks finished by busy threads
_POLL_MIN, _POLL_MAX = 0.0005, 0.01


class InProcessExecutor:
    """Async tasks run on the event loop, sync tasks on a pool of threads.

    Threads hand results back in batches: a finished task is queued for the loop, which is
    woken only when it must feed the threads (or a stream chunk is waiting); otherwise a
    poller collects finished tasks every half millisecond or so. The pool is elastic: it
    starts with `min_threads` and adds a thread (up to `max_threads`) when queued tasks waited
    more than `grow_after` seconds for one. Short tasks then share a few threads instead of
    fighting over the GIL, while slow, blocking tasks (network, databases) get as many
    threads as they need. A thread that finishes a task whose one dependent it alone gates
    runs that dependent itself (see `TaskSink.successor`): a chain costs no hand-off per link.

    Results are written behind (`WriteBehind`) unless `write_behind=False` or the IO manager
    is an `InMemoryIOManager`: downstream tasks get a value from memory at once, and a
    writer thread stores results in completion order, a batch at a time.

    A sync task past its timeout is reported failed at once, but Python cannot stop a thread:
    it keeps running in the background and its late result is discarded. Use the process
    executor when stuck tasks must really be killed.
    """

    name = "inprocess"

    def __init__(
        self,
        *,
        max_threads: int | None = None,
        min_threads: int = 1,
        grow_after: float = 0.005,
        capture_output: bool = True,
        write_behind: bool | None = None,
    ) -> None:
        self.max_threads = max_threads or 16
        self.write_behind_wanted = write_behind
        #: results are stored behind the run from memory (None: saved as tasks finish)
        self.write_behind: WriteBehind | None = None
        self._io: IOManager | None = None
        self.min_threads = max(1, min(min_threads, self.max_threads))
        self.grow_after = grow_after
        self.capture_output = capture_output
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: Worker | None = None
        self._jobs: queue.SimpleQueue[_Attempt | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        #: (attempt, chunk id or outcome, the attempt its thread went on with)
        self._finished: deque[tuple[_Attempt, TaskOutcome | str, _Attempt | None]] = deque()
        self._wakeup_pending = False
        self._growing = False
        self._queued = 0  # sync jobs handed to threads and not collected back yet
        self._last_take = 0.0  # when a thread last took a job
        self._poller: asyncio.TimerHandle | None = None
        self._poll_interval = _POLL_MIN
        self._async_tasks: dict[asyncio.Task[None], TaskSink] = {}

    async def start(self, io_manager: IOManager) -> None:
        self._loop = asyncio.get_running_loop()
        if self._worker is None or self._io is not io_manager:
            self._io = io_manager
            self.write_behind = _store_for(io_manager, self.write_behind_wanted)
            store = self.write_behind or io_manager
            self._worker = Worker(store, capture_output=self.capture_output)
        self._last_take = time.monotonic()
        while len(self._threads) < self.min_threads:
            self._add_thread()

    def _add_thread(self) -> None:
        thread = threading.Thread(
            target=self._thread_main, name=f"dp-task-{len(self._threads)}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    @property
    def capacity(self) -> int:
        """Tasks worth having in flight: eight per thread, so threads find work queued (and
        finish tasks in batches) while a long wait in the queue still means the threads are
        really busy (that is what grows the pool)."""
        return 8 * max(1, len(self._threads))

    @property
    def threads(self) -> int:
        """Threads started so far (the pool grows on demand up to `max_threads`)."""
        return len(self._threads)

    def submit(self, task: ExecutableTask, sink: TaskSink) -> None:
        loop = self._loop
        assert loop is not None, "start() was not awaited"
        attempt = _Attempt(task, sink)
        if task.metadata.is_async:
            running = loop.create_task(self._run_async(attempt))
            self._async_tasks[running] = sink
            running.add_done_callback(self._forget)
            return
        attempt.queued_at = time.monotonic()
        self._jobs.put(attempt)
        self._queued += 1
        if self._poller is None:
            self._poll_interval = _POLL_MIN
            self._poller = loop.call_later(_POLL_MIN, self._poll)

    def _thread_main(self) -> None:
        jobs = self._jobs
        while True:
            attempt = jobs.get()
            if attempt is None:
                return
            self._last_take = time.monotonic()
            if (
                time.monotonic() - attempt.queued_at > self.grow_after
                and len(self._threads) < self.max_threads
                and not self._growing
                and not self._writer_saturated()
            ):
                self._growing = True  # tasks wait for threads: ask the loop for one more
                with contextlib.suppress(RuntimeError):
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(self._grow)
            worker = self._worker
            assert worker is not None
            task = attempt.task
            if attempt.sink.closed:  # its run ended while it waited: do not start it
                self._hand_back(attempt, _dropped(task))
                continue
            if task.metadata.timeout is not None:  # the clock runs from the start, not the queue
                with contextlib.suppress(RuntimeError):
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(self._arm_timeout, attempt)
            on_chunk = None
            if task.metadata.stream_output:

                def on_chunk(result_id: str, attempt: _Attempt = attempt) -> None:
                    self._hand_back(attempt, result_id)

            self._run_chain(worker, attempt, on_chunk)

    def _run_chain(
        self, worker: Worker, attempt: _Attempt, on_chunk: Callable[[str], None] | None
    ) -> None:
        """Run `attempt`, then, while the task it finished alone makes one more ready, that
        one in the same thread: a chain costs no round trip through the loop per link."""
        while True:
            task, sink = attempt.task, attempt.sink
            started_at = time.time()
            try:
                outcome = worker.execute(task, on_chunk, sink)
                following = sink.successor(task, outcome) if outcome.ok else None
            except BaseException as exc:  # never lose a thread, nor leave its attempt unended
                self._hand_back(attempt, worker.crashed(task, exc, started_at))
                return
            if following is None:
                self._hand_back(attempt, outcome)
                return
            successor = _Attempt(following, sink)
            self._hand_back(attempt, outcome, successor)
            attempt, on_chunk = successor, None

    def _writer_saturated(self) -> bool:
        """Threads blocked on the result writer are not busy: adding threads would not help."""
        return self.write_behind is not None and self.write_behind.saturated

    def _forget(self, running: asyncio.Task[None]) -> None:
        self._async_tasks.pop(running, None)

    def cancel_run(self, sink: TaskSink) -> None:
        """Cancel the async tasks of a run that was stopped (threads cannot be cancelled)."""
        for running, owner in list(self._async_tasks.items()):
            if owner is sink:
                running.cancel()

    def _arm_timeout(self, attempt: _Attempt) -> None:
        timeout = attempt.task.metadata.timeout
        if not attempt.finished and timeout is not None and self._loop is not None:
            attempt.timer = self._loop.call_later(timeout, self._timed_out, attempt, timeout)

    def _grow(self) -> None:
        self._growing = False
        if (
            self._loop is not None
            and len(self._threads) < self.max_threads
            and not self._writer_saturated()
        ):
            self._add_thread()

    def _hand_back(
        self, attempt: _Attempt, item: TaskOutcome | str, successor: _Attempt | None = None
    ) -> None:
        """From a pool thread: queue a chunk id or an outcome for the loop thread.

        The loop is woken at once only when it is needed: a chunk (a consumer may be waiting
        for it), or no job left for the threads. Otherwise the loop's poller collects
        finished tasks in batches, so busy threads are not slowed by a wake-up (and a fight
        for the GIL) per task. A thread that goes on with a `successor` needs nothing.
        """
        self._finished.append((attempt, item, successor))
        if (
            not self._wakeup_pending
            and successor is None
            and (isinstance(item, str) or self._jobs.empty())
        ):
            self._wakeup_pending = True
            loop = self._loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(self._drain_finished)

    def _poll(self) -> None:
        """Collect finished tasks while threads are busy; back off while nothing finishes."""
        self._poller = None
        if self._finished:
            self._poll_interval = _POLL_MIN
            self._drain_finished()
        else:
            self._poll_interval = min(self._poll_interval * 2, _POLL_MAX)
        if (
            not self._jobs.empty()
            and time.monotonic() - self._last_take > self.grow_after
            and len(self._threads) < self.max_threads
            and not self._writer_saturated()
        ):
            self._add_thread()  # every thread is stuck in a task while others wait
        if self._queued and self._poller is None and self._loop is not None:
            self._poller = self._loop.call_later(self._poll_interval, self._poll)

    def _drain_finished(self) -> None:
        self._wakeup_pending = False
        finished = self._finished
        while finished:
            attempt, item, successor = finished.popleft()
            if isinstance(item, str):
                self._chunk(attempt, item)
            elif successor is None:
                self._queued -= 1
                self._done(attempt, item)
            else:  # its thread went on with the successor, in the same slot
                self._done(attempt, item, successor)

    async def _run_async(self, attempt: _Attempt) -> None:
        worker = self._worker
        assert worker is not None
        task = attempt.task

        def on_chunk(result_id: str) -> None:
            self._chunk(attempt, result_id)

        chunk_cb = on_chunk if task.metadata.stream_output else None
        timeout = task.metadata.timeout
        started_at = time.time()
        try:
            async with asyncio.timeout(timeout):
                outcome = await worker.execute_async(task, chunk_cb, attempt.sink)
        except TimeoutError:
            outcome = timeout_outcome(task, timeout or 0.0)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except BaseException as exc:  # the attempt ends, recorded, whatever happened
            outcome = worker.crashed(task, exc, started_at)
        self._done(attempt, outcome)

    def _chunk(self, attempt: _Attempt, result_id: str) -> None:
        if not attempt.finished:
            attempt.sink.on_chunk(attempt.task, result_id)

    def _done(
        self, attempt: _Attempt, outcome: TaskOutcome, successor: _Attempt | None = None
    ) -> None:
        if attempt.finished:
            if successor is not None:  # never the case: tasks with a timeout are not followed
                successor.finished = True
            return
        attempt.finished = True
        if attempt.timer is not None:
            attempt.timer.cancel()
        attempt.sink.on_done(attempt.task, outcome, successor.task if successor else None)

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
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        for _ in self._threads:
            self._jobs.put(None)
        self._threads = []
        self._loop = None
        if self.write_behind is not None:
            await asyncio.to_thread(self.write_behind.stop)
