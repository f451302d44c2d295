"""The one rule for ids and names that become file names or keys.

Run ids, task names, result ids and trigger names end up as folders under the results root,
as keys in the run store and the schedule state, and in URLs, so they all follow one rule:
1 to 200 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`, without `..`.
The IO manager, the run store, the scheduler, `@task` and the HTTP API all check with
`check_id`, so an id one of them accepts is one every other accepts too.

Names that also become one segment of a topic (pipelines in `dp.pipelines.<name>.start`,
sources in `dp.sources.<name>.unhealthy`) are ids without dots, at most 100 characters:
`name_problem` says what is wrong with one.
"""

from __future__ import annotations

import re

from dp.errors import InvalidIdError

__all__ = [
    "ID_PATTERN",
    "MAX_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "check_id",
    "id_problem",
    "is_id",
    "name_problem",
]

MAX_ID_LENGTH = 200
MAX_NAME_LENGTH = 100
#: the rule as a regular expression without look-arounds (for OpenAPI schemas and pydantic);
#: `is_id` also refuses `..`, which a pattern alone cannot say without a look-ahead.
ID_PATTERN = rf"^[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{MAX_ID_LENGTH - 1}}}$"
_ID = re.compile(ID_PATTERN.strip("^$"))


def is_id(value: object) -> bool:
    """Whether `value` is a valid id (an exact `str`, so nothing passes by faking `__eq__`)."""
    return type(value) is str and _ID.fullmatch(value) is not None and ".." not in value


def id_problem(value: object) -> str | None:
    """What is wrong with `value` as an id, in a few words; `None` if it is a valid one."""
    if is_id(value):
        return None
    if type(value) is not str:
        plain = "a plain str" if isinstance(value, str) else "a str"
        return f"must be {plain}, not {type(value).__qualname__}"
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value)} characters long, more than {MAX_ID_LENGTH}"
    for char, name in (("/", "a path separator '/'"), ("\\", "a path separator '\\'")):
        if char in value:
            return f"contains {name}"
    if "\0" in value:
        return "contains a NUL character"
    if ".." in value:
        return "contains '..'"
    if value[0] in ".-":
        return f"starts with {value[0]!r}; start with a letter, a digit or '_'"
    bad = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in "_.-"))})
    return f"contains {', '.join(repr(c) for c in bad)}"


def check_id(kind: str, value: object) -> str:
    """`value` if it is a valid id, else `InvalidIdError` naming `kind` (e.g. "run id").

    Raises:
        InvalidIdError: with `kind`, `value` and the reason.
    """
    problem = id_problem(value)
    if problem is not None:
        raise InvalidIdError(kind, value, problem)
    return value  # type: ignore[return-value]  # is_id checked it is a str


def name_problem(value: object) -> str | None:
    """What is wrong with `value` as a name that is also one topic segment; `None` if valid."""
    problem = id_problem(value)
    if problem is not None or not isinstance(value, str):
        return problem
    if "." in value:
        return "contains '.', which would split its topic segment"
    if len(value) > MAX_NAME_LENGTH:
        return f"is {len(value)} characters long, more than {MAX_NAME_LENGTH}"
    return None
