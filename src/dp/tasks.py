"""The task registry: `@task` turns a plain function into a registered, typed `TaskMetadata`."""

from __future__ import annotations

import collections.abc
import contextlib
import difflib
import inspect
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar, overload

from dp.errors import DuplicateTaskError, TaskDefinitionError, TaskNotFoundError
from dp.ids import is_id

__all__ = [
    "Parameter",
    "TaskMetadata",
    "TaskRegistry",
    "get_registry",
    "task",
]

F = TypeVar("F", bound=Callable[..., Any])

# Task names become result folders (so they follow `dp.ids`) and parameter names of their
# data dependents (so they also start with a letter or '_').

_GENERATOR_ORIGINS = (
    collections.abc.Generator,
    collections.abc.Iterator,
    collections.abc.Iterable,
    collections.abc.AsyncGenerator,
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
)


#: The parameter name through which a task receives its run's scheduled time, an aware
#: `datetime` in the schedule's zone: a cron run's tick, else the time the run was created.
SCHEDULED_FOR = "scheduled_for"


@dataclass(frozen=True, slots=True)
class Parameter:
    """One input of a task: its name, type hint (`Any` when absent) and default, if any."""

    name: str
    annotation: Any = Any
    has_default: bool = False
    default: Any = None

    @property
    def required(self) -> bool:
        return not self.has_default


@dataclass(frozen=True, slots=True)
class TaskMetadata:
    """Everything dp knows about one task; immutable once registered.

    `output_schema` is the type of one result: the return type, or for a streaming task the
    type of each yielded chunk.
    """

    name: str
    func: Callable[..., Any] = field(repr=False)
    dependencies: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    is_async: bool = False
    is_generator: bool = False
    input_schema: Mapping[str, Parameter] = field(default_factory=dict)
    output_schema: Any = Any
    max_retries: int = 0
    retry_delay: float = 0.0
    fail_safe: bool = False
    stream_output: bool = False
    timeout: float | None = None
    description: str = ""
    import_path: str = ""
    #: the Celery queue the task's messages go to (None: the default queue, `dp`)
    queue: str | None = None

    @classmethod
    def from_function(
        cls,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        tags: Iterable[str] = (),
        dependencies: Iterable[str] = (),
        max_retries: int = 0,
        retry_delay: float = 0.0,
        fail_safe: bool = False,
        stream_output: bool | None = None,
        timeout: float | None = None,
        description: str | None = None,
        queue: str | None = None,
    ) -> TaskMetadata:
        """Inspect `func` and validate the options; raises `TaskDefinitionError` on bad input."""
        if not callable(func):
            raise TaskDefinitionError(repr(func), "@task can only decorate a function")
        task_name = name if name is not None else getattr(func, "__name__", "")
        if not is_id(task_name) or not (task_name[0].isalpha() or task_name[0] == "_"):
            raise TaskDefinitionError(
                str(task_name),
                "task names must start with a letter or '_' and contain only letters, digits, "
                "'_', '-' and '.' (at most 200 characters)",
            )
        deps = _unique_strings(task_name, "dependencies", dependencies)
        if task_name in deps:
            raise TaskDefinitionError(task_name, "a task cannot depend on itself")
        tag_tuple = tuple(sorted(set(_unique_strings(task_name, "tags", tags))))
        _check_options(task_name, max_retries, retry_delay, timeout)
        if queue is not None and not is_id(queue):
            raise TaskDefinitionError(
                task_name,
                f"queue must be a name of letters, digits, '_', '-' and '.', got {queue!r}",
            )

        is_generator = inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func)
        is_async = inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
        if stream_output is None:
            stream_output = is_generator
        elif stream_output and not is_generator:
            raise TaskDefinitionError(
                task_name, "stream_output=True needs a generator function: yield each chunk"
            )
        inputs, returns = _schema(task_name, func)
        output = _yield_type(returns) if is_generator else returns
        if is_generator and not stream_output:
            output = list[output] if output is not Any else list  # type: ignore[valid-type]
        doc = inspect.getdoc(func) or ""
        return cls(
            name=task_name,
            func=func,
            dependencies=deps,
            tags=tag_tuple,
            is_async=is_async,
            is_generator=is_generator,
            input_schema=MappingProxyType(inputs),
            output_schema=output,
            max_retries=max_retries,
            retry_delay=float(retry_delay),
            fail_safe=fail_safe,
            stream_output=stream_output,
            timeout=None if timeout is None else float(timeout),
            description=description if description is not None else doc.split("\n\n")[0],
            import_path=f"{func.__module__}:{func.__qualname__}",
            queue=queue,
        )

    @property
    def data_dependencies(self) -> tuple[str, ...]:
        """Dependencies whose result is injected: those with a parameter of the same name."""
        return tuple(d for d in self.dependencies if d in self.input_schema)

    @property
    def control_dependencies(self) -> tuple[str, ...]:
        """Dependencies that only order execution: no parameter carries their result."""
        return tuple(d for d in self.dependencies if d not in self.input_schema)

    @property
    def run_parameters(self) -> tuple[Parameter, ...]:
        """Parameters fed by the run (not by a dependency, nor `scheduled_for`), required or
        with a default."""
        deps = set(self.dependencies)
        deps.add(SCHEDULED_FOR)
        return tuple(p for p in self.input_schema.values() if p.name not in deps)

    @property
    def wants_scheduled_for(self) -> bool:
        """Whether dp injects the run's scheduled time (a `scheduled_for` parameter)."""
        return SCHEDULED_FOR in self.input_schema and SCHEDULED_FOR not in self.dependencies


