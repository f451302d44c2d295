"""Static type compatibility of data edges: can what the upstream returns feed the parameter?

The rules are deliberately those a reader expects from a type checker, checked at plan time
with runtime objects: a missing hint or `Any` passes; a subclass fits its base; `T` fits
`T | None`; a union fits only if every member fits; generics check the origin (`list` fits
`Sequence`) and then the arguments; `Annotated` is stripped.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from functools import lru_cache
from typing import Any

__all__ = ["is_compatible", "type_name"]

_UNION_TYPES = (typing.Union, types.UnionType)
_NONE = type(None)
#: PEP 484's numeric tower: an int is acceptable where a float is expected, and so on.
_PROMOTIONS: dict[type, tuple[type, ...]] = {int: (float, complex), float: (complex,)}


def is_compatible(provided: Any, expected: Any) -> bool:
    """True when a value of type `provided` is acceptable where `expected` is declared."""
    try:
        return _compatible(provided, expected)
    except TypeError:  # unhashable hint objects: check uncached
        return _check(provided, expected)


@lru_cache(maxsize=4096)
def _compatible(provided: Any, expected: Any) -> bool:
    return _check(provided, expected)


def _check(provided: Any, expected: Any) -> bool:
    provided, expected = _strip(provided), _strip(expected)
    if _unchecked(provided) or _unchecked(expected) or provided == expected:
        return True
    if provided is None:
        provided = _NONE
    if expected is None:
        expected = _NONE

    p_origin, e_origin = typing.get_origin(provided), typing.get_origin(expected)
    if p_origin in _UNION_TYPES:
        return all(_check(member, expected) for member in typing.get_args(provided))
    if e_origin in _UNION_TYPES:
        return any(_check(provided, member) for member in typing.get_args(expected))
    if e_origin is typing.Literal:
        return p_origin is typing.Literal and set(typing.get_args(provided)) <= set(
            typing.get_args(expected)
        )
    if p_origin is typing.Literal:
        return all(_check(type(value), expected) for value in typing.get_args(provided))
    if isinstance(expected, typing.NewType):
        return provided is expected
    if isinstance(provided, typing.NewType):
        return _check(provided.__supertype__, expected)

    p_class = p_origin or provided
    e_class = e_origin or expected
    if not isinstance(p_class, type) or not isinstance(e_class, type):
        return True  # a hint we cannot reason about statically: let it through
    if getattr(e_class, "_is_protocol", False) and not getattr(
        e_class, "_is_runtime_protocol", False
    ):
        return True
    if not _is_subclass(p_class, e_class):
        return False
    e_args = typing.get_args(expected)
    p_args = typing.get_args(provided)
    if not e_args or not p_args:
        return True  # a bare generic on either side says nothing about the items
    return _args_compatible(p_class, p_args, e_class, e_args)


def _args_compatible(
    p_class: type, p_args: tuple[Any, ...], e_class: type, e_args: tuple[Any, ...]
) -> bool:
    if issubclass(e_class, collections.abc.Callable) and not issubclass(e_class, type):  # type: ignore[arg-type]
        return True  # callables are contravariant in their arguments: not worth a plan error
    if p_class is tuple and e_class is tuple:
        return _tuple_args_compatible(p_args, e_args)
    if p_class is tuple:
        # a tuple feeding Sequence[T]/Iterable[T]: every element type must fit T
        items = p_args[:-1] if p_args[-1] is Ellipsis else p_args
        return len(e_args) == 1 and all(_check(item, e_args[0]) for item in items)
    if len(p_args) != len(e_args):
        if issubclass(p_class, collections.abc.Mapping) and len(e_args) == 1:
            return _check(p_args[0], e_args[0])  # a Mapping iterates over its keys
        return True
    return all(_check(p, e) for p, e in zip(p_args, e_args, strict=True))


def _tuple_args_compatible(p_args: tuple[Any, ...], e_args: tuple[Any, ...]) -> bool:
    if len(e_args) == 2 and e_args[1] is Ellipsis:
        items = p_args[:-1] if len(p_args) == 2 and p_args[1] is Ellipsis else p_args
        return all(_check(item, e_args[0]) for item in items)
    if len(p_args) == 2 and p_args[1] is Ellipsis:
        return False  # a tuple of unknown length cannot fill a fixed shape
    return len(p_args) == len(e_args) and all(
        _check(p, e) for p, e in zip(p_args, e_args, strict=True)
    )


def _is_subclass(provided: type, expected: type) -> bool:
    if expected is object:
        return True
    try:
        if issubclass(provided, expected):
            return True
    except TypeError:
        return True
    return expected in _PROMOTIONS.get(provided, ())


def _strip(hint: Any) -> Any:
    while typing.get_origin(hint) is typing.Annotated:
        hint = hint.__origin__
    return hint


def _unchecked(hint: Any) -> bool:
    return hint is Any or hint is object or isinstance(hint, typing.TypeVar | str)


def type_name(hint: Any) -> str:
    """Readable name of a type hint for error messages: `list[int]`, `DataFrame`, `int | None`."""
    if hint is Any:
        return "Any"
    if hint is None or hint is _NONE:
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__qualname__
    return repr(hint).replace("typing.", "")
