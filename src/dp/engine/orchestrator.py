"""`Orchestrator`: starts runs of execution plans, drives them to the end, records them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dp.engine.executors import Executor, InlineExecutor, InProcessExecutor
from dp.engine.lease import DEFAULT_LEASE_SECONDS, LeaseKeeper
from dp.engine.model import ExecutionContext, RunHandle, RunListener, RunResult
from dp.engine.recorder import RunRecorder, outage_wait
from dp.engine.resolver import PlanIndex
from dp.engine.retry import Lineage, check_plan, check_retryable, reused_tasks
from dp.engine.run import ActiveRun
from dp.engine.takeover import count_death, crash_loop, fail_crash_loop, owner_died
from dp.errors import (
    DuplicateRunError,
    FencedError,
    InvalidArgumentError,
    ResumeError,
    RetryError,
    TooManyPipelinesError,
)
from dp.io import FilesystemIOManager, IOManager, check_results, results_url
from dp.jsonable import jsonable
from dp.loader import load_tasks
from dp.logs import get_logger
from dp.planner import DAGBuilder, ExecutionPlan, Planner
from dp.store.records import (
    HOST,
    RunRecord,
    RunStatus,
    RunStore,
    TaskRunRecord,
    is_stale,
    owner_of,
    pid_alive,
)
from dp.tasks import TaskRegistry, get_registry

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


def new_run_id() -> str:
    """A sortable, unique run id: `20261122-101500-1a2b3c4d`."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"


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
            raise InvalidArgumentError(name, value, f"an int >= {least} (or left unset)")


