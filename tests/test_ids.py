"""The one rule for ids and names that become folders and keys."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dp.errors import InvalidIdError
from dp.ids import check_id, id_problem, is_id, name_problem


@pytest.mark.parametrize(
    "value", ["run-1", "20261122-101500-1a2b3c4d", "a.b", "_x", "9", "x" * 200]
)
def test_good_ids_pass(value: str) -> None:
    """Letters, digits, '_', '.', '-' up to 200 characters are ids."""
    assert is_id(value)
    assert check_id("run id", value) == value


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "must not be empty"),
        ("a..b", "contains '..'"),
        (".hidden", "starts with '.'"),
        ("-x", "starts with '-'"),
        ("a/b", "a path separator '/'"),
        ("a\\b", "a path separator '\\'"),
        ("a b", "contains ' '"),
        ("x" * 201, "201 characters long"),
        (7, "must be a str, not int"),
    ],
)
def test_bad_ids_are_refused_with_the_reason(value: object, problem: str) -> None:
    """Each refusal names the kind of id, the value and what is wrong with it."""
    assert not is_id(value)
    assert problem in (id_problem(value) or "")
    with pytest.raises(InvalidIdError, match="invalid run id") as raised:
        check_id("run id", value)
    assert (raised.value.kind, raised.value.value) == ("run id", value)


@pytest.mark.parametrize("run_id", ["a..b", ".x", "-x", "ok-1"])
def test_the_store_and_the_io_manager_agree(run_id: str) -> None:
    """A run id the run store refuses, the IO manager refuses too (and the other way round)."""
    from dp.io import InMemoryIOManager
    from dp.store import MemoryRunStore, RunRecord

    def accepted(use: Callable[[], object]) -> bool:
        try:
            use()
        except InvalidIdError:
            return False
        return True

    stored = accepted(lambda: MemoryRunStore().create_run(RunRecord(run_id=run_id, dag_id="d")))
    saved = accepted(lambda: InMemoryIOManager().save(run_id, "t", "output", 1))
    assert stored == saved == is_id(run_id)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("sales", None),
        ("daily_sales-2", None),
        ("sales.daily", "contains '.', which would split its topic segment"),
        ("x" * 101, "is 101 characters long, more than 100"),
        ("a/b", "contains a path separator '/'"),
    ],
)
def test_names_that_become_topic_segments_follow_the_id_rule_without_dots(
    name: str, problem: str | None
) -> None:
    """A pipeline or source name is an id that also fits in one topic segment."""
    assert name_problem(name) == problem


def test_a_pipeline_name_with_a_dot_is_refused_with_why() -> None:
    """`pipeline("sales.daily")` would publish on `dp.pipelines.sales.daily.start`: refused."""
    from dp import TaskRegistry, pipeline
    from dp.errors import InvalidPipelineError
    from dp.pipelines import PipelineRegistry

    with pytest.raises(InvalidPipelineError, match=r"contains '\.'"):
        pipeline("sales.daily", registry=TaskRegistry(), pipelines=PipelineRegistry())
