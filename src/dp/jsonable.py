"""`jsonable`: any value as JSON data, the one way dp turns values into JSON.

Run parameters are recorded with it (so a stored value validates back to the same value),
and the API, the CLI and the dashboard show values with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """`value` as JSON data, in the form pydantic reads back: dates and times as ISO 8601
    text, durations as ISO 8601 durations, paths as strings, enums as their values, tuples
    and sets as lists, dataclasses and mappings of any kind as objects; anything else
    becomes its repr."""
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value, fallback=_fallback)


def _fallback(value: Any) -> Any:
    if isinstance(value, Mapping):  # e.g. a MappingProxyType: pydantic only knows dict
        return dict(value)
    return repr(value)
