"""The execution engine: orchestrator, resolver, inline and in-process executors."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import pickle
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dp import TaskRegistry, task
from dp.engine import Orchestrator, RunResult, TooManyPipelinesError
from dp.engine.executors import InlineExecutor, TaskSink
from dp.engine.model import ExecutableTask
from dp.engine.orchestrator import ResumeError
from dp.errors import DPError, InvalidRunParameterError, MissingRunParameterError, RunNotFoundError
from dp.io import FilesystemIOManager, InMemoryIOManager
from dp.store import MemoryRunStore, RunStatus, TaskStatus
from dp.store.records import HOST, is_stale
from dp.testing import plan_for, run_inline

EXECUTORS = ["inline", "inprocess"]
#: how long a test waits for something that must happen before it gives up (never reached
#: when the engine works; it turns a would-be deadlock into a clear failure)
PATIENCE = 10.0


@pytest.fixture
def registry() -> TaskRegistry:
    return TaskRegistry()


def run(
    registry: TaskRegistry, executor: str = "inline", params: Any = None, **options: Any
) -> RunResult:
    options.setdefault("io_manager", InMemoryIOManager())
    return Orchestrator(executor=executor, **options).run(plan_for(registry), params)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_results_flow_along_data_edges(registry: TaskRegistry, executor: str) -> None:
    """Each task receives its upstreams' results and its own run parameters."""

    @task(registry=registry)
    def extract(n: int) -> list[int]:
        return list(range(n))

    @task(registry=registry, dependencies=["extract"])
    def double(extract: list[int]) -> list[int]:
        return [x * 2 for x in extract]

    @task(registry=registry, dependencies=["extract"])
    async def count(extract: list[int]) -> int:
        await asyncio.sleep(0)
        return len(extract)

    @task(registry=registry, dependencies=["double", "count"])
    def report(double: list[int], count: int, label: str = "total") -> str:
        return f"{label}: {sum(double)} over {count}"

    io = InMemoryIOManager()
    result = run(registry, executor, {"n": 4}, io_manager=io)
    assert result.status == RunStatus.SUCCEEDED
    assert io.load(result.run_id, "report", "output") == "total: 12 over 4"
    assert {name: t.status for (name, _), t in result.tasks.items()} == {
        "extract": TaskStatus.SUCCEEDED,
        "count": TaskStatus.SUCCEEDED,
        "double": TaskStatus.SUCCEEDED,
        "report": TaskStatus.SUCCEEDED,
    }
    assert all(t.attempts == 1 and t.duration is not None for t in result.tasks.values())


def test_missing_run_parameter_fails_before_anything_runs(registry: TaskRegistry) -> None:
    """A missing required parameter is reported up front, and no task executes."""
    calls: list[str] = []

    @task(registry=registry)
    def first() -> None:
        calls.append("first")

    @task(registry=registry, dependencies=["first"])
    def second(day: str) -> None:
        calls.append("second")

    with pytest.raises(MissingRunParameterError, match="'day' \\(needed by 'second'\\)"):
        run(registry)
    assert calls == []


def test_run_parameter_of_wrong_type_is_rejected(registry: TaskRegistry) -> None:
    """A value that does not fit the declared type names the parameter, type and task."""

    @task(registry=registry)
    def load(limit: int) -> int:
        return limit

    with pytest.raises(InvalidRunParameterError, match="'limit' = 'ten' is not a valid int"):
        run(registry, params={"limit": "ten"})
    assert run_inline(registry=registry, params={"limit": "10"}).value("load") == 10


def test_task_starts_when_its_own_upstreams_finish(registry: TaskRegistry) -> None:
    """A task does not wait for its whole level: here 'slow' can only finish after 'b2' ran."""
    b2_ran = threading.Event()

    @task(registry=registry)
    def slow() -> str:
        assert b2_ran.wait(PATIENCE), "b2 did not start while slow was running"
        return "slow"

    @task(registry=registry)
    def b1() -> int:
        return 1

    @task(registry=registry, dependencies=["b1"])
    def b2(b1: int) -> int:
        b2_ran.set()
        return b1 + 1

    @task(registry=registry, dependencies=["slow", "b2"])
    def join(slow: str, b2: int) -> str:
        return f"{slow}{b2}"

    result = run(registry, "inprocess")
    assert result.ok, result.error


@pytest.mark.parametrize("asynchronous", [False, True])
def test_chunk_consumer_runs_while_stream_is_still_producing(
    registry: TaskRegistry, asynchronous: bool
) -> None:
    """A T-typed consumer handles chunk 0 before the producer yields chunk 1 (else: deadlock)."""
    seen: list[int] = []
    first_chunk_handled = threading.Event()

    if asynchronous:

        @task(registry=registry, name="numbers")
        async def numbers_async() -> AsyncIterator[int]:
            yield 0
            for _ in range(int(PATIENCE * 100)):
                if first_chunk_handled.is_set():
                    break
                await asyncio.sleep(0.01)
            assert first_chunk_handled.is_set(), "chunk 0 was not consumed during the stream"
            yield 1

    else:

        @task(registry=registry, name="numbers")
        def numbers_sync() -> Iterator[int]:
            yield 0
            assert first_chunk_handled.wait(PATIENCE), "chunk 0 was not consumed during the stream"
            yield 1

    @task(registry=registry, dependencies=["numbers"])
    def square(numbers: int) -> int:
        seen.append(numbers)
        first_chunk_handled.set()
        return numbers * numbers

    @task(registry=registry, dependencies=["square"])
    def total(square: list[int]) -> int:
        return sum(square)

    io = InMemoryIOManager()
    result = run(registry, "inprocess", io_manager=io)
    assert result.ok, result.error
    assert seen == [0, 1]
    assert [r.instance for r in result.instances("square")] == ["chunk-000000", "chunk-000001"]
    assert io.load(result.run_id, "total", "output") == 1


@pytest.mark.parametrize("executor", EXECUTORS)
def test_list_parameter_collects_every_chunk_after_the_stream(
    registry: TaskRegistry, executor: str
) -> None:
    """A list[T] parameter receives all chunks, in order, once the stream has finished."""

    @task(registry=registry)
    def pages() -> Iterator[str]:
        yield from ["a", "b", "c"]

    @task(registry=registry, dependencies=["pages"])
    def book(pages: list[str]) -> str:
        return "".join(pages)

    io = InMemoryIOManager()
    result = run(registry, executor, io_manager=io)
    assert result.task("pages").result_ids == ["chunk-000000", "chunk-000001", "chunk-000002"]
    assert io.load(result.run_id, "book", "output") == "abc"
    assert io.load(result.run_id, "pages", "chunk-000001") == "b"


