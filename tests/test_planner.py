"""The planner: DAG building, validation, ordering, streaming edges, run parameters, dag_id."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dp import DAGBuilder, Planner, TaskRegistry, task
from dp.errors import (
    CycleError,
    MissingRunParameterError,
    PlanError,
    SchemaMismatchError,
    TaskNotFoundError,
)
from dp.planner import ExecutionPlan


@pytest.fixture
def registry() -> TaskRegistry:
    return TaskRegistry()


def plan_of(registry: TaskRegistry, **selection: Any) -> ExecutionPlan:
    return Planner(DAGBuilder(registry)).create_execution_plan(**selection)


def diamond(registry: TaskRegistry) -> None:
    @task(registry=registry, tags=["etl"])
    def extract() -> list[int]:
        return [1, 2]

    @task(registry=registry, tags=["etl"], dependencies=["extract"])
    def double(extract: list[int]) -> list[int]:
        return extract

    @task(registry=registry, tags=["etl"], dependencies=["extract"])
    def count(extract: list[int]) -> int:
        return len(extract)

    @task(registry=registry, tags=["report"], dependencies=["double", "count"])
    def report(double: list[int], count: int) -> str:
        return ""


def test_plan_orders_tasks_and_groups_parallel_levels(registry: TaskRegistry) -> None:
    """A diamond plans as extract, then double and count together, then report."""
    diamond(registry)
    plan = plan_of(registry)
    assert plan.execution_order == ("extract", "count", "double", "report")
    assert plan.parallel_levels == (("extract",), ("count", "double"), ("report",))


def test_node_links_upstream_and_downstream(registry: TaskRegistry) -> None:
    """The DAG's nodes know both the tasks they wait for and the tasks waiting for them."""
    diamond(registry)
    dag = DAGBuilder(registry).build()
    assert dag["extract"].downstream == ["double", "count"]
    assert dag["report"].upstream == ["double", "count"]


def test_select_by_tag_brings_upstream_closure(registry: TaskRegistry) -> None:
    """Selecting the 'report' tag pulls in everything report depends on."""
    diamond(registry)
    assert set(plan_of(registry, tags=["report"]).execution_order) == {
        "extract",
        "double",
        "count",
        "report",
    }


def test_select_by_name_without_upstream_drops_control_edges(registry: TaskRegistry) -> None:
    """include_upstream=False keeps only the selection; control edges to outside are dropped."""

    @task(registry=registry)
    def setup() -> None: ...

    @task(registry=registry, dependencies=["setup"])
    def work() -> None: ...

    plan = plan_of(registry, task_names=["work"], include_upstream=False)
    assert plan.execution_order == ("work",)
    assert plan.edges == ()


def test_select_without_upstream_refuses_missing_data(registry: TaskRegistry) -> None:
    """A selected task whose input would come from an unselected task is a clear error."""
    diamond(registry)
    with pytest.raises(PlanError, match="'count' needs the result of 'extract'"):
        plan_of(registry, task_names=["count"], include_upstream=False)


def test_unknown_tag_is_an_error_listing_known_tags(registry: TaskRegistry) -> None:
    """Selecting a tag no task has lists the tags that exist."""
    diamond(registry)
    with pytest.raises(PlanError, match=r"no task has any of the tags \['nightly'\].*'etl'"):
        plan_of(registry, tags=["nightly"])


def test_missing_dependency_names_the_task_and_suggests(registry: TaskRegistry) -> None:
    """A dependency on an unregistered task names who depends on it and suggests a close name."""

    @task(registry=registry)
    def extract_sales() -> None: ...

    @task(registry=registry, dependencies=["extract_sale"])
    def transform() -> None: ...

    with pytest.raises(TaskNotFoundError) as info:
        plan_of(registry)
    message = str(info.value)
    assert "task 'transform' depends on task 'extract_sale'" in message
    assert "did you mean 'extract_sales'" in message


def test_cycle_error_prints_the_path(registry: TaskRegistry) -> None:
    """A cycle is reported as the path a -> b -> c -> a, with the tasks on CycleError.cycle."""

    @task(registry=registry, dependencies=["c"])
    def a() -> None: ...

    @task(registry=registry, dependencies=["a"])
    def b() -> None: ...

    @task(registry=registry, dependencies=["b"])
    def c() -> None: ...

    @task(registry=registry)
    def independent() -> None: ...

    with pytest.raises(CycleError, match="a -> b -> c -> a") as info:
        plan_of(registry)
    assert info.value.cycle == ("a", "b", "c", "a")


