"""`Planner` turns a DAG into an `ExecutionPlan`: order, levels, typed edges, run parameters."""

from __future__ import annotations

import collections.abc
import gc
import hashlib
import json
import typing
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

from dp.errors import (
    ConflictingRunParameterError,
    InvalidRunParameterError,
    MissingRunParameterError,
    PlanError,
    RunParametersError,
    ScheduledForTypeError,
    SchemaMismatch,
    SchemaMismatchError,
    SeveralStreamsError,
    UnknownRunParameterError,
)
from dp.planner.dag import DAG, DAGBuilder
from dp.planner.params import RunParameter, check_storable, validate_param
from dp.planner.schema import is_compatible, type_name
from dp.tasks import SCHEDULED_FOR, TaskMetadata, TaskRegistry

__all__ = ["Edge", "EdgeMode", "ExecutionPlan", "Planner", "RunParameter", "get_planner"]

#: How a downstream task receives an upstream's result:
#: `value` - the single result; `chunk` - called once per streamed chunk;
#: `collect` - all chunks of a stream as one list, after the stream ends.
EdgeMode = Literal["value", "chunk", "collect"]

_COLLECTIONS = (
    list,
    collections.abc.Sequence,
    collections.abc.Iterable,
    collections.abc.Collection,
)


class Edge(NamedTuple):
    """A dependency between two tasks: `data` edges carry a result into `parameter`."""

    upstream: str
    downstream: str
    kind: Literal["data", "control"]
    parameter: str | None = None
    mode: EdgeMode = "value"

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