def test_each_chunk_is_saved_as_it_is_produced(registry: TaskRegistry) -> None:
    """The producer can see its earlier chunks in the IO manager before it finishes."""
    io = InMemoryIOManager()
    stored_before_second: list[bool] = []

    @task(registry=registry)
    def producer() -> Iterator[int]:
        yield 1
        stored_before_second.append(bool(io.list_runs()))
        yield 2

    run(registry, "inline", io_manager=io)
    assert stored_before_second == [True]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_retries_with_backoff_until_success(registry: TaskRegistry, executor: str) -> None:
    """A task failing twice with max_retries=2 succeeds on its third attempt."""
    attempts: list[float] = []

    @task(registry=registry, max_retries=2, retry_delay=0.01)
    def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionError("database busy")
        return "ok"

    result = run(registry, executor)
    assert result.ok
    assert result.task("flaky").attempts == 3
    assert result.task("flaky").error is None


def test_exhausted_retries_fail_the_run_and_cancel_the_rest(registry: TaskRegistry) -> None:
    """After its last attempt a failing task fails the run; tasks after it never start."""

    @task(registry=registry, max_retries=1)
    def broken() -> int:
        raise ValueError("bad row 3")

    @task(registry=registry, dependencies=["broken"])
    def after(broken: int) -> int:
        return broken

    result = run(registry)
    assert result.status == RunStatus.FAILED
    assert result.task("broken").attempts == 2
    assert result.task("broken").error == "ValueError: bad row 3"
    assert "raise ValueError" in (result.task("broken").traceback or "")
    assert result.task("after").status == TaskStatus.CANCELLED
    assert result.error == "task 'broken' failed: ValueError: bad row 3"


@pytest.mark.parametrize("executor", EXECUTORS)
def test_async_task_past_its_timeout_is_cancelled(registry: TaskRegistry, executor: str) -> None:
    """An async task running past `timeout` is stopped and fails with a TimeoutError."""
    finished: list[bool] = []

    @task(registry=registry, timeout=0.2)
    async def hangs() -> None:
        await asyncio.sleep(PATIENCE)
        finished.append(True)

    result = run(registry, executor)
    assert result.status == RunStatus.FAILED
    assert "TimeoutError: task 'hangs' did not finish within 0.2s" in (
        result.task("hangs").error or ""
    )
    assert finished == []


def test_sync_task_past_its_timeout_fails_in_process(registry: TaskRegistry) -> None:
    """In-process, a sync task past its timeout fails at once; its thread lives on."""
    release = threading.Event()

    @task(registry=registry, timeout=0.2)
    def blocks() -> None:
        release.wait(PATIENCE)

    try:
        result = run(registry, "inprocess")
    finally:
        release.set()
    error = result.task("blocks").error or ""
    assert error.startswith("TimeoutError: task 'blocks' did not finish within 0.2s")
    assert "thread cannot be stopped" in error


@pytest.mark.parametrize("executor", EXECUTORS)
def test_fail_safe_failure_skips_only_data_dependents(
    registry: TaskRegistry, executor: str
) -> None:
    """Independent branches and control dependents finish; data dependents are skipped; partial."""

    @task(registry=registry)
    def source() -> int:
        return 1

    @task(registry=registry, dependencies=["source"], fail_safe=True)
    def enrich(source: int) -> int:
        raise RuntimeError("enrichment API down")

    @task(registry=registry, dependencies=["enrich"])
    def uses_enrichment(enrich: int) -> int:
        return enrich

    @task(registry=registry, dependencies=["uses_enrichment"])
    def downstream_of_skipped() -> None: ...

    @task(registry=registry, dependencies=["enrich"])
    def cleanup() -> str:
        return "cleaned"

    @task(registry=registry, dependencies=["source"])
    def independent(source: int) -> int:
        return source + 1

    result = run(registry, executor)
    assert result.status == RunStatus.PARTIAL
    assert result.statuses() == {
        "source": TaskStatus.SUCCEEDED,
        "enrich": TaskStatus.FAILED,
        "uses_enrichment": TaskStatus.SKIPPED,
        "downstream_of_skipped": TaskStatus.SKIPPED,
        "cleanup": TaskStatus.SUCCEEDED,
        "independent": TaskStatus.SUCCEEDED,
    }


def test_unpicklable_result_fails_without_retrying(registry: TaskRegistry, tmp_path: Path) -> None:
    """An unpicklable result fails the task at once, naming it; nothing is written."""

    @task(registry=registry, max_retries=3)
    def makes_lock() -> Any:
        return threading.Lock()

    io = FilesystemIOManager(tmp_path)
    result = run(registry, io_manager=io)
    failed = result.task("makes_lock")
    assert failed.status == TaskStatus.FAILED
    assert failed.attempts == 1
    assert "SerializationError" in (failed.error or "")
    assert "'makes_lock'" in (failed.error or "")
    assert not io.exists(result.run_id, "makes_lock", "output")


def test_task_calling_sys_exit_only_fails_that_task(registry: TaskRegistry) -> None:
    """sys.exit() inside a task is a task failure, not the end of the orchestrator."""

    @task(registry=registry)
    def quits() -> None:
        raise SystemExit(4)

    result = run(registry)
    assert result.status == RunStatus.FAILED
    assert result.task("quits").error == "SystemExit: 4"


def test_output_is_captured_per_task_even_in_parallel_threads(registry: TaskRegistry) -> None:
    """What each task prints is kept with that task, not mixed with tasks running beside it."""
    barrier = threading.Barrier(2, timeout=PATIENCE)

    @task(registry=registry)
    def left() -> None:
        print("left says hi")
        barrier.wait()
        print("left done")

    @task(registry=registry)
    def right() -> None:
        print("right says hi")
        barrier.wait()

    result = run(registry, "inprocess")
    assert result.task("left").output == "left says hi\nleft done\n"
    assert result.task("right").output == "right says hi\n"


def test_parallel_task_limit_is_respected(registry: TaskRegistry) -> None:
    """No more than max_parallel_tasks tasks of a run execute at the same time."""
    lock = threading.Lock()
    running = 0
    peak = 0

    def body() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    for i in range(8):
        task(name=f"work_{i}", registry=registry)(body)
    result = run(registry, "inprocess", max_parallel_tasks=3)
    assert result.ok
    assert 1 < peak <= 3


