"""dp: event-driven data pipelines for Python.

Write plain functions, mark them with `@task`, and let dp plan, type-check and run them:

    from dp import task, Orchestrator, get_planner

    @task
    def extract() -> list[int]:
        return [1, 2, 3]

    @task(dependencies=["extract"])
    def total(extract: list[int]) -> int:
        return sum(extract)

    result = Orchestrator.embedded().run(get_planner().create_execution_plan())
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dp.engine import (
        ExecutableTask,
        ExecutionContext,
        InlineExecutor,
        InProcessExecutor,
        Orchestrator,
        RunHandle,
        RunResult,
        TaskDependencyResolver,
        TaskRunResult,
        TooManyPipelinesError,
        Worker,
    )
    from dp.engine.process import ProcessExecutor
    from dp.errors import (
        CycleError,
        DPError,
        DuplicateTaskError,
        InvalidRunParameterError,
        MissingRunParameterError,
        PlanError,
        SchemaMismatchError,
        TaskDefinitionError,
        TaskNotFoundError,
    )
    from dp.events import (
        EventBase,
        InMemoryBroker,
        InMemoryConsumer,
        InMemoryPublisher,
        InMemoryQueue,
        MultiprocessQueue,
    )
    from dp.io import FilesystemIOManager, InMemoryIOManager, IOManager
    from dp.pipelines import Cron, OnEvent, Pipeline, get_pipelines, pipeline
    from dp.planner import (
        DAG,
        DAGBuilder,
        Edge,
        ExecutionPlan,
        Node,
        Planner,
        RunParameter,
        get_planner,
    )
    from dp.store import MemoryRunStore, RunStatus, SQLRunStore, TaskStatus
    from dp.tasks import Parameter, TaskMetadata, TaskRegistry, get_registry, task

__all__ = [
    "DAG",
    "Cron",
    "CycleError",
    "DAGBuilder",
    "DPError",
    "DuplicateTaskError",
    "Edge",
    "EventBase",
    "ExecutableTask",
    "ExecutionContext",
    "ExecutionPlan",
    "FilesystemIOManager",
    "IOManager",
    "InMemoryBroker",
    "InMemoryConsumer",
    "InMemoryIOManager",
    "InMemoryPublisher",
    "InMemoryQueue",
    "InProcessExecutor",
    "InlineExecutor",
    "InvalidRunParameterError",
    "MemoryRunStore",
    "MissingRunParameterError",
    "MultiprocessQueue",
    "Node",
    "OnEvent",
    "Orchestrator",
    "Parameter",
    "Pipeline",
    "PlanError",
    "Planner",
    "ProcessExecutor",
    "RunHandle",
    "RunParameter",
    "RunResult",
    "RunStatus",
    "SQLRunStore",
    "SchemaMismatchError",
    "TaskDefinitionError",
    "TaskDependencyResolver",
    "TaskMetadata",
    "TaskNotFoundError",
    "TaskRegistry",
    "TaskRunResult",
    "TaskStatus",
    "TooManyPipelinesError",
    "Worker",
    "get_pipelines",
    "get_planner",
    "get_registry",
    "pipeline",
    "task",
]

#: where each public name lives. Names load on first use (PEP 562), so `import dp` costs a
#: few milliseconds and `from dp import task` loads the task registry, not the engine.
_WHERE = {
    "Cron": "dp.pipelines",
    "CycleError": "dp.errors",
    "DAG": "dp.planner",
    "DAGBuilder": "dp.planner",
    "DPError": "dp.errors",
    "DuplicateTaskError": "dp.errors",
    "Edge": "dp.planner",
    "EventBase": "dp.events",
    "ExecutableTask": "dp.engine",
    "ExecutionContext": "dp.engine",
    "ExecutionPlan": "dp.planner",
    "FilesystemIOManager": "dp.io",
    "IOManager": "dp.io",
    "InMemoryBroker": "dp.events",
    "InMemoryConsumer": "dp.events",
    "InMemoryIOManager": "dp.io",
    "InMemoryPublisher": "dp.events",
    "InMemoryQueue": "dp.events",
    "InProcessExecutor": "dp.engine",
    "InlineExecutor": "dp.engine",
    "InvalidRunParameterError": "dp.errors",
    "MemoryRunStore": "dp.store",
    "MissingRunParameterError": "dp.errors",
    "MultiprocessQueue": "dp.events",
    "Node": "dp.planner",
    "OnEvent": "dp.pipelines",
    "Orchestrator": "dp.engine",
    "Parameter": "dp.tasks",
    "Pipeline": "dp.pipelines",
    "PlanError": "dp.errors",
    "Planner": "dp.planner",
    "ProcessExecutor": "dp.engine.process",
    "RunHandle": "dp.engine",
    "RunParameter": "dp.planner",
    "RunResult": "dp.engine",
    "RunStatus": "dp.store",
    "SQLRunStore": "dp.store",
    "SchemaMismatchError": "dp.errors",
    "TaskDefinitionError": "dp.errors",
    "TaskDependencyResolver": "dp.engine",
    "TaskMetadata": "dp.tasks",
    "TaskNotFoundError": "dp.errors",
    "TaskRegistry": "dp.tasks",
    "TaskRunResult": "dp.engine",
    "TaskStatus": "dp.store",
    "TooManyPipelinesError": "dp.engine",
    "Worker": "dp.engine",
    "get_pipelines": "dp.pipelines",
    "get_planner": "dp.planner",
    "get_registry": "dp.tasks",
    "pipeline": "dp.pipelines",
    "task": "dp.tasks",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dp' has no attribute {name!r}")
    # not cached here: a test that drops dp's modules from sys.modules gets fresh ones
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
