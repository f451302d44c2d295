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

# What a pipeline author writes. The imports below are for type checkers; at run time a name
# loads from the module `_WHERE` names on first use (PEP 562), so `import dp` costs a few
# milliseconds and `from dp import task` loads the task registry, not the engine (a test checks
# the two lists agree). Everything else is imported from its module: `from dp.errors import
# CycleError`, `from dp.planner import Parameter`.
if TYPE_CHECKING:
    from dp.engine import ExecutionContext as ExecutionContext
    from dp.engine import InlineExecutor as InlineExecutor
    from dp.engine import InProcessExecutor as InProcessExecutor
    from dp.engine import Orchestrator as Orchestrator
    from dp.engine import RunHandle as RunHandle
    from dp.engine import RunResult as RunResult
    from dp.engine import TaskRunResult as TaskRunResult
    from dp.engine.process import ProcessExecutor as ProcessExecutor
    from dp.errors import DPError as DPError
    from dp.events import EventBase as EventBase
    from dp.events import InMemoryBroker as InMemoryBroker
    from dp.io import FilesystemIOManager as FilesystemIOManager
    from dp.io import InMemoryIOManager as InMemoryIOManager
    from dp.io import IOManager as IOManager
    from dp.pipelines import Cron as Cron
    from dp.pipelines import OnEvent as OnEvent
    from dp.pipelines import Pipeline as Pipeline
    from dp.pipelines import get_pipelines as get_pipelines
    from dp.pipelines import pipeline as pipeline
    from dp.planner import DAG as DAG
    from dp.planner import DAGBuilder as DAGBuilder
    from dp.planner import ExecutionPlan as ExecutionPlan
    from dp.planner import Planner as Planner
    from dp.planner import get_planner as get_planner
    from dp.sources import Poll as Poll
    from dp.sources import Source as Source
    from dp.sources import get_sources as get_sources
    from dp.sources import source as source
    from dp.store import MemoryRunStore as MemoryRunStore
    from dp.store import RunStatus as RunStatus
    from dp.store import SQLRunStore as SQLRunStore
    from dp.store import TaskStatus as TaskStatus
    from dp.tasks import TaskMetadata as TaskMetadata
    from dp.tasks import TaskRegistry as TaskRegistry
    from dp.tasks import get_registry as get_registry
    from dp.tasks import task as task

_WHERE = {
    "TaskMetadata": "dp.tasks",
    "TaskRegistry": "dp.tasks",
    "get_registry": "dp.tasks",
    "task": "dp.tasks",
    "Cron": "dp.pipelines",
    "OnEvent": "dp.pipelines",
    "Pipeline": "dp.pipelines",
    "get_pipelines": "dp.pipelines",
    "pipeline": "dp.pipelines",
    "Poll": "dp.sources",
    "Source": "dp.sources",
    "get_sources": "dp.sources",
    "source": "dp.sources",
    "DAG": "dp.planner",
    "DAGBuilder": "dp.planner",
    "ExecutionPlan": "dp.planner",
    "Planner": "dp.planner",
    "get_planner": "dp.planner",
    "ExecutionContext": "dp.engine",
    "InProcessExecutor": "dp.engine",
    "InlineExecutor": "dp.engine",
    "Orchestrator": "dp.engine",
    "ProcessExecutor": "dp.engine.process",
    "RunHandle": "dp.engine",
    "RunResult": "dp.engine",
    "TaskRunResult": "dp.engine",
    "FilesystemIOManager": "dp.io",
    "IOManager": "dp.io",
    "InMemoryIOManager": "dp.io",
    "MemoryRunStore": "dp.store",
    "RunStatus": "dp.store",
    "SQLRunStore": "dp.store",
    "TaskStatus": "dp.store",
    "EventBase": "dp.events",
    "InMemoryBroker": "dp.events",
    "DPError": "dp.errors",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dp' has no attribute {name!r}")
    # not cached here: a test that drops dp's modules from sys.modules gets fresh ones
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
