"""The multi-process executor: real worker processes that import tasks by module path."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import proc_broken
import proc_tasks
from dp import DPError, TaskRegistry, task
from dp.engine import Orchestrator, RunResult
from dp.engine.process import ProcessExecutor
from dp.io import FilesystemIOManager, InMemoryIOManager
from dp.store import RunStatus, TaskStatus
from dp.testing import plan_for


@pytest.fixture(scope="module")
def executor() -> ProcessExecutor:
    """One executor of two worker processes for the tests of this module."""
    return ProcessExecutor(workers=2, prefetch=2)


def run(
    executor: ProcessExecutor,
    tmp_path: Path,
    registry: TaskRegistry = proc_tasks.REGISTRY,
    tags: list[str] | None = None,
    **params: Any,
) -> tuple[RunResult, FilesystemIOManager]:
    io = FilesystemIOManager(tmp_path / "results")
    orchestrator = Orchestrator(io_manager=io, executor=executor)
    plan = plan_for(registry, tags=tags)
    return orchestrator.run(plan, params), io


def test_pipeline_runs_across_worker_processes(executor: ProcessExecutor, tmp_path: Path) -> None:
    """Sync and async tasks run in workers; results pass through the IO manager."""
    result, io = run(executor, tmp_path, tags=["flow"], count=5)
    assert result.ok, result.error
    assert io.load(result.run_id, "summary", "output") == "30/10"
    output = result.task("numbers").output
    assert output.startswith("numbers in pid ")
    assert int(output.split()[-1]) != __import__("os").getpid()


def test_stream_chunks_feed_mapped_tasks_across_processes(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    """A generator in one worker feeds a per-chunk task in others; list[T] collects them."""
    result, io = run(executor, tmp_path, tags=["stream"], count=4)
    assert result.ok, result.error
    assert len(result.instances("shout")) == 4
    assert io.load(result.run_id, "book", "output") == "PAGE-0 PAGE-1 PAGE-2 PAGE-3"


@pytest.mark.parametrize(
    ("how", "exit_text"),
    [("sigkill", "killed by SIGKILL"), ("exit", "exited with code 3"), ("segfault", "SIGSEGV")],
)
def test_dead_worker_is_replaced_and_task_retried(
    executor: ProcessExecutor, tmp_path: Path, how: str, exit_text: str
) -> None:
    """A worker that dies mid-task is replaced; the task's retry succeeds."""
    started = executor.replacements
    result, _ = run(executor, tmp_path, tags=["crash"], marker=str(tmp_path / "m"), how=how)
    assert result.ok, result.error
    assert result.task("dies_once").attempts == 2
    assert executor.replacements == started + 1


