"""`ProcessExecutor`: tasks run in local worker processes that import them by module path.

Workers are started with "forkserver" (or "spawn" where fork is unavailable), never plain
fork, so the behaviour is the same on every OS and threads in the parent are safe. Each
worker has its own pair of `MultiprocessQueue`s: a worker that dies (killed, segfault,
`os._exit`) can only damage its own queues, which are thrown away with it.

No worker outlives its orchestrator: each watches a pipe that only the orchestrator holds
(`multiprocessing.parent_process().sentinel`) from a thread, and exits the moment it reads
end-of-file there, whatever killed the orchestrator (SIGKILL included), abandoning its task
without saving anything more. (`PR_SET_PDEATHSIG` would not do: a forkserver worker's parent
is the forkserver, not the orchestrator.) The forkserver and multiprocessing's resource
tracker end by themselves once the workers are gone.

Messages are those of `dp.engine.messages`: tasks travel as references (`module:qualname`, run
id, input result ids), results stay in the IO manager, and only completions come back. Each
worker keeps `prefetch` tasks queued so IPC latency overlaps with work, and sends completions in
small batches. Over this local pipe the message objects are pickled, not turned into JSON:
both ends are the same dp in the same interpreter, and JSON would add a dumps and a loads per
message on the hot path (`python -m bench engine`). The Celery executor, whose workers may run
another release on another machine, sends the same messages as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from dp.engine.children import become_subreaper, forks, kill_attempt_children, kill_group
from dp.engine.executors import TaskSink, timeout_outcome
from dp.engine.messages import (
    ChunkMessage,
    CompletionMessage,
    StartedMessage,
    TaskMessage,
    WorkerMessage,
)
from dp.engine.model import ExecutableTask, TaskOutcome
from dp.engine.worker import Worker, resolve_task
from dp.errors import (
    InvalidArgumentError,
    QueueClosedError,
    QueueEmptyError,
    UnreachableIOManagerError,
)
from dp.events.queues import MultiprocessQueue
from dp.io import IOManager
from dp.logs import get_logger
from dp.tasks import TaskMetadata

__all__ = ["ProcessExecutor"]

_log = get_logger("dp.engine")

#: what a worker sends first, once it is up (its other messages are `WorkerMessage`s)
_READY = "ready"
#: workers dying before they are ready this many times in a row: stop starting them
_STARTUP_FAILURES = 3
#: seconds a worker may hold finished outcomes before sending them
_BATCH_WINDOW = 0.002


class ProcessExecutor:
    """Runs tasks in `workers` local processes, replacing any that die or time out.

    Args:
        workers: number of worker processes (default: CPU count).
        prefetch: tasks queued per worker ahead of the one running.
        start_method: "forkserver" (default where available) or "spawn".
        capture_output: keep each task's stdout/stderr with its result.
    """

    name = "process"

    def __init__(
        self,
        *,
        workers: int | None = None,
        prefetch: int = 4,
        start_method: str | None = None,
        capture_output: bool = True,
    ) -> None:
        self.workers = workers or os.cpu_count() or 2
        self.prefetch = max(1, prefetch)
        self.capacity = self.workers * self.prefetch
        if start_method is None:
            methods = multiprocessing.get_all_start_methods()
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        if start_method not in ("forkserver", "spawn"):
            raise InvalidArgumentError("start_method", start_method, "'forkserver' or 'spawn'")
        self.start_method = start_method
        self.capture_output = capture_output
        self._context: Any = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # Workers forked from a forkserver that already imported this module start their
            # orphan watch at once, not after importing dp (seconds on a loaded machine,
            # during which a worker whose orchestrator was killed would linger); and they
            # start faster.
            self._context.set_forkserver_preload(["dp.engine.process"])
        self._io_manager: IOManager | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: list[_Slot] = []
        self._backlog: deque[tuple[ExecutableTask, TaskSink]] = deque()
        self._next_handle = 0
        self._flush_scheduled = False
        self._closing = False
        #: worker processes that died (or were killed on a timeout) and were replaced
        self.replacements = 0
        self._startup_failures = 0
        #: set when workers keep dying at start: why, said to every task from then on
        self.broken: str | None = None

    async def start(self, io_manager: IOManager) -> None:
        if self._slots:
            return
        _check_picklable(io_manager)
        self._io_manager = io_manager
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self.broken, self._startup_failures = None, 0
        for index in range(self.workers):
            self._slots.append(self._spawn(index))

    def submit(self, task: ExecutableTask, sink: TaskSink) -> None:
        if self.broken is not None:
            assert self._loop is not None
            self._loop.call_soon(sink.on_done, task, self._broken_outcome(task))
            return
        slot = min(self._slots, key=_load)
        if len(slot.in_flight) >= self.prefetch or not slot.alive:
            self._backlog.append((task, sink))
            return
        self._assign(slot, task, sink)

    async def shutdown(self) -> None:
        self._closing = True
        slots, self._slots = self._slots, []
        for slot in slots:
            slot.stop()
        deadline = time.monotonic() + 5
        for slot in slots:
            await asyncio.to_thread(slot.process.join, max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                await asyncio.to_thread(slot.process.join, 1)
            slot.close()

    # --- dispatching ----------------------------------------------------------------------

    def _assign(self, slot: _Slot, task: ExecutableTask, sink: TaskSink) -> None:
        handle = self._next_handle
        self._next_handle += 1
        slot.in_flight[handle] = _Flight(task, sink)
        slot.outbox.append(TaskMessage.of(task, handle))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send each worker the tasks assigned to it in this loop iteration, as one batch."""
        self._flush_scheduled = False
        for slot in self._slots:
            if slot.outbox and slot.alive:
                batch, slot.outbox = slot.outbox, []
                # a closed queue: the worker is being replaced and its tasks requeued
                with contextlib.suppress(QueueClosedError):
                    slot.tasks.put_nowait(batch)

    def _refill(self) -> None:
        while self._backlog:
            slot = min(self._slots, key=_load)
            if len(slot.in_flight) >= self.prefetch or not slot.alive:
                return
            task, sink = self._backlog.popleft()
            if not sink.closed:  # its run ended while it waited: drop it
                self._assign(slot, task, sink)

    # --- worker messages ------------------------------------------------------------------

    def _on_results(self, slot: _Slot) -> None:
        """The worker's result queue is readable: handle everything waiting in it."""
        while slot.alive:
            try:
                batch = slot.results.get_nowait()
            except (QueueClosedError, QueueEmptyError):
                return
            for message in batch:
                if message == _READY:
                    slot.ready = True
                    self._startup_failures = 0
                    continue
                handle = message.handle
                flight = slot.in_flight.get(handle)
                if flight is None:
                    continue
                kind = type(message)
                if kind is CompletionMessage:
                    del slot.in_flight[handle]
                    if flight.timer is not None:
                        flight.timer.cancel()
                    flight.sink.on_done(flight.task, message.outcome())
                elif kind is ChunkMessage:
                    flight.sink.on_chunk(flight.task, message.result_id)
                elif kind is StartedMessage:
                    timeout = flight.task.metadata.timeout or 0.0
                    assert self._loop is not None
                    flight.timer = self._loop.call_later(
                        timeout, self._timed_out, slot, handle, timeout
                    )
        self._refill()

    def _timed_out(self, slot: _Slot, handle: int, seconds: float) -> None:
        flight = slot.in_flight.get(handle)
        if flight is None or not slot.alive:
            return
        slot.timed_out = (handle, seconds)
        _log.warning(
            "worker.killing",
            pid=slot.process.pid,
            task_name=flight.task.task_name,
            reason=f"timeout after {seconds:g}s",
        )
        slot.process.kill()  # the sentinel fires next, and _on_exit replaces the worker

    def _on_exit(self, slot: _Slot) -> None:
        """The worker process ended: fail or requeue its tasks, and start a replacement."""
        if not slot.alive:
            return
        self._on_results(slot)  # completions it sent before dying still count
        running = slot.running.value  # the handle it was executing (-1: none)
        slot.alive = False
        code = slot.process.exitcode
        if code is None:
            slot.process.join(1)
            code = slot.process.exitcode
        kill_group(slot.process.pid)  # what its task forked dies with it (it led the group)
        slot.close()
        if self._closing:
            return
        why = _describe_exit(code)
        self._startup_failures = 0 if slot.ready else self._startup_failures + 1
        if self._startup_failures >= _STARTUP_FAILURES:
            self._give_up(slot, why)
            return
        self._slots[self._slots.index(slot)] = self._spawn(slot.index)
        self.replacements += 1
        flights = list(slot.in_flight.items())
        slot.in_flight.clear()
        _log.warning("worker.died", pid=slot.process.pid, exit=why, tasks=len(flights))
        for handle, flight in flights:
            if flight.timer is not None:
                flight.timer.cancel()
            if slot.timed_out is not None and slot.timed_out[0] == handle:
                note = "; its worker process was killed and replaced"
                flight.sink.on_done(
                    flight.task, timeout_outcome(flight.task, slot.timed_out[1], note)
                )
            elif handle == running and slot.timed_out is None:
                flight.sink.on_done(
                    flight.task,
                    TaskOutcome(
                        flight.task.task_name,
                        flight.task.instance,
                        False,
                        [],
                        time.time(),
                        0.0,
                        error=(
                            f"WorkerDied: the worker process running task "
                            f"{flight.task.describe()!r} {why}; it was replaced"
                        ),
                        retryable=True,
                    ),
                )
            else:
                # not started, or finished with its completion still unsent (its result is
                # saved, so running it again is harmless): run it elsewhere, at no attempt's cost
                self._backlog.appendleft((flight.task, flight.sink))
        self._refill()

    def _give_up(self, slot: _Slot, why: str) -> None:
        """Workers die before they are even ready: starting more would loop forever."""
        self.broken = (
            f"worker processes {why} before they were ready, {self._startup_failures} times in "
            "a row, so dp stopped starting them. Worker processes import the main module: guard "
            "the code that starts pipelines with `if __name__ == '__main__':`, and check that the "
            "task modules import in a fresh interpreter"
        )
        _log.error("worker.giving_up", reason=self.broken)
        failed = list(slot.in_flight.values())
        slot.in_flight.clear()
        failed += [_Flight(task, sink) for task, sink in self._backlog]
        self._backlog.clear()
        for flight in failed:
            flight.sink.on_done(flight.task, self._broken_outcome(flight.task))

    def _broken_outcome(self, task: ExecutableTask) -> TaskOutcome:
        return TaskOutcome(
            task.task_name,
            task.instance,
            False,
            [],
            time.time(),
            0.0,
            error=f"WorkerStartFailed: {self.broken}",
            retryable=False,
        )

    # --- processes ------------------------------------------------------------------------

    def _spawn(self, index: int) -> _Slot:
        tasks: MultiprocessQueue[Any] = MultiprocessQueue(context=self._context)
        results: MultiprocessQueue[Any] = MultiprocessQueue(context=self._context)
        running = self._context.RawValue(ctypes.c_longlong, -1)
        process = self._context.Process(
            target=_worker_main,
            args=(tasks, results, self._io_manager, self.capture_output, list(sys.path), running),
            name=f"dp-worker-{index}",
            daemon=True,
        )
        process.start()
        slot = _Slot(index, process, tasks, results, running)
        loop = self._loop
        assert loop is not None
        loop.add_reader(results.fileno(), self._on_results, slot)
        loop.add_reader(process.sentinel, self._on_exit, slot)
        slot.unwatch = lambda: (
            loop.remove_reader(results.fileno()),
            loop.remove_reader(process.sentinel),
        )
        return slot


