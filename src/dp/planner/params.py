"""Checking and coercing run parameter values against the types tasks declare.

Values come from Python callers, JSON bodies, event payloads and `--param k=v` strings, so
validation is pydantic's lax mode ("3" fits an int, 3 does not fit a str), with a JSON
parse as a last resort for strings given to structured types (`--param ids=[1,2]`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from dp.errors import InvalidRunParameterError
from dp.planner.schema import type_name

if TYPE_CHECKING:
    from pydantic import TypeAdapter

    from dp.planner.plan import RunParameter

__all__ = ["jsonable", "validate_param"]


def jsonable(value: Any) -> Any:
    """`value` as JSON data in the form pydantic reads back (dates as ISO text, paths as
    strings...), so a stored run parameter validates again to the same value; anything
    else becomes its repr."""
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value, fallback=repr)


def validate_param(param: RunParameter, value: Any) -> Any:
    """`value` converted to `param`'s declared type; `InvalidRunParameterError` if it cannot be."""
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
            except (ValueError, ValidationError):
                pass
        reason = "; ".join(error["msg"] for error in exc.errors()[:3])
        raise InvalidRunParameterError(
            param.name, value, type_name(annotation), reason, param.tasks
        ) from None


@lru_cache(maxsize=256)
def _adapter(annotation: Any) -> TypeAdapter[Any] | None:
    from pydantic import PydanticSchemaGenerationError, TypeAdapter

    try:
        return TypeAdapter(annotation)
    except (PydanticSchemaGenerationError, TypeError):
        return None
