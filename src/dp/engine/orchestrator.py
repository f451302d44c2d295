"""`Orchestrator`: starts runs of execution plans, drives them to the end, records them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from dp.engine.executors import Executor, InlineExecutor, InProcessExecutor
from dp.engine.model import (
    ExecutableTask,
    RunResult,
    TaskOutcome,
    TaskRunResult,
    manifest_result_id,
)
from dp.engine.recorder import RunRecorder
from dp.engine.resolver import TaskDependencyResolver
from dp.engine.worker import format_error
from dp.errors import DPError, DuplicateRunError
from dp.io import FilesystemIOManager, IOManager
from dp.logs import get_logger
from dp.planner import ExecutionPlan
from dp.planner.params import jsonable
from dp.store.records import RunRecord, RunStatus, TaskStatus

__all__ = [
    "ExecutionContext",
    "Orchestrator",
    "ResumeError",
    "RunHandle",
    "RunListener",
    "TooManyPipelinesError",
    "new_run_id",
]

_log = get_logger("dp.engine")
_HOST = socket.gethostname()


class TooManyPipelinesError(DPError):
    """The orchestrator runs `max_concurrent_pipelines` runs and its wait queue is full."""

    def __init__(self, running: int, queued: int) -> None:
        self.running = running
        self.queued = queued
        super().__init__(
            f"{running} pipelines are running and {queued} are waiting, the most allowed; "
            "retry later, or raise max_concurrent_pipelines / max_queued_pipelines."
        )


def new_run_id() -> str:
    """A sortable, unique run id: `20261122-101500-1a2b3c4d`."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"


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


def _check_limits(
    max_parallel_tasks: int | None,
    max_concurrent_pipelines: int,
    max_queued_pipelines: int,
    workers: int | None,
) -> None:
    for name, value, least in (
        ("max_parallel_tasks", max_parallel_tasks, 1),
        ("max_concurrent_pipelines", max_concurrent_pipelines, 1),
        ("max_queued_pipelines", max_queued_pipelines, 0),
        ("workers", workers, 1),
    ):
        if value is not None and (not isinstance(value, int) or value < least):
            raise DPError(f"{name} must be an int >= {least} (or left unset), got {value!r}.")


def make_executor(executor: str | Executor, workers: int | None = None) -> Executor:
    """An executor from its name: 'inline', 'inprocess' or 'process' (with `workers`)."""
    if not isinstance(executor, str):
        return executor
    if executor == "inline":
        return InlineExecutor()
    if executor in ("inprocess", "threads"):
        return InProcessExecutor(max_threads=workers)
    if executor in ("process", "processes"):
        from dp.engine.process import ProcessExecutor

        return ProcessExecutor(workers=workers)
    raise DPError(f"unknown executor {executor!r}; choose 'inline', 'inprocess' or 'process'.")


