"""Structured logging: library code logs through `get_logger`, applications call
`configure_logging` once (the CLI and the service do) to pick JSON or human output.

dp's loggers are structlog wrappers around the stdlib `logging` tree under "dp", so an
application that never configures anything only sees warnings, as with any library.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

__all__ = ["Logger", "configure_logging", "get_logger", "uncaptured"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}


class Logger:
    """What `get_logger` returns: structlog's bound-logger calls (`bind`, `info`, ...),
    checking the level first and importing structlog only when an event is really emitted.

    structlog (and, through its console renderer, rich) costs more to import than the rest of
    `import dp` together; a library user who never sees a dp log line never pays for it.
    """

    __slots__ = ("_bound", "_context", "_name", "_stdlib")

    def __init__(self, name: str, context: dict[str, Any]) -> None:
        self._name = name
        self._context = context
        self._stdlib = logging.getLogger(name)
        self._bound: Any = None  # the structlog logger, built on the first emitted event

    def bind(self, **context: Any) -> Logger:
        return Logger(self._name, {**self._context, **context})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the exception being handled (call it in an `except` block)."""
        self._emit("exception", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._emit("critical", event, fields)

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        if not self._stdlib.isEnabledFor(_LEVELS[method]):
            return
        bound = self._bound
        if bound is None:
            bound = self._bound = _structlog_logger(self._stdlib).bind(**self._context)
        getattr(bound, method)(event, **fields)


def get_logger(name: str = "dp", **bound: Any) -> Logger:
    """A logger writing to stdlib logger `name` through structlog, with `bound` context."""
    return Logger(name, bound)


def _structlog_logger(stdlib: logging.Logger) -> Any:
    import structlog

    return structlog.wrap_logger(
        stdlib,
        processors=[*_pre_chain(), structlog.processors.format_exc_info, _wrap_for_formatter],
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _pre_chain() -> list[Any]:
    import structlog

    return [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


class _Event(dict[str, Any]):
    """An event as the record's message: `ProcessorFormatter` renders it as a dict, and any
    other handler (Python's last-resort one when nothing is configured) gets readable text
    instead of a dict repr."""

    def __str__(self) -> str:
        fields = " ".join(
            f"{key}={value!r}"
            for key, value in self.items()
            if key not in ("event", "level", "logger", "timestamp") and not key.startswith("_")
        )
        return f"{self.get('event', '')} {fields}".rstrip()


def _wrap_for_formatter(
    logger: Any, name: str, event_dict: MutableMapping[str, Any]
) -> tuple[Any, ...]:
    """structlog's `ProcessorFormatter.wrap_for_formatter`, with a readable message."""
    return (_Event(event_dict),), {"extra": {"_logger": logger, "_name": name}}


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to `sys.stderr` as it is when a record is emitted, not as it was when logging
    was configured: whoever swapped stderr in between (pytest's capture, click's CliRunner,
    `contextlib.redirect_stderr`) may have closed the stream it swapped in, and a thread
    logging after that would print "--- Logging error --- I/O operation on closed file".

    A task's captured output is not stderr: log lines go past the engine's per-task capture
    (`dp.engine.capture`) to the stream behind it, as they did before any task ran.
    """

    def __init__(self) -> None:
        super().__init__(uncaptured(sys.stderr))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = uncaptured(sys.stderr)  # `handle` holds the handler's lock here
        super().emit(record)


def uncaptured(stream: TextIO) -> TextIO:
    """`stream` without the engine's per-task capture in front of it."""
    inner: TextIO = getattr(stream, "uncaptured", stream)
    return inner


def configure_logging(
    *, level: str | int = "INFO", json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Send dp's logs to `stream` (stderr): JSON lines, or readable lines on a terminal.

    Args:
        level: the lowest level shown.
        json: force JSON (True) or console (False) rendering; default: JSON unless a terminal.
        stream: where to write.

    Console lines are coloured on a terminal unless `NO_COLOR` is set (https://no-color.org).
    """
    import structlog

    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    tty = handler.stream.isatty()
    if json is None:
        json = not tty
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=tty and not os.environ.get("NO_COLOR"))
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=_pre_chain())
    )
    handler.set_name("dp")
    root = logging.getLogger("dp")
    for old in [h for h in root.handlers if h.get_name() == "dp"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    root.propagate = False