async def test_runs_beyond_the_wait_queue_are_refused(registry: TaskRegistry) -> None:
    """With 1 run executing and 1 waiting allowed, a third concurrent run is refused clearly."""
    gate = asyncio.Event()

    @task(registry=registry)
    async def wait_for_gate() -> None:
        await gate.wait()

    orchestrator = Orchestrator(
        io_manager=InMemoryIOManager(),
        executor="inprocess",
        max_concurrent_pipelines=1,
        max_queued_pipelines=1,
    )
    plan = plan_for(registry)
    first = asyncio.create_task(orchestrator.start_pipeline(plan))
    second = asyncio.create_task(orchestrator.start_pipeline(plan))
    while orchestrator.queued_pipelines < 1:
        await asyncio.sleep(0.001)
    assert orchestrator.active_pipelines == 1
    with pytest.raises(TooManyPipelinesError, match="1 pipelines are running and 1 are waiting"):
        await orchestrator.start_pipeline(plan)
    gate.set()
    assert (await first).ok
    assert (await second).ok
    assert orchestrator.active_pipelines == 0
    await orchestrator.shutdown()


def test_runs_and_task_runs_are_recorded(registry: TaskRegistry) -> None:
    """The store holds the run (status, params, dag_id, owner) and every task run."""

    @task(registry=registry)
    def extract(day: str) -> str:
        print("extracting", day)
        return day

    @task(registry=registry, dependencies=["extract"])
    def load(extract: str) -> None: ...

    store = MemoryRunStore()
    result = run(registry, params={"day": "2026-11-22"}, store=store)
    record = store.get_run(result.run_id)
    assert record.status == RunStatus.SUCCEEDED
    assert record.params == {"day": "2026-11-22"}
    assert record.dag_id == result.dag_id
    assert record.started_at is not None
    assert record.finished_at is not None
    assert (record.owner_host, record.owner_pid, record.epoch) == (HOST, os.getpid(), 1)
    rows = {r.task_name: r for r in store.get_task_runs(result.run_id)}
    assert rows["extract"].status == TaskStatus.SUCCEEDED
    assert rows["extract"].output == "extracting 2026-11-22\n"
    assert rows["extract"].result_ids == ["output"]
    assert rows["load"].attempt == 1


class Recorder:
    """A RunListener that remembers what it was told (and must accept unknown arguments)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_run_start(self, *, context: Any, **_: Any) -> None:
        self.events.append("start")

    def on_task_update(self, *, task: Any, **_: Any) -> None:
        self.events.append(f"{task.task_name}:{task.status.value}")

    def on_run_end(self, *, result: RunResult, **_: Any) -> None:
        self.events.append(f"end:{result.status.value}")


def test_listeners_see_run_and_task_changes(registry: TaskRegistry) -> None:
    """Listeners hear the run start, each task start and finish, and the run end."""

    @task(registry=registry)
    def only() -> None: ...

    listener = Recorder()
    run(registry, listeners=[listener])
    assert listener.events[0] == "start"
    assert "only:running" in listener.events
    assert "only:succeeded" in listener.events
    assert listener.events[-1] == "end:succeeded"


def test_a_failing_listener_does_not_break_the_run(registry: TaskRegistry) -> None:
    """A listener raising is logged and ignored."""

    class Broken:
        def on_run_start(self, **_: Any) -> None:
            raise RuntimeError("listener bug")

        def on_task_update(self, **_: Any) -> None:
            raise RuntimeError("listener bug")

        def on_run_end(self, **_: Any) -> None:
            raise RuntimeError("listener bug")

    @task(registry=registry)
    def only() -> int:
        return 1

    assert run(registry, listeners=[Broken()]).ok


def test_mapped_task_values_follow_the_stream(registry: TaskRegistry) -> None:
    """dp.testing hands back per-chunk values of a mapped task in stream order."""

    @task(registry=registry)
    def words() -> Iterator[str]:
        yield from ["a", "bb", "ccc"]

    @task(registry=registry, dependencies=["words"])
    def length(words: str) -> int:
        return len(words)

    result = run_inline(registry=registry)
    assert result.values("length") == [1, 2, 3]
    assert result.value("words") == ["a", "bb", "ccc"]


async def test_interrupted_run_resumes_without_redoing_finished_tasks(
    registry: TaskRegistry, tmp_path: Path
) -> None:
    """Cancelling a run leaves it interrupted; resuming runs only what has no stored result."""
    executions: list[str] = []
    block = asyncio.Event()

    @task(registry=registry)
    def first() -> int:
        executions.append("first")
        return 1

    @task(registry=registry)
    def stream() -> Iterator[int]:
        executions.append("stream")
        yield from (1, 2)

    @task(registry=registry, dependencies=["first", "stream"])
    async def second(first: int, stream: list[int]) -> int:
        executions.append("second")
        if not block.is_set():
            await asyncio.sleep(PATIENCE)  # stuck until the run is interrupted
        return first + sum(stream)

    store = MemoryRunStore()
    io = FilesystemIOManager(tmp_path)
    orchestrator = Orchestrator(io_manager=io, store=store, executor="inprocess")
    plan = plan_for(registry)
    running = asyncio.create_task(orchestrator.start_pipeline(plan, run_id="resume-me"))
    # results are stored behind the run: interrupt it once its upstreams' are stored
    while "second" not in executions or not io.exists("resume-me", "stream", "chunks"):
        await asyncio.sleep(0.005)
    while not io.exists("resume-me", "first", "output"):
        await asyncio.sleep(0.005)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert store.get_run("resume-me").status == RunStatus.INTERRUPTED

    block.set()
    result = await orchestrator.resume_pipeline("resume-me", plan=plan)
    await orchestrator.shutdown()
    assert result.ok
    assert executions == ["first", "stream", "second", "second"]
    assert io.load("resume-me", "second", "output") == 4
    assert store.get_run("resume-me").status == RunStatus.SUCCEEDED


def test_running_a_plan_leaves_it_unchanged(registry: TaskRegistry) -> None:
    """The plan is a value: what the engine derives from it stays in the engine."""

    @task(registry=registry)
    def one() -> int:
        return 1

    plan = plan_for(registry)
    before = dict(vars(plan))
    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), store=MemoryRunStore())
    assert orchestrator.run(plan).ok
    assert vars(plan) == before
    assert orchestrator.plans.index(plan) is orchestrator.plans.index(plan)  # derived once


async def test_a_run_planned_from_a_private_registry_resumes_against_its_tasks(
    registry: TaskRegistry, tmp_path: Path
) -> None:
    """Resuming with the caller's registry plans from its tasks, not from the run's task file."""
    decoy = tmp_path / "resume_decoy_tasks.py"  # same task names, other functions
    decoy.write_text(
        "from dp import task\n\n"
        "@task\ndef resume_seed() -> int:\n    return 100\n\n"
        "@task(dependencies=['resume_seed'])\n"
        "def resume_grow(resume_seed: int) -> int:\n    return -1\n"
    )
    started = asyncio.Event()
    release = asyncio.Event()

    @task(registry=registry)
    def resume_seed() -> int:
        return 1

    @task(registry=registry, dependencies=["resume_seed"])
    async def resume_grow(resume_seed: int) -> int:
        started.set()
        if not release.is_set():
            await asyncio.sleep(PATIENCE)  # stuck until the run is interrupted
        return resume_seed + 1

    io = InMemoryIOManager()
    orchestrator = Orchestrator(io_manager=io, store=MemoryRunStore())
    running = asyncio.create_task(
        orchestrator.start_pipeline(plan_for(registry), run_id="private", target=str(decoy))
    )
    await started.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    release.set()
    result = await orchestrator.resume_pipeline("private", registry=registry)
    await orchestrator.shutdown()
    assert result.ok
    assert io.load("private", "resume_grow", "output") == 2
    assert "resume_decoy_tasks" not in sys.modules


async def test_a_run_without_task_file_or_registry_cannot_be_resumed(
    registry: TaskRegistry,
) -> None:
    """With no plan, no registry and no recorded task file, resume says what to pass."""
    started = asyncio.Event()

    @task(registry=registry)
    async def waits() -> int:
        started.set()
        await asyncio.sleep(PATIENCE)
        return 1

    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), store=MemoryRunStore())
    running = asyncio.create_task(orchestrator.start_pipeline(plan_for(registry), run_id="nofile"))
    await started.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    with pytest.raises(ResumeError, match="pass its plan or its task registry"):
        await orchestrator.resume_pipeline("nofile")
    await orchestrator.shutdown()


async def test_resume_refuses_unknown_finished_and_changed_runs(registry: TaskRegistry) -> None:
    """Resuming needs a recorded, unfinished run whose tasks did not change."""

    @task(registry=registry)
    def only() -> int:
        return 1

    store = MemoryRunStore()
    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), store=store, executor="inline")
    plan = plan_for(registry)
    with pytest.raises(RunNotFoundError, match="'nope'"):
        await orchestrator.resume_pipeline("nope", plan=plan)
    done = await orchestrator.start_pipeline(plan)
    with pytest.raises(ResumeError, match="it already succeeded"):
        await orchestrator.resume_pipeline(done.run_id, plan=plan)
    store.update_run(done.run_id, status=RunStatus.INTERRUPTED)

    @task(registry=registry, dependencies=["only"])
    def added() -> None: ...

    with pytest.raises(ResumeError, match="its tasks changed since it started"):
        await orchestrator.resume_pipeline(done.run_id, plan=plan_for(registry))
    await orchestrator.shutdown()


def test_run_result_is_small_to_print(registry: TaskRegistry) -> None:
    """repr(RunResult) stays one short line whatever the run's size."""
    for i in range(50):
        task(name=f"t{i}", registry=registry)(lambda: None)
    text = repr(run(registry))
    assert text.startswith("RunResult(run_id=")
    assert "tasks=50" in text
    assert len(text) < 120