def test_type_mismatch_names_both_tasks_and_types(registry: TaskRegistry) -> None:
    """A data edge whose types do not fit fails with both tasks, the parameter and both types."""

    @task(registry=registry)
    def extract() -> str:
        return ""

    @task(registry=registry, dependencies=["extract"])
    def transform(extract: int) -> None: ...

    with pytest.raises(SchemaMismatchError) as info:
        plan_of(registry)
    (edge,) = info.value.edges
    assert (edge.upstream, edge.downstream, edge.provided, edge.expected) == (
        "extract",
        "transform",
        "str",
        "int",
    )
    assert "'extract' returns str but parameter 'extract' of 'transform' expects int" in str(
        info.value
    )


def test_all_mismatches_are_reported_at_once(registry: TaskRegistry) -> None:
    """Several bad edges are listed in one error, so they can be fixed in one go."""

    @task(registry=registry)
    def source() -> str:
        return ""

    @task(registry=registry, dependencies=["source"])
    def one(source: int) -> None: ...

    @task(registry=registry, dependencies=["source"])
    def two(source: list[str]) -> None: ...

    with pytest.raises(SchemaMismatchError) as info:
        plan_of(registry)
    assert {e.downstream for e in info.value.edges} == {"one", "two"}


def test_parameter_shadowing_a_task_name_must_be_a_dependency(registry: TaskRegistry) -> None:
    """A parameter named like a task, without the dependency, is caught before running."""

    @task(registry=registry)
    def extract() -> int:
        return 1

    @task(registry=registry)
    def transform(extract: int) -> int:
        return extract

    with pytest.raises(PlanError, match=r"add dependencies=\['extract'\]"):
        plan_of(registry)


def test_edges_are_data_or_control(registry: TaskRegistry) -> None:
    """An edge carries data when a parameter has the upstream's name, otherwise it only orders."""

    @task(registry=registry)
    def create_table() -> None: ...

    @task(registry=registry)
    def extract() -> int:
        return 1

    @task(registry=registry, dependencies=["create_table", "extract"])
    def load(extract: int) -> None: ...

    plan = plan_of(registry)
    kinds = {(e.upstream, e.kind, e.parameter) for e in plan.edges}
    assert kinds == {("create_table", "control", None), ("extract", "data", "extract")}
    assert [e.upstream for e in plan.inputs_of("load")] == ["extract"]


def test_run_parameters_are_listed_and_checked(registry: TaskRegistry) -> None:
    """Required inputs fed by no dependency must be supplied at run start; defaults are optional."""

    @task(registry=registry)
    def extract(batch_date: str, limit: int = 100) -> int:
        return 1

    @task(registry=registry, dependencies=["extract"])
    def report(extract: int, batch_date: str) -> None: ...

    plan = plan_of(registry)
    params = {p.name: (p.required, p.tasks) for p in plan.run_parameters}
    assert params == {
        "batch_date": (True, ("extract", "report")),
        "limit": (False, ("extract",)),
    }
    assert plan.bind_params({"batch_date": "2026-01-01"}) == {"batch_date": "2026-01-01"}
    with pytest.raises(
        MissingRunParameterError, match="'batch_date' \\(needed by 'extract', 'report'\\)"
    ):
        plan.bind_params({})
    with pytest.raises(PlanError, match=r"unknown run parameter\(s\) \['batch'\]"):
        plan.bind_params({"batch_date": "x", "batch": 1})


def test_scheduled_for_is_given_by_dp_not_a_run_parameter(registry: TaskRegistry) -> None:
    """`scheduled_for: datetime` (or `datetime | None`, or unannotated) is no run parameter;
    any other annotation is a plan error naming the task."""
    from datetime import datetime

    from dp.errors import ScheduledForTypeError

    @task(registry=registry)
    def daily(scheduled_for: datetime, day: str = "") -> int:
        return 1

    @task(registry=registry)
    def maybe(scheduled_for: datetime | None) -> None: ...

    @task(registry=registry)
    def loose(scheduled_for) -> None: ...  # type: ignore[no-untyped-def]

    plan = plan_of(registry)
    assert [p.name for p in plan.run_parameters] == ["day"]
    assert plan.bind_params({}) == {}

    @task(registry=registry)
    def wrong(scheduled_for: str) -> None: ...

    with pytest.raises(ScheduledForTypeError, match="task 'wrong' declares scheduled_for: str"):
        plan_of(registry)


