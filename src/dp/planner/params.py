"""Checking and coercing run parameter values against the types tasks declare.

Values come from Python callers, JSON bodies, event payloads and `--param k=v` strings, so
validation is pydantic's lax mode ("3" fits an int, 3 does not fit a str), with a JSON
parse as a last resort for strings given to structured types (`--param ids=[1,2]`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import lru_cache
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Union, get_args, get_origin

from dp import limits
from dp.errors import InvalidRunParameterError, UnstorableValueError
from dp.jsonable import jsonable
from dp.planner.schema import type_name

if TYPE_CHECKING:
    from pydantic import TypeAdapter

__all__ = ["RunParameter", "check_storable", "jsonable", "validate_param"]


@dataclass(frozen=True, slots=True)
class RunParameter:
    """An input supplied when a run starts, not by a dependency."""

    name: str
    annotation: Any
    required: bool
    tasks: tuple[str, ...]
    default: Any = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "type": type_name(self.annotation),
            "required": self.required,
            "tasks": list(self.tasks),
        }
        if not self.required:
            data["default"] = jsonable(self.default)
        return data


def check_storable(param: RunParameter, value: Any) -> Any:
    """`value`, once it is known to store as JSON and read back equal (`dp.limits`: no lone
    surrogate, NaN or infinity, within the depth and size limits): a run's parameters are
    recorded, and every later read of the run must work, on every store.

    Raises:
        InvalidRunParameterError: naming the parameter and, inside it, the offending item.
    """
    try:
        limits.check_storable(jsonable(value), where=param.name)
    except UnstorableValueError as exc:
        raise InvalidRunParameterError(
            param.name, value, type_name(param.annotation), str(exc), param.tasks
        ) from None
    return value


def validate_param(param: RunParameter, value: Any) -> Any:
    """`value` converted to `param`'s declared type; `InvalidRunParameterError` if it cannot be
    (or if it breaks `dp.limits`' rule: a value nested too deeply is refused before any
    validator walks it)."""
    try:
        limits.check_storable(value, where=param.name)
    except UnstorableValueError as exc:
        raise InvalidRunParameterError(
            param.name, value, type_name(param.annotation), str(exc), param.tasks
        ) from None
    annotation = param.annotation
    if annotation is Any or type(value) is annotation:
        return value
    adapter = _adapter(annotation)
    if adapter is None:  # a type pydantic cannot describe (e.g. an arbitrary class)
        if isinstance(annotation, type) and not isinstance(value, annotation):
            raise InvalidRunParameterError(
                param.name, value, type_name(annotation), f"got {type(value).__name__}", param.tasks
            )
        return value
    from pydantic import ValidationError

    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        if isinstance(value, str):
            try:
                return adapter.validate_python(json.loads(value))
            except (ValueError, ValidationError, RecursionError):
                pass
        reason = "; ".join(error["msg"] for error in exc.errors()[:3])
        example = _json_example(annotation)
        if isinstance(value, str) and example:
            reason += f"; give it as JSON, e.g. {param.name}={example}"
        raise InvalidRunParameterError(
            param.name, value, type_name(annotation), reason, param.tasks
        ) from None


def _json_example(annotation: Any) -> str:
    """What a structured value looks like as JSON text, for the error message; `""` for
    scalars, whose text form needs no hint."""
    origin = get_origin(annotation) or annotation
    if origin is Annotated:
        return _json_example(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return next(filter(None, (_json_example(a) for a in get_args(annotation))), "")
    if not isinstance(origin, type):
        return ""
    if issubclass(origin, (str, bytes)):
        return ""
    if issubclass(origin, (dict, Mapping)):
        return '{"key": 1}'
    if issubclass(origin, (list, tuple, set, frozenset, Sequence, AbstractSet)):
        return "[1,2]"
    return ""


@lru_cache(maxsize=256)
def _adapter(annotation: Any) -> TypeAdapter[Any] | None:
    from pydantic import PydanticSchemaGenerationError, TypeAdapter

    try:
        return TypeAdapter(annotation)
    except (PydanticSchemaGenerationError, TypeError):
        return None
