"""The task registry: @task, TaskMetadata and TaskRegistry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from dp import TaskMetadata, TaskRegistry, get_registry, task
from dp.errors import DuplicateTaskError, TaskDefinitionError, TaskNotFoundError


@pytest.fixture
def registry() -> TaskRegistry:
    return TaskRegistry()


def test_bare_decorator_registers_under_function_name(registry: TaskRegistry) -> None:
    """@task without arguments registers the function under its own name."""

    @task(registry=registry)
    def extract() -> int:
        return 1

    assert "extract" in registry
    assert registry.get("extract").func is extract
    assert extract() == 1  # the function stays plain Python


def test_bare_decorator_uses_default_registry() -> None:
    """Plain `@task` goes into the process-wide registry."""

    @task
    def only_in_default_registry_test() -> None: ...

    try:
        assert get_registry().get("only_in_default_registry_test").func is (
            only_in_default_registry_test
        )
    finally:
        get_registry().remove("only_in_default_registry_test")


def test_metadata_records_options_and_schema(registry: TaskRegistry) -> None:
    """Every option and the type-hint schema land in the immutable metadata."""

    @task(
        name="load",
        tags=["etl", "load", "etl"],
        dependencies=["transform"],
        max_retries=3,
        retry_delay=0.5,
        fail_safe=True,
        timeout=60,
        description="Load rows.",
        registry=registry,
    )
    def load_rows(transform: list[int], limit: int = 10) -> dict[str, int]:
        return {}

    meta = registry.get("load")
    assert meta.tags == ("etl", "load")
    assert meta.dependencies == ("transform",)
    assert (meta.max_retries, meta.retry_delay, meta.fail_safe, meta.timeout) == (3, 0.5, True, 60)
    assert meta.description == "Load rows."
    assert meta.input_schema["transform"].annotation == list[int]
    assert meta.input_schema["transform"].required
    assert meta.input_schema["limit"].default == 10
    assert meta.output_schema == dict[str, int]
    assert meta.import_path.endswith(":test_metadata_records_options_and_schema.<locals>.load_rows")
    with pytest.raises(AttributeError):
        meta.name = "other"  # type: ignore[misc]


def test_data_control_and_run_parameters_are_told_apart(registry: TaskRegistry) -> None:
    """Named after a dependency: data; other dependencies: order; other parameters: run inputs."""

    @task(dependencies=["extract", "setup"], registry=registry)
    def transform(extract: list[int], batch_date: str, scale: int = 2) -> list[int]:
        return extract

    meta = registry.get("transform")
    assert meta.data_dependencies == ("extract",)
    assert meta.control_dependencies == ("setup",)
    assert [p.name for p in meta.run_parameters] == ["batch_date", "scale"]


def test_docstring_first_paragraph_is_the_default_description(registry: TaskRegistry) -> None:
    """Without `description`, the docstring's first paragraph describes the task."""

    @task(registry=registry)
    def documented() -> None:
        """Summarise sales.

        Long details that the UI does not need.
        """

    assert registry.get("documented").description == "Summarise sales."


def test_async_and_generator_kinds_are_detected(registry: TaskRegistry) -> None:
    """Sync, async, generator and async generator functions are recognised, streams by default."""

    @task(registry=registry)
    def plain() -> int:
        return 1

    @task(registry=registry)
    async def coro() -> int:
        return 1

    @task(registry=registry)
    def gen() -> Iterator[int]:
        yield 1

    @task(registry=registry)
    async def agen() -> AsyncIterator[str]:
        yield "x"

    kinds = {
        m.name: (m.is_async, m.is_generator, m.stream_output, m.output_schema) for m in registry
    }
    assert kinds == {
        "plain": (False, False, False, int),
        "coro": (True, False, False, int),
        "gen": (False, True, True, int),
        "agen": (True, True, True, str),
    }


def test_generator_with_streaming_off_returns_a_list(registry: TaskRegistry) -> None:
    """stream_output=False on a generator collects its chunks: the output type is list[T]."""

    @task(stream_output=False, registry=registry)
    def batches() -> Iterator[int]:
        yield 1

    assert registry.get("batches").output_schema == list[int]


def test_stream_output_on_plain_function_is_rejected(registry: TaskRegistry) -> None:
    """stream_output=True needs a generator, and the error says so."""
    with pytest.raises(TaskDefinitionError, match=r"'not_a_gen'.*generator"):

        @task(stream_output=True, registry=registry)
        def not_a_gen() -> list[int]:
            return [1]