def test_executable_task_carries_references_not_data(registry: TaskRegistry) -> None:
    """What a worker receives names upstream results; it does not contain them."""
    from dp.engine import TaskDependencyResolver

    @task(registry=registry)
    def big() -> bytes:
        return b"x" * 1_000_000

    @task(registry=registry, dependencies=["big"])
    def size(big: bytes) -> int:
        return len(big)

    resolver = TaskDependencyResolver(plan_for(registry), "run-1")
    resolver.start()
    resolver.succeeded("big", "", ["output"])
    ready = resolver.ready.popleft()
    assert ready.task_name == "big" or ready.task_name == "size"
    (next_task,) = [t for t in [ready, *resolver.ready] if t.task_name == "size"]
    assert next_task.inputs == {"big": ("big", "output")}
    assert len(pickle.dumps((next_task.run_id, next_task.inputs))) < 200


async def test_submitted_run_can_be_cancelled_while_running(registry: TaskRegistry) -> None:
    """submit_pipeline returns at once; cancel() ends the run as cancelled, recorded so."""
    started = asyncio.Event()

    @task(registry=registry)
    async def long_job() -> None:
        started.set()
        await asyncio.sleep(PATIENCE)

    @task(registry=registry, dependencies=["long_job"])
    def after() -> None: ...

    store = MemoryRunStore()
    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), store=store, executor="inprocess")
    handle = await orchestrator.submit_pipeline(plan_for(registry), trigger="api:test")
    assert store.get_run(handle.run_id).status in (RunStatus.QUEUED, RunStatus.RUNNING)
    await asyncio.wait_for(started.wait(), PATIENCE)
    assert orchestrator.cancel(handle.run_id)
    result = await handle.result()
    assert result.status == RunStatus.CANCELLED
    assert result.task("long_job").status == TaskStatus.CANCELLED
    assert result.task("after").status == TaskStatus.CANCELLED
    assert store.get_run(handle.run_id).status == RunStatus.CANCELLED
    assert store.get_run(handle.run_id).trigger == "api:test"
    assert not orchestrator.cancel(handle.run_id)  # already over
    await orchestrator.shutdown()


async def test_queued_run_cancelled_before_it_starts(registry: TaskRegistry) -> None:
    """A run waiting for a slot can be cancelled; it never runs and frees its queue place."""
    gate = asyncio.Event()
    calls: list[str] = []

    @task(registry=registry)
    async def waits() -> None:
        calls.append("ran")
        await gate.wait()

    store = MemoryRunStore()
    orchestrator = Orchestrator(
        io_manager=InMemoryIOManager(),
        store=store,
        executor="inprocess",
        max_concurrent_pipelines=1,
    )
    plan = plan_for(registry)
    first = await orchestrator.submit_pipeline(plan)
    second = await orchestrator.submit_pipeline(plan)
    await asyncio.sleep(0.01)
    assert orchestrator.queued_pipelines == 1
    assert orchestrator.cancel(second.run_id)
    assert (await second.result()).status == RunStatus.CANCELLED
    assert orchestrator.queued_pipelines == 0
    gate.set()
    assert (await first.result()).ok
    assert calls == ["ran"]
    assert store.get_run(second.run_id).status == RunStatus.CANCELLED
    await orchestrator.shutdown()