def _unique_strings(task_name: str, option: str, values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TaskDefinitionError(
            task_name, f"{option} must be a list of strings, not the string {values!r}"
        )
    result: list[str] = []
    for value in values:
        if not isinstance(value, str) or not value:
            raise TaskDefinitionError(task_name, f"{option} must be non-empty strings: {value!r}")
        if value not in result:
            result.append(value)
    return tuple(result)


def _check_options(
    task_name: str, max_retries: object, retry_delay: object, timeout: object
) -> None:
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise TaskDefinitionError(
            task_name, f"max_retries must be an int >= 0, got {max_retries!r}"
        )
    if not isinstance(retry_delay, int | float) or isinstance(retry_delay, bool) or retry_delay < 0:
        raise TaskDefinitionError(
            task_name, f"retry_delay must be seconds >= 0, got {retry_delay!r}"
        )
    if timeout is not None and (
        not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0
    ):
        raise TaskDefinitionError(
            task_name, f"timeout must be seconds > 0 or None, got {timeout!r}"
        )


def _schema(task_name: str, func: Callable[..., Any]) -> tuple[dict[str, Parameter], Any]:
    signature = inspect.signature(func)
    hints = _type_hints(func)
    inputs: dict[str, Parameter] = {}
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise TaskDefinitionError(
                task_name,
                f"parameter {p.name!r} is {p.kind.description}; tasks receive their inputs by "
                "name, so use plain or keyword-only parameters",
            )
        has_default = p.default is not p.empty
        inputs[p.name] = Parameter(
            name=p.name,
            annotation=hints.get(p.name, Any),
            has_default=has_default,
            default=p.default if has_default else None,
        )
    return inputs, hints.get("return", Any)


def _type_hints(func: Callable[..., Any]) -> dict[str, Any]:
    """Resolved type hints; a hint that cannot be resolved (e.g. a TYPE_CHECKING import) is Any."""
    try:
        return typing.get_type_hints(func)
    except Exception:
        pass
    hints: dict[str, Any] = {}
    raw = getattr(func, "__annotations__", {})
    namespace = getattr(func, "__globals__", {})
    for key, value in raw.items():
        try:
            hints[key] = eval(value, namespace) if isinstance(value, str) else value
        except Exception:
            hints[key] = Any
    return hints


def _yield_type(annotation: Any) -> Any:
    """`Generator[T, ...]`, `Iterator[T]`, `AsyncGenerator[T, ...]` and friends -> `T`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in _GENERATOR_ORIGINS and args:
        return args[0]
    return Any


class TaskRegistry:
    """Holds tasks by name. Use `get_registry()` for the process-wide one, or your own."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskMetadata] = {}

    def register(self, metadata: TaskMetadata) -> TaskMetadata:
        """Add a task; re-registering the same function (e.g. a module reload) replaces it."""
        existing = self._tasks.get(metadata.name)
        if existing is not None and not _same_function(existing, metadata):
            raise DuplicateTaskError(
                metadata.name, _describe(existing.func), _describe(metadata.func)
            )
        self._tasks[metadata.name] = metadata
        return metadata

    def get(self, name: str) -> TaskMetadata:
        """The task called `name`; `TaskNotFoundError` (with close matches) when there is none."""
        try:
            return self._tasks[name]
        except KeyError:
            raise TaskNotFoundError(name, self.suggest(name)) from None

    def suggest(self, name: str) -> list[str]:
        """Registered names close to `name`, best first, for 'did you mean' messages."""
        return difflib.get_close_matches(name, self._tasks.keys(), n=3, cutoff=0.6)

    def __getitem__(self, name: str) -> TaskMetadata:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[TaskMetadata]:
        return iter(list(self._tasks.values()))

    def as_dict(self) -> dict[str, TaskMetadata]:
        """A snapshot of the registry as a plain dict, for bulk readers like the planner."""
        return dict(self._tasks)

    def names(self) -> list[str]:
        """Registered task names, in registration order."""
        return list(self._tasks)

    def by_tags(self, *tags: str, match_all: bool = False) -> list[TaskMetadata]:
        """Tasks carrying any (or, with `match_all`, every) of `tags`, in registration order."""
        wanted = set(tags)
        if match_all:
            return [t for t in self._tasks.values() if wanted.issubset(t.tags)]
        return [t for t in self._tasks.values() if wanted.intersection(t.tags)]

    def remove(self, name: str) -> TaskMetadata:
        """Unregister and return the task called `name`."""
        metadata = self.get(name)
        del self._tasks[name]
        return metadata

    def clear(self) -> None:
        """Forget every task."""
        self._tasks.clear()

    def __repr__(self) -> str:
        return f"TaskRegistry({len(self._tasks)} tasks)"


def _same_function(a: TaskMetadata, b: TaskMetadata) -> bool:
    return a.func is b.func or (a.import_path == b.import_path and "<locals>" not in a.import_path)


def _describe(func: Callable[..., Any]) -> str:
    code = getattr(func, "__code__", None)
    where = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}{where}"


