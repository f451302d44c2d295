"""`Worker`: runs one `ExecutableTask`: load inputs, call the function, save the results."""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from dp.engine import capture
from dp.engine.children import attempt_ended, attempt_started
from dp.engine.model import (
    ExecutableTask,
    TaskOutcome,
    chunk_result_id,
    manifest_result_id,
    scheduled_time,
)
from dp.errors import FencedError, SerializationError
from dp.io import IOManager
from dp.safetext import describe_exception, reraise_interrupt, safe_traceback
from dp.store.records import HOST
from dp.tasks import SCHEDULED_FOR, TaskMetadata

__all__ = ["ChunkCallback", "CommitGuard", "Worker", "format_error", "resolve_task"]

_output = capture._buffer
_Router = capture._Router

#: Called with each chunk's result id right after the chunk is saved.
ChunkCallback = Callable[[str], None]


class CommitGuard(Protocol):
    """Says whether an attempt may still commit results: `closed` once its run ended, was
    taken over by a newer owner, or the orchestrator that handed it out is gone. A worker
    checks it before every save, so an abandoned attempt stores nothing more."""

    @property
    def closed(self) -> bool: ...


class Worker:
    """Executes tasks against one IO manager. Stateless between tasks, so one per thread or
    process is enough; every executor (inline, threads, processes, Celery) uses it."""

    def __init__(self, io_manager: IOManager, *, capture_output: bool = True) -> None:
        self.io_manager = io_manager
        self.capture_output = capture_output
        self.pid = os.getpid()

    def execute(
        self,
        task: ExecutableTask,
        on_chunk: ChunkCallback | None = None,
        guard: CommitGuard | None = None,
    ) -> TaskOutcome:
        """Run a sync task (function or generator) to its outcome; never raises."""
        # The hot path of every executor (a few µs of Python per task is the engine's whole
        # overhead on no-op tasks): capture, the plain save and the outcome are written out
        # here rather than called as `_start_capture`, `_save` and `_succeeded`.
        started_at = time.time()
        chunks: list[str] = []
        token = None
        attempt_started()  # what it forks ends with it
        if self.capture_output:
            if type(sys.stdout) is not _Router or type(sys.stderr) is not _Router:
                capture.install()
            token = _output.set(chunks)
        try:
            kwargs = self._load_inputs(task)
            meta = task.metadata
            if meta.stream_output:
                result_ids = self._drain(task, meta.func(**kwargs), on_chunk, guard)
            else:
                value = meta.func(**kwargs)
                if meta.is_generator:  # stream_output=False: the chunks are one list result
                    value = list(value)
                if guard is not None and guard.closed:
                    raise FencedError(task.run_id, task.epoch)
                result_id = task.task_result_id
                self.io_manager.save(task.run_id, task.task_name, result_id, value)
                result_ids = [result_id]
        except BaseException as exc:  # sys.exit(), a raised BaseException: the task fails
            reraise_interrupt(exc)
            return self._failed(task, exc, started_at, chunks)
        finally:
            if token is not None:
                _output.reset(token)
            attempt_ended()
        return TaskOutcome(
            task.task_name,
            task.instance,
            True,
            result_ids,
            started_at,
            time.time() - started_at,
            None,
            None,
            _output_of(chunks) if chunks else "",
            True,
            HOST,
            self.pid,
        )

    async def execute_async(
        self,
        task: ExecutableTask,
        on_chunk: ChunkCallback | None = None,
        guard: CommitGuard | None = None,
    ) -> TaskOutcome:
        """Run an async task (coroutine or async generator) to its outcome; never raises
        except `asyncio.CancelledError` when it is cancelled from outside, so timeouts and
        cancellation reach the caller (a `CancelledError` the task raises itself fails it)."""
        started_at = time.time()
        chunks: list[str] = []
        token = self._start_capture(chunks)
        try:
            kwargs = self._load_inputs(task)
            meta = task.metadata
            if meta.is_generator and not meta.stream_output:
                value = [chunk async for chunk in meta.func(**kwargs)]
                result_ids = [self._save(task, task.task_result_id, value, guard)]
            elif meta.is_generator:
                result_ids = []
                async for chunk in meta.func(**kwargs):
                    self._save_chunk(task, chunk, result_ids, on_chunk, guard)
                self._save(task, manifest_result_id(task.task_result_id), result_ids, guard)
            else:
                value = await meta.func(**kwargs)
                result_ids = [self._save(task, task.task_result_id, value, guard)]
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is None or current.cancelling():
                raise  # cancelled from outside: a timeout, a stopped run
            return self._failed(task, exc, started_at, chunks)  # the task raised it itself
        except BaseException as exc:
            reraise_interrupt(exc)
            return self._failed(task, exc, started_at, chunks)
        finally:
            if token is not None:
                _output.reset(token)
        return self._succeeded(task, result_ids, started_at, chunks)

    def _start_capture(self, chunks: list[str]) -> contextvars.Token[list[str] | None] | None:
        """Send what the task prints into `chunks`; the token undoes it."""
        if not self.capture_output:
            return None
        capture.install()
        return _output.set(chunks)

    def _load_inputs(self, task: ExecutableTask) -> dict[str, Any]:
        kwargs = dict(task.params) if task.params else {}
        if SCHEDULED_FOR in kwargs:
            kwargs[SCHEDULED_FOR] = scheduled_time(kwargs[SCHEDULED_FOR])
        if task.inputs:
            load = self.io_manager.load
            run_id = task.run_id
            sources = task.sources
            for parameter, (upstream, result_id) in task.inputs.items():
                source = sources.get(upstream, run_id) if sources else run_id
                if isinstance(result_id, tuple):
                    kwargs[parameter] = [load(source, upstream, rid) for rid in result_id]
                else:
                    kwargs[parameter] = load(source, upstream, result_id)
        return kwargs

    def _save(
        self, task: ExecutableTask, result_id: str, value: Any, guard: CommitGuard | None
    ) -> str:
        if guard is not None and guard.closed:
            raise FencedError(task.run_id, task.epoch)
        self.io_manager.save(task.run_id, task.task_name, result_id, value)
        return result_id

    def _drain(
        self,
        task: ExecutableTask,
        generator: Any,
        on_chunk: ChunkCallback | None,
        guard: CommitGuard | None,
    ) -> list[str]:
        result_ids: list[str] = []
        for chunk in generator:
            self._save_chunk(task, chunk, result_ids, on_chunk, guard)
        self._save(task, manifest_result_id(task.task_result_id), result_ids, guard)
        return result_ids

    def _save_chunk(
        self,
        task: ExecutableTask,
        chunk: Any,
        result_ids: list[str],
        on_chunk: ChunkCallback | None,
        guard: CommitGuard | None,
    ) -> None:
        """Save the next chunk of a stream at once and tell whoever waits for it."""
        chunk_id = chunk_result_id(task.task_result_id, len(result_ids))
        rid = self._save(task, chunk_id, chunk, guard)
        result_ids.append(rid)
        if on_chunk is not None:
            on_chunk(rid)

    def _failed(
        self,
        task: ExecutableTask,
        exc: BaseException,
        started_at: float,
        chunks: list[str],
    ) -> TaskOutcome:
        return TaskOutcome(
            task.task_name,
            task.instance,
            False,
            [],
            started_at,
            time.time() - started_at,
            error=format_error(exc),
            traceback=safe_traceback(exc),
            output=_output_of(chunks),
            # an unpicklable result fails the same way every time, and an abandoned attempt
            # must not run again here: retrying only wastes time
            retryable=not isinstance(exc, SerializationError | FencedError),
            host=HOST,
            pid=self.pid,
        )

    def _succeeded(
        self, task: ExecutableTask, result_ids: list[str], started_at: float, chunks: list[str]
    ) -> TaskOutcome:
        return TaskOutcome(
            task.task_name,
            task.instance,
            True,
            result_ids,
            started_at,
            time.time() - started_at,
            None,
            None,
            _output_of(chunks) if chunks else "",
            True,
            HOST,
            self.pid,
        )

    def crashed(self, task: ExecutableTask, exc: BaseException, started_at: float) -> TaskOutcome:
        """The outcome of an attempt whose reporting itself failed (a bug of dp's, or an
        object no guard foresaw): the attempt ends failed, recorded, instead of killing the
        thread or process that runs it and leaving its run waiting forever."""
        try:
            outcome = self._failed(task, exc, started_at, [])
        except BaseException as again:
            reraise_interrupt(again)
            outcome = TaskOutcome(
                task.task_name,
                task.instance,
                False,
                [],
                started_at,
                time.time() - started_at,
                error="WorkerError: the attempt's outcome could not be described",
                retryable=False,
                host=HOST,
                pid=self.pid,
            )
        outcome.retryable = False  # it would fail the same way again
        return outcome