def test_collected_results_of_a_mapped_task_keep_stream_order(registry: TaskRegistry) -> None:
    """Instances finishing in reverse order still reach list[T] in the order of the stream."""

    @task(registry=registry)
    def delays() -> Iterator[float]:
        yield from (0.06, 0.04, 0.02, 0.0)

    @task(registry=registry, dependencies=["delays"])
    def wait(delays: float) -> float:
        time.sleep(delays)
        return delays

    @task(registry=registry, dependencies=["wait"])
    def order(wait: list[float]) -> list[float]:
        return wait

    io = InMemoryIOManager()
    result = run(registry, "inprocess", io_manager=io)
    assert io.load(result.run_id, "order", "output") == [0.06, 0.04, 0.02, 0.0]


def test_output_is_captured_after_stdout_was_replaced(registry: TaskRegistry) -> None:
    """Prints are captured even when sys.stdout was swapped after the executor started."""
    import contextlib
    import io

    @task(registry=registry)
    def talk() -> None:
        print("hello from the task")

    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), executor="inline")
    plan = plan_for(registry)

    async def twice() -> tuple[RunResult, RunResult]:
        first = await orchestrator.start_pipeline(plan)
        with contextlib.redirect_stdout(io.StringIO()) as elsewhere:
            second = await orchestrator.start_pipeline(plan)
        assert elsewhere.getvalue() == ""
        return first, second

    first, second = asyncio.run(twice())
    assert first.task("talk").output == "hello from the task\n"
    assert second.task("talk").output == "hello from the task\n"


def test_a_retried_stream_hands_each_chunk_on_once(registry: TaskRegistry) -> None:
    """A generator failing after two chunks and retried does not duplicate them downstream."""
    attempts: list[int] = []

    @task(registry=registry, max_retries=1)
    def numbers() -> Iterator[int]:
        attempts.append(1)
        yield 1
        yield 2
        if len(attempts) == 1:
            raise ConnectionError("stream cut")
        yield 3

    @task(registry=registry, dependencies=["numbers"])
    def tenfold(numbers: int) -> int:
        return numbers * 10

    @task(registry=registry, dependencies=["tenfold"])
    def gathered(tenfold: list[int]) -> list[int]:
        return tenfold

    result = run_inline(registry=registry)
    assert result.ok
    assert result.value("gathered") == [10, 20, 30]
    assert len(result.instances("tenfold")) == 3


def test_tasks_queued_when_a_run_fails_are_recorded_cancelled(registry: TaskRegistry) -> None:
    """Tasks waiting behind the parallel limit when the run fails show up as cancelled."""

    @task(registry=registry)
    def a() -> None:
        raise ValueError("boom")

    @task(registry=registry)
    def b() -> None: ...

    @task(registry=registry)
    def c() -> None: ...

    result = run(registry, "inprocess", max_parallel_tasks=1)
    assert result.status == RunStatus.FAILED
    assert {name: t.status.value for (name, _), t in result.tasks.items()} == {
        "a": "failed",
        "b": "cancelled",
        "c": "cancelled",
    }


async def test_no_retry_starts_after_a_run_is_cancelled(registry: TaskRegistry) -> None:
    """A retry scheduled before a cancel never runs."""
    attempts: list[int] = []

    @task(registry=registry, max_retries=3, retry_delay=0.2)
    def flaky() -> None:
        attempts.append(1)
        raise ConnectionError("down")

    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), executor="inprocess")
    handle = await orchestrator.submit_pipeline(plan_for(registry))
    await asyncio.sleep(0.05)
    orchestrator.cancel(handle.run_id)
    assert (await handle.result()).status == RunStatus.CANCELLED
    await asyncio.sleep(0.4)
    assert attempts == [1]
    await orchestrator.shutdown()


def test_in_process_timeout_counts_from_the_start(registry: TaskRegistry) -> None:
    """A sync task waiting for a busy thread is not timed out for the wait."""
    from dp.engine import InProcessExecutor

    for i in range(3):

        def body() -> None:
            time.sleep(0.3)

        task(name=f"t{i}", registry=registry, timeout=0.6)(body)
    executor = InProcessExecutor(max_threads=1)
    result = Orchestrator(io_manager=InMemoryIOManager(), executor=executor).run(plan_for(registry))
    assert result.ok, result.error


def test_the_run_error_quotes_the_task_that_failed_it(registry: TaskRegistry) -> None:
    """With a fail-safe 'load' and a fatal 'load_all', the run's error is load_all's."""

    @task(registry=registry, fail_safe=True)
    def load() -> None:
        raise ValueError("the fail-safe one")

    @task(registry=registry, dependencies=["load"])
    def load_all() -> None:
        raise ValueError("the fatal one")

    result = run(registry)
    assert result.error == "task 'load_all' failed: ValueError: the fatal one"


def test_an_executor_that_cannot_start_refuses_the_run_before_recording_it(
    registry: TaskRegistry,
) -> None:
    """A process executor given an in-memory IO manager fails up front; no run is left running."""
    from dp.engine.process import ProcessExecutor

    @task(registry=registry)
    def only() -> None: ...

    store = MemoryRunStore()
    orchestrator = Orchestrator(
        io_manager=InMemoryIOManager(), store=store, executor=ProcessExecutor(workers=1)
    )
    with pytest.raises(DPError, match="needs an IO manager"):
        orchestrator.run(plan_for(registry))
    assert store.list_runs() == []


def test_a_task_mapped_over_an_empty_stream_succeeds_with_no_values(
    registry: TaskRegistry,
) -> None:
    """An empty stream maps to no instances; the task is recorded succeeded, its list empty."""

    @task(registry=registry)
    def nothing() -> Iterator[int]:
        yield from ()

    @task(registry=registry, dependencies=["nothing"])
    def each(nothing: int) -> int:
        return nothing

    @task(registry=registry, dependencies=["each"])
    def gathered(each: list[int]) -> list[int]:
        return each

    result = run_inline(registry=registry)
    assert result.ok
    assert result.task("each").status == TaskStatus.SUCCEEDED
    assert result.values("each") == []
    assert result.value("gathered") == []


def test_value_of_a_failed_task_says_so(registry: TaskRegistry) -> None:
    """dp.testing explains why a task has no value instead of an IndexError."""

    @task(registry=registry, fail_safe=True)
    def broken() -> int:
        raise ValueError("x")

    with pytest.raises(DPError, match="task 'broken' has no value: it failed"):
        run_inline(registry=registry).value("broken")