def test_run_parameter_with_conflicting_types_is_an_error(registry: TaskRegistry) -> None:
    """One run parameter cannot be an int in one task and a str in another."""

    @task(registry=registry)
    def a(day: int) -> None: ...

    @task(registry=registry)
    def b(day: str) -> None: ...

    with pytest.raises(PlanError, match="'day' is int in task 'a' but str in task 'b'"):
        plan_of(registry)


def streaming_pipeline(registry: TaskRegistry) -> None:
    @task(registry=registry)
    def rows() -> Iterator[dict[str, int]]:
        yield {"a": 1}

    @task(registry=registry, dependencies=["rows"])
    def clean(rows: dict[str, int]) -> dict[str, int]:
        return rows

    @task(registry=registry, dependencies=["clean"])
    def count(clean: list[dict[str, int]]) -> int:
        return len(clean)

    @task(registry=registry, dependencies=["rows"])
    def untyped(rows):  # type: ignore[no-untyped-def]
        return rows


def test_streaming_edges_map_per_chunk_or_collect(registry: TaskRegistry) -> None:
    """A T parameter runs per chunk (and streams on), list[T] collects, untyped collects."""
    streaming_pipeline(registry)
    plan = plan_of(registry)
    modes = {(e.upstream, e.downstream): e.mode for e in plan.edges}
    assert modes == {
        ("rows", "clean"): "chunk",
        ("clean", "count"): "collect",
        ("rows", "untyped"): "collect",
    }
    assert plan.streaming_tasks == {"rows", "clean"}


def test_streaming_type_mismatch_mentions_the_stream(registry: TaskRegistry) -> None:
    """A parameter fitting neither a chunk nor the list of chunks is a schema error."""

    @task(registry=registry)
    def numbers() -> Iterator[int]:
        yield 1

    @task(registry=registry, dependencies=["numbers"])
    def words(numbers: str) -> None: ...

    with pytest.raises(SchemaMismatchError, match=r"returns a stream of int but .* expects str"):
        plan_of(registry)


def test_task_cannot_map_over_two_streams(registry: TaskRegistry) -> None:
    """Taking chunks from two streams at once is ambiguous and refused with a fix."""

    @task(registry=registry)
    def left() -> Iterator[int]:
        yield 1

    @task(registry=registry)
    def right() -> Iterator[int]:
        yield 1

    @task(registry=registry, dependencies=["left", "right"])
    def pair(left: int, right: int) -> None: ...

    with pytest.raises(PlanError, match="mapped over one stream only"):
        plan_of(registry)


def test_dag_id_depends_on_structure_only(registry: TaskRegistry) -> None:
    """Same structure, same id (whatever the declaration order); another edge, another id."""
    diamond(registry)
    first = plan_of(registry).dag_id
    other = TaskRegistry()

    @task(registry=other, tags=["x"], dependencies=["count", "double"])
    def report(double: list[int], count: int) -> str:
        return ""

    @task(registry=other, dependencies=["extract"])
    def count(extract: list[int]) -> int:
        return 0

    @task(registry=other, dependencies=["extract"])
    def double(extract: list[int]) -> list[int]:
        return extract

    @task(registry=other)
    def extract() -> list[int]:
        return []

    assert plan_of(other).dag_id == first

    @task(registry=other, dependencies=["report"])
    def publish() -> None: ...

    assert plan_of(other).dag_id != first


def test_dag_id_is_stable_across_processes(tmp_path: Path) -> None:
    """Two interpreters (different hash seeds) compute the same dag_id for the same file."""
    source = tmp_path / "pipeline_for_id.py"
    source.write_text(
        textwrap.dedent(
            """
            from dp import task

            @task
            def a() -> int:
                return 1

            @task(dependencies=["a"])
            def b(a: int) -> int:
                return a

            @task(dependencies=["a", "b"])
            def c(b: int) -> None: ...
            """
        )
    )
    ids = set()
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-m", "dp.cli", "plan", str(source), "--json"],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        )
        ids.add(json.loads(out.stdout)["dag_id"])
    assert len(ids) == 1


def test_plan_serialises_to_json(registry: TaskRegistry) -> None:
    """The plan round-trips through JSON with order, levels, edges, params and task details."""
    diamond(registry)
    data = json.loads(plan_of(registry).to_json())
    assert data["execution_order"] == ["extract", "count", "double", "report"]
    assert data["parallel_levels"][1] == ["count", "double"]
    assert data["tasks"]["report"]["inputs"] == {
        "double": {"type": "list[int]", "required": True},
        "count": {"type": "int", "required": True},
    }
    assert {"upstream": "extract", "downstream": "count", "kind": "data", "parameter": "extract",
            "mode": "value"} in data["edges"]  # fmt: skip
