"""The engine benchmark DAGs (W1, W2, W3) as registries of no-op tasks, and the same graphs
for the baselines (Dask graph dicts, Hamilton modules)."""

from __future__ import annotations

import sys
import time
import types
from dataclasses import replace
from typing import Any

from dp import TaskMetadata, TaskRegistry
from dp.tasks import Parameter


def noop(**inputs: Any) -> int:
    """A no-op task: takes whatever it is given, returns a small value."""
    return 1


def _meta(name: str, deps: list[str]) -> TaskMetadata:
    meta = TaskMetadata.from_function(_plain_noop, name=name, dependencies=deps)
    schema = {d: Parameter(d, int) for d in deps}
    return replace(
        meta, func=noop, input_schema=schema, output_schema=int, import_path="bench.workloads:noop"
    )


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


# --- the same graphs for the baselines (Dask, Hamilton) --------------------------------------


def noop_positional(*args: Any) -> int:
    """`noop` for Dask, which passes upstream results positionally."""
    return 1


def dask_graph(registry: TaskRegistry) -> dict[str, tuple[Any, ...]]:
    """The registry as a Dask graph dict: `{name: (noop_positional, *dependencies)}`."""
    return {meta.name: (noop_positional, *meta.dependencies) for meta in registry}


def final_tasks(registry: TaskRegistry) -> list[str]:
    """Tasks nothing depends on (what a Hamilton user asks for)."""
    upstream = {dep for meta in registry for dep in meta.dependencies}
    return [meta.name for meta in registry if meta.name not in upstream]


def hamilton_module(registry: TaskRegistry, module_name: str) -> types.ModuleType:
    """A module with one no-op function per task, its parameters named after its dependencies
    (Hamilton wires a graph by parameter names). Registered in `sys.modules`, which Hamilton
    needs to tell the module's own functions from imported ones."""
    lines = []
    for meta in registry:
        params = ", ".join(f"{dep}: int" for dep in meta.dependencies)
        lines.append(f"def {meta.name}({params}) -> int:\n    return 1\n")
    module = types.ModuleType(module_name)
    exec(compile("\n".join(lines), f"<{module_name}>", "exec"), module.__dict__)
    sys.modules[module_name] = module
    return module


# --- run start latency ---------------------------------------------------------------------


def stamp() -> float:
    """A task that returns when it started, on the clock shared by every local process."""
    return time.perf_counter()


def stamp_registry() -> TaskRegistry:
    """A one-task registry: `stamp`, importable by worker processes."""
    registry = TaskRegistry()
    registry.register(TaskMetadata.from_function(stamp, name="stamp"))
    return registry


def pipe_echo(conn: Any) -> None:
    """Child process of the Pipe round-trip baseline: answer every message until `None`."""
    while True:
        message = conn.recv()
        if message is None:
            return
        conn.send(message)


# --- peak memory: W1 with 1 MB results ------------------------------------------------------

MEGABYTE = 1 << 20


def megabyte(**inputs: Any) -> bytes:
    """A task returning a fresh 1 MB value (whatever it is given)."""
    return b"x" * MEGABYTE  # written to, so resident (bytes(n) may map untouched pages)


def _mb_meta(name: str, deps: list[str], *, data: bool) -> TaskMetadata:
    meta = TaskMetadata.from_function(_plain_noop, name=name, dependencies=deps)
    schema = {d: Parameter(d, bytes) for d in deps} if data else {}
    return replace(
        meta,
        func=megabyte if data or not deps else noop,
        input_schema=schema,
        output_schema=bytes if data or not deps else int,
        import_path="bench.workloads:megabyte",
    )


def w1_megabytes(width: int = 1000) -> TaskRegistry:
    """W1's shape with 1 MB results: the root's value feeds every fan task, each returns its
    own 1 MB; the sink only waits for them (control edges), so nothing needs all at once."""
    registry = TaskRegistry()
    registry.register(_mb_meta("root", [], data=True))
    for i in range(width):
        registry.register(_mb_meta(f"fan_{i}", ["root"], data=True))
    registry.register(_mb_meta("sink", [f"fan_{i}" for i in range(width)], data=False))
    return registry
