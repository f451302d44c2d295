"""Per-task capture of stdout/stderr that works with threads and asyncio tasks.

`sys.stdout` is process-global, so redirecting it per task would mix the output of tasks
running in parallel threads. Instead a proxy routes each write to the buffer of the task
running in the current context (a `ContextVar`, so threads and asyncio tasks each see their
own), and to the real stream when no task is capturing.
"""

from __future__ import annotations

import contextvars
import sys
import threading
from typing import Any, TextIO

__all__ = ["MAX_OUTPUT", "install", "joined"]

#: Characters of output kept per task attempt (the end is kept: it usually holds the error).
MAX_OUTPUT = 64 * 1024

_buffer: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "dp_task_output", default=None
)
_lock = threading.Lock()


class _Router:
    """Stands in for sys.stdout/sys.stderr; forwards everything it does not capture."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        buffer = _buffer.get()
        if buffer is None:
            return self._stream.write(text)
        if type(text) is not str:  # refused as a real text stream refuses it, in the task
            if not isinstance(text, str):
                raise TypeError(f"write() argument must be str, not {type(text).__name__}")
            text = str.__str__(text)  # a str subclass: keep its characters, not its methods
        buffer.append(text)
        return len(text)

    def flush(self) -> None:
        if _buffer.get() is None:
            self._stream.flush()

    def close(self) -> None:
        """A task closing "its" stdout closes its capture, not the process's stream (which
        dp itself, and every other task, still writes to)."""
        if _buffer.get() is None:
            self._stream.close()

    @property
    def closed(self) -> bool:
        return False if _buffer.get() is not None else bool(self._stream.closed)

    @property
    def uncaptured(self) -> TextIO:
        """The stream behind the capture (`dp.logs` writes log lines there)."""
        return self._stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def install() -> None:
    """Route sys.stdout and sys.stderr through the capturing proxy (idempotent, and cheap
    when already installed: workers call it before each task, since anyone may replace
    sys.stdout in between, e.g. pytest or `contextlib.redirect_stdout`)."""
    if type(sys.stdout) is _Router and type(sys.stderr) is _Router:
        return
    with _lock:
        if not isinstance(sys.stdout, _Router):
            sys.stdout = _Router(sys.stdout)
        if not isinstance(sys.stderr, _Router):
            sys.stderr = _Router(sys.stderr)


def joined(chunks: list[str]) -> str:
    """The captured text, trimmed to its last MAX_OUTPUT characters."""
    if not chunks:
        return ""
    text = "".join(chunks)
    if len(text) > MAX_OUTPUT:
        text = f"[... {len(text) - MAX_OUTPUT} characters dropped ...]\n" + text[-MAX_OUTPUT:]
    return text
