"""dp's exceptions: one module, one root, each carrying what it is about."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import dp
import dp.errors
from dp import errors
from dp.engine import Orchestrator
from dp.pipelines import PipelineRegistry, pipeline
from dp.planner import DAGBuilder
from dp.scheduler import ManualClock, Scheduler
from dp.store import RunStatus
from dp.tasks import TaskRegistry, task

SRC = Path(dp.__file__).parent


def _error_classes() -> list[type[errors.DPError]]:
    return [
        c
        for c in vars(errors).values()
        if inspect.isclass(c) and issubclass(c, errors.DPError) and _in_dp_errors(c)
    ]


def _in_dp_errors(cls: type) -> bool:
    """Written in dp.errors (its modules by area)."""
    return cls.__module__ == "dp.errors" or cls.__module__.startswith("dp.errors.")


def test_every_error_class_of_dp_is_defined_in_dp_errors() -> None:
    """No module of dp outside dp.errors defines a DPError subclass of its own."""
    elsewhere = []
    for info in pkgutil.walk_packages([str(SRC)], "dp."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, errors.DPError)
                and not _in_dp_errors(value)
            ):
                elsewhere.append(f"{value.__module__}.{value.__name__}")
    assert elsewhere == []


def test_every_error_is_exported_from_dp_errors_and_only_the_root_from_dp() -> None:
    """`from dp.errors import SomeError` works for every error dp raises; `dp` itself keeps to
    what a pipeline author writes, with `DPError` to catch them all."""
    assert {c.__name__ for c in _error_classes()} <= set(errors.__all__)
    assert all(getattr(errors, c.__name__) is c for c in _error_classes())
    assert [name for name in dp.__all__ if name.endswith("Error")] == ["DPError"]


def test_the_public_api_is_small_sorted_and_loads_what_it_names() -> None:
    """`dp.__all__` is what a pipeline author writes; each name loads from where `dp` says, and
    the type checkers' imports name the same objects."""
    source = Path(dp.__file__).read_text()
    typed = set(re.findall(r"^    from [\w.]+ import (\w+) as \1$", source, re.M))
    assert typed == set(dp.__all__)
    assert list(dp.__all__) == sorted(dp.__all__)
    assert 30 <= len(dp.__all__) <= 50
    for name in dp.__all__:
        assert getattr(dp, name) is not None, name


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("dp.scheduler.errors", "InvalidCronError"),
        ("dp.scheduler", "TriggerNotFoundError"),
        ("dp.service.api", "ApiDisabledError"),
        ("dp.service.runtime", "PipelineBusyError"),
        ("dp.service", "ServiceUnavailableError"),
        ("dp.service.server", "ServeError"),
        ("dp.engine", "ResumeError"),
        ("dp.engine.orchestrator", "TooManyPipelinesError"),
        ("dp.pipelines", "PipelineError"),
        ("dp.loader", "LoadError"),
        ("dp.events.ports", "QueueEmptyError"),
    ],
)
def test_errors_stay_importable_from_where_they_were(module: str, name: str) -> None:
    """An error moved into dp.errors is still importable from its old module, as the same class."""
    assert getattr(importlib.import_module(module), name) is getattr(errors, name)