def make_executor(executor: str | Executor, workers: int | None = None) -> Executor:
    """An executor from its name: 'inline', 'inprocess' or 'process' (with `workers`)."""
    if not isinstance(executor, str):
        return executor
    if executor == "inline":
        return InlineExecutor()
    if executor in ("inprocess", "threads"):
        return InProcessExecutor(max_threads=workers)
    if executor in ("process", "processes"):
        # worker processes (multiprocessing, pickling) cost an import only runs that use them
        from dp.engine.process import ProcessExecutor

        return ProcessExecutor(workers=workers)
    raise InvalidArgumentError("executor", executor, "'inline', 'inprocess' or 'process'")


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
        lease_seconds: how long a run's lease in the store lasts; a thread renews it every
            third of that. A run whose lease ran out counts as stale and may be taken over.
        store_outage_wait: seconds a run's start and end wait for an unreachable store
            (default: `DP_STORE_OUTAGE_WAIT`, else 60); then the run ends unrecorded
            (`RunResult.unrecorded`), and stays resumable in the store.
        max_resume_attempts: a run whose owner died this many times while running it is
            failed as a crash loop on the next resume, not resumed (see `dp.engine.takeover`).
    """

    def __init__(
        self,
        *,
        io_manager: IOManager | None = None,
        store: RunStore | None = None,
        executor: str | Executor = "inprocess",
        workers: int | None = None,
        max_parallel_tasks: int | None = None,
        max_concurrent_pipelines: int = 8,
        max_queued_pipelines: int = 100,
        listeners: Sequence[RunListener] = (),
        flush_interval: float = 0.2,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        store_outage_wait: float | None = None,
        max_resume_attempts: int = 3,
    ) -> None:
        _check_limits(max_parallel_tasks, max_concurrent_pipelines, max_queued_pipelines, workers)
        if not isinstance(max_resume_attempts, int) or max_resume_attempts < 1:
            raise InvalidArgumentError("max_resume_attempts", max_resume_attempts, "an int >= 1")
        self.max_resume_attempts = max_resume_attempts
        self.io_manager = (
            io_manager if io_manager is not None else FilesystemIOManager(Path(".dp") / "results")
        )
        self.store = store
        #: keeps the leases of this orchestrator's runs alive (None: nothing is recorded)
        self.leases = LeaseKeeper(store, lease_seconds) if store is not None else None
        self.executor = make_executor(executor, workers)
        self.max_parallel_tasks = max_parallel_tasks
        self.max_concurrent_pipelines = max_concurrent_pipelines
        self.max_queued_pipelines = max_queued_pipelines
        self.listeners = list(listeners)
        self.flush_interval = flush_interval
        self.store_outage_wait = outage_wait() if store_outage_wait is None else store_outage_wait
        self._running = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._active: dict[str, RunHandle] = {}
        self._started = False
        #: the results backend was checked writable (once per orchestrator)
        self._results_checked = False
        #: what the engine derives once from each plan it runs
        self.plans = PlanFacts()

    @classmethod
    def embedded(cls, root: str | os.PathLike[str] = ".dp", **options: Any) -> Orchestrator:
        """The zero-service setup: results under `root/results`, runs in `root/runs.db`."""
        # SQLAlchemy costs ~130 ms to import: only the embedded setup (and the CLI) pays it
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
        resume_epoch: int = 0,
        lineage: Lineage | None = None,
    ) -> RunHandle:
        """Record a run of `plan` and start it in the background; returns at once.

        Everything that can be refused is refused here, before the run exists: bad run
        parameters, a full wait queue, a duplicate run or event id. With `resume=True`,
        `run_id` names an earlier, interrupted run whose stored results are reused; the run
        is taken over from `resume_epoch` (use `submit_resume`, which checks it can be).

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
        if lineage is not None:
            lineage.apply(context)
        if context.run_id in self._active:
            raise DuplicateRunError(context.run_id)
        await self._start_executor()  # an executor that cannot start refuses the run here
        waiter = self._reserve_slot()
        recorder = RunRecorder(
            self.store, context.run_id, self.flush_interval, outage_wait=self.store_outage_wait
        )
        try:
            if self.store is not None:
                await self._own(
                    recorder,
                    context,
                    starts_now=waiter is None,
                    resume=resume,
                    resume_epoch=resume_epoch,
                    target=target,
                    selection=dict(selection or {}),
                    event_id=event_id,
                )
        except BaseException:
            self._cancel_reservation(waiter)
            raise
        handle = RunHandle(context)
        self._active[context.run_id] = handle
        if self.leases is not None and recorder.epoch is not None:
            # held from now on, also while the run waits for a slot: a queued run is owned too
            def taken_over(fenced: FencedError) -> None:
                self.cancel(context.run_id, status=RunStatus.INTERRUPTED)

            self.leases.hold(
                context.run_id,
                recorder.epoch,
                on_fenced=taken_over,
                on_renewed=lambda: None,
                taken_at=recorder.owned_at or 0.0,
            )
        handle.task = asyncio.get_running_loop().create_task(
            self._execute(handle, recorder, waiter, resume), name=f"dp-run-{context.run_id}"
        )
        return handle

    async def _own(
        self,
        recorder: RunRecorder,
        context: ExecutionContext,
        *,
        starts_now: bool,
        resume: bool,
        resume_epoch: int,
        target: str,
        selection: dict[str, Any],
        event_id: str | None,
    ) -> None:
        """Record the run as this process's (epoch 1), or take a resumed one over."""
        assert self.leases is not None
        lease_until = self.leases.lease_until()
        if resume:
            await recorder.claim(
                host=HOST, pid=os.getpid(), lease_until=lease_until, expected=resume_epoch
            )
            return
        plan = context.plan
        # With a slot free now, the record says running at once: one write, not two.
        await recorder.create_run(
            RunRecord(
                run_id=context.run_id,
                dag_id=plan.dag_id,
                pipeline=context.pipeline,
                target=target,
                selection=selection,
                params={name: jsonable(value) for name, value in context.params.items()},
                status=RunStatus.RUNNING if starts_now else RunStatus.QUEUED,
                started_at=datetime.now(UTC) if starts_now else None,
                trigger=context.trigger,
                event_id=event_id,
                metadata=context.metadata,
                plan=self.plans.record(plan),
                epoch=1,
                owner_host=HOST,
                owner_pid=os.getpid(),
                lease_until=lease_until,
                results=results_url(self.io_manager),
                created_at=context.created_at,
                scheduled_for=context.scheduled_for,
                schedule_tz=context.schedule_tz,
                parent_run_id=context.parent_run_id,
            )
        )
        recorder.started_recorded = starts_now

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
                    return await ActiveRun.never_started(context, recorder, handle.stop_status)
            try:
                await self._start_executor()  # again: a shutdown may have come in between
                previous: dict[tuple[str, str], TaskRunRecord] = {}
                if resume and self.store is not None:
                    rows = await asyncio.to_thread(self.store.get_task_runs, context.run_id)
                    previous = {(row.task_name, row.instance): row for row in rows}
                run = ActiveRun(self, context, recorder, resume=resume, previous=previous)
                return await run.execute(handle)
            finally:
                self._release_slot()
        finally:
            self._active.pop(context.run_id, None)
            if self.leases is not None:
                self.leases.release(context.run_id)

    async def resume_pipeline(
        self,
        run_id: str,
        *,
        plan: ExecutionPlan | None = None,
        registry: TaskRegistry | None = None,
        force: bool = False,
    ) -> RunResult:
        """Finish an interrupted run (`submit_resume`, then wait for its result)."""
        handle = await self.submit_resume(run_id, plan=plan, registry=registry, force=force)
        return await handle.result()

    async def submit_resume(
        self,
        run_id: str,
        *,
        plan: ExecutionPlan | None = None,
        registry: TaskRegistry | None = None,
        force: bool = False,
    ) -> RunHandle:
        """Restart an interrupted run in the background; tasks whose results are stored are
        not executed again.

        Unless `plan` is given, the plan is rebuilt from the run's recorded selection: from
        the tasks of `registry` when given, else from the run's task file imported into the
        process-wide registry (see `plan_for_record`). It must have the run's `dag_id` (the
        same tasks and edges).

        A run whose owner died while running it (it still says running) counts one death;
        at `max_resume_attempts` deaths it is failed as a crash loop instead of resumed.

        Raises:
            RunNotFoundError: no such run in the store.
            ResumeError: the run finished, is still running, its tasks changed, or it is a
                crash loop (then it is recorded failed, saying so).
        """
        if self.store is None:
            raise ResumeError(run_id, "this orchestrator has no run store to resume from")
        record = await asyncio.to_thread(self.store.get_run, run_id)
        if record.status.finished:
            raise ResumeError(
                run_id, f"it already {record.status.value}; start a new run to run it again"
            )
        if run_id in self._active:
            raise ResumeError(run_id, f"it is still running in this process ({os.getpid()})")
        live = record.status.live and not is_stale(record)
        host, pid = owner_of(record)
        if live and host == HOST and pid != os.getpid() and pid_alive(pid):
            raise ResumeError(run_id, f"it is still running in process {pid}")
        if live and host not in (None, HOST) and not force:
            lease = record.lease_until
            until = f" and its lease holds until {lease:%Y-%m-%d %H:%M:%S} UTC" if lease else ""
            raise ResumeError(
                run_id,
                f"it is marked running on host {host!r}{until}, which this process cannot "
                "check; if that machine is gone, resume with force",
            )
        here = results_url(self.io_manager)
        if record.results and here and record.results != here:
            raise ResumeError(
                run_id,
                f"its results are at {record.results}, and this process would read and write "
                f"them at {here}; resume with --results {record.results!r}",
            )
        if plan is None:
            plan = plan_for_record(record, registry)
        if plan.dag_id != record.dag_id:
            raise ResumeError(
                run_id,
                f"its tasks changed since it started (dag_id {record.dag_id} is now "
                f"{plan.dag_id}); start a new run",
            )
        metadata = record.metadata
        try:
            if owner_died(record):
                rows = await asyncio.to_thread(self.store.get_task_runs, run_id)
                metadata = count_death(record, rows, plan)
                reason = crash_loop(metadata, self.max_resume_attempts)
                if reason is not None:
                    await asyncio.to_thread(fail_crash_loop, self.store, record, metadata, reason)
                    raise ResumeError(run_id, reason)
            return await self.submit_pipeline(
                plan,
                record.params,
                run_id=run_id,
                metadata=metadata,
                trigger=record.trigger,
                pipeline=record.pipeline,
                resume=True,
                resume_epoch=record.epoch,
                lineage=Lineage.of(record),
            )
        except FencedError:
            raise ResumeError(
                run_id, "another process took it over a moment ago (it resumes it)"
            ) from None

    async def submit_retry(
        self,
        run_id: str,
        *,
        from_task: str | None = None,
        plan: ExecutionPlan | None = None,
        registry: TaskRegistry | None = None,
    ) -> RunHandle:
        """Start a new run that re-runs `run_id` from its failure (see `dp.engine.retry`):
        linked to it as its parent, reusing its committed results of the tasks that need not
        run again, for the same scheduled time and with the same parameters.

        Raises:
            RunNotFoundError: no such run in the store.
            RetryError: the run is still running or was interrupted (resume it), succeeded
                and no `from_task` was named, `from_task` is not one of its tasks, its tasks
                changed, or its results are elsewhere than this process's.
        """
        if self.store is None:
            raise RetryError(run_id, "this orchestrator has no run store to retry from")
        record = await asyncio.to_thread(self.store.get_run, run_id)
        check_retryable(record, from_task, results_url(self.io_manager))
        if plan is None:
            plan = plan_for_record(record, registry)
        check_plan(record, plan)
        rows = await asyncio.to_thread(self.store.get_task_runs, run_id)
        reuse = reused_tasks(record, rows, plan, from_task)
        retry = {"parent": run_id, "from": from_task}
        return await self.submit_pipeline(
            plan,
            record.params,
            metadata={"retry": retry, "reused": reuse},
            trigger="retry",
            pipeline=record.pipeline,
            target=record.target,
            selection=record.selection,
            lineage=Lineage.retry_of(record, reuse),
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
            if not self._results_checked:  # once: a bad results backend starts no task
                await asyncio.to_thread(check_results, self.io_manager)
                self._results_checked = True
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


class PlanFacts:
    """What the engine derives from a plan once for all the runs it starts from it: the
    resolver's index and the plan's JSON form (recorded with every run). The plan stays a value.

    Plans are told apart by identity, not equality: two equal plans may hold different task
    functions. The last `size` plans are kept alive with their facts, so no id is reused while
    its entry lives.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._facts: OrderedDict[int, _Facts] = OrderedDict()

    def index(self, plan: ExecutionPlan) -> PlanIndex:
        """The resolver's index of `plan`."""
        return self._entry(plan).index

    def record(self, plan: ExecutionPlan) -> dict[str, Any]:
        """`plan.to_dict()`, computed once."""
        facts = self._entry(plan)
        if facts.record is None:
            facts.record = plan.to_dict()
        return facts.record

    def _entry(self, plan: ExecutionPlan) -> _Facts:
        key = id(plan)
        facts = self._facts.get(key)
        if facts is None:
            facts = self._facts[key] = _Facts(plan, PlanIndex(plan))
            if len(self._facts) > self.size:
                self._facts.popitem(last=False)
        elif len(self._facts) > 1:
            self._facts.move_to_end(key)
        return facts


@dataclass(slots=True)
class _Facts:
    plan: ExecutionPlan  # held, so that its id stays its own
    index: PlanIndex
    record: dict[str, Any] | None = None


def plan_for_record(record: RunRecord, registry: TaskRegistry | None = None) -> ExecutionPlan:
    """The plan of a recorded run, rebuilt with its recorded selection.

    From the tasks of `registry` when given (nothing is imported); otherwise the run's task
    file is imported and its tasks are planned from the process-wide registry, which is
    where a task file's `@task`s register.

    Raises:
        ResumeError: no registry is given and the run has no recorded task file.
        LoadError: the task file cannot be imported.
    """
    if registry is None:
        if not record.target:
            raise ResumeError(
                record.run_id, "it has no recorded task file; pass its plan or its task registry"
            )
        load_tasks(record.target)
        registry = get_registry()
    selection = record.selection or {}
    return Planner(DAGBuilder(registry)).create_execution_plan(
        tags=selection.get("tags") or None, task_names=selection.get("task_names") or None
    )
