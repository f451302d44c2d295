"""`jsonable`: any value as JSON data, the one way dp turns values into JSON; and the two
encoders of JSON data into text (`compact_json`, `canonical_json`).

Run parameters are recorded with it (so a stored value validates back to the same value),
and the API, the CLI and the dashboard show values with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["canonical_json", "compact_json", "jsonable"]

#: JSON data as compact text, as dp stores and sends it (events, limits' size checks). No NaN
#: or infinity (JSON has none, other languages' decoders refuse them); no circularity check
#: (callers catch the RecursionError and name the field with `dp.limits`).
compact_json: Final[Callable[[Any], str]] = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":")
).encode

#: JSON-ready data as one canonical text to hash (keys sorted, ASCII, anything else as its
#: `str()`): the ids derived from payloads, equal on every instance and every run.
canonical_json: Final[Callable[[Any], str]] = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), default=str
).encode


def jsonable(value: Any) -> Any:
    """`value` as JSON data, in the form pydantic reads back: dates and times as ISO 8601
    text, durations as ISO 8601 durations, paths as strings, enums as their values, tuples
    and sets as lists, dataclasses and mappings of any kind as objects; anything else
    becomes its repr."""
    # pydantic-core is a dependency, but importing it costs ~65 ms, which `dp plan`, `dp run`
    # of a small pipeline and a worker's start do not pay unless a value is shown or recorded
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value, fallback=_fallback)


def _fallback(value: Any) -> Any:
    if isinstance(value, Mapping):  # e.g. a MappingProxyType: pydantic only knows dict
        return dict(value)
    return repr(value)
