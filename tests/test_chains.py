"""Chains in the in-process executor: a thread that finishes a link runs the next one itself."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from dp import TaskMetadata, TaskRegistry
from dp.engine import InProcessExecutor, Orchestrator, RunResult
from dp.io import InMemoryIOManager
from dp.store import MemoryRunStore, RunStatus, TaskStatus
from dp.tasks import Parameter
from dp.testing import plan_for

PATIENCE = 10.0

#: what a link does besides adding one to its input: given its name
Body = Callable[[str], None]


@pytest.fixture
def registry() -> TaskRegistry:
    return TaskRegistry()


def _chain(
    registry: TaskRegistry, length: int, body: Body | None = None, prefix: str = "step", **opts: Any
) -> None:
    """Tasks step_0 -> step_1 -> ...: each calls `body(name)` and returns its input + 1."""
    for i in range(length):
        name = f"{prefix}_{i}"
        deps = [f"{prefix}_{i - 1}"] if i else []

        def step(_name: str = name, **inputs: int) -> int:
            if body is not None:
                body(_name)
            return sum(inputs.values()) + 1

        meta = TaskMetadata.from_function(_first, name=name, dependencies=deps, **opts)
        schema = {d: Parameter(d, int) for d in deps}
        registry.register(replace(meta, func=step, input_schema=schema, output_schema=int))


def _first() -> int:
    return 1


class Events:
    """A RunListener that remembers each task change, in the order it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, TaskStatus]] = []

    def on_run_start(self, **_: Any) -> None: ...

    def on_task_update(self, *, task: Any, **_: Any) -> None:
        self.events.append((task.task_name, task.status))

    def on_run_end(self, **_: Any) -> None: ...


def _run(registry: TaskRegistry, **options: Any) -> RunResult:
    options.setdefault("io_manager", InMemoryIOManager())
    options.setdefault("executor", InProcessExecutor())
    return Orchestrator(**options).run(plan_for(registry))


def test_a_chain_passes_each_value_on_and_listeners_hear_each_link_in_order(
    registry: TaskRegistry,
) -> None:
    """Every link gets its predecessor's value; listeners hear every link run and then
    succeed, in chain order (with results written behind, a link is recorded succeeded once
    stored, which may be after its successor started)."""
    _chain(registry, 30)
    events = Events()
    store, io = MemoryRunStore(), InMemoryIOManager()
    result = _run(registry, listeners=[events], store=store, io_manager=io)
    assert result.ok
    assert io.load(result.run_id, "step_29", "output") == 30
    at = {event: i for i, event in reversed(list(enumerate(events.events)))}  # first seen
    for i in range(29):
        this, after = f"step_{i}", f"step_{i + 1}"
        assert at[this, TaskStatus.RUNNING] < at[after, TaskStatus.RUNNING]
        assert at[this, TaskStatus.SUCCEEDED] < at[after, TaskStatus.SUCCEEDED]
        assert at[after, TaskStatus.RUNNING] < at[after, TaskStatus.SUCCEEDED]
    recorded = {r.task_name: r.status for r in store.get_task_runs(result.run_id)}
    assert set(recorded.values()) == {TaskStatus.SUCCEEDED}
    assert len(recorded) == 30


def test_a_failed_link_ends_the_chain_there(registry: TaskRegistry) -> None:
    """Nothing after a link that failed runs; the rest is recorded cancelled."""
    ran: list[str] = []

    def body(name: str) -> None:
        ran.append(name)
        if name == "step_3":
            raise ValueError("broken link")

    _chain(registry, 8, body)
    result = _run(registry)
    assert result.status == RunStatus.FAILED
    assert ran == [f"step_{i}" for i in range(4)]
    assert result.task("step_3").status == TaskStatus.FAILED
    assert {result.task(f"step_{i}").status for i in range(4, 8)} == {TaskStatus.CANCELLED}


def test_a_link_retried_after_a_failure_hands_on_once(registry: TaskRegistry) -> None:
    """A link that failed once and then succeeded starts its successor once, as attempt 1."""
    ran: list[str] = []

    def body(name: str) -> None:
        ran.append(name)
        if name == "step_1" and ran.count(name) == 1:
            raise ConnectionError("flaky")

    _chain(registry, 4, body, max_retries=1, retry_delay=0.0)
    result = _run(registry)
    assert result.ok, result.error
    assert ran == ["step_0", "step_1", "step_1", "step_2", "step_3"]
    assert result.task("step_1").attempts == 2
    assert result.task("step_2").attempts == 1


def test_output_of_each_link_is_captured_as_its_own(registry: TaskRegistry) -> None:
    """What a link prints is captured for that link only, though one thread runs them all."""
    _chain(registry, 5, lambda name: print(f"hello from {name}"))
    result = _run(registry)
    assert result.ok
    for i in range(5):
        assert result.task(f"step_{i}").output == f"hello from step_{i}\n"


def test_the_parallel_task_limit_holds_along_chains(registry: TaskRegistry) -> None:
    """Links started by the thread of their predecessor count against max_parallel_tasks."""
    lock = threading.Lock()
    running = peak = 0

    def body(name: str) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.002)
        with lock:
            running -= 1

    for prefix in ("a", "b", "c", "d"):
        _chain(registry, 6, body, prefix=prefix)
    result = _run(registry, executor=InProcessExecutor(min_threads=4), max_parallel_tasks=2)
    assert result.ok
    assert 1 <= peak <= 2


async def test_cancelling_a_run_stops_its_chain_at_the_running_link(
    registry: TaskRegistry,
) -> None:
    """A link running when its run is cancelled is the last: its successor never starts."""
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def body(name: str) -> None:
        ran.append(name)
        if name == "step_2":
            started.set()
            release.wait(PATIENCE)

    _chain(registry, 6, body)
    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), executor=InProcessExecutor())
    handle = await orchestrator.submit_pipeline(plan_for(registry))
    assert await asyncio.to_thread(started.wait, PATIENCE)
    assert orchestrator.cancel(handle.run_id)
    result = await handle.result()
    release.set()
    await asyncio.sleep(0.05)  # the thread finishes step_2; step_3 would start now
    await orchestrator.shutdown()
    assert result.status == RunStatus.CANCELLED
    assert ran == ["step_0", "step_1", "step_2"]
    assert {result.task(f"step_{i}").status for i in range(2, 6)} == {TaskStatus.CANCELLED}


def test_a_chain_goes_on_while_the_event_loop_is_busy(registry: TaskRegistry) -> None:
    """The thread that ran a link starts the next one itself, without waiting for the loop:
    a listener holding the loop when the first link succeeded still sees the last one run."""
    last_ran = threading.Event()
    _chain(registry, 5, lambda name: last_ran.set() if name == "step_4" else None)
    seen: list[bool] = []

    class Busy(Events):
        def on_task_update(self, *, task: Any, **_: Any) -> None:
            if (task.task_name, task.status) == ("step_0", TaskStatus.SUCCEEDED):
                seen.append(last_ran.wait(PATIENCE))  # blocks the loop's thread

    result = _run(registry, listeners=[Busy()])
    assert result.ok
    assert seen == [True]