class Orchestrator:
    """Runs execution plans through an executor, persisting results and recording runs.

    Args:
        io_manager: where results go (default: `FilesystemIOManager('.dp/results')`).
        store: where runs are recorded; None records nothing (and runs cannot be resumed).
        executor: 'inline', 'inprocess' (default), 'process', or an `Executor`.
        workers: threads or worker processes for the executor.
        max_parallel_tasks: tasks of one run in flight at once (default: the executor's).
        max_concurrent_pipelines: runs executing at once; more wait in a queue.
        max_queued_pipelines: runs allowed to wait; beyond, `TooManyPipelinesError`.
        listeners: `RunListener`s told about every run and task change.
    """

    def __init__(
        self,
        *,
        io_manager: IOManager | None = None,
        store: Any | None = None,
        executor: str | Executor = "inprocess",
        workers: int | None = None,
        max_parallel_tasks: int | None = None,
        max_concurrent_pipelines: int = 8,
        max_queued_pipelines: int = 100,
        listeners: Sequence[RunListener] = (),
        flush_interval: float = 0.2,
    ) -> None:
        _check_limits(max_parallel_tasks, max_concurrent_pipelines, max_queued_pipelines, workers)
        self.io_manager = (
            io_manager if io_manager is not None else FilesystemIOManager(Path(".dp") / "results")
        )
        self.store = store
        self.executor = make_executor(executor, workers)
        self.max_parallel_tasks = max_parallel_tasks
        self.max_concurrent_pipelines = max_concurrent_pipelines
        self.max_queued_pipelines = max_queued_pipelines
        self.listeners = list(listeners)
        self.flush_interval = flush_interval
        self._running = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._active: dict[str, RunHandle] = {}
        self._started = False

    @classmethod
    def embedded(cls, root: str | os.PathLike[str] = ".dp", **options: Any) -> Orchestrator:
        """The zero-service setup: results under `root/results`, runs in `root/runs.db`."""
        from dp.store import SQLRunStore

        root = Path(root)
        options.setdefault("io_manager", FilesystemIOManager(root / "results"))
        options.setdefault("store", SQLRunStore(path=root / "runs.db"))
        return cls(**options)

    @property
    def active_pipelines(self) -> int:
        return self._running

    @property
    def queued_pipelines(self) -> int:
        return len(self._waiters)

    async def start_pipeline(
        self,
        plan: ExecutionPlan,
        params: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> RunResult:
        """Run `plan` to the end and return its result (`submit_pipeline`, then wait).

        Raises:
            MissingRunParameterError, InvalidRunParameterError: bad `params`.
            TooManyPipelinesError: too many runs running and waiting.
            DuplicateRunError: `run_id` or `event_id` already started a run.
        """
        handle = await self.submit_pipeline(plan, params, **options)
        try:
            return await handle.result()
        except asyncio.CancelledError:  # our caller gave up: the run stops, as interrupted
            self.cancel(handle.run_id, status=RunStatus.INTERRUPTED)
            if handle.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await handle.task
            raise

    async def submit_pipeline(
        self,
        plan: ExecutionPlan,
        params: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        trigger: str = "manual",
        pipeline: str = "",
        target: str = "",
        selection: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        resume: bool = False,
    ) -> RunHandle:
        """Record a run of `plan` and start it in the background; returns at once.

        Everything that can be refused is refused here, before the run exists: bad run
        parameters, a full wait queue, a duplicate run or event id. With `resume=True`,
        `run_id` names an earlier, interrupted run whose stored results are reused.

        Raises:
            MissingRunParameterError, InvalidRunParameterError: bad `params`.
            TooManyPipelinesError: too many runs running and waiting.
            DuplicateRunError: `run_id` or `event_id` already started a run.
        """
        bound = plan.bind_params(params)
        context = ExecutionContext(
            run_id=run_id or new_run_id(),
            dag_id=plan.dag_id,
            plan=plan,
            io_manager=self.io_manager,
            params=bound,
            metadata=dict(metadata or {}),
            trigger=trigger,
            pipeline=pipeline or target,
        )
        if context.run_id in self._active:
            raise DuplicateRunError(context.run_id)
        await self._start_executor()  # an executor that cannot start refuses the run here
        waiter = self._reserve_slot()
        recorder = RunRecorder(self.store, context.run_id, self.flush_interval)
        try:
            if not resume and self.store is not None:
                # With a slot free now, the record says running at once: one write, not two.
                starts_now = waiter is None
                await recorder.create_run(
                    RunRecord(
                        run_id=context.run_id,
                        dag_id=plan.dag_id,
                        pipeline=context.pipeline,
                        target=target,
                        selection=dict(selection or {}),
                        params={name: jsonable(value) for name, value in bound.items()},
                        status=RunStatus.RUNNING if starts_now else RunStatus.QUEUED,
                        started_at=datetime.now(UTC) if starts_now else None,
                        trigger=trigger,
                        event_id=event_id,
                        metadata={**context.metadata, "owner": _owner()}
                        if starts_now
                        else context.metadata,
                        plan=_plan_dict(plan),
                    )
                )
                recorder.started_recorded = starts_now
        except BaseException:
            self._cancel_reservation(waiter)
            raise
        handle = RunHandle(context)
        self._active[context.run_id] = handle
        handle.task = asyncio.get_running_loop().create_task(
            self._execute(handle, recorder, waiter, resume), name=f"dp-run-{context.run_id}"
        )
        return handle

    def active_runs(self) -> list[RunHandle]:
        """Runs submitted and not finished yet (waiting for a slot or running)."""
        return list(self._active.values())

    def cancel(self, run_id: str, *, status: RunStatus = RunStatus.CANCELLED) -> bool:
        """Stop a run: nothing new starts, it ends as `status` (cancelled or interrupted).

        Tasks already executing in threads or worker processes finish in the background;
        their results are ignored. Returns False if the run is not active here.
        """
        handle = self._active.get(run_id)
        if handle is None or handle.task is None or handle.task.done():
            return False
        handle.stop_status = status
        handle.task.cancel()
        return True

    async def _execute(
        self,
        handle: RunHandle,
        recorder: RunRecorder,
        waiter: asyncio.Future[None] | None,
        resume: bool,
    ) -> RunResult:
        context = handle.context
        try:
            if waiter is not None:
                try:
                    await waiter
                except asyncio.CancelledError:
                    self._cancel_reservation(waiter)
                    return await _Run.never_started(context, recorder, handle.stop_status)
            try:
                await self._start_executor()  # again: a shutdown may have come in between
                previous: dict[tuple[str, str], Any] = {}
                if resume and self.store is not None:
                    rows = await asyncio.to_thread(self.store.get_task_runs, context.run_id)
                    previous = {(row.task_name, row.instance): row for row in rows}
                run = _Run(self, context, recorder, resume=resume, previous=previous)
                return await run.execute(handle)
            finally:
                self._release_slot()
        finally:
            self._active.pop(context.run_id, None)

    async def resume_pipeline(
        self, run_id: str, *, plan: ExecutionPlan | None = None, force: bool = False
    ) -> RunResult:
        """Finish an interrupted run (`submit_resume`, then wait for its result)."""
        handle = await self.submit_resume(run_id, plan=plan, force=force)
        return await handle.result()

    async def submit_resume(
        self, run_id: str, *, plan: ExecutionPlan | None = None, force: bool = False
    ) -> RunHandle:
        """Restart an interrupted run in the background; tasks whose results are stored are
        not executed again.

        The plan is rebuilt from the run's recorded task file and selection unless given; it
        must have the run's `dag_id` (the same tasks and edges).

        Raises:
            RunNotFoundError: no such run in the store.
            ResumeError: the run finished, is still running, or its tasks changed.
        """
        if self.store is None:
            raise ResumeError(run_id, "this orchestrator has no run store to resume from")
        record = await asyncio.to_thread(self.store.get_run, run_id)
        if record.status in _FINISHED:
            raise ResumeError(
                run_id, f"it already {record.status.value}; start a new run to run it again"
            )
        owner = (record.metadata or {}).get("owner") or {}
        if run_id in self._active or (
            record.status == RunStatus.RUNNING
            and owner.get("host") == _HOST
            and owner.get("pid") != os.getpid()
            and _pid_alive(owner.get("pid"))
        ):
            raise ResumeError(run_id, f"it is still running in process {owner.get('pid')}")
        if (
            record.status == RunStatus.RUNNING
            and owner.get("host") not in (None, _HOST)
            and not force
        ):
            raise ResumeError(
                run_id,
                f"it is marked running on host {owner.get('host')!r}, which this process cannot "
                "check; if that machine is gone, resume with force",
            )
        if plan is None:
            plan = plan_for_record(record)
        if plan.dag_id != record.dag_id:
            raise ResumeError(
                run_id,
                f"its tasks changed since it started (dag_id {record.dag_id} is now "
                f"{plan.dag_id}); start a new run",
            )
        return await self.submit_pipeline(
            plan,
            record.params,
            run_id=run_id,
            metadata=record.metadata,
            trigger=record.trigger,
            pipeline=record.pipeline,
            resume=True,
        )

    def run(
        self, plan: ExecutionPlan, params: Mapping[str, Any] | None = None, **options: Any
    ) -> RunResult:
        """Synchronous `start_pipeline` for scripts and notebooks without an event loop."""

        async def main() -> RunResult:
            try:
                return await self.start_pipeline(plan, params, **options)
            finally:
                await self.shutdown()

        return asyncio.run(main())

    async def shutdown(self) -> None:
        """Stop the executor's workers. The orchestrator can start again afterwards."""
        if self._started:
            self._started = False
            await self.executor.shutdown()

    async def _start_executor(self) -> None:
        if not self._started:
            await self.executor.start(self.io_manager)
            self._started = True

    def _reserve_slot(self) -> asyncio.Future[None] | None:
        """Take a run slot now (None), or a place in the wait queue (a future to await)."""
        if self._running < self.max_concurrent_pipelines and not self._waiters:
            self._running += 1
            return None
        if len(self._waiters) >= self.max_queued_pipelines:
            raise TooManyPipelinesError(self._running, len(self._waiters))
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def _cancel_reservation(self, waiter: asyncio.Future[None] | None) -> None:
        if waiter is None:
            self._release_slot()
        elif waiter in self._waiters:
            self._waiters.remove(waiter)
        elif waiter.done() and not waiter.cancelled():
            self._release_slot()  # the slot was handed to us as we gave up

    def _release_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)  # hand our slot over: _running stays the same
                return
        self._running -= 1


