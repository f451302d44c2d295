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

from typing import TYPE_CHECKING, Any

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
from dp.store import MemoryRunStore, RunStatus, TaskStatus
from dp.tasks import Parameter, TaskMetadata, TaskRegistry, get_registry, task

if TYPE_CHECKING:
    from dp.engine.process import ProcessExecutor
    from dp.store import SQLRunStore

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


def __getattr__(name: str) -> Any:
    # Heavier adapters load on first use, so `import dp` stays light.
    if name == "SQLRunStore":
        from dp.store import SQLRunStore

        return SQLRunStore
    if name == "ProcessExecutor":
        from dp.engine.process import ProcessExecutor

        return ProcessExecutor
    raise AttributeError(f"module 'dp' has no attribute {name!r}")