async def test_resume_revalidates_non_json_parameters(
    registry: TaskRegistry, tmp_path: Path
) -> None:
    """A date parameter is stored as ISO text and validated back to a date on resume."""

    seen: list[dt.date] = []

    @task(registry=registry)
    async def report(day: dt.date) -> str:
        seen.append(day)
        if len(seen) == 1:
            await asyncio.sleep(PATIENCE)  # stuck until the run is interrupted
        return day.isoformat()

    orchestrator = Orchestrator(
        io_manager=FilesystemIOManager(tmp_path), store=MemoryRunStore(), executor="inprocess"
    )
    plan = plan_for(registry)
    handle = await orchestrator.submit_pipeline(plan, {"day": dt.date(2026, 1, 1)})
    while not seen:
        await asyncio.sleep(0.005)
    orchestrator.cancel(handle.run_id, status=RunStatus.INTERRUPTED)
    await handle.result()
    result = await orchestrator.resume_pipeline(handle.run_id, plan=plan)
    await orchestrator.shutdown()
    assert result.ok
    assert seen == [dt.date(2026, 1, 1), dt.date(2026, 1, 1)]


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_parallel_tasks", 0), ("max_concurrent_pipelines", 0), ("workers", -1)],
)
def test_impossible_limits_are_refused(option: str, value: int) -> None:
    """A limit that would make runs wait forever is refused when the orchestrator is built."""
    with pytest.raises(DPError, match=f"{option} must be an int >= "):
        Orchestrator(io_manager=InMemoryIOManager(), **{option: value})


async def test_a_run_owned_by_another_host_is_not_taken_over(registry: TaskRegistry) -> None:
    """Resuming a run marked running on another machine needs force=True."""
    from dp.store import RunRecord

    @task(registry=registry)
    def only() -> int:
        return 1

    plan = plan_for(registry)
    store = MemoryRunStore()
    lease = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    store.create_run(
        RunRecord(
            "r1",
            dag_id=plan.dag_id,
            status=RunStatus.RUNNING,
            owner_host="replica-1",
            owner_pid=4242,
            lease_until=lease,
        )
    )
    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), store=store, executor="inline")
    with pytest.raises(ResumeError, match="marked running on host 'replica-1' and its lease"):
        await orchestrator.resume_pipeline("r1", plan=plan)
    assert (await orchestrator.resume_pipeline("r1", plan=plan, force=True)).ok
    await orchestrator.shutdown()


async def test_a_run_of_another_host_whose_lease_ran_out_is_resumed_without_force(
    registry: TaskRegistry,
) -> None:
    """An expired lease means the owner is gone: the run is stale and resumes at a new epoch."""
    from dp.store import RunRecord

    @task(registry=registry)
    def only() -> int:
        return 1

    plan = plan_for(registry)
    store = MemoryRunStore()
    gone = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    store.create_run(
        RunRecord(
            "r1",
            dag_id=plan.dag_id,
            status=RunStatus.RUNNING,
            epoch=4,
            owner_host="replica-1",
            owner_pid=4242,
            lease_until=gone,
        )
    )
    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), store=store, executor="inline")
    assert (await orchestrator.resume_pipeline("r1", plan=plan)).ok
    assert store.get_run("r1").epoch == 5
    await orchestrator.shutdown()


async def test_cancelling_a_run_cancels_its_async_tasks(registry: TaskRegistry) -> None:
    """An async task of a cancelled run is cancelled too, not left running."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    @task(registry=registry)
    async def waits() -> None:
        started.set()
        try:
            await asyncio.sleep(PATIENCE)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), executor="inprocess")
    handle = await orchestrator.submit_pipeline(plan_for(registry))
    await asyncio.wait_for(started.wait(), PATIENCE)
    orchestrator.cancel(handle.run_id)
    assert (await handle.result()).status == RunStatus.CANCELLED
    await asyncio.wait_for(cancelled.wait(), PATIENCE)
    await orchestrator.shutdown()


async def _killed_after_every_result(
    store: MemoryRunStore, io: InMemoryIOManager, registry: TaskRegistry, run_id: str
) -> None:
    """Leave `run_id` as a killed owner leaves it: every result stored, the run `running`."""
    orchestrator = Orchestrator(io_manager=io, store=store, executor="inline")
    assert (await orchestrator.start_pipeline(plan_for(registry), run_id=run_id)).ok
    store.update_run(run_id, status=RunStatus.RUNNING)
    store.claim_run(run_id, host=HOST, pid=2**22 + 1, lease_until=dt.datetime.now(dt.UTC))


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_resuming_a_run_whose_results_are_all_stored_records_its_end(
    registry: TaskRegistry, executor: str
) -> None:
    """Resume with nothing left to run ends the run `succeeded` with `finished_at`, every time,
    also with 20 such runs resumed at once: no late `running` write lands after the end."""

    @task(registry=registry)
    def first() -> int:
        return 1

    @task(registry=registry, dependencies=["first"])
    def second(first: int) -> int:
        return first + 1

    store, io = MemoryRunStore(), InMemoryIOManager()
    ids = [f"stored-{i}" for i in range(20)]
    for run_id in ids:
        await _killed_after_every_result(store, io, registry, run_id)
    orchestrator = Orchestrator(io_manager=io, store=store, executor=executor, flush_interval=0.001)
    plan = plan_for(registry)
    results = await asyncio.gather(*(orchestrator.resume_pipeline(r, plan=plan) for r in ids))
    await orchestrator.shutdown()
    assert {r.status for r in results} == {RunStatus.SUCCEEDED}
    await asyncio.sleep(0.05)  # anything still writing in the background would land by now
    for run_id in ids:
        record = store.get_run(run_id)
        assert (record.status, record.epoch) == (RunStatus.SUCCEEDED, 3)
        assert record.finished_at is not None


async def test_every_attempt_is_recorded_and_numbers_go_on_across_a_resume(
    registry: TaskRegistry, tmp_path: Path
) -> None:
    """A task failing twice then succeeding keeps three attempts, each with its error, output
    and process; a task re-run by a resume is attempt 2, its interrupted attempt 1 kept."""
    calls = {"flaky": 0}
    gate = threading.Event()

    @task(registry=registry, max_retries=3)
    def flaky() -> int:
        calls["flaky"] += 1
        print(f"try {calls['flaky']}")
        if calls["flaky"] < 3:
            raise ValueError(f"boom {calls['flaky']}")
        return 1

    @task(registry=registry, dependencies=["flaky"])
    def waits(flaky: int) -> int:
        if not gate.is_set():
            time.sleep(PATIENCE)
        return flaky

    store = MemoryRunStore()
    io = FilesystemIOManager(tmp_path)
    plan = plan_for(registry)
    orchestrator = Orchestrator(io_manager=io, store=store, executor="inprocess")
    handle = await orchestrator.submit_pipeline(plan, run_id="tries")
    while store.get_task_runs("tries")[-1:] == [] or not any(
        t.task_name == "waits" and t.status == TaskStatus.RUNNING
        for t in store.get_task_runs("tries")
    ):
        await asyncio.sleep(0.01)
    orchestrator.cancel("tries", status=RunStatus.INTERRUPTED)
    assert (await handle.result()).status == RunStatus.INTERRUPTED
    gate.set()
    resumed = await orchestrator.resume_pipeline("tries", plan=plan)
    await orchestrator.shutdown()
    assert resumed.ok
    assert resumed.task("waits").attempts == 2

    attempts = [(a.task_name, a.attempt, a.status, a.error) for a in store.get_attempts("tries")]
    assert attempts == [
        ("flaky", 1, TaskStatus.FAILED, "ValueError: boom 1"),
        ("flaky", 2, TaskStatus.FAILED, "ValueError: boom 2"),
        ("flaky", 3, TaskStatus.SUCCEEDED, None),
        ("waits", 1, TaskStatus.INTERRUPTED, None),
        ("waits", 2, TaskStatus.SUCCEEDED, None),
    ]
    flaky_attempts = [a for a in store.get_attempts("tries") if a.task_name == "flaky"]
    assert [a.output for a in flaky_attempts] == ["try 1\n", "try 2\n", "try 3\n"]
    assert {(a.host, a.pid) for a in flaky_attempts} == {(HOST, os.getpid())}
    assert "ValueError: boom 2" in (flaky_attempts[1].traceback or "")


async def test_a_queued_run_keeps_its_lease_while_it_waits_for_a_slot(
    registry: TaskRegistry,
) -> None:
    """A run waiting behind `max_concurrent_pipelines` is owned too: its lease is renewed, so
    no other instance takes it for a dead one's."""
    gate = threading.Event()

    @task(registry=registry)
    def waits() -> int:
        gate.wait(PATIENCE)
        return 1

    store = MemoryRunStore()
    orchestrator = Orchestrator(
        io_manager=InMemoryIOManager(),
        store=store,
        executor="inprocess",
        max_concurrent_pipelines=1,
        lease_seconds=0.3,
    )
    plan = plan_for(registry)
    first = await orchestrator.submit_pipeline(plan, run_id="first")
    second = await orchestrator.submit_pipeline(plan, run_id="second")
    await asyncio.sleep(1.0)  # three leases long
    queued = store.get_run("second")
    assert queued.status == RunStatus.QUEUED
    assert not is_stale(queued)
    gate.set()
    assert (await first.result()).ok
    assert (await second.result()).ok
    await orchestrator.shutdown()