_FINISHED = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.PARTIAL, RunStatus.CANCELLED)


class ResumeError(DPError):
    """A run cannot be resumed; the message says why."""

    def __init__(self, run_id: str, reason: str) -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"run {run_id!r} cannot be resumed: {reason}.")


def _describe(key: tuple[str, str]) -> str:
    name, instance = key
    return f"{name}[{instance}]" if instance else name


def _owner() -> dict[str, Any]:
    """Which process runs a run: resume refuses to take over a run whose owner lives."""
    return {"host": _HOST, "pid": os.getpid()}


def _plan_dict(plan: ExecutionPlan) -> dict[str, Any]:
    """The plan's JSON form, computed once per plan (it is recorded with every run)."""
    cached = plan.cache.get("dict")
    if cached is None:
        cached = plan.cache["dict"] = plan.to_dict()
    return cached


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def plan_for_record(record: RunRecord) -> ExecutionPlan:
    """The plan of a recorded run, rebuilt from its task file and selection."""
    from dp.loader import load_tasks
    from dp.planner import Planner

    if not record.target:
        raise ResumeError(record.run_id, "it has no recorded task file; pass the plan")
    load_tasks(record.target)
    selection = record.selection or {}
    return Planner().create_execution_plan(
        tags=selection.get("tags") or None, task_names=selection.get("task_names") or None
    )


