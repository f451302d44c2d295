"""A task module that imports fine in the orchestrator but fails to import in a worker."""

from __future__ import annotations

import multiprocessing

from dp import TaskRegistry, task

if multiprocessing.parent_process() is not None:
    raise ImportError("the warehouse driver is not installed on this worker")

REGISTRY = TaskRegistry()


@task(registry=REGISTRY)
def needs_driver() -> int:
    return 1
