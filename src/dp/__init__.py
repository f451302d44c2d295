"""dp: event-driven data pipelines for Python.

Write plain functions, mark them with `@task`, and let dp plan, type-check and run them.
"""

from dp.errors import (
    CycleError,
    DPError,
    DuplicateTaskError,
    MissingRunParameterError,
    PlanError,
    SchemaMismatchError,
    TaskDefinitionError,
    TaskNotFoundError,
)
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
from dp.tasks import Parameter, TaskMetadata, TaskRegistry, get_registry, task

__all__ = [
    "DAG",
    "CycleError",
    "DAGBuilder",
    "DPError",
    "DuplicateTaskError",
    "Edge",
    "ExecutionPlan",
    "MissingRunParameterError",
    "Node",
    "Parameter",
    "PlanError",
    "Planner",
    "RunParameter",
    "SchemaMismatchError",
    "TaskDefinitionError",
    "TaskMetadata",
    "TaskNotFoundError",
    "TaskRegistry",
    "get_planner",
    "get_registry",
    "task",
]