class HeldInQueue(InlineExecutor):
    """Tasks wait in queue 'slow' until `release()`: a broker no worker serves, yet."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[ExecutableTask, TaskSink]] = []
        self.releasing = False

    def queue_of(self, task: ExecutableTask) -> str:
        return "slow"

    def submit(self, task: ExecutableTask, sink: TaskSink) -> None:
        self.held.append((task, sink))
        if self.releasing:
            self.release()

    def release(self) -> None:
        self.releasing = True
        held, self.held = self.held, []
        for task_, sink in held:
            sink.on_started(task_)
            super().submit(task_, sink)


async def test_a_task_interrupted_in_its_queue_runs_again_on_resume(
    registry: TaskRegistry,
) -> None:
    """Interrupted while queued, a task is recorded interrupted there; a resume runs it."""

    @task(registry=registry)
    def waits() -> int:
        return 7

    store = MemoryRunStore()
    plan = plan_for(registry)
    first = Orchestrator(io_manager=InMemoryIOManager(), store=store, executor=HeldInQueue())
    running = asyncio.create_task(first.start_pipeline(plan, run_id="held-1"))
    deadline = time.monotonic() + PATIENCE
    while not (store.list_runs() and store.get_task_runs("held-1")):
        assert time.monotonic() < deadline, "the queued task was never recorded"
        await asyncio.sleep(0.005)
    (queued,) = store.get_task_runs("held-1")
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await first.shutdown()
    (interrupted,) = store.get_task_runs("held-1")

    executor = HeldInQueue()
    executor.release()
    second = Orchestrator(io_manager=InMemoryIOManager(), store=store, executor=executor)
    result = await second.resume_pipeline("held-1", plan=plan)
    await second.shutdown()
    assert [(queued.status, queued.queue), (interrupted.status, interrupted.queue)] == [
        (TaskStatus.QUEUED, "slow"),
        (TaskStatus.INTERRUPTED, "slow"),
    ]
    assert (result.ok, [a.status for a in store.get_attempts("held-1")]) == (
        True,
        [TaskStatus.INTERRUPTED, TaskStatus.SUCCEEDED],
    )


# --- hostile tasks: whatever a task raises or returns, its attempt ends, recorded ---------


@pytest.mark.parametrize("executor", EXECUTORS)
def test_hostile_objects_never_hang_a_run(executor: str, tmp_path: Path) -> None:
    """Exceptions and results whose __str__, __repr__, __reduce__, __hash__, __eq__ raise,
    huge or cyclic ones, hostile causes and contexts: every run ends, every attempt has a
    recorded outcome with its error as text, on the inline and in-process executors (a
    raising __del__ is tried in worker processes, test_process.py)."""
    from hypothesis import HealthCheck, given, settings

    import hostile_tasks
    from dp.store import SQLRunStore

    store = SQLRunStore(path=tmp_path / "runs.db")
    orchestrator = Orchestrator(
        io_manager=FilesystemIOManager(tmp_path / "results"), store=store, executor=executor
    )

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(spec=hostile_tasks.specs(interrupts=executor != "inline", finalizers=False))
    def attempt_ends(spec: dict[str, Any]) -> None:
        plan = plan_for(hostile_tasks.REGISTRY, task_names=[spec["task"]])
        result = orchestrator.run(plan, {"spec": json.dumps(spec)})
        hostile_tasks.check_ended(result, spec)
        recorded = {r.task_name: r for r in store.get_task_runs(result.run_id)}
        assert recorded[spec["task"]].status == result.task(spec["task"]).status

    try:
        attempt_ends()
    finally:
        store.close()


class _RefusingStore(MemoryRunStore):
    """Refuses any record holding a NUL byte, as PostgreSQL does; fails the first
    `outages` task writes whatever they hold, as a store that is down for a moment."""

    def __init__(self, outages: int = 0, *, runs_only: bool = False) -> None:
        super().__init__()
        self.outages = outages
        self.runs_only = runs_only  # refuse NUL in a run's error only, not in task records

    def _check(self, records: Any) -> None:
        for record in [] if self.runs_only else records:
            if any("\x00" in (text or "") for text in (record.output, record.error)):
                raise ValueError("text fields cannot contain NUL (0x00) bytes")

    def save_task_runs(self, records: Any, **kwargs: Any) -> None:
        if self.outages:
            self.outages -= 1
            raise ConnectionError("the store is down for a moment")
        self._check([*records, *kwargs.get("attempts", ())])
        super().save_task_runs(records, **kwargs)

    def update_run(self, run_id: str, **kwargs: Any) -> None:
        self._check([*kwargs.get("task_runs", ()), *kwargs.get("attempts", ())])
        if "\x00" in (kwargs.get("error") or ""):
            raise ValueError("text fields cannot contain NUL (0x00) bytes")
        super().update_run(run_id, **kwargs)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_record_the_store_refuses_fails_the_run_once_saying_so(
    registry: TaskRegistry, executor: str
) -> None:
    """A task prints a NUL byte and fails: the store refuses its record, the run ends failed
    (not running) naming the task and the store's error, the record kept with a note."""

    @task(registry=registry)
    def nul() -> None:
        print("a\x00b")
        raise ValueError("bad\x00row")

    store = _RefusingStore()
    result = run(registry, executor, store=store)
    assert result.status == RunStatus.FAILED
    assert (result.error or "").startswith("the run store refused the record of task 'nul'")
    recorded = store.get_run(result.run_id)
    assert (recorded.status, recorded.error) == (RunStatus.FAILED, result.error)
    (row,) = store.get_task_runs(result.run_id)
    assert row.status == TaskStatus.FAILED
    assert "the run store refused it: ValueError" in (row.error or "")


