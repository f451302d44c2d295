"""Planner: from registered tasks to a validated, ordered, typed execution plan."""

from dp.planner.dag import DAG, DAGBuilder, Node
from dp.planner.plan import (
    Edge,
    EdgeMode,
    ExecutionPlan,
    Planner,
    RunParameter,
    get_planner,
    plan_dag,
)
from dp.planner.schema import is_compatible, type_name

__all__ = [
    "DAG",
    "DAGBuilder",
    "Edge",
    "EdgeMode",
    "ExecutionPlan",
    "Node",
    "Planner",
    "RunParameter",
    "get_planner",
    "is_compatible",
    "plan_dag",
    "type_name",
]