def test_unresolvable_hint_is_treated_as_any(registry: TaskRegistry) -> None:
    """A hint naming a type that cannot be imported at runtime is left unchecked, not an error."""

    @task(registry=registry)
    def uses_missing_type(x: NotImportedAnywhere) -> int:  # type: ignore[name-defined]  # noqa: F821
        return 1

    assert registry.get("uses_missing_type").input_schema["x"].annotation is Any
    assert registry.get("uses_missing_type").output_schema is int


def test_duplicate_name_with_different_function_is_an_error(registry: TaskRegistry) -> None:
    """Two different functions cannot share a task name; the error names both."""

    @task(name="extract", registry=registry)
    def first() -> None: ...

    with pytest.raises(DuplicateTaskError, match=r"'extract' is already registered by .*first"):

        @task(name="extract", registry=registry)
        def second() -> None: ...

    assert registry.get("extract").func is first  # nothing was overwritten


def test_reregistering_the_same_function_is_allowed(registry: TaskRegistry) -> None:
    """Registering the same module-level function again (a module reload) replaces quietly."""
    meta = TaskMetadata.from_function(_module_level_task)
    registry.register(meta)
    again = TaskMetadata.from_function(_module_level_task, tags=["new"])
    registry.register(again)
    assert registry.get("_module_level_task").tags == ("new",)


def _module_level_task() -> int:
    return 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_retries": -1}, "max_retries must be an int >= 0"),
        ({"max_retries": 1.5}, "max_retries must be an int >= 0"),
        ({"retry_delay": -2}, "retry_delay must be seconds >= 0"),
        ({"timeout": 0}, "timeout must be seconds > 0"),
        ({"timeout": "5"}, "timeout must be seconds > 0"),
        ({"tags": "etl"}, "tags must be a list of strings"),
        ({"dependencies": [""]}, "dependencies must be non-empty strings"),
        ({"dependencies": ["bad_options"]}, "cannot depend on itself"),
        ({"name": "../escape"}, "task names must start with a letter"),
        ({"name": "a b"}, "task names must start with a letter"),
    ],
)
def test_bad_options_are_rejected(
    registry: TaskRegistry, options: dict[str, Any], message: str
) -> None:
    """Each invalid option raises TaskDefinitionError naming the task and the problem."""
    with pytest.raises(TaskDefinitionError, match=message):
        task(registry=registry, **options)(bad_options)
    assert len(registry) == 0


def bad_options() -> None: ...


@pytest.mark.parametrize(
    "signature",
    ["def f(*args): ...", "def f(**kwargs): ...", "def f(a, /): ..."],
)
def test_unsupported_parameter_kinds_are_rejected(registry: TaskRegistry, signature: str) -> None:
    """*args, **kwargs and positional-only parameters cannot receive inputs by name."""
    namespace: dict[str, Any] = {}
    exec(signature, namespace)
    with pytest.raises(TaskDefinitionError, match="'f': parameter"):
        task(registry=registry)(namespace["f"])


def test_get_unknown_task_suggests_close_names(registry: TaskRegistry) -> None:
    """Looking up a missing task suggests registered names that are close."""

    @task(registry=registry)
    def extract_sales() -> None: ...

    with pytest.raises(TaskNotFoundError, match="did you mean 'extract_sales'") as info:
        registry.get("extract_sale")
    assert info.value.name == "extract_sale"


def test_registry_lists_by_tags_removes_and_clears(registry: TaskRegistry) -> None:
    """Tasks can be listed by any or all tags, removed one by one, or all cleared."""

    @task(tags=["etl", "daily"], registry=registry)
    def a() -> None: ...

    @task(tags=["etl"], registry=registry)
    def b() -> None: ...

    @task(tags=["ml"], registry=registry)
    def c() -> None: ...

    assert [t.name for t in registry.by_tags("etl")] == ["a", "b"]
    assert [t.name for t in registry.by_tags("daily", "ml")] == ["a", "c"]
    assert [t.name for t in registry.by_tags("etl", "daily", match_all=True)] == ["a"]
    assert registry.remove("b").name == "b"
    assert registry.names() == ["a", "c"]
    with pytest.raises(TaskNotFoundError):
        registry.remove("b")
    registry.clear()
    assert len(registry) == 0


def test_isolated_registries_do_not_share_tasks() -> None:
    """Tasks in one TaskRegistry are invisible to another and to the default registry."""
    first, second = TaskRegistry(), TaskRegistry()

    @task(registry=first)
    def isolated_task_only_here() -> None: ...

    assert "isolated_task_only_here" in first
    assert "isolated_task_only_here" not in second
    assert "isolated_task_only_here" not in get_registry()
