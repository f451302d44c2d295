"""Type compatibility of data edges (what an upstream returns vs what a parameter accepts)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, NewType, Optional, TypeVar, Union

import pytest

from dp.planner import is_compatible, type_name


class Animal: ...


class Dog(Animal): ...


UserId = NewType("UserId", int)
T = TypeVar("T")


@pytest.mark.parametrize(
    ("provided", "expected"),
    [
        (int, int),
        (Any, int),
        (int, Any),
        (str, object),
        (Dog, Animal),
        (int, float),
        (int, Optional[int]),  # noqa: UP045
        (int, int | None),
        (None, int | None),
        (int | str, int | str | bytes),
        (Union[int, str], str | int),  # noqa: UP007
        (list[int], Sequence[int]),
        (list[int], Iterable[int]),
        (list[Dog], list[Animal]),
        (list[int], list),
        (list, list[int]),
        (dict[str, int], Mapping[str, int]),
        (dict[str, int], Mapping[str, float]),
        (tuple[int, int], tuple[int, ...]),
        (tuple[int, ...], Sequence[int]),
        (tuple[int, str], tuple[int, str]),
        (Annotated[int, "meta"], int),
        (int, Annotated[int, "meta"]),
        (Literal["a", "b"], str),
        (Literal["a"], Literal["a", "b"]),
        (UserId, int),
        (T, int),
        (int, T),
    ],
)
def test_compatible_pairs(provided: Any, expected: Any) -> None:
    """Each of these upstream types may feed a parameter of the expected type."""
    assert is_compatible(provided, expected)


@pytest.mark.parametrize(
    ("provided", "expected"),
    [
        (str, int),
        (Animal, Dog),
        (float, int),
        (int | None, int),
        (int | str, int),
        (list[int], list[str]),
        (list[int], Mapping[str, int]),
        (dict[str, int], Mapping[str, str]),
        (set[int], Sequence[int]),
        (tuple[int, ...], tuple[int, int]),
        (tuple[int, str], tuple[int, int]),
        (tuple[int, str], tuple[int]),
        (Literal["c"], Literal["a", "b"]),
        (Literal[1], str),
        (int, UserId),
        (None, int),
    ],
)
def test_incompatible_pairs(provided: Any, expected: Any) -> None:
    """Each of these upstream types cannot feed a parameter of the expected type."""
    assert not is_compatible(provided, expected)


def test_type_names_are_readable() -> None:
    """Error messages show hints as a user writes them."""
    assert type_name(int) == "int"
    assert type_name(list[int]) == "list[int]"
    assert type_name(int | None) == "int | None"
    assert type_name(None) == "None"
    assert type_name(Any) == "Any"
    assert type_name(Dog) == "Dog"
