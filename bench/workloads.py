"""The engine benchmark DAGs (W1, W2, W3) as registries of no-op tasks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dp import Parameter, TaskMetadata, TaskRegistry


def noop(**inputs: Any) -> int:
    """A no-op task: takes whatever it is given, returns a small value."""
    return 1


def _meta(name: str, deps: list[str]) -> TaskMetadata:
    meta = TaskMetadata.from_function(_plain_noop, name=name, dependencies=deps)
    schema = {d: Parameter(d, int) for d in deps}
    return replace(meta, func=noop, input_schema=schema, output_schema=int, import_path="bench.workloads:noop")


def _plain_noop() -> int:
    return 1


def w1(width: int = 1000) -> TaskRegistry:
    """W1: 1 root -> `width` tasks -> 1 sink taking all of them."""
    registry = TaskRegistry()
    registry.register(_meta("root", []))
    for i in range(width):
        registry.register(_meta(f"fan_{i}", ["root"]))
    registry.register(_meta("sink", [f"fan_{i}" for i in range(width)]))
    return registry


def w2(length: int = 200) -> TaskRegistry:
    """W2: a chain of `length` tasks."""
    registry = TaskRegistry()
    for i in range(length):
        registry.register(_meta(f"step_{i}", [f"step_{i - 1}"] if i else []))
    return registry


def w3(levels: int = 10, width: int = 100) -> TaskRegistry:
    """W3: `levels` x `width` tasks, each depending on 2 tasks of the level before."""
    registry = TaskRegistry()
    for level in range(levels):
        for i in range(width):
            deps = [] if level == 0 else [f"l{level - 1}_{i}", f"l{level - 1}_{(i + 1) % width}"]
            registry.register(_meta(f"l{level}_{i}", deps))
    return registry


WORKLOADS = {"W1": w1, "W2": w2, "W3": w3}