class _Run:
    """One run in progress: the executor's `TaskSink`, driving the resolver."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        context: ExecutionContext,
        recorder: RunRecorder,
        *,
        resume: bool,
        previous: Mapping[tuple[str, str], Any] | None = None,
    ) -> None:
        self.orchestrator = orchestrator
        self.context = context
        self.recorder = recorder
        self.resume = resume
        self.previous = previous or {}
        self.executor = orchestrator.executor
        self.listeners = orchestrator.listeners
        self.resolver = TaskDependencyResolver(context.plan, context.run_id, context.params)
        #: tasks of this run in flight at once; None: as many as the executor wants now
        self.limit = orchestrator.max_parallel_tasks
        self.in_flight = 0
        self.retrying = 0
        self.results: dict[tuple[str, str], TaskRunResult] = {}
        self.failed_fatally: tuple[str, str] | None = None  # the task that failed the run
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.log = _log.bind(run_id=context.run_id, dag_id=context.dag_id)
        self.started_at = datetime.now(UTC)
        #: set once the run ended: late chunks and outcomes (threads, killed runs) are ignored,
        #: and executors drop its tasks that have not started
        self.closed = False
        self._retry_timers: set[asyncio.TimerHandle] = set()
        #: the recorder's hook, or None when nothing is recorded (saves a call per change)
        self._record = recorder.task_changed if recorder.store is not None else None

    @staticmethod
    async def never_started(
        context: ExecutionContext, recorder: RunRecorder, status: RunStatus
    ) -> RunResult:
        """Record a run stopped while it waited for a slot."""
        now = datetime.now(UTC)
        await recorder.run_finished(status, now, f"{status.value} before it started")
        return RunResult(context.run_id, context.dag_id, status, {}, None, now, None)

    async def execute(self, handle: RunHandle | None = None) -> RunResult:
        context = self.context
        self.recorder.run_started(self.started_at, {**context.metadata, "owner": _owner()})
        self.log.info(
            "run.started", tasks=len(context.plan.execution_order), trigger=context.trigger
        )
        for listener in self.listeners:
            self._notify(listener.on_run_start, context=context)
        self.recorder.start_flushing()
        try:
            self.resolver.start()
            self._pump()
            await self.done
        except asyncio.CancelledError:
            self.closed = True
            stop = handle.stop_status if handle is not None else RunStatus.INTERRUPTED
            return await self._finish(stopped=stop)
        except Exception as exc:  # a bug or a broken adapter: end the run, recorded, loudly
            self.log.exception("run.crashed")
            self.closed = True
            return await self._finish(stopped=RunStatus.FAILED, error=format_error(exc))
        return await self._finish()

    # --- TaskSink -------------------------------------------------------------------------

    def on_chunk(self, task: ExecutableTask, result_id: str) -> None:
        if self.closed:
            return
        self.resolver.chunk(task.task_name, result_id, task.instance)
        result = self.results.get(task.key)
        if result is not None and result_id not in result.result_ids:
            result.result_ids.append(result_id)
        self._pump()

    def on_done(self, task: ExecutableTask, outcome: TaskOutcome) -> None:
        if self.closed:
            return
        self.in_flight -= 1
        result = self.results[(task.task_name, task.instance)]
        result.duration = outcome.duration
        result.output = outcome.output
        result.end_time = outcome.started_at + outcome.duration
        if outcome.ok:
            result.status = TaskStatus.SUCCEEDED
            result.result_ids = outcome.result_ids
            result.error = result.traceback = None
            self.resolver.succeeded(task.task_name, task.instance, outcome.result_ids)
        else:
            self._failed(task, outcome, result)
        if self._record is not None or self.listeners:
            self._changed(result)
        self._pump()

    def _failed(self, task: ExecutableTask, outcome: TaskOutcome, result: TaskRunResult) -> None:
        meta = task.metadata
        resolver = self.resolver
        result.error = outcome.error
        result.traceback = outcome.traceback
        if outcome.retryable and task.retry_count < meta.max_retries and not resolver.halted:
            delay = meta.retry_delay * (2**task.retry_count)
            self.log.warning(
                "task.retrying",
                task_name=task.task_name,
                instance=task.instance or None,
                attempt=task.attempt,
                error=outcome.error,
                delay=delay,
            )
            self.retrying += 1
            task.retry_count += 1
            self._retry_timers.add(self.loop.call_later(delay, self._retry, task))
        else:
            result.status = TaskStatus.FAILED
            self.log.error(
                "task.failed",
                task_name=task.task_name,
                instance=task.instance or None,
                attempt=task.attempt,
                error=outcome.error,
                fail_safe=meta.fail_safe,
            )
            if not meta.fail_safe and self.failed_fatally is None:
                self.failed_fatally = task.key
            resolver.failed(task.task_name)

    # --- internals ------------------------------------------------------------------------

    def _retry(self, task: ExecutableTask) -> None:
        if self.closed:
            return
        self.retrying -= 1
        if self.resolver.halted:
            result = self.results[task.key]
            result.status = TaskStatus.FAILED
            self._changed(result)
            self._pump()
            return
        self.resolver.ready.appendleft(task)  # first in line, within the run's limit
        self._pump()

    def _pump(self) -> None:
        """Hand ready tasks to the executor, up to the run's limit; notice the end."""
        ready = self.resolver.ready
        limit = self.limit or self.executor.capacity
        while ready and self.in_flight < limit:
            task = ready.popleft()
            if self.resume and self._restore(task):
                continue
            self._submit(task)
        if not ready and self.in_flight == 0 and self.retrying == 0 and not self.done.done():
            self.done.set_result(None)

    def _submit(self, task: ExecutableTask) -> None:
        self.in_flight += 1
        key = (task.task_name, task.instance)
        result = self.results.get(key)
        if result is None:
            result = self.results[key] = TaskRunResult(
                task.task_name, TaskStatus.RUNNING, task.instance, 1, None, time.time()
            )
        else:
            result.status = TaskStatus.RUNNING
            result.attempts = task.retry_count + 1
        if self._record is not None or self.listeners:
            self._changed(result)
        self.executor.submit(task, self)

    def _restore(self, task: ExecutableTask) -> bool:
        """On resume: if this task's results were saved before the interruption, reuse them."""
        io = self.context.io_manager
        run_id = self.context.run_id
        name = task.task_name
        try:
            if task.metadata.stream_output:
                manifest = manifest_result_id(task.task_result_id)
                if not io.exists(run_id, name, manifest):
                    return False
                result_ids = list(io.load(run_id, name, manifest))
                for rid in result_ids:
                    self.resolver.chunk(name, rid, task.instance)
            elif io.exists(run_id, name, task.task_result_id):
                result_ids = [task.task_result_id]
            else:
                return False
        except DPError:
            return False  # unreadable: run it again
        result = self.results.get(task.key) or TaskRunResult(
            name, TaskStatus.SUCCEEDED, task.instance
        )
        result.status = TaskStatus.SUCCEEDED
        result.result_ids = result_ids
        earlier = self.previous.get(task.key)
        if earlier is not None:  # keep what the interrupted run knew about this task
            result.attempts = earlier.attempt
            result.duration = earlier.duration
            result.output = earlier.output
            if earlier.started_at is not None:
                result.start_time = earlier.started_at.timestamp()
            if earlier.finished_at is not None:
                result.end_time = earlier.finished_at.timestamp()
        self.results[task.key] = result
        self._changed(result)
        self.resolver.succeeded(name, task.instance, result_ids)
        return True

    def _changed(self, result: TaskRunResult) -> None:
        if self._record is not None:
            self._record(result)
        if self.listeners:
            for listener in self.listeners:
                self._notify(listener.on_task_update, context=self.context, task=result)

    def _notify(self, method: Any, **kwargs: Any) -> None:
        try:
            method(**kwargs)
        except Exception:
            self.log.exception(
                "listener.failed", listener=type(getattr(method, "__self__", method)).__name__
            )

    async def _finish(
        self, *, stopped: RunStatus | None = None, error: str | None = None
    ) -> RunResult:
        resolver = self.resolver
        self.closed = True
        for timer in self._retry_timers:
            timer.cancel()
        if stopped is not None:
            status = stopped
            cancel_run = getattr(self.executor, "cancel_run", None)
            if cancel_run is not None:  # stop what the executor can stop (async tasks)
                cancel_run(self)
            for task_result in self.results.values():
                if task_result.status == TaskStatus.RUNNING:
                    task_result.status = TaskStatus.CANCELLED
            if stopped == RunStatus.CANCELLED:  # interrupted runs keep pending tasks pending
                self._record_unstarted(resolver.unfinished(), TaskStatus.CANCELLED)
        else:
            # never started: pending, or queued behind the run's limit when it halted
            self._record_unstarted(resolver.unfinished(), TaskStatus.CANCELLED)
            resolver.cancel_pending()
            statuses = resolver.statuses()
            seen = {name for name, _ in self.results}
            for name, status_of_task in statuses.items():
                if name not in seen and status_of_task in (
                    TaskStatus.SKIPPED,
                    TaskStatus.SUCCEEDED,  # a task mapped over an empty stream
                ):
                    self.results[(name, "")] = TaskRunResult(name, status_of_task)
            if self.failed_fatally is not None:
                status = RunStatus.FAILED
            elif any(s in (TaskStatus.FAILED, TaskStatus.SKIPPED) for s in statuses.values()):
                status = RunStatus.PARTIAL
            else:
                status = RunStatus.SUCCEEDED
        finished_at = datetime.now(UTC)
        if self.failed_fatally is not None:
            failed = self.results[self.failed_fatally]
            error = f"task {_describe(self.failed_fatally)!r} failed: {failed.error}"
        result = RunResult(
            run_id=self.context.run_id,
            dag_id=self.context.dag_id,
            status=status,
            tasks=self._ordered_results(),
            started_at=self.started_at,
            finished_at=finished_at,
            error=error,
        )
        for task_result in result.tasks.values():
            self.recorder.task_changed(task_result)
        await self.recorder.run_finished(status, finished_at, error)
        log = self.log.info if status == RunStatus.SUCCEEDED else self.log.warning
        log(
            "run.finished",
            status=str(status),
            seconds=round((finished_at - self.started_at).total_seconds(), 6),
        )
        for listener in self.listeners:
            self._notify(listener.on_run_end, context=self.context, result=result)
        return result

    def _record_unstarted(self, names: list[str], status: TaskStatus) -> None:
        seen = {name for name, _ in self.results}
        for name in names:
            if name not in seen:
                self.results[(name, "")] = TaskRunResult(name, status)

    def _ordered_results(self) -> dict[tuple[str, str], TaskRunResult]:
        rank = {name: i for i, name in enumerate(self.context.plan.execution_order)}
        return dict(sorted(self.results.items(), key=lambda item: (rank[item[0][0]], item[0][1])))
