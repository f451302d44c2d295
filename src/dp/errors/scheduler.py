"""Errors of the scheduler: cron and event triggers, and their state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from dp.errors.base import DPError

__all__ = [
    "CircuitOpenError",
    "DuplicateTriggerError",
    "InvalidCronError",
    "InvalidTimezoneError",
    "InvalidTriggerError",
    "ScheduleStateError",
    "SchedulerError",
    "SchedulerNotRunningError",
    "TriggerNotFoundError",
]


class SchedulerError(DPError):
    """Root of the scheduler's errors; also raised for misuse such as starting twice."""


class SchedulerNotRunningError(SchedulerError):
    """A trigger was fired while the scheduler is not running (starting or stopping)."""

    def __init__(self, trigger: str) -> None:
        self.trigger = trigger
        super().__init__(f"cannot fire {trigger!r}: the scheduler is not running")


class InvalidCronError(SchedulerError, ValueError):
    """A cron expression cannot be parsed, or can never fire."""

    def __init__(self, expression: str, reason: str) -> None:
        self.expression = expression
        self.reason = reason
        super().__init__(
            f"invalid cron expression {expression!r}: {reason}. Use 5 fields "
            "'minute hour day month weekday' (e.g. '30 2 * * *'), or 6 with a leading "
            "seconds field (e.g. '*/10 * * * * *'), or an alias such as '@daily'."
        )


class InvalidTimezoneError(SchedulerError, ValueError):
    """A time zone name is not a known IANA zone."""

    def __init__(self, timezone: str, reason: str) -> None:
        self.timezone = timezone
        self.reason = reason
        super().__init__(
            f"invalid time zone {timezone!r}: {reason}. Use an IANA name such as 'UTC', "
            "'Europe/Berlin' or 'America/New_York' (install the tzdata package if the "
            "system has no zone database)."
        )


class InvalidTriggerError(SchedulerError, ValueError):
    """A trigger cannot be registered under this name (bad name, bad target, bad setup)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"trigger {name!r}: {reason}")


class DuplicateTriggerError(InvalidTriggerError):
    """A trigger with this name is already registered."""

    def __init__(self, name: str) -> None:
        super().__init__(
            name,
            "a trigger with this name is already registered; unregister it first or pick "
            "another name.",
        )


class TriggerNotFoundError(SchedulerError, LookupError):
    """A trigger name was looked up that is not registered, or is of the wrong kind.

    Attributes:
        name: the name asked for.
        known: the names that would have worked.
        kind: the kind of the trigger found under `name`, if it exists but cannot serve.
    """

    def __init__(
        self,
        name: str,
        known: Sequence[str],
        *,
        kind: str | None = None,
        what: str = "registered triggers",
    ) -> None:
        self.name = name
        self.known = tuple(known)
        self.kind = kind
        names = ", ".join(repr(n) for n in self.known) or "none"
        if kind is None:
            problem = f"no trigger named {name!r} is registered"
        else:
            problem = f"trigger {name!r} is a {kind} trigger, which fires by itself, not by a call"
        super().__init__(f"{problem}. {what.capitalize()}: {names}.")

    def __str__(self) -> str:  # KeyError-style quoting of the whole message is unhelpful
        return str(self.args[0])


class CircuitOpenError(SchedulerError):
    """A trigger failed too often in a row; its circuit is open until `retry_at`."""

    def __init__(
        self, name: str, retry_at: datetime, failures: int, last_error: str | None
    ) -> None:
        self.name = name
        self.retry_at = retry_at
        self.failures = failures
        self.last_error = last_error
        super().__init__(
            f"trigger {name!r} is open (circuit breaker) after {failures} consecutive "
            f"failures, the last: {last_error}. It accepts one trial fire from "
            f"{retry_at.isoformat()}; fix the cause, then fire it again."
        )


class ScheduleStateError(SchedulerError):
    """The file holding the last fire times cannot be read or written."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"schedule state {str(path)!r}: {reason}. Fix or delete the file; without it "
            "cron triggers simply start from now (no catch-up of missed fires)."
        )
