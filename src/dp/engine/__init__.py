"""The execution engine: orchestrator, resolver, workers and executors."""

from dp.engine.executors import Executor, InlineExecutor, InProcessExecutor, TaskSink
from dp.engine.model import ExecutableTask, RunResult, TaskOutcome, TaskRunResult
from dp.engine.orchestrator import (
    ExecutionContext,
    Orchestrator,
    ResumeError,
    RunHandle,
    RunListener,
    TooManyPipelinesError,
    new_run_id,
)
from dp.engine.resolver import TaskDependencyResolver
from dp.engine.worker import Worker

__all__ = [
    "ExecutableTask",
    "ExecutionContext",
    "Executor",
    "InProcessExecutor",
    "InlineExecutor",
    "Orchestrator",
    "ResumeError",
    "RunHandle",
    "RunListener",
    "RunResult",
    "TaskDependencyResolver",
    "TaskOutcome",
    "TaskRunResult",
    "TaskSink",
    "TooManyPipelinesError",
    "Worker",
    "new_run_id",
]
