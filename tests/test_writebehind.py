"""Results written behind the run: handed on from memory, stored in order, recorded once
stored, memory bounded, failures loud, nothing stored for a run that ended."""

from __future__ import annotations

import asyncio
import pickle
import threading
from dataclasses import replace
from typing import Any

import pytest

from dp import TaskMetadata, TaskRegistry
from dp.engine import InlineExecutor, InProcessExecutor, Orchestrator
from dp.engine.model import ExecutionContext, TaskRunResult
from dp.engine.writebehind import WriteBehind
from dp.io import FilesystemIOManager, InMemoryIOManager
from dp.store import MemoryRunStore, RunStatus, TaskStatus
from dp.tasks import Parameter
from dp.testing import plan_for

#: how long a test waits for something that must happen (never reached when dp works)
PATIENCE = 10.0


class GatedIO(InMemoryIOManager):
    """An in-memory IO manager whose saves wait for `gate` and are logged in order; saves
    of the tasks in `broken` fail."""

    def __init__(self, *, broken: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.saved: list[str] = []
        self.broken = broken

    def save(self, run_id: str, task_name: str, task_result_id: str, value: Any) -> str:
        if not self.gate.wait(PATIENCE):
            raise TimeoutError("the test never opened the gate")
        if task_name in self.broken:
            raise OSError(28, "No space left on device")
        location = super().save(run_id, task_name, task_result_id, value)
        self.saved.append(task_name)
        return location


def _chain(registry: TaskRegistry, length: int, started: list[str] | None = None) -> None:
    """Tasks step_0 -> step_1 -> ...: each returns its input + 1 and notes that it ran."""
    for i in range(length):
        name = f"step_{i}"
        deps = [f"step_{i - 1}"] if i else []

        def step(_name: str = name, **inputs: int) -> int:
            if started is not None:
                started.append(_name)
            return sum(inputs.values()) + 1

        meta = TaskMetadata.from_function(_first, name=name, dependencies=deps)
        schema = {d: Parameter(d, int) for d in deps}
        registry.register(replace(meta, func=step, input_schema=schema, output_schema=int))


def _first() -> int:
    return 1


def _executor(kind: str) -> InProcessExecutor | InlineExecutor:
    if kind == "inprocess":
        return InProcessExecutor(write_behind=True)
    return InlineExecutor(write_behind=True)


@pytest.fixture
def registry() -> TaskRegistry:
    return TaskRegistry()


def test_memory_of_results_that_left_is_given_back_to_the_system(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `_TRIM_EVERY` bytes of results left memory, the writer asks the allocator to
    return free pages (glibc keeps them in per-thread arenas otherwise)."""
    from dp.engine import writebehind

    entered, gate = threading.Event(), threading.Event()

    class Gated(FilesystemIOManager):
        def save(self, run_id: str, task_name: str, task_result_id: str, value: Any) -> str:
            entered.set()
            gate.wait(PATIENCE)
            return super().save(run_id, task_name, task_result_id, value)

    values = [bytes([i]) * 1000 for i in range(4)]
    size = len(pickle.dumps(values[0], pickle.HIGHEST_PROTOCOL))
    trims: list[int] = []
    monkeypatch.setattr(writebehind, "_TRIM_EVERY", 3 * size)
    monkeypatch.setattr(writebehind, "_trim", lambda: trims.append(1))
    writer = WriteBehind(Gated(tmp_path))

    class Sink:
        closed = False

        def on_durable(self, saved: int) -> None:
            pass

        def on_write_failed(self, *args: Any) -> None:
            raise AssertionError(args)

    async def main() -> tuple[int, int]:
        writer.open_run("run_1", Sink(), {f"t{i}": 1 for i in range(4)})
        writer.save("run_1", "t0", "output", values[0])  # alone: one file, size unknown
        assert await asyncio.to_thread(entered.wait, PATIENCE)
        for i in range(1, 4):  # one pack: sizes known
            writer.save("run_1", f"t{i}", "output", values[i])
        gate.set()
        await asyncio.to_thread(writer.stop)
        for i in range(4):  # each consumer has its value: they leave memory
            writer.load("run_1", f"t{i}", "output")
        before = len(trims)
        writer.open_run("run_2", Sink(), {})
        writer.save("run_2", "t0", "output", 0)  # the writer's next batch looks
        await asyncio.to_thread(writer.stop)
        return before, len(trims)

    assert asyncio.run(main()) == (0, 1)


@pytest.mark.parametrize("kind", ["inprocess", "inline"])
def test_downstream_runs_from_memory_while_the_disk_waits(
    registry: TaskRegistry, kind: str
) -> None:
    """Every task of a chain runs while the first save is still held up, then all are
    stored in the order they finished."""
    started: list[str] = []
    _chain(registry, 4, started)
    io = GatedIO()
    io.gate.clear()

    async def main() -> Any:
        orchestrator = Orchestrator(io_manager=io, executor=_executor(kind))
        handle = await orchestrator.submit_pipeline(plan_for(registry))
        for _ in range(int(PATIENCE * 100)):
            if len(started) == 4:
                break
            await asyncio.sleep(0.01)
        ran_before_stored = (list(started), list(io.saved))
        io.gate.set()
        result = await handle.result()
        await orchestrator.shutdown()
        return ran_before_stored, result

    (ran, stored), result = asyncio.run(main())
    assert (ran, stored) == ([f"step_{i}" for i in range(4)], [])
    assert result.status == RunStatus.SUCCEEDED
    assert io.saved == [f"step_{i}" for i in range(4)]
    assert io.load(result.run_id, "step_3", "output") == 4


class _StoredWhenSucceeded:
    """A listener noting, for each task recorded succeeded, whether its result was stored."""

    def __init__(self, io: InMemoryIOManager) -> None:
        self.io = io
        self.checks: list[tuple[str, bool]] = []

    def on_run_start(self, **_: Any) -> None:
        pass

    def on_task_update(self, *, context: ExecutionContext, task: TaskRunResult, **_: Any) -> None:
        if task.status == TaskStatus.SUCCEEDED:
            stored = self.io.exists(context.run_id, task.task_name, "output")
            self.checks.append((task.task_name, stored))

    def on_run_end(self, **_: Any) -> None:
        pass


def test_a_task_is_recorded_succeeded_only_once_its_result_is_stored(
    registry: TaskRegistry,
) -> None:
    """The success of every task reaches the store and listeners after its result is stored."""
    _chain(registry, 20)
    io = GatedIO()
    listener = _StoredWhenSucceeded(io)
    store = MemoryRunStore()
    orchestrator = Orchestrator(
        io_manager=io, store=store, executor=_executor("inprocess"), listeners=[listener]
    )
    result = orchestrator.run(plan_for(registry))
    assert result.status == RunStatus.SUCCEEDED
    assert listener.checks == [(f"step_{i}", True) for i in range(20)]
    assert {r.status for r in store.get_task_runs(result.run_id)} == {TaskStatus.SUCCEEDED}


def test_saves_wait_for_the_writer_past_the_cap() -> None:
    """With `max_pending` results waiting for the disk, the next save blocks until stored."""
    io = GatedIO()
    io.gate.clear()
    writer = WriteBehind(io, max_pending=2)
    done: list[int] = []

    class Sink:
        closed = False

        def on_durable(self, saved: int) -> None:
            done.append(saved)

        def on_write_failed(self, *args: Any) -> None:
            raise AssertionError(args)

    async def main() -> tuple[int, bool, int]:
        writer.open_run("run_1", Sink(), {})
        producer = threading.Thread(
            target=lambda: [writer.save("run_1", f"t{i}", "output", i) for i in range(5)]
        )
        producer.start()
        await asyncio.to_thread(producer.join, 0.5)  # it cannot get past the cap
        blocked_at, blocked = writer.accepted, producer.is_alive()
        io.gate.set()
        await asyncio.to_thread(producer.join, PATIENCE)
        await asyncio.to_thread(writer.stop)
        return blocked_at, blocked, writer.accepted

    blocked_at, blocked, accepted = asyncio.run(main())
    assert (blocked_at, blocked, accepted) == (2, True, 5)
    assert io.saved == ["t0", "t1", "t2", "t3", "t4"]


def test_a_value_leaves_memory_once_every_consumer_has_it() -> None:
    """A stored result is served from memory until its last consumer loaded it."""
    writer = WriteBehind(InMemoryIOManager(copy=True))  # its loads give copies

    class Sink:
        closed = False

        def on_durable(self, saved: int) -> None:
            pass

        def on_write_failed(self, *args: Any) -> None:
            raise AssertionError(args)

    async def main() -> tuple[bool, bool, bool]:
        writer.open_run("run_1", Sink(), {"root": 2})
        value = ["big"]
        writer.save("run_1", "root", "output", value)
        await asyncio.to_thread(writer.stop)  # stored
        first = writer.load("run_1", "root", "output") is value
        second = writer.load("run_1", "root", "output") is value
        third = writer.load("run_1", "root", "output") is value  # from the IO manager now
        return first, second, third

    assert asyncio.run(main()) == (True, True, False)


def test_stored_results_held_for_consumers_stay_within_a_byte_budget(tmp_path: Any) -> None:
    """Packed results are held by the size of their pickles: past `max_held_bytes` the oldest
    leave memory and load from disk (equal, but no longer the very object)."""
    entered, gate = threading.Event(), threading.Event()

    class Gated(FilesystemIOManager):
        def save(self, run_id: str, task_name: str, task_result_id: str, value: Any) -> str:
            entered.set()
            gate.wait(PATIENCE)
            return super().save(run_id, task_name, task_result_id, value)

    values = [bytes([i]) * 1000 for i in range(6)]
    size = len(pickle.dumps(values[0], pickle.HIGHEST_PROTOCOL))
    writer = WriteBehind(Gated(tmp_path), max_held_bytes=3 * size)

    class Sink:
        closed = False

        def on_durable(self, saved: int) -> None:
            pass

        def on_write_failed(self, *args: Any) -> None:
            raise AssertionError(args)

    async def main() -> list[bool]:
        writer.open_run("run_1", Sink(), {f"t{i}": 1 for i in range(6)})
        writer.save("run_1", "t0", "output", values[0])  # alone: one file, size unknown
        assert await asyncio.to_thread(entered.wait, PATIENCE)
        for i in range(1, 6):  # queued meanwhile: the next batch, one pack
            writer.save("run_1", f"t{i}", "output", values[i])
        gate.set()
        await asyncio.to_thread(writer.stop)
        loaded = [writer.load("run_1", f"t{i}", "output") for i in range(6)]
        assert loaded == values
        return [a is b for a, b in zip(loaded, values, strict=True)]

    # the oldest leave first (t0 too, though its size is unknown) until the rest fit
    assert asyncio.run(main()) == [False, False, False, True, True, True]


@pytest.mark.parametrize("kind", ["inprocess", "inline"])
def test_a_failed_save_fails_the_task_and_the_run(registry: TaskRegistry, kind: str) -> None:
    """A result that cannot be stored fails its task and the run; nothing after it is stored."""
    _chain(registry, 5)
    io = GatedIO(broken=("step_2",))
    store = MemoryRunStore()
    result = Orchestrator(io_manager=io, store=store, executor=_executor(kind)).run(
        plan_for(registry)
    )
    assert result.status == RunStatus.FAILED
    failed = result.task("step_2")
    assert failed.status == TaskStatus.FAILED
    assert "SaveError" in (failed.error or "")
    assert "No space left on device" in (result.error or "")
    assert io.saved == ["step_0", "step_1"]
    recorded = {r.task_name: r.status for r in store.get_task_runs(result.run_id)}
    assert recorded["step_1"] == TaskStatus.SUCCEEDED
    assert TaskStatus.SUCCEEDED not in {recorded[f"step_{i}"] for i in range(2, 5)}


def test_a_run_that_ended_has_nothing_more_stored(registry: TaskRegistry) -> None:
    """Results still waiting for the writer when the run is stopped are dropped, not stored
    (a fenced or cancelled run commits nothing more)."""
    started: list[str] = []
    _chain(registry, 4, started)
    io = GatedIO()
    io.gate.clear()

    async def main() -> Any:
        orchestrator = Orchestrator(io_manager=io, executor=_executor("inprocess"))
        handle = await orchestrator.submit_pipeline(plan_for(registry))
        for _ in range(int(PATIENCE * 100)):
            if len(started) == 4:
                break
            await asyncio.sleep(0.01)
        orchestrator.cancel(handle.run_id)
        result = await handle.result()
        io.gate.set()
        await orchestrator.shutdown()
        return result

    result = asyncio.run(main())
    assert result.status == RunStatus.CANCELLED
    assert len(io.saved) <= 1  # the one save the writer was already making
    assert TaskStatus.SUCCEEDED not in {t.status for t in result.tasks.values()}


def test_resume_after_write_behind_reuses_exactly_what_was_stored(
    registry: TaskRegistry, tmp_path: Any
) -> None:
    """A run interrupted while results waited for the disk resumes from the stored ones: a
    stored result always has its inputs stored, and nothing recorded succeeded is missing."""
    started: list[str] = []
    _chain(registry, 6, started)
    store = MemoryRunStore()
    io = FilesystemIOManager(tmp_path)

    class Slow(FilesystemIOManager):
        def save(self, run_id: str, task_name: str, task_result_id: str, value: Any) -> str:
            if task_name == "step_3":
                gate.wait(PATIENCE)
            return super().save(run_id, task_name, task_result_id, value)

        def save_sized(self, run_id: str, task_name: str, task_result_id: str, value: Any) -> int:
            if task_name == "step_3":
                gate.wait(PATIENCE)
            return super().save_sized(run_id, task_name, task_result_id, value)

    gate = threading.Event()

    async def interrupted() -> str:
        orchestrator = Orchestrator(
            io_manager=Slow(tmp_path), store=store, executor=_executor("inprocess")
        )
        handle = await orchestrator.submit_pipeline(plan_for(registry))
        for _ in range(int(PATIENCE * 100)):
            if len(started) == 6:
                break
            await asyncio.sleep(0.01)
        orchestrator.cancel(handle.run_id, status=RunStatus.INTERRUPTED)
        await handle.result()
        gate.set()
        await orchestrator.shutdown()
        return handle.run_id

    run_id = asyncio.run(interrupted())
    stored = [i for i in range(6) if io.exists(run_id, f"step_{i}", "output")]
    assert stored == list(range(len(stored)))  # a prefix of the chain, never a gap
    recorded = {r.task_name: r.status for r in store.get_task_runs(run_id)}
    assert all(int(n.split("_")[1]) in stored for n, s in recorded.items() if s == "succeeded")
    started.clear()
    resumed = Orchestrator(io_manager=io, store=store, executor="inprocess")
    result = asyncio.run(resumed.resume_pipeline(run_id, plan=plan_for(registry)))
    assert result.status == RunStatus.SUCCEEDED
    assert started == [f"step_{i}" for i in range(len(stored), 6)]
    assert io.load(run_id, "step_5", "output") == 6
