"""Hostile tasks: each builds, from a JSON spec, objects that break whoever turns them into
text, pickles, hashes or compares them, then raises, returns, prints or streams them.

Worker processes and `dp worker` import these tasks by module path, so they live at module
level in a module of their own, registered into `REGISTRY`, not the default registry.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from dp import TaskRegistry, task

REGISTRY = TaskRegistry()

#: the dunder methods a hostile class may have raise
METHODS = ("str", "repr", "reduce", "reduce_ex", "del", "eq", "hash", "getstate", "len")
#: what a raised object derives from
EXCEPTION_BASES = ("Exception", "ValueError", "BaseException", "SystemExit", "KeyboardInterrupt")
#: what a returned, printed or streamed object derives from
VALUE_BASES = ("object", "list", "dict", "str", "int")
#: how a raised exception is entangled with others
WRAPS = ("none", "args", "cause", "context", "cycle", "group")
#: how big the text or value is (characters or items)
SIZES = (0, 10, 3_000_000)

#: the worst of it at once, always tried: a KeyboardInterrupt raised by the task (not by a
#: Ctrl-C), unprintable, unpicklable, with a cause that leads back to itself
TRAP = {
    "task": "raises",
    "base": "KeyboardInterrupt",
    "methods": ["str", "repr", "reduce", "reduce_ex", "hash", "eq", "del"],
    "wrap": "cycle",
    "size": 10,
}

_BUILTINS: dict[str, type] = {
    "Exception": Exception,
    "ValueError": ValueError,
    "BaseException": BaseException,
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "CancelledError": asyncio.CancelledError,
    "object": object,
    "list": list,
    "dict": dict,
    "str": str,
    "int": int,
}


def _raiser(name: str) -> Callable[..., Any]:
    def method(self: object, *args: object, **kwargs: object) -> Any:
        raise RuntimeError(f"hostile __{name}__")

    return method


def hostile_class(base: str, methods: list[str]) -> type:
    """A subclass of `base` whose `methods` raise, importable from this module by name."""
    name = "_".join(["Hostile", base, *sorted(methods)])
    known = globals().get(name)
    if isinstance(known, type):
        return known
    namespace: dict[str, Any] = {f"__{m}__": _raiser(m) for m in methods}
    namespace["__module__"] = __name__
    cls = type(name, (_BUILTINS[base],), namespace)
    globals()[name] = cls  # picklable by reference: pickling meets the hostile methods
    return cls


def _make(cls: type, size: int) -> Any:
    if issubclass(cls, BaseException):
        return cls("x" * size) if size else cls()
    if issubclass(cls, str):
        return cls("y" * size)
    if issubclass(cls, int):
        return cls(size)
    if issubclass(cls, list):
        return cls(range(size))
    if issubclass(cls, dict):
        return cls((i, i) for i in range(min(size, 100_000)))
    return cls()


def _exception(spec: dict[str, Any]) -> BaseException:
    cls = hostile_class(spec["base"], spec["methods"])
    exc = _make(cls, spec["size"])
    wrap = spec["wrap"]
    inner = _make(hostile_class("ValueError", spec["methods"]), spec["size"])
    if wrap == "args":
        exc.args = (_make(hostile_class("object", spec["methods"]), 0), inner)
    elif wrap == "cause":
        exc.__cause__ = inner
    elif wrap == "context":
        exc.__context__ = inner
    elif wrap == "cycle":  # a cause that leads back to the exception itself
        exc.__cause__ = inner
        inner.__context__ = exc
    elif wrap == "group" and isinstance(exc, Exception):
        return ExceptionGroup("hostile group", [exc, inner])
    return exc


def _value(spec: dict[str, Any]) -> Any:
    value = _make(hostile_class(spec["base"], spec["methods"]), spec["size"])
    if spec["wrap"] == "cycle":
        cycle: list[Any] = [value]
        cycle.append(cycle)  # a list that contains itself
        return cycle
    return value


@task(registry=REGISTRY)
def raises(spec: str) -> None:
    raise _exception(json.loads(spec))


@task(registry=REGISTRY)
async def raises_async(spec: str) -> None:
    await asyncio.sleep(0)
    raise _exception(json.loads(spec))


@task(registry=REGISTRY)
def returns(spec: str) -> object:
    return _value(json.loads(spec))


@task(registry=REGISTRY)
def prints(spec: str) -> int:
    parsed = json.loads(spec)
    print("z" * parsed["size"])
    value = _value(parsed)
    sys.stdout.write(value)  # not a str (most of the time): refused, as a real stream would
    return 0


@task(registry=REGISTRY)
def streams(spec: str) -> Iterator[object]:
    parsed = json.loads(spec)
    yield 1
    yield _value(parsed)
    raise _exception(parsed)


#: each task, and the bases its spec may use
TASKS = {
    "raises": EXCEPTION_BASES,
    "raises_async": (*EXCEPTION_BASES, "CancelledError"),  # raised by the task, not a cancel
    "returns": VALUE_BASES,
    "prints": VALUE_BASES,
    "streams": EXCEPTION_BASES,
}


def specs(*, interrupts: bool = True, finalizers: bool = True) -> Any:
    """A hypothesis strategy of hostile specs, `{"task": ..., "spec": json}` (without
    `KeyboardInterrupt` when `interrupts` is False: on the main thread it is the user's
    Ctrl-C, which the inline executor lets through; without a raising `__del__` when
    `finalizers` is False: Python ignores it anyway, and inside pytest's own process it
    would surface whenever the garbage collector runs, in whichever test)."""
    from hypothesis import strategies as st

    methods = [m for m in METHODS if finalizers or m != "del"]

    def for_task(name: str) -> Any:
        bases = [b for b in TASKS[name] if interrupts or b != "KeyboardInterrupt"]
        return st.fixed_dictionaries(
            {
                "task": st.just(name),
                "base": st.sampled_from(bases),
                "methods": st.lists(st.sampled_from(methods), unique=True),
                "wrap": st.sampled_from(WRAPS),
                "size": st.sampled_from(SIZES),
            }
        )

    return st.sampled_from(sorted(TASKS)).flatmap(for_task)


def check_ended(result: Any, spec: dict[str, Any]) -> None:
    """The run ended, and the hostile task's attempt has a recorded outcome with text."""
    from dp.store import RunStatus, TaskStatus

    assert result.status in (RunStatus.SUCCEEDED, RunStatus.FAILED), (result.status, spec)
    outcome = result.task(spec["task"])
    assert outcome.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED), (outcome, spec)
    if outcome.status == TaskStatus.FAILED:
        assert type(outcome.error) is str, spec
        assert outcome.error, spec
        assert type(result.error) is str, spec