_default_registry = TaskRegistry()


def get_registry() -> TaskRegistry:
    """The process-wide registry that bare `@task` uses."""
    return _default_registry


@overload
def task(func: F, /) -> F: ...


@overload
def task(
    *,
    name: str | None = None,
    tags: Iterable[str] = (),
    dependencies: Iterable[str] = (),
    max_retries: int = 0,
    retry_delay: float = 0.0,
    fail_safe: bool = False,
    stream_output: bool | None = None,
    timeout: float | None = None,
    description: str | None = None,
    queue: str | None = None,
    registry: TaskRegistry | None = None,
) -> Callable[[F], F]: ...


def task(
    func: F | None = None,
    /,
    *,
    name: str | None = None,
    tags: Iterable[str] = (),
    dependencies: Iterable[str] = (),
    max_retries: int = 0,
    retry_delay: float = 0.0,
    fail_safe: bool = False,
    stream_output: bool | None = None,
    timeout: float | None = None,
    description: str | None = None,
    queue: str | None = None,
    registry: TaskRegistry | None = None,
) -> F | Callable[[F], F]:
    """Register a function as a dp task; use bare (`@task`) or with options (`@task(...)`).

    The function is returned unchanged, so it stays callable and testable as plain Python;
    its metadata is at `func.__dp_task__`.

    Args:
        name: Task name (default: the function's name).
        tags: Labels used to select tasks for a run.
        dependencies: Tasks that must finish first. A parameter named after a dependency
            receives that task's result (data dependency); otherwise it only orders (control).
        max_retries: Extra attempts after a failure.
        retry_delay: Seconds before the first retry; doubles on each further retry.
        fail_safe: A failure skips only this task's data dependents; the run ends `partial`.
        stream_output: Save each yielded chunk as its own result (default: on for generators).
        timeout: Seconds after which the attempt is stopped and counted as failed.
        description: Human description (default: the docstring's first paragraph).
        queue: The Celery queue its attempts go to on the Celery executor (`dp worker
            --queues`); other executors ignore it.
        registry: Where to register (default: `get_registry()`).
    """

    def decorate(f: F) -> F:
        metadata = TaskMetadata.from_function(
            f,
            name=name,
            tags=tags,
            dependencies=dependencies,
            max_retries=max_retries,
            retry_delay=retry_delay,
            fail_safe=fail_safe,
            stream_output=stream_output,
            timeout=timeout,
            description=description,
            queue=queue,
        )
        (registry if registry is not None else _default_registry).register(metadata)
        with contextlib.suppress(AttributeError):  # some callables refuse attributes
            f.__dp_task__ = metadata  # type: ignore[attr-defined]
        return f

    if func is not None:
        return decorate(func)
    return decorate
