"""`ActiveRun`: one run in progress, the executor's `TaskSink`, driving the resolver."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from dp.engine.executors import Executor, QueueingExecutor
from dp.engine.lease import LeaseKeeper
from dp.engine.model import (
    ExecutableTask,
    ExecutionContext,
    RunHandle,
    RunListener,
    RunResult,
    TaskOutcome,
    TaskRunResult,
    manifest_result_id,
)
from dp.engine.recorder import RunRecorder, task_run_record
from dp.engine.resolver import PlanIndex, TaskDependencyResolver
from dp.engine.worker import format_error
from dp.engine.writebehind import WriteBehind
from dp.errors import (
    FencedError,
    ResultDamagedError,
    ResultNotFoundError,
    StoreUnavailableError,
)
from dp.logs import get_logger
from dp.planner import ExecutionPlan
from dp.store.records import RunStatus, TaskRunRecord, TaskStatus
from dp.tasks import SCHEDULED_FOR

__all__ = ["ActiveRun", "RunHost"]

_log = get_logger("dp.engine")


def _describe(key: tuple[str, str]) -> str:
    name, instance = key
    return f"{name}[{instance}]" if instance else name


class PlanIndexes(Protocol):
    """The resolver's index of each plan, derived once for all the runs of the plan."""

    def index(self, plan: ExecutionPlan) -> PlanIndex: ...


class RunHost(Protocol):
    """What a run needs of whoever starts it (the `Orchestrator`): a port, so that this
    module does not import the orchestrator that imports it."""

    @property
    def executor(self) -> Executor: ...
    @property
    def listeners(self) -> Sequence[RunListener]: ...
    @property
    def plans(self) -> PlanIndexes: ...
    @property
    def max_parallel_tasks(self) -> int | None: ...
    @property
    def leases(self) -> LeaseKeeper | None: ...


