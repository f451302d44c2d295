"""Helpers for testing pipelines: run a plan inline, in memory, in one call.

from dp.testing import run_inline

def test_my_pipeline():
    result = run_inline(registry=my_registry, params={"day": "2026-01-01"})
    assert result.ok
    assert result.value("report") == "..."
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dp.engine import Orchestrator, RunResult
from dp.errors import NoTaskValueError
from dp.io import FilesystemIOManager, InMemoryIOManager
from dp.planner import DAGBuilder, ExecutionPlan, Planner
from dp.store.records import TaskStatus
from dp.tasks import TaskRegistry

__all__ = ["InlineRun", "plan_for", "run_inline", "temporary_io_manager"]


def plan_for(
    registry: TaskRegistry | None = None,
    *,
    tags: Iterable[str] | None = None,
    task_names: Iterable[str] | None = None,
) -> ExecutionPlan:
    """The execution plan of a registry's tasks (default: the process-wide registry)."""
    return Planner(DAGBuilder(registry)).create_execution_plan(tags=tags, task_names=task_names)


class InlineRun(RunResult):
    """A `RunResult` that can also hand back the values the tasks returned."""

    __slots__ = ("io_manager", "plan")
    io_manager: Any
    plan: ExecutionPlan

    def value(self, task_name: str, instance: str = "") -> Any:
        """The value a task returned (a streaming task: the list of its chunks)."""
        result = self.task(task_name, instance)
        streams = self.plan.tasks[task_name].stream_output
        if result.status != TaskStatus.SUCCEEDED or not (result.result_ids or streams):
            raise NoTaskValueError(self.run_id, task_name, result.status.value, result.error)
        values = [self.io_manager.load(self.run_id, task_name, rid) for rid in result.result_ids]
        return values if streams else values[0]

    def values(self, task_name: str) -> list[Any]:
        """The values of every instance of a task mapped over a stream, in stream order."""
        return [self.value(task_name, r.instance) for r in self.instances(task_name) if r.instance]


def run_inline(
    plan: ExecutionPlan | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    registry: TaskRegistry | None = None,
    tags: Iterable[str] | None = None,
    task_names: Iterable[str] | None = None,
    io_manager: Any | None = None,
) -> InlineRun:
    """Run a plan (or a registry's tasks) in this thread with results kept in memory."""
    if plan is None:
        plan = plan_for(registry, tags=tags, task_names=task_names)
    io = io_manager if io_manager is not None else InMemoryIOManager()
    result = Orchestrator(io_manager=io, executor="inline").run(plan, params)
    inline = InlineRun(
        run_id=result.run_id,
        dag_id=result.dag_id,
        status=result.status,
        tasks=result.tasks,
        started_at=result.started_at,
        finished_at=result.finished_at,
        error=result.error,
    )
    inline.io_manager = io
    inline.plan = plan
    return inline


@contextmanager
def temporary_io_manager() -> Iterator[FilesystemIOManager]:
    """A `FilesystemIOManager` in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="dp-test-") as folder:
        yield FilesystemIOManager(folder)
