"""Errors of polling sources: bad `@source` declarations and polls that time out or hang."""

from __future__ import annotations

from dp.errors.base import DPError

__all__ = ["PollTimeoutError", "SourceBusyError", "SourceDefinitionError"]


class SourceDefinitionError(DPError, ValueError):
    """A `@source` declaration is invalid (bad name, option or signature), or a name is taken."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"source {name!r}: {problem}")


class PollTimeoutError(DPError, TimeoutError):
    """A poll took longer than its source's timeout and was cancelled."""

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        super().__init__(
            f"polling source {name!r} took longer than its timeout of {timeout:g}s and was "
            "cancelled; make the poll faster or raise @source(timeout=...)"
        )


class SourceBusyError(DPError):
    """A sync source's previous poll (which timed out) is still running in its thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"source {name!r} is still stuck in an earlier poll that timed out (a sync "
            "function cannot be cancelled); it is polled again once that call returns"
        )
