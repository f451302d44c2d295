"""Text of objects dp does not trust: a task's exceptions, results and output.

A task may raise an exception whose `__str__` raises, return a value whose `__repr__` loops
into a `RecursionError`, or write a non-`str` to stdout. The engine turns such objects into
text in many places (an error line, a traceback, a log field), and any of those raising
would kill the thread or process that reports the task's outcome, leaving its run waiting
forever. So every conversion goes through here: it never raises (except `KeyboardInterrupt`
on the main thread, a user's Ctrl-C) and never returns more than `limit` characters; what
cannot be had is named by a placeholder such as `<exception str() failed: RuntimeError>`.

This module imports nothing of dp: every layer (the IO managers, the engine, the service)
may use it.
"""

from __future__ import annotations

import signal
import threading
import traceback

__all__ = [
    "ERROR_LIMIT",
    "TRACEBACK_LIMIT",
    "describe_exception",
    "reraise_interrupt",
    "safe_repr",
    "safe_str",
    "safe_traceback",
    "type_name",
]

#: characters kept of a one-line error (its start: the type and the first words say most)
ERROR_LIMIT = 4096
#: characters kept of a traceback (its end: the innermost frames and the error)
TRACEBACK_LIMIT = 64 * 1024


def reraise_interrupt(exc: BaseException) -> None:
    """Re-raise `exc` if it is the user's Ctrl-C: a `KeyboardInterrupt` on the main thread of
    a process that takes SIGINT as one (`dp run`). Anywhere else (a pool thread, a worker
    process, which ignores SIGINT) a `KeyboardInterrupt` was raised by a task, like any
    other exception, and is returned from."""
    if (
        isinstance(exc, KeyboardInterrupt)
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        raise exc


def type_name(obj: object) -> str:
    """The qualified name of `obj`'s class, or a placeholder (a metaclass may be hostile too)."""
    try:
        name = type(obj).__qualname__
        return name if type(name) is str else "<unnamed type>"
    except BaseException as exc:
        reraise_interrupt(exc)
        return "<unnamed type>"


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} characters dropped]"


def safe_str(obj: object, *, limit: int = ERROR_LIMIT, what: str = "object") -> str:
    """`str(obj)`, or `<{what} str() failed: ErrorType>` if that raises; at most `limit`
    characters (plus a note of how many were dropped)."""
    try:
        # a str subclass: its characters, not its (maybe hostile) methods
        text = str.__str__(obj) if isinstance(obj, str) else str(obj)
        if type(text) is not str:
            text = str.__str__(text)
    except BaseException as exc:
        reraise_interrupt(exc)
        return f"<{what} str() failed: {type_name(exc)}>"
    return _clip(text, limit)


def safe_repr(obj: object, *, limit: int = ERROR_LIMIT, what: str = "object") -> str:
    """`repr(obj)`, or `<{what} repr() failed: ErrorType>`; at most `limit` characters."""
    try:
        text = repr(obj)
        if type(text) is not str:
            text = str.__str__(text)
    except BaseException as exc:
        reraise_interrupt(exc)
        return f"<{what} repr() failed: {type_name(exc)}>"
    return _clip(text, limit)


def describe_exception(exc: BaseException, *, limit: int = ERROR_LIMIT) -> str:
    """One line naming the exception: `ValueError: bad row 3`, or just `ValueError` when
    its text is empty; never raises."""
    name = type_name(exc)
    text = safe_str(exc, limit=limit, what="exception")
    return f"{name}: {text}" if text else name


def safe_traceback(exc: BaseException, *, limit: int = TRACEBACK_LIMIT) -> str:
    """The formatted traceback of `exc` (its causes and contexts too), its last `limit`
    characters; a placeholder if even the traceback module fails on it."""
    try:
        text = "".join(traceback.format_exception(exc))
    except BaseException as error:
        reraise_interrupt(error)
        try:
            text = "".join(traceback.format_tb(exc.__traceback__)) + describe_exception(exc)
        except BaseException as again:
            reraise_interrupt(again)
            return f"<traceback could not be formatted: {type_name(error)}>\n"
    if len(text) > limit:
        text = f"[... {len(text) - limit} characters dropped ...]\n" + text[-limit:]
    return text