@dataclass(frozen=True)
class ExecutionPlan:
    """A validated, ordered plan for one DAG, ready to run; `dag_id` identifies its structure."""

    dag_id: str
    execution_order: tuple[str, ...]
    parallel_levels: tuple[tuple[str, ...], ...]
    edges: tuple[Edge, ...]
    run_parameters: tuple[RunParameter, ...]
    dag: DAG = field(repr=False, compare=False)

    @property
    def tasks(self) -> dict[str, TaskMetadata]:
        """Task metadata by name, in execution order."""
        nodes = self.dag.nodes
        return {name: nodes[name].metadata for name in self.execution_order}

    @property
    def streaming_tasks(self) -> frozenset[str]:
        """Tasks whose results form a stream: generators, and tasks mapped over a chunk input."""
        return frozenset(e.downstream for e in self.edges if e.mode == "chunk") | frozenset(
            name for name, meta in self.tasks.items() if meta.stream_output
        )

    def inputs_of(self, task_name: str) -> list[Edge]:
        """The data edges feeding `task_name`."""
        return [e for e in self.edges if e.downstream == task_name and e.kind == "data"]

    def bind_params(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Check supplied run parameters: every required one present, none unknown, each of
        its declared type (strings are converted: "3" becomes 3 for an int parameter).

        Raises:
            InvalidRunParameterError: a value that does not fit its parameter's type.
            MissingRunParameterError: naming each missing parameter and the tasks needing it.
            UnknownRunParameterError: for parameters no task of the plan accepts.
            RunParametersError: more than one of these at once (`.problems` lists them).
        """
        params = dict(params or {})
        known = {p.name: p for p in self.run_parameters}
        problems: list[PlanError] = []
        unknown = sorted(set(params) - set(known))
        if unknown:
            problems.append(UnknownRunParameterError(unknown, sorted(known)))
        missing = {
            p.name: p.tasks for p in self.run_parameters if p.required and p.name not in params
        }
        if missing:
            problems.append(MissingRunParameterError(missing))
        bound = {}
        for name, value in params.items():
            if name in known:
                try:
                    bound[name] = check_storable(known[name], validate_param(known[name], value))
                except InvalidRunParameterError as exc:
                    problems.append(exc)
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise RunParametersError(problems)
        return bound

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description for the API, the UI and `dp plan --json`."""
        return {
            "dag_id": self.dag_id,
            "execution_order": list(self.execution_order),
            "parallel_levels": [list(level) for level in self.parallel_levels],
            "run_parameters": [p.to_dict() for p in self.run_parameters],
            "edges": [e.to_dict() for e in self.edges],
            "tasks": {name: _task_dict(meta) for name, meta in self.tasks.items()},
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def _task_dict(meta: TaskMetadata) -> dict[str, Any]:
    return {
        "description": meta.description,
        "tags": list(meta.tags),
        "dependencies": list(meta.dependencies),
        "is_async": meta.is_async,
        "stream_output": meta.stream_output,
        "max_retries": meta.max_retries,
        "retry_delay": meta.retry_delay,
        "timeout": meta.timeout,
        "fail_safe": meta.fail_safe,
        "import_path": meta.import_path,
        "inputs": {
            p.name: {"type": type_name(p.annotation), "required": p.required}
            for p in meta.input_schema.values()
        },
        "output": type_name(meta.output_schema),
    }


class Planner:
    """Creates execution plans: build the DAG, validate it, order it, type-check its edges."""

    def __init__(self, builder: DAGBuilder | None = None) -> None:
        self.builder = builder if builder is not None else DAGBuilder()

    @property
    def registry(self) -> TaskRegistry:
        return self.builder.registry

    def create_execution_plan(
        self,
        *,
        tags: Iterable[str] | None = None,
        task_names: Iterable[str] | None = None,
        include_upstream: bool = True,
    ) -> ExecutionPlan:
        """Plan the selected tasks (all when nothing is selected).

        Raises:
            TaskNotFoundError: a selected task or a dependency is not registered.
            CycleError: the dependencies form a cycle.
            SchemaMismatchError: data edges whose types do not fit, all listed at once.
        """
        with _gc_paused():
            dag = self.builder.build(
                tags=tags, task_names=task_names, include_upstream=include_upstream
            )
            return plan_dag(dag)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Planning allocates many small objects that all stay alive: cyclic GC passes during it
    find nothing to free but rescan the growing heap.

    Kept for `make bench`'s planner figure: the 100,000-task plan takes 1.39x as long with
    the collector on (1,629 ms against 1,174 ms, alternating rounds). The switch is
    process-wide, so other threads (a service's) plan or run meanwhile without the cyclic
    collector; reference counting still frees what they drop, and only cyclic garbage waits
    the length of one plan. A caller that disabled the collector itself keeps it disabled.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def plan_dag(dag: DAG) -> ExecutionPlan:
    """Plan an already built DAG."""
    levels = dag.levels()
    order = [name for level in levels for name in level]
    edges = _typed_edges(dag, order)
    return ExecutionPlan(
        dag_id=_dag_id(order, edges),
        execution_order=tuple(order),
        parallel_levels=tuple(tuple(level) for level in levels),
        edges=tuple(edges),
        run_parameters=_run_parameters(dag, order),
        dag=dag,
    )


def _typed_edges(dag: DAG, order: list[str]) -> list[Edge]:
    """Classify and type-check every edge, in execution order.

    A task fed one chunk at a time by a stream emits a stream itself (one result per chunk),
    so streaming propagates downstream along `chunk` edges.
    """
    nodes = dag.nodes
    stream_item: dict[str, Any] = {}  # task -> item type, for tasks whose results form a stream
    edges: list[Edge] = []
    mismatches: list[SchemaMismatch] = []
    for name in order:
        node = nodes[name]
        meta = node.metadata
        schema = meta.input_schema
        if not schema:  # fast path: no parameters, so only control edges
            edges.extend([Edge(up, name, "control") for up in node.upstream])
            if meta.stream_output:
                stream_item[name] = meta.output_schema
            continue
        chunk_inputs: list[str] = []
        for up in node.upstream:
            param = schema.get(up)
            if param is None:
                edges.append(Edge(up, name, "control"))
                continue
            up_meta = nodes[up].metadata
            expected = param.annotation
            if up in stream_item:
                item = stream_item[up]
                mode = _stream_mode(item, expected)
                if mode is None:
                    mismatches.append(
                        SchemaMismatch(
                            up, name, up, f"a stream of {type_name(item)}", type_name(expected)
                        )
                    )
                    continue
                if mode == "chunk":
                    chunk_inputs.append(up)
                edges.append(Edge(up, name, "data", up, mode))
            else:
                provided = up_meta.output_schema
                if not is_compatible(provided, expected):
                    mismatches.append(
                        SchemaMismatch(up, name, up, type_name(provided), type_name(expected))
                    )
                    continue
                edges.append(Edge(up, name, "data", up, "value"))
        if len(chunk_inputs) > 1:
            raise SeveralStreamsError(name, chunk_inputs)
        if meta.stream_output or chunk_inputs:
            stream_item[name] = meta.output_schema
    if mismatches:
        raise SchemaMismatchError(mismatches)
    return edges


def _stream_mode(item: Any, expected: Any) -> EdgeMode | None:
    """`chunk` if the parameter takes one item, `collect` if it takes the list of all items."""
    if expected is Any:
        return "collect"  # an untyped parameter gets the whole stream, like calling list(gen)
    if item is Any:
        origin = typing.get_origin(expected) or expected
        return "collect" if origin in _COLLECTIONS else "chunk"
    if is_compatible(item, expected):
        return "chunk"
    if is_compatible(list[item], expected):
        return "collect"
    return None


def _check_scheduled_for(dag: DAG, order: list[str]) -> None:
    """A `scheduled_for` parameter must take a `datetime` (dp injects one)."""
    for name in order:
        meta = dag.nodes[name].metadata
        if not meta.wants_scheduled_for:
            continue
        annotation = meta.input_schema[SCHEDULED_FOR].annotation
        if annotation is Any or is_compatible(datetime, annotation):
            continue
        raise ScheduledForTypeError(name, type_name(annotation))


def _run_parameters(dag: DAG, order: list[str]) -> tuple[RunParameter, ...]:
    _check_scheduled_for(dag, order)
    found: dict[str, RunParameter] = {}
    for name in order:
        meta = dag.nodes[name].metadata
        if not meta.input_schema:
            continue
        for param in meta.run_parameters:
            seen = found.get(param.name)
            if seen is None:
                found[param.name] = RunParameter(
                    param.name, param.annotation, param.required, (name,), param.default
                )
                continue
            if not (
                is_compatible(param.annotation, seen.annotation)
                or is_compatible(seen.annotation, param.annotation)
            ):
                raise ConflictingRunParameterError(
                    param.name,
                    (seen.tasks[0], type_name(seen.annotation)),
                    (name, type_name(param.annotation)),
                )
            found[param.name] = RunParameter(
                param.name,
                seen.annotation,
                seen.required or param.required,
                (*seen.tasks, name),
                seen.default,
            )
    return tuple(sorted(found.values(), key=lambda p: p.name))


def _dag_id(order: list[str], edges: list[Edge]) -> str:
    """A hash of the structure only, so the same DAG has the same id in every process."""
    incoming: dict[str, list[str]] = {name: [] for name in order}
    for e in edges:
        incoming[e.downstream].append(e.upstream + _EDGE_CODES[e.kind, e.mode])
    lines = [name + "<" + ",".join(sorted(ups)) for name, ups in incoming.items()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


_EDGE_CODES = {
    ("control", "value"): "",
    ("data", "value"): "=",
    ("data", "chunk"): "=*",
    ("data", "collect"): "=[]",
}


_default_planner: Planner | None = None


def get_planner() -> Planner:
    """A planner over the process-wide registry."""
    global _default_planner
    if _default_planner is None:
        _default_planner = Planner()
    return _default_planner