def _output_of(chunks: list[str]) -> str:
    """What the task printed; never raises (a task may have written anything)."""
    try:
        return capture.joined(chunks)
    except BaseException as exc:
        reraise_interrupt(exc)
        return f"<output could not be joined: {describe_exception(exc)}>"


def format_error(exc: BaseException) -> str:
    """One line naming the exception: `ValueError: bad row 3`; never raises, whatever the
    exception's `__str__` does (`RuntimeError: <exception str() failed: ValueError>`)."""
    return describe_exception(exc)


def resolve_task(import_path: str) -> TaskMetadata | str:
    """The task at `module:qualname`, or an error message saying why it cannot be had."""
    module_name, _, qualname = import_path.partition(":")
    if "<locals>" in qualname:
        return (
            f"ImportError: task {import_path!r} is defined inside a function, so worker "
            "processes cannot import it; define it at module level or use the in-process "
            "executor"
        )
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except BaseException as exc:
        return f"ImportError: worker could not import task {import_path!r}: {format_error(exc)}"
    meta = getattr(obj, "__dp_task__", None)
    if isinstance(meta, TaskMetadata):
        return meta
    # a plain function (not decorated here): workers only need how to call it
    is_generator = inspect.isgeneratorfunction(obj) or inspect.isasyncgenfunction(obj)
    return TaskMetadata(
        name=qualname,
        func=obj,
        is_async=inspect.iscoroutinefunction(obj) or inspect.isasyncgenfunction(obj),
        is_generator=is_generator,
        stream_output=is_generator,
    )
