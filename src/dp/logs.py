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

import structlog

__all__ = ["configure_logging", "get_logger"]

_PRE_CHAIN: list[Any] = [
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


class _BoundLogger(structlog.stdlib.BoundLogger):
    """Checks the level before building the event, so a disabled call costs one lookup
    (structlog's `filter_by_level` processor would raise and catch an exception)."""

    def _proxy_to_logger(self, method_name: str, event: Any = None, *args: Any, **kw: Any) -> Any:
        level = _LEVELS.get(method_name)
        if level is not None and not self._logger.isEnabledFor(level):
            return None
        return super()._proxy_to_logger(method_name, event, *args, **kw)


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}


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


def get_logger(name: str = "dp", **bound: Any) -> Any:
    """A structlog logger writing to stdlib logger `name`, with `bound` context attached."""
    logger = structlog.wrap_logger(
        logging.getLogger(name),
        processors=[
            *_PRE_CHAIN,
            structlog.processors.format_exc_info,
            _wrap_for_formatter,
        ],
        wrapper_class=_BoundLogger,
        cache_logger_on_first_use=True,
    )
    return logger.bind(**bound) if bound else logger


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
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=stream.isatty() and not os.environ.get("NO_COLOR")
        )
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=_PRE_CHAIN)
    )
    handler.set_name("dp")
    root = logging.getLogger("dp")
    for old in [h for h in root.handlers if h.get_name() == "dp"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    root.propagate = False