class _Flight:
    __slots__ = ("sink", "task", "timer")

    def __init__(self, task: ExecutableTask, sink: TaskSink) -> None:
        self.task = task
        self.sink = sink
        self.timer: asyncio.TimerHandle | None = None


class _Slot:
    """One worker process and what the parent knows about it."""

    def __init__(
        self,
        index: int,
        process: Any,
        tasks: MultiprocessQueue[Any],
        results: MultiprocessQueue[Any],
        running: Any,
    ) -> None:
        self.index = index
        self.process = process
        self.tasks = tasks
        self.results = results
        #: shared memory the worker writes the handle it executes into: after a crash it
        #: names the task to blame, whatever completions were lost with the process
        self.running = running
        self.in_flight: dict[int, _Flight] = {}
        self.outbox: list[TaskMessage] = []
        self.alive = True
        self.ready = False  # the worker said it is up (it died later, if at all)
        self.timed_out: tuple[int, float] | None = None
        self.unwatch: Callable[[], Any] = lambda: None

    def stop(self) -> None:
        self.alive = False
        self.unwatch()
        self.unwatch = lambda: None
        with contextlib.suppress(Exception):
            self.tasks.put_nowait(None)

    def close(self) -> None:
        """Let go of the worker's queues; the worker is gone, so nothing is sent on them (a
        worker killed mid-write would hold their write lock forever)."""
        self.unwatch()
        self.unwatch = lambda: None
        self.tasks.discard()
        self.results.discard()