def _raises_in(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            func = node.exc.func
            if isinstance(func, ast.Name) and func.id in {"DPError", "ValueError", "TypeError"}:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {func.id}")
    return found


def test_dp_raises_no_bare_dp_value_or_type_error() -> None:
    """Every raise names a specific DPError subclass, never DPError, ValueError or TypeError."""
    assert [hit for path in sorted(SRC.rglob("*.py")) for hit in _raises_in(path)] == []


#: one instance of each error that takes data, and the attributes it must carry
CASES: list[tuple[errors.DPError, dict[str, Any]]] = [
    (errors.TaskDefinitionError("t", "bad"), {"task_name": "t", "problem": "bad"}),
    (errors.DuplicateTaskError("t", "a:f", "b:f"), {"name": "t", "existing": "a:f", "new": "b:f"}),
    (errors.TaskNotFoundError("t", ["u"], "v"), {"name": "t", "suggestions": ("u",)}),
    (errors.CycleError(["a", "b", "a"]), {"cycle": ("a", "b", "a")}),
    (errors.MissingRunParameterError({"day": ["t"]}), {"missing": {"day": ("t",)}}),
    (errors.UnknownRunParameterError(["x"], ["day"]), {"unknown": ("x",), "accepted": ("day",)}),
    (errors.UnselectedDependencyError("t", "u"), {"task_name": "t", "dependency": "u"}),
    (errors.UnknownTagError(["x"], ["sales"]), {"tags": ("x",), "known": ("sales",)}),
    (errors.ShadowedTaskError("t", "u"), {"task_name": "t", "parameter": "u"}),
    (errors.SeveralStreamsError("t", ["a", "b"]), {"task_name": "t", "streams": ("a", "b")}),
    (
        errors.ConflictingRunParameterError("day", ("a", "str"), ("b", "int")),
        {"name": "day", "first": ("a", "str"), "second": ("b", "int")},
    ),
    (
        errors.InvalidRunParameterError("n", "x", "int", "not a number", ["t"]),
        {"name": "n", "value": "x", "expected": "int", "tasks": ("t",)},
    ),
    (errors.InvalidIdError("run id", "a/b", "has '/'"), {"kind": "run id", "value": "a/b"}),
    (errors.ResultNotFoundError("r", "t", "0"), {"run_id": "r", "task_result_id": "0"}),
    (errors.InvalidTopicError("a..b", "empty segment"), {"topic": "a..b"}),
    (errors.QueueFullError("sub", 3), {"where": "sub", "maxsize": 3}),
    (errors.UnpicklableItemError("function", "no"), {"item_type": "function", "reason": "no"}),
    (errors.RunNotFoundError("r"), {"run_id": "r"}),
    (errors.DuplicateRunError("r", "e"), {"run_id": "r", "event_id": "e"}),
    (
        errors.StoreNotFoundError("sqlite:///x.db", "--store", "no run store at x.db"),
        {"store": "sqlite:///x.db", "source": "--store"},
    ),
    (errors.TooManyPipelinesError(8, 100), {"running": 8, "queued": 100}),
    (errors.ResumeError("r", "it finished"), {"run_id": "r", "reason": "it finished"}),
    (errors.UnreachableIOManagerError("M", "no"), {"io_manager": "M"}),
    (errors.NoTaskValueError("r", "t", "failed", "boom"), {"task_name": "t", "status": "failed"}),
    (errors.FencedError("r", 1, 2), {"run_id": "r", "epoch": 1, "current": 2}),
    (errors.SchedulerNotRunningError("nightly"), {"trigger": "nightly"}),
    (errors.InvalidCronError("* *", "2 fields"), {"expression": "* *"}),
    (errors.InvalidTimezoneError("Mars", "unknown"), {"timezone": "Mars"}),
    (errors.DuplicateTriggerError("n"), {"name": "n"}),
    (errors.TriggerNotFoundError("n", ["m"], kind="cron"), {"known": ("m",), "kind": "cron"}),
    (
        errors.CircuitOpenError("n", datetime(2026, 1, 1, tzinfo=UTC), 5, "boom"),
        {"name": "n", "failures": 5, "last_error": "boom"},
    ),
    (errors.ScheduleStateError(Path("s.json"), "bad"), {"path": Path("s.json")}),
    (
        errors.LoadError("x.py", "missing", extra="examples"),
        {"target": "x.py", "extra": "examples"},
    ),
    (errors.InvalidPipelineError("p", "bad"), {"pipeline": "p", "problem": "bad"}),
    (errors.PipelineNotFoundError("p", ["q"]), {"name": "p", "known": ("q",)}),
    (errors.ServiceUnavailableError("stopping"), {"reason": "stopping"}),
    (errors.PipelineBusyError("p", 2), {"pipeline": "p", "limit": 2}),
    (errors.ApiDisabledError("p"), {"pipeline": "p"}),
    (errors.RunNotActiveError("r", RunStatus.SUCCEEDED), {"status": RunStatus.SUCCEEDED}),
    (errors.TaskRunNotFoundError("r", "t", "", ["0"]), {"task": "t", "instances": ("0",)}),
    (errors.AttemptNotFoundError("r", "t", 3, [1, 2]), {"attempt": 3, "attempts": (1, 2)}),
    (errors.TokenRequiredError("0.0.0.0"), {"host": "0.0.0.0"}),
    (errors.NoPipelinesError("x.py"), {"target": "x.py"}),
    (errors.ListenError("127.0.0.1", 80, 98, "in use"), {"host": "127.0.0.1", "port": 80}),
    (errors.ConfigError("--store", "x", "--store", "bad"), {"setting": "--store", "value": "x"}),
    (errors.ConfigFileError("dp.toml", "bad"), {"path": "dp.toml", "problem": "bad"}),
    (errors.InvalidArgumentError("n", -1, ">= 0"), {"argument": "n", "value": -1}),
    (errors.ArgumentTypeError("f", 3, "callable"), {"argument": "f", "expected": "callable"}),
]


@pytest.mark.parametrize(("error", "data"), CASES, ids=lambda c: type(c).__name__)
def test_an_error_carries_its_data_and_says_it(error: errors.DPError, data: dict[str, Any]) -> None:
    """The attributes hold what the error is about; the message reads as a sentence."""
    for name, value in data.items():
        assert getattr(error, name) == value
    assert isinstance(error, errors.DPError)
    assert str(error) == error.args[0]  # a KeyError would quote the whole message


def test_an_unknown_pipeline_is_a_lookup_error_naming_the_known_ones() -> None:
    """PipelineRegistry.get raises PipelineNotFoundError with the name and the names defined."""
    registry = TaskRegistry()
    pipelines = PipelineRegistry()

    @task(registry=registry)
    def one() -> int:
        return 1

    pipeline("daily", tasks=["one"], registry=registry, pipelines=pipelines)
    with pytest.raises(LookupError) as caught:
        pipelines.get("dialy")
    assert isinstance(caught.value, errors.PipelineNotFoundError)
    assert (caught.value.name, caught.value.known) == ("dialy", ("daily",))


def test_a_bad_pipeline_name_is_an_invalid_pipeline_error() -> None:
    """pipeline() with a name that cannot be a topic segment says which name."""
    with pytest.raises(errors.InvalidPipelineError) as caught:
        pipeline("no spaces", pipelines=PipelineRegistry())
    assert caught.value.pipeline == "no spaces"


def test_a_tag_no_task_has_is_an_unknown_tag_error() -> None:
    """Selecting by a tag nobody has names the tags asked for and the tags there are."""
    registry = TaskRegistry()

    @task(registry=registry, tags=["sales"])
    def one() -> int:
        return 1

    with pytest.raises(errors.UnknownTagError) as caught:
        DAGBuilder(registry).build(tags=["sale"])
    assert (caught.value.tags, caught.value.known) == (("sale",), ("sales",))


def test_a_bad_limit_is_an_invalid_argument_and_still_a_value_error() -> None:
    """Bad arguments raise InvalidArgumentError, which code catching ValueError still catches."""
    with pytest.raises(ValueError, match="max_parallel_tasks must be an int >= 1") as caught:
        Orchestrator(max_parallel_tasks=0)
    assert isinstance(caught.value, errors.InvalidArgumentError)
    assert (caught.value.argument, caught.value.value) == ("max_parallel_tasks", 0)


async def test_a_clock_moved_back_with_advance_names_the_argument() -> None:
    """ManualClock.advance with a negative delta says to use set() instead."""
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(errors.InvalidArgumentError, match=r"set\(\) moves a clock back") as caught:
        await clock.advance(timedelta(seconds=-1))
    assert caught.value.argument == "delta"


def test_a_scheduler_setting_out_of_range_is_an_invalid_argument() -> None:
    """Scheduler(failure_threshold=0) names the argument and the value."""
    from dp.events import InMemoryBroker

    with pytest.raises(errors.InvalidArgumentError) as caught:
        Scheduler(InMemoryBroker(), failure_threshold=0)
    assert (caught.value.argument, caught.value.value) == ("failure_threshold", 0)


def test_dp_errors_exports_every_error_of_its_modules() -> None:
    """`from dp.errors import X` works for every error written in dp.errors' modules."""
    written = {
        name
        for info in pkgutil.iter_modules(errors.__path__, "dp.errors.")
        for name, value in vars(importlib.import_module(info.name)).items()
        if inspect.isclass(value) and issubclass(value, errors.DPError) and _in_dp_errors(value)
    }
    assert written - set(errors.__all__) == set()
    assert len(_error_classes()) == len(written) > 70


@pytest.mark.parametrize(
    "exc",
    [
        errors.BusUnavailableError("redis://h:6379/0", 10.0, "Connection refused"),
        errors.StoreUnavailableError("postgresql://h/db", "record a run", "Connection refused"),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("read timed out"),
    ],
    ids=type,
)
def test_is_outage_says_yes_to_unreachable_dependencies(exc: BaseException) -> None:
    """An unreachable dependency or a timeout is an outage: retried, never dead-lettered."""
    assert errors.is_outage(exc)


def test_is_outage_follows_the_cause() -> None:
    """A wrapper raised from a connection error is an outage too (its cause is)."""
    wrapper = RuntimeError("could not record the run")
    wrapper.__cause__ = ConnectionResetError(104, "Connection reset by peer")
    assert errors.is_outage(wrapper)


@pytest.mark.parametrize(
    "exc",
    [
        errors.EventFormatError("event is not valid JSON"),
        errors.InvalidRunParameterError("n", "x", "int", "not a number", ["record"]),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
        ValueError("invalid literal for int()"),
        RuntimeError("a bug"),
    ],
    ids=type,
)
def test_is_outage_says_no_to_bad_data(exc: BaseException) -> None:
    """What an event cannot get past (decoding, validation, encoding) is the event's fault."""
    assert not errors.is_outage(exc)
