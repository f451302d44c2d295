"""The one rule for values dp stores or passes on, and the one depth and size limit.

Run parameters, event payloads and request bodies are JSON data, and every store and bus must
give back what it took. So, on every input path (HTTP bodies, run parameters, events on any
bus, the dashboard's feeds), a value is refused up front, naming the field, when it holds

- a lone surrogate (`"\\ud800"` in JSON): not Unicode text, no store or bus can encode it;
- a NaN or an infinity: JSON has no such numbers (PostgreSQL refuses them, SQLite would turn
  them into `null`): send a finite number or null;
- nesting deeper than `DP_MAX_DEPTH` levels (default 64, at most 200), or more than
  `DP_MAX_BYTES` bytes of UTF-8 text (default 1 MiB; also the HTTP request body limit).

NUL characters are fine inside JSON values (JSON writes them as `\\u0000`, which every store
keeps). Text a task produces (its printed output, error and traceback) cannot be refused: it
is stored in an escaped form instead (`storable_text`): NUL and lone surrogates become U+FFFD,
and text beyond `DP_MAX_BYTES` is cut with a note saying how much was cut.

`check_storable(value, where=...)` raises `UnstorableValueError` for a value that breaks the
rule; `preview(value)` makes anything showable (the dashboard), never raising.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, overload

from dp.errors import ConfigError, UnstorableValueError
from dp.jsonable import compact_json

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "MAX_BYTES_VARIABLE",
    "MAX_DEPTH_VARIABLE",
    "Limits",
    "check_storable",
    "current_limits",
    "plain_json",
    "preview",
    "storable_text",
]

MAX_DEPTH_VARIABLE = "DP_MAX_DEPTH"
MAX_BYTES_VARIABLE = "DP_MAX_BYTES"
DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_BYTES = 1024 * 1024
_REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
_MIN_DEPTH, _MIN_BYTES = 2, 1024
# pydantic, which writes the API's answers, stops at 255 levels: a deeper value could be
# stored but never shown again
_MAX_DEPTH, _MAX_BYTES = 200, 1024**3
_PATH_SHOWN = 8  # items of a field's path named in an error


@dataclass(frozen=True, slots=True)
class Limits:
    """How deep (`depth` levels of objects and arrays) and how large (`bytes` of UTF-8 JSON
    text) an input value may be."""

    depth: int = DEFAULT_MAX_DEPTH
    bytes: int = DEFAULT_MAX_BYTES


@cache
def current_limits() -> Limits:
    """The limits in force: `DP_MAX_DEPTH` and `DP_MAX_BYTES` from the environment when dp
    first needs them (set them before starting dp), else the defaults.

    Raises:
        ConfigError: a variable that is not a whole number in its range (depth 2 to 200,
            bytes 1024 to 1 GiB).
    """
    depth, size = os.environ.get(MAX_DEPTH_VARIABLE, ""), os.environ.get(MAX_BYTES_VARIABLE, "")
    return Limits(
        depth=_setting(MAX_DEPTH_VARIABLE, depth, DEFAULT_MAX_DEPTH, _MIN_DEPTH, _MAX_DEPTH),
        bytes=_setting(MAX_BYTES_VARIABLE, size, DEFAULT_MAX_BYTES, _MIN_BYTES, _MAX_BYTES),
    )


def _setting(name: str, text: str, default: int, minimum: int, maximum: int) -> int:
    if not text.strip():
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if not minimum <= value <= maximum:
        raise ConfigError(
            name, text, "the environment", f"must be a whole number from {minimum} to {maximum}"
        )
    return value


def check_storable(value: Any, *, where: str, limits: Limits | None = None) -> None:
    """Refuse `value` if it breaks the rule (see the module): a lone surrogate, a NaN or
    infinity, nesting deeper than `limits.depth`, or more than `limits.bytes` of text.

    Plain JSON data is checked by encoding it once (C speed); anything unusual is walked
    iteratively, so even a value nested far beyond Python's recursion limit is refused with
    a clear error naming the field rather than a `RecursionError`.

    Args:
        value: JSON-like data: mappings, lists and tuples, str, numbers, bools, None (other
            objects are left alone: `dp.jsonable` shows them as text).
        where: the field's name in the error, e.g. `params` or `payload`.
        limits: default `current_limits()`.

    Raises:
        UnstorableValueError: naming the field (`params.rows[3].name`) and the limit.
    """
    limits = current_limits() if limits is None else limits
    try:
        text = compact_json(value)
    except (TypeError, ValueError, RecursionError):
        text = ""
    if not text or not plain_json(text, limits):
        _walk(value, where, limits)


def plain_json(text: str | bytes, limits: Limits | None = None) -> bool:
    """Whether JSON `text`, written or read without NaN and infinities (`allow_nan=False`,
    `parse_constant`), surely keeps the rule: small enough, too few brackets to be too deep,
    no `\\u` escape (which could hide a lone surrogate or a NUL), no raw lone surrogate.
    False means "look closer" (`check_storable`), not "broken"; a few C-speed scans."""
    limits = current_limits() if limits is None else limits
    if isinstance(text, str):
        return (
            len(text) <= limits.bytes // 4  # at most 4 UTF-8 bytes a character
            and text.count("[") + text.count("{") <= limits.depth
            and "\\u" not in text
            and (text.isascii() or _utf8(text))
        )
    return (
        len(text) <= limits.bytes
        and text.count(b"[") + text.count(b"{") <= limits.depth
        and b"\\u" not in text
    )


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _walk(value: Any, where: str, limits: Limits) -> None:
    """The rule, item by item: raises naming the first item that breaks it."""
    size = 0
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(value, 0, ())]
    while stack:
        item, depth, path = stack.pop()
        if type(item) is str:
            size += _text_size(item, where, path) + 2
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UnstorableValueError(
                    _path(where, path),
                    f"is {item!r}, which JSON cannot carry; send a finite number or null",
                )
            size += 8
        elif isinstance(item, Mapping):
            depth += 1
            _check_depth(depth, limits, where, path)
            size += 2
            for key, child in item.items():
                if type(key) is str:
                    size += _text_size(key, where, (*path, key)) + 3
                stack.append((child, depth, (*path, key)))
        elif isinstance(item, list | tuple):
            depth += 1
            _check_depth(depth, limits, where, path)
            size += 2
            stack.extend((child, depth, (*path, i)) for i, child in enumerate(item))
        else:
            size += 8
        if size > limits.bytes:
            raise UnstorableValueError(
                where,
                f"is over {limits.bytes} bytes as JSON ({MAX_BYTES_VARIABLE}); send less data, "
                "or put large inputs where a task can read them and pass a reference",
                limit=limits.bytes,
            )


def _check_depth(depth: int, limits: Limits, where: str, path: tuple[Any, ...]) -> None:
    if depth > limits.depth:
        raise UnstorableValueError(
            _path(where, path[: limits.depth]),
            f"is nested deeper than {limits.depth} levels ({MAX_DEPTH_VARIABLE}); flatten it",
            limit=limits.depth,
        )


def _text_size(text: str, where: str, path: tuple[Any, ...]) -> int:
    if text.isascii():
        return len(text)
    try:
        return len(text.encode())
    except UnicodeEncodeError as exc:
        raise UnstorableValueError(
            _path(where, path),
            f"contains a lone surrogate (U+{ord(text[exc.start]):04X} at position {exc.start}), "
            "which is not Unicode text; send valid UTF-8",
        ) from None


def _path(where: str, path: tuple[Any, ...]) -> str:
    text = where
    if len(path) > _PATH_SHOWN:  # a deep one: its start and how deep
        path = (*path[: _PATH_SHOWN - 1], f"…({len(path) - _PATH_SHOWN + 1} more levels)")
    for part in path:
        text += f"[{part}]" if type(part) is int else f".{part}"
    return text


@overload
def storable_text(text: str, *, limits: Limits | None = None) -> str: ...
@overload
def storable_text(text: None, *, limits: Limits | None = None) -> None: ...
def storable_text(text: str | None, *, limits: Limits | None = None) -> str | None:
    """`text` as every store keeps it: NUL and lone surrogates replaced by U+FFFD, and cut to
    `limits.bytes` characters with a note of how many were cut. For text dp cannot refuse
    (what a task printed, its error and traceback); `None` stays `None`.
    """
    if text is None:
        return None
    limits = current_limits() if limits is None else limits
    if len(text) > limits.bytes:
        cut = len(text) - limits.bytes
        text = text[: limits.bytes] + f"\n[... {cut} more characters cut ({MAX_BYTES_VARIABLE})]"
    if "\x00" in text:
        text = text.replace("\x00", _REPLACEMENT)
    if not text.isascii() and not _utf8(text):
        text = _SURROGATE.sub(_REPLACEMENT, text)
    return text


def preview(value: Any, *, depth: int = 8, items: int = 50) -> Any:
    """`value` as JSON data that can always be encoded and shown: text made storable, NaN and
    infinities as text, containers beyond `depth` levels shown as `"…"`, and at most `items`
    entries of each. Never raises, whatever the value (a dashboard must render anything the
    bus accepted)."""
    try:
        return _preview(value, depth, items)
    except Exception:  # a hostile __len__, __str__ or __repr__: the rest still renders
        return f"<{type(value).__name__}>"


def _preview(value: Any, depth: int, items: int) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping | list | tuple):
        if depth <= 0:
            return "…"
        if isinstance(value, Mapping):
            shown = {}
            for i, (key, child) in enumerate(value.items()):
                if i == items:
                    shown["…"] = f"{len(value) - items} more"
                    break
                shown[str(storable_text(str(key)))] = preview(child, depth=depth - 1, items=items)
            return shown
        listed: list[Any] = [preview(c, depth=depth - 1, items=items) for c in value[:items]]
        if len(value) > items:
            listed.append(f"… {len(value) - items} more")
        return listed
    return storable_text(repr(value)[:200])