def _load(slot: _Slot) -> int:
    return len(slot.in_flight) if slot.alive else 1 << 30


def _check_picklable(io_manager: IOManager) -> None:
    import pickle

    try:
        pickle.dumps(io_manager)
    except UnreachableIOManagerError:
        raise
    except Exception as exc:
        raise UnreachableIOManagerError(type(io_manager).__name__, str(exc)) from exc


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped responding"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


# --- the worker process ---------------------------------------------------------------------


def _worker_main(
    tasks: MultiprocessQueue[Any],
    results: MultiprocessQueue[Any],
    io_manager: IOManager,
    capture_output: bool,
    sys_path: list[str],
    running: Any,
) -> None:
    """Entry point of a worker process: run task batches until told to stop."""
    become_subreaper()  # what tasks fork stays findable (see `dp.engine.children`)
    _exit_with_the_orchestrator()
    for entry in reversed(sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    worker = Worker(io_manager, capture_output=capture_output)
    results.put_sync([_READY])
    resolved: dict[str, TaskMetadata | str] = {}
    loop = asyncio.new_event_loop()
    pending: list[WorkerMessage] = []
    first_pending = 0.0

    def send(message: WorkerMessage, urgent: bool) -> None:
        nonlocal first_pending
        if not pending:
            first_pending = time.monotonic()
        pending.append(message)
        if urgent or time.monotonic() - first_pending > _BATCH_WINDOW:
            flush()

    def flush() -> None:
        if pending:
            results.put_sync(list(pending))
            pending.clear()

    while True:
        try:
            batch = tasks.get_sync()
        except QueueClosedError:
            break
        if batch is None:
            break
        message: TaskMessage
        for position, message in enumerate(batch):
            last = position == len(batch) - 1
            handle = message.handle
            meta = resolved.get(message.import_path)
            if meta is None:
                meta = resolved[message.import_path] = resolve_task(message.import_path)
            if isinstance(meta, str):  # the import failed: say so, do not retry
                send(CompletionMessage.refused(message, meta), last)
                continue
            if message.timed:
                send(StartedMessage(handle), True)
            task = message.task(meta)

            def on_chunk(rid: str, handle: int = handle) -> None:
                send(ChunkMessage(handle, rid), True)

            chunk_cb = on_chunk if meta.stream_output else None
            running.value = handle
            started_at = time.time()
            forked = forks()
            try:
                if meta.is_async:
                    outcome = loop.run_until_complete(worker.execute_async(task, chunk_cb))
                else:
                    outcome = worker.execute(task, chunk_cb)
            except BaseException as exc:  # the attempt ends, reported, whatever happened
                outcome = worker.crashed(task, exc, started_at)
            finally:
                if forks() != forked:  # what it forked, on any thread, ends with it
                    kill_attempt_children(whole_process=True)
            running.value = -1
            send(CompletionMessage.of(handle, outcome), last)
        flush()
    flush()
    loop.close()


#: exit status of a worker that ended because its orchestrator was gone
_ORPHANED = 70


def _exit_with_the_orchestrator() -> None:
    """End this worker as soon as the process that started it is gone, however it died."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])  # readable only once the parent is gone
        if os.getpgid(0) == os.getpid():  # with what its task forked (its own group)
            with contextlib.suppress(OSError):
                os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(_ORPHANED)  # at once: no cleanup, no result saved, no message sent

    threading.Thread(target=watch, name="dp-orphan-watch", daemon=True).start()