def test_dead_worker_without_retries_fails_the_task_clearly(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    """With no retries left, the task fails with a message naming the signal; others still run."""
    result, _ = run(executor, tmp_path, tags=["crash-for-good"], marker_dir=str(tmp_path))
    assert result.status == RunStatus.FAILED
    error = result.task("always_dies").error or ""
    assert error.startswith("WorkerDied: the worker process running task 'always_dies'")
    assert "killed by SIGKILL" in error
    assert result.task("innocent_bystander").status in (TaskStatus.SUCCEEDED, TaskStatus.CANCELLED)


def test_timeout_kills_the_worker_and_the_run_goes_on(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    """A task past its timeout is killed with its process; the replacement runs the rest."""
    started = executor.replacements
    result, _ = run(executor, tmp_path, tags=["hang"])
    error = result.task("hangs").error or ""
    assert error.startswith("TimeoutError: task 'hangs' did not finish within 0.5s")
    assert "worker process was killed and replaced" in error
    assert result.task("quick").status == TaskStatus.SUCCEEDED
    assert executor.replacements == started + 1


def test_unpicklable_result_fails_once_in_a_worker(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    """An unpicklable return value fails the task without retries, naming the task."""
    result, _ = run(executor, tmp_path, tags=["unpicklable"])
    failed = result.task("returns_generator_object")
    assert failed.attempts == 1
    assert "SerializationError" in (failed.error or "")


def test_module_failing_to_import_in_the_worker(executor: ProcessExecutor, tmp_path: Path) -> None:
    """A task whose module cannot be imported in a worker fails with the import error."""
    result, _ = run(executor, tmp_path, registry=proc_broken.REGISTRY)
    error = result.task("needs_driver").error or ""
    assert "worker could not import task 'proc_broken:needs_driver'" in error
    assert "warehouse driver is not installed" in error


def test_task_defined_inside_a_function_is_explained(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    """Workers cannot import a task defined in a function; the error says what to do."""
    registry = TaskRegistry()

    @task(registry=registry)
    def local_task() -> int:
        return 1

    result, _ = run(executor, tmp_path, registry=registry)
    assert "define it at module level" in (result.task("local_task").error or "")


def test_in_memory_io_manager_is_refused(tmp_path: Path) -> None:
    """Worker processes cannot reach an in-memory IO manager: clear error before any work."""
    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), executor=ProcessExecutor(workers=1))
    with pytest.raises(DPError, match="needs an IO manager its worker processes can reach"):
        orchestrator.run(plan_for(proc_tasks.REGISTRY, tags=["hang"]))


def test_a_dying_worker_blames_the_task_it_was_running(tmp_path: Path) -> None:
    """With one worker running two queued tasks, only the one that crashed is failed."""
    result, _ = run(ProcessExecutor(workers=1, prefetch=2), tmp_path, tags=["blame"])
    assert result.task("innocent").status == TaskStatus.SUCCEEDED
    assert result.task("crasher").status == TaskStatus.FAILED
    assert "'crasher' exited with code 7" in (result.task("crasher").error or "")
    assert result.error is not None
    assert result.error.startswith("task 'crasher' failed")


def test_workers_dying_at_start_fail_the_run_instead_of_respawning_forever(
    tmp_path: Path,
) -> None:
    """An unguarded main module kills every worker at start: the run fails and says why."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from dp import FilesystemIOManager, Orchestrator, TaskRegistry, task
            from dp.testing import plan_for

            registry = TaskRegistry()

            @task(registry=registry)
            def only() -> int:
                return 1

            # no `if __name__ == "__main__":` guard: each worker re-runs this file
            io = FilesystemIOManager({str(tmp_path / "results")!r})
            result = Orchestrator(io_manager=io, executor="process", workers=2).run(
                plan_for(registry)
            )
            print("STATUS", result.status.value)
            print("ERROR", result.error)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert "STATUS failed" in done.stdout
    assert "WorkerStartFailed" in done.stdout
    assert "if __name__ == '__main__':" in done.stdout


def test_hostile_objects_never_hang_a_run_nor_kill_a_worker(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    """Hostile exceptions and results in worker processes: every run ends, every attempt
    has a recorded outcome with its error as text, and no worker dies of it (a task's
    KeyboardInterrupt included: workers ignore Ctrl-C, so it is the task's)."""
    import json

    from hypothesis import HealthCheck, example, given, settings

    import hostile_tasks
    from dp.engine.process import ProcessExecutor as Executor

    hostile_executor = Executor(workers=1, prefetch=1)
    orchestrator = Orchestrator(
        io_manager=FilesystemIOManager(tmp_path / "results"), executor=hostile_executor
    )

    async def one(spec: dict[str, Any]) -> RunResult:
        plan = plan_for(hostile_tasks.REGISTRY, task_names=[spec["task"]])
        return await orchestrator.start_pipeline(plan, {"spec": json.dumps(spec)})

    loop = asyncio.new_event_loop()

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(spec=hostile_tasks.specs())
    @example(spec=hostile_tasks.TRAP)
    def attempt_ends(spec: dict[str, Any]) -> None:
        result = loop.run_until_complete(one(spec))
        hostile_tasks.check_ended(result, spec)
        assert "WorkerDied" not in (result.task(spec["task"]).error or ""), spec

    try:
        attempt_ends()
        assert hostile_executor.replacements == 0
    finally:
        loop.run_until_complete(orchestrator.shutdown())
        loop.close()