def test_a_run_error_the_store_refuses_is_stored_escaped(registry: TaskRegistry) -> None:
    """The run's own error (quoting the task's, with a NUL byte) is refused: the run still
    ends failed, its error stored with the NUL escaped, and says the store refused it."""

    @task(registry=registry)
    def nul() -> None:
        raise ValueError("bad\x00row")

    store = _RefusingStore(runs_only=True)
    result = run(registry, "inline", store=store)
    recorded = store.get_run(result.run_id)
    assert (result.status, recorded.status) == (RunStatus.FAILED, RunStatus.FAILED)
    assert (recorded.error or "").startswith("the run store refused the run's error text")
    assert "\x00" not in (recorded.error or "")


def test_a_store_outage_is_not_a_refusal(registry: TaskRegistry) -> None:
    """Task writes failing whatever they hold are kept and written later: the run succeeds."""

    @task(registry=registry)
    def slow() -> int:
        time.sleep(0.5)  # long enough for periodic flushes to fail meanwhile
        return 1

    store = _RefusingStore(outages=2)
    result = run(registry, "inprocess", store=store, flush_interval=0.05)
    assert result.ok, result.error
    assert [r.status for r in store.get_task_runs(result.run_id)] == [TaskStatus.SUCCEEDED]


def _dead_owner_run(store: MemoryRunStore, registry: TaskRegistry, deaths: int) -> str:
    """A run recorded running, with task `victim` running, whose owner process is gone."""
    from dp.store import RunRecord, TaskRunRecord

    plan = plan_for(registry)
    record = RunRecord(
        run_id="20260101-000000-deadbeef",
        dag_id=plan.dag_id,
        status=RunStatus.RUNNING,
        epoch=1,
        owner_host=HOST,
        owner_pid=2**22 + 12345,  # no such process
        metadata={"owner_deaths": deaths, "running_at_owner_deaths": [["victim"]] * deaths},
    )
    store.create_run(record)
    store.save_task_runs(
        [TaskRunRecord(record.run_id, "victim", status=TaskStatus.RUNNING, attempt=deaths + 1)]
    )
    return record.run_id


async def test_a_run_whose_owner_died_n_times_is_failed_as_a_crash_loop(
    registry: TaskRegistry,
) -> None:
    """Resuming a run whose owner died while it ran counts a death; at max_resume_attempts
    deaths the run is failed, naming the task, and the task does not run again."""
    calls: list[str] = []

    @task(registry=registry)
    def victim() -> None:
        calls.append("victim")

    store = MemoryRunStore()
    run_id = _dead_owner_run(store, registry, deaths=1)
    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), store=store, max_resume_attempts=3)
    result = await orchestrator.resume_pipeline(run_id, registry=registry)  # death 2: resumed
    assert (result.ok, calls) == (True, ["victim"])
    assert store.get_run(run_id).metadata["owner_deaths"] == 2

    await orchestrator.shutdown()

    store = MemoryRunStore()
    run_id = _dead_owner_run(store, registry, deaths=2)
    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), store=store, max_resume_attempts=3)
    with pytest.raises(ResumeError, match="crash loop: the owner died 3 times while running"):
        await orchestrator.resume_pipeline(run_id, registry=registry)
    recorded = store.get_run(run_id)
    assert recorded.status == RunStatus.FAILED
    assert "task 'victim'" in (recorded.error or "")
    assert [r.status for r in store.get_task_runs(run_id)] == [TaskStatus.FAILED]
    assert calls == ["victim"]  # not a second time
    await orchestrator.shutdown()


def test_a_run_no_process_owns_is_cancelled_in_the_store(registry: TaskRegistry) -> None:
    """cancel_recorded ends a stale run cancelled under a new epoch; a finished run refuses."""
    from dp.engine.takeover import cancel_recorded
    from dp.errors import RunNotActiveError

    @task(registry=registry)
    def victim() -> None: ...

    store = MemoryRunStore()
    run_id = _dead_owner_run(store, registry, deaths=0)
    record = cancel_recorded(store, run_id, by="a test")
    assert (record.status, record.error, record.epoch) == (
        RunStatus.CANCELLED,
        "cancelled by a test",
        2,
    )
    assert [r.status for r in store.get_task_runs(run_id)] == [TaskStatus.CANCELLED]
    with pytest.raises(RunNotActiveError, match="it already cancelled"):
        cancel_recorded(store, run_id, by="a test")


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_cancelled_error_the_task_raises_itself_fails_it(
    registry: TaskRegistry, executor: str
) -> None:
    """An async task raising CancelledError (nobody cancelled it) fails, instead of leaving
    its attempt without an outcome and the run waiting forever; timeouts still cancel."""

    @task(registry=registry)
    async def cancels() -> None:
        raise asyncio.CancelledError("mine")

    @task(registry=registry, timeout=0.05, fail_safe=True)
    async def sleeps() -> None:
        await asyncio.sleep(PATIENCE)

    result = run(registry, executor)
    assert result.status == RunStatus.FAILED
    assert result.task("cancels").error == "CancelledError: mine"
    assert "TimeoutError" in (result.task("sleeps").error or "")
