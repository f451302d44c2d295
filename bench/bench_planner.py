"""Registry lookups and planning speed, beside a plain dict and graphlib on the same data."""

from __future__ import annotations

import graphlib
from dataclasses import replace

from bench._harness import Report, measure
from dp import DAGBuilder, Planner, TaskMetadata, TaskRegistry
from dp.tasks import Parameter


def _noop() -> None: ...


def layered_registry(width: int, depth: int) -> TaskRegistry:
    """`depth` levels of `width` tasks, each depending on two tasks of the level before.

    Every fifth task takes its first dependency as a typed data input, so the plan also
    type-checks data edges.
    """
    registry = TaskRegistry()
    for level in range(depth):
        for i in range(width):
            name = f"t{level}_{i}"
            deps = [] if level == 0 else [f"t{level - 1}_{i}", f"t{level - 1}_{(i + 1) % width}"]
            meta = TaskMetadata.from_function(_noop, name=name, dependencies=deps)
            if deps and i % 5 == 0:
                meta = replace(
                    meta, input_schema={deps[0]: Parameter(deps[0], int)}, output_schema=int
                )
            elif i % 5 == 0:
                meta = replace(meta, output_schema=int)
            registry.register(meta)
    return registry


def bench_registry(report: Report) -> None:
    registry = TaskRegistry()
    for i in range(1000):
        registry.register(TaskMetadata.from_function(_noop, name=f"task_{i}"))
    plain = registry.as_dict()
    names = [f"task_{i}" for i in range(1000)] * 100
    get = registry.get

    def dp_lookups() -> None:
        for name in names:
            get(name)

    def dict_lookups() -> None:
        for name in names:
            plain[name]

    n = len(names)
    report.add(
        "registry",
        "lookups (registry.get)",
        n / measure(dp_lookups, repeat=7),
        "/s",
        baseline_name="dict[name]",
        baseline=n / measure(dict_lookups, repeat=7),
        target=">= 10,000,000/s",
    )


def bench_planning(report: Report) -> None:
    width, depth = 1000, 100
    registry = layered_registry(width, depth)
    graph = {meta.name: meta.dependencies for meta in registry}
    planner = Planner(DAGBuilder(registry))
    dp_time = measure(planner.create_execution_plan, repeat=5)
    graphlib_time = measure(
        lambda: list(graphlib.TopologicalSorter(graph).static_order()), repeat=5
    )
    report.add(
        "planner",
        f"plan {width * depth:,}-task layered DAG (build, validate, order, levels, id)",
        dp_time * 1000,
        "ms",
        baseline_name="graphlib static_order",
        baseline=graphlib_time * 1000,
        target="<= 3x graphlib",
        higher_is_better=False,
    )
    plan = planner.create_execution_plan()
    assert len(plan.execution_order) == width * depth
    assert len(plan.parallel_levels) == depth
    assert sum(e.kind == "data" for e in plan.edges) == width // 5 * (depth - 1)


def run(report: Report) -> None:
    bench_registry(report)
    bench_planning(report)