class ActiveRun:
    """One run in progress: the executor's `TaskSink`, driving the resolver."""

    def __init__(
        self,
        orchestrator: RunHost,
        context: ExecutionContext,
        recorder: RunRecorder,
        *,
        resume: bool,
        previous: Mapping[tuple[str, str], TaskRunRecord] | None = None,
    ) -> None:
        self.orchestrator = orchestrator
        self.context = context
        self.recorder = recorder
        self.resume = resume
        self.previous = previous or {}
        self.executor = orchestrator.executor
        self.listeners = orchestrator.listeners
        index = orchestrator.plans.index(context.plan)
        params = context.params
        if index.wants_scheduled_for:
            params = {**params, SCHEDULED_FOR: context.task_time()}
        self.resolver = TaskDependencyResolver(context.plan, context.run_id, params, index=index)
        #: a retry's reused tasks: task -> the run that stored its results
        self.reuse = dict(context.reuse)
        self._keys = index.keys
        self._rank = index.rank
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
        #: the ownership epoch every task of this run is handed out with
        self.epoch = recorder.epoch or 0
        #: set when another process took the run over: it stops and writes nothing more
        self.fenced: FencedError | None = None
        self._handle: RunHandle | None = None
        self._leases = orchestrator.leases
        recorder.on_fenced = self._taken_over
        recorder.on_refused = self._store_refused
        #: the executor's queues, when its tasks wait in a broker (recorded queued until started)
        self._queue_of = (
            self.executor.queue_of if isinstance(self.executor, QueueingExecutor) else None
        )
        #: the executor's write-behind: results reach their consumers before the disk
        self._writer: WriteBehind | None = getattr(self.executor, "write_behind", None)
        #: saves up to this number are stored (see `WriteBehind.accepted`)
        self._durable = 0
        #: succeeded tasks waiting for their results to be stored: (their last save, result),
        #: in the order they finished (about the order of their saves)
        self._unsaved: deque[tuple[int, TaskRunResult]] = deque()
        #: why the run fails: a result could not be stored (nothing later is stored)
        self._write_error: str | None = None

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
        self._handle = handle
        leases = self.orchestrator.leases
        if leases is not None:  # held since the run was recorded: from now on, tell this run
            leases.rebind(context.run_id, on_fenced=self._taken_over, on_renewed=self._pump)
        await self.recorder.run_started(self.started_at, context.metadata)
        if self.fenced is not None:  # taken over before it even started here
            return await self._finish(stopped=RunStatus.INTERRUPTED)
        return await self._run()

    async def _run(self) -> RunResult:
        context = self.context
        handle = self._handle
        self.log.info(
            "run.started", tasks=len(context.plan.execution_order), trigger=context.trigger
        )
        for listener in self.listeners:
            self._notify(listener.on_run_start, context=context)
        self.recorder.start_flushing()
        if self._writer is not None:
            consumers = self.orchestrator.plans.index(context.plan).consumers
            self._writer.open_run(context.run_id, self, consumers)
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

    def on_started(
        self, task: ExecutableTask, *, host: str | None = None, pid: int | None = None
    ) -> None:
        """A worker took `task` off its broker queue: it is running from now on."""
        result = self.results.get(task.key)
        if self.closed or result is None or result.status != TaskStatus.QUEUED:
            return
        result.status = TaskStatus.RUNNING
        result.start_time = time.time()
        result.host, result.pid = host, pid
        if self._record is not None or self.listeners:
            self._changed(result)

    def on_reserved(self, task: ExecutableTask, *, host: str, pid: int) -> None:
        """A worker took `task` from the broker and holds it, not started yet."""
        result = self.results.get(task.key)
        if self.closed or result is None or result.status != TaskStatus.QUEUED:
            return
        result.host, result.pid = host, pid
        self._changed(result)

    def on_lost(self, task: ExecutableTask, outcome: TaskOutcome) -> None:
        """The attempt's worker was lost: keep the attempt as `lost`, where it was and why,
        and count the next one (queued again, with its own start time)."""
        result = self.results.get(task.key)
        if self.closed or result is None:
            return
        now = time.time()
        result.error, result.host, result.pid = outcome.error, outcome.host, outcome.pid
        result.end_time = now
        result.duration = now - (result.start_time or now)
        self.recorder.attempt_ended(task_run_record(self.context.run_id, result, TaskStatus.LOST))
        self.log.warning(
            "task.lost", task_name=task.task_name, attempt=task.attempt, error=outcome.error
        )
        task.attempt_offset += 1
        result.attempts = task.attempt
        result.status = TaskStatus.QUEUED
        result.start_time, result.end_time, result.duration = now, None, None
        result.error = result.host = result.pid = None
        self._changed(result)

    def on_chunk(self, task: ExecutableTask, result_id: str) -> None:
        if self.closed:
            return
        self.resolver.chunk(task.task_name, result_id, task.instance)
        result = self.results.get(task.key)
        if result is not None and result_id not in result.result_ids:
            result.result_ids.append(result_id)
        self._pump()

    def successor(self, task: ExecutableTask, outcome: TaskOutcome) -> ExecutableTask | None:
        """Called from an executor's thread as `task` succeeded: the one task it alone makes
        ready, for that thread to run next in the same slot (no hand-off to the loop and
        back per link of a chain), or None. It only reads; the loop takes the task over when
        the outcome of `task` arrives with it (`on_done(..., successor=)`)."""
        if (
            self.closed
            or self.resume
            or self.fenced is not None
            or self._write_error is not None
            or task.instance
            or task.metadata.timeout is not None
        ):
            return None
        if self._leases is not None and self._leases.lapsed(self.context.run_id):
            return None  # maybe no longer the owner: the loop waits for the renewal
        following = self.resolver.successor(task.task_name, outcome.result_ids)
        if following is not None:
            following.epoch = task.epoch
        return following

    def on_done(
        self,
        task: ExecutableTask,
        outcome: TaskOutcome,
        successor: ExecutableTask | None = None,
    ) -> None:
        """`task` ended with `outcome`; `successor` is the task the executor already started
        in its slot (see `successor`)."""
        if self.closed:
            return
        self.in_flight -= 1
        result = self.results[(task.task_name, task.instance)]
        result.duration = outcome.duration
        result.output = outcome.output
        result.end_time = outcome.started_at + outcome.duration
        result.host, result.pid = outcome.host, outcome.pid
        if outcome.ok:
            result.status = TaskStatus.SUCCEEDED
            result.result_ids = outcome.result_ids
            result.error = result.traceback = None
            self.resolver.succeeded(task.task_name, task.instance, outcome.result_ids)
            writer = self._writer
            if writer is not None:
                if self._write_error is not None:
                    self._not_saved(result)
                elif (saved := self._save_number(writer, task, outcome)) > self._durable:
                    # its consumers may start now; it is recorded succeeded once stored
                    result.status = TaskStatus.RUNNING
                    self._unsaved.append((saved, result))
                    if successor is not None:
                        self._adopt(successor)
                    self._pump()
                    return
        else:
            self._failed(task, outcome, result)
        if self._record is not None or self.listeners:
            self._changed(result)
        if successor is not None:
            self._adopt(successor)
        self._pump()

    def _save_number(self, writer: WriteBehind, task: ExecutableTask, outcome: TaskOutcome) -> int:
        """The writer's number of the last save of `task`'s results (its manifest, too)."""
        result_ids = outcome.result_ids
        if task.metadata.stream_output:
            result_ids = [*result_ids, manifest_result_id(task.task_result_id)]
        return writer.save_number(self.context.run_id, task.task_name, result_ids)

    def _adopt(self, task: ExecutableTask) -> None:
        """Take over a task an executor started right after its only upstream task: it is
        in flight in that task's slot, so the run's limit holds."""
        ready = self.resolver.ready
        if ready and ready[-1].key == task.key:
            ready.pop()  # queued by `resolver.succeeded` just now: it runs already
        # else the run halted meanwhile: it runs anyway, like any task in flight then
        self._register(task)

    # --- WriteSink ------------------------------------------------------------------------

    def on_durable(self, saved: int) -> None:
        if self.closed:
            return
        self._durable = saved
        unsaved = self._unsaved
        while unsaved and unsaved[0][0] <= saved:
            result = unsaved.popleft()[1]
            result.status = TaskStatus.SUCCEEDED
            self._changed(result)
        self._pump()

    def on_write_failed(self, number: int, task_name: str, result_id: str, error: str) -> None:
        if self.closed or self._write_error is not None:
            return
        if error.startswith("SaveError: "):  # it names the result and the location already
            self._write_error = error.removeprefix("SaveError: ")
        else:
            self._write_error = (
                f"its result {result_id!r} could not be saved through "
                f"{self.context.io_manager!r}: {error}"
            )
        self.log.error("result.save_failed", task_name=task_name, result_id=result_id, error=error)
        unsaved = self._unsaved
        for saved, result in list(unsaved):
            if saved < number:  # saved before the failure: stored
                unsaved.remove((saved, result))
                result.status = TaskStatus.SUCCEEDED
                self._changed(result)
        culprit = next(
            (r for r in reversed(self.results.values()) if r.task_name == task_name), None
        )
        if culprit is not None and self.failed_fatally is None:
            self.failed_fatally = culprit.key
        for _, result in unsaved:
            self._not_saved(result)
        unsaved.clear()
        if culprit is not None and culprit.status != TaskStatus.RUNNING:
            self._not_saved(culprit)
        self.resolver.halt()
        self._pump()

    def _not_saved(self, result: TaskRunResult) -> None:
        """A task whose result was never stored, because a save failed: failed."""
        result.status = TaskStatus.FAILED
        if result.key == self.failed_fatally:
            result.error = f"SaveError: {self._write_error}"
        else:
            result.error = (
                f"SaveError: not saved, because an earlier result of the run could not be: "
                f"{self._write_error}"
            )
        self._changed(result)

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
            # the next attempt overwrites the task's record: keep this one as it ended
            self.recorder.attempt_ended(
                task_run_record(self.context.run_id, result, TaskStatus.FAILED)
            )
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
        if self.closed:
            return
        if ready and self._leases is not None and self._leases.lapsed(self.context.run_id):
            return  # maybe no longer the owner: wait for the renewal (or the fence) first
        limit = self.limit or self.executor.capacity
        while ready and self.in_flight < limit:
            task = ready.popleft()
            if (self.resume or task.task_name in self.reuse) and self._restore(task):
                continue
            if self.reuse:
                reuse = self.reuse
                task.sources = {u: reuse[u] for u, _ in task.inputs.values() if u in reuse}
            task.epoch = self.epoch
            self._register(task)
            self.executor.submit(task, self)
        if (
            not ready
            and self.in_flight == 0
            and self.retrying == 0
            and not self._unsaved
            and not self.done.done()
        ):
            self.done.set_result(None)

    def _register(self, task: ExecutableTask) -> None:
        """Count `task` in flight and record it running, or queued on a queueing executor."""
        self.in_flight += 1
        instance = task.instance
        key = (task.task_name, instance) if instance else self._keys[task.task_name]
        result = self.results.get(key)
        if result is None:
            earlier = self.previous.get(key)
            if earlier is not None and earlier.attempt > 0:
                # run again after a resume: its attempts go on counting, the last one is kept
                task.attempt_offset = earlier.attempt
                if not earlier.status.finished:
                    earlier.status = TaskStatus.INTERRUPTED
                self.recorder.attempt_ended(earlier)
            result = self.results[key] = TaskRunResult(
                task.task_name, TaskStatus.RUNNING, instance, task.attempt, None, time.time()
            )
        else:
            result.status = TaskStatus.RUNNING
            result.attempts = task.attempt
            result.start_time = time.time()
            result.host = result.pid = None
        if self._queue_of is not None:
            result.status = TaskStatus.QUEUED
            result.queue = self._queue_of(task)
        if self._record is not None or self.listeners:
            self._changed(result)

    def _restore(self, task: ExecutableTask) -> bool:
        """On resume: if this task's results were saved before the interruption and still
        decode, reuse them. A missing or damaged result runs the task again, and damage is
        logged with where it is (`dp runs resume` lists both before it starts); an outage of
        the results store fails the run rather than re-running everything."""
        io = self.context.io_manager
        name = task.task_name
        # a retry reads a reused task's results where they are, never copying them
        run_id = self.reuse.get(name, self.context.run_id)
        try:
            if task.metadata.stream_output:
                manifest = manifest_result_id(task.task_result_id)
                result_ids = list(io.load(run_id, name, manifest))
                for rid in result_ids:
                    io.load(run_id, name, rid)
                for rid in result_ids:
                    self.resolver.chunk(name, rid, task.instance)
            else:
                io.load(run_id, name, task.task_result_id)
                result_ids = [task.task_result_id]
        except ResultNotFoundError:
            self.reuse.pop(name, None)  # runs here after all: its downstream reads this run
            return False
        except ResultDamagedError as exc:
            reused = self.reuse.pop(name, None) is not None
            self.log.warning(
                "resume.damaged",
                task_name=name,
                result_id=exc.task_result_id,
                location=exc.location,
                problem=exc.problem,
            )
            delete = None if reused else getattr(io, "delete", None)
            if delete is not None:  # results are written once: the new one must find room
                delete(run_id, name, exc.task_result_id)
            return False
        # its result is stored, so it ran at least once, even if that was never recorded
        result = self.results.get(task.key) or TaskRunResult(
            name, TaskStatus.SUCCEEDED, task.instance, attempts=0 if name in self.reuse else 1
        )
        result.status = TaskStatus.SUCCEEDED
        result.result_ids = result_ids
        earlier = self.previous.get(task.key)
        if earlier is not None:  # keep what the interrupted run knew about this task
            result.attempts = earlier.attempt
            result.duration = earlier.duration
            result.output = earlier.output
            result.host, result.pid = earlier.host, earlier.pid
            if earlier.started_at is not None:
                result.start_time = earlier.started_at.timestamp()
            if earlier.finished_at is not None:
                result.end_time = earlier.finished_at.timestamp()
        self.results[task.key] = result
        self._changed(result)
        self.resolver.succeeded(name, task.instance, result_ids)
        return True

    def _taken_over(self, fenced: FencedError) -> None:
        """Another process took this run over (a resume, a second `dp serve`): stop at once
        and write nothing more; the new owner finishes the run."""
        if self.fenced is not None or self.closed:
            return
        self.fenced = fenced
        self.recorder.fenced = fenced
        self.log.warning("run.taken_over", epoch=self.epoch, now=fenced.current)
        handle = self._handle
        if handle is not None and handle.task is not None and not handle.task.done():
            handle.stop_status = RunStatus.INTERRUPTED
            handle.task.cancel()

    def _store_refused(self, message: str) -> None:
        """The run store refused a record of this run (see `RunRecorder`): start nothing
        more; the run ends failed, saying so (the recorder logged it once)."""
        if self.closed:
            return
        self.resolver.halt()
        self._pump()

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
        if self._writer is not None:  # what it still has queued is dropped, not stored
            self._writer.close_run(self.context.run_id)
        for timer in self._retry_timers:
            timer.cancel()
        if stopped is not None:
            status = stopped
            cancel_run = getattr(self.executor, "cancel_run", None)
            if cancel_run is not None:  # stop what the executor can stop (async tasks)
                cancel_run(self)
            stopped_task = (
                TaskStatus.INTERRUPTED if stopped == RunStatus.INTERRUPTED else TaskStatus.CANCELLED
            )
            for task_result in self.results.values():
                if task_result.status in (TaskStatus.RUNNING, TaskStatus.QUEUED):
                    task_result.status = stopped_task
            if stopped == RunStatus.CANCELLED:  # interrupted runs keep pending tasks pending
                self._record_missing(dict.fromkeys(resolver.unfinished(), TaskStatus.CANCELLED))
        else:
            # never started: pending, or queued behind the run's limit when it halted
            self._record_missing(dict.fromkeys(resolver.unfinished(), TaskStatus.CANCELLED))
            resolver.cancel_pending()
            statuses = resolver.statuses()
            # skipped tasks, and tasks mapped over an empty stream (succeeded, no instance)
            self._record_missing(
                {
                    name: status_of_task
                    for name, status_of_task in statuses.items()
                    if status_of_task in (TaskStatus.SKIPPED, TaskStatus.SUCCEEDED)
                }
            )
            if self.failed_fatally is not None:
                status = RunStatus.FAILED
            elif not {TaskStatus.FAILED, TaskStatus.SKIPPED}.isdisjoint(statuses.values()):
                status = RunStatus.PARTIAL
            else:
                status = RunStatus.SUCCEEDED
        finished_at = datetime.now(UTC)
        if self.failed_fatally is not None:
            failed = self.results[self.failed_fatally]
            error = f"task {_describe(self.failed_fatally)!r} failed: {failed.error}"
        if self._record is not None:  # else nothing is recorded (a call saved per task)
            for task_result in self.results.values():
                self._record(task_result)
        unrecorded: StoreUnavailableError | None = None
        try:
            if not await self.recorder.run_finished(status, finished_at, error):
                status, error = RunStatus.INTERRUPTED, str(self.recorder.fenced)
            elif self.recorder.refused is not None:
                status, error = RunStatus.FAILED, self.recorder.refused
        except StoreUnavailableError as outage:
            # it ended here but the store still says running: interrupted, and resumable
            # there (its owner is gone once this process lets go of it)
            unrecorded = outage
            status, error = RunStatus.INTERRUPTED, self._unrecorded(status, outage)
            self.log.error("run.unrecorded", error=error)
        result = RunResult(
            run_id=self.context.run_id,
            dag_id=self.context.dag_id,
            status=status,
            tasks=self._ordered_results(),
            started_at=self.started_at,
            finished_at=finished_at,
            error=error,
            unrecorded=unrecorded,
        )
        log = self.log.info if status == RunStatus.SUCCEEDED else self.log.warning
        log(
            "run.finished",
            status=str(status),
            seconds=round((finished_at - self.started_at).total_seconds(), 6),
        )
        for listener in self.listeners:
            self._notify(listener.on_run_end, context=self.context, result=result)
        return result

    def _unrecorded(self, status: RunStatus, outage: StoreUnavailableError) -> str:
        """What happened to a run whose end the store could not record, in one sentence."""
        run_id = self.context.run_id
        ended = (
            f"every task of run {run_id!r} succeeded"
            if status == RunStatus.SUCCEEDED
            else f"run {run_id!r} ended {status.value}"
        )
        return (
            f"{ended}, but recording the run's end failed: the run store at {outage.url} is "
            f"unavailable ({outage.reason})"
        )

    def _record_missing(self, statuses: Mapping[str, TaskStatus]) -> None:
        """Give a result entry of `status` to each task that has none (it never ran)."""
        results = self.results
        # most tasks ran, without instances: only the others need the set of names that ran
        absent = [name for name in statuses if (name, "") not in results]
        if not absent:
            return
        seen = {name for name, _ in results}
        for name in absent:
            if name not in seen:
                results[(name, "")] = TaskRunResult(name, statuses[name])

    def _ordered_results(self) -> dict[tuple[str, str], TaskRunResult]:
        results = self.results
        order = self.context.plan.execution_order
        if len(results) == len(order):  # maybe one result per task, none mapped: no sort
            keys = self._keys
            ordered = {key: results[key] for name in order if (key := keys[name]) in results}
            if len(ordered) == len(results):
                return ordered
        rank = self._rank
        return dict(sorted(self.results.items(), key=lambda item: (rank[item[0][0]], item[0][1])))
