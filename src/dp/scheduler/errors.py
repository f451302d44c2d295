"""The errors the scheduler raises; they live in `dp.errors` and are re-exported here."""

from dp.errors import (
    CircuitOpenError,
    DuplicateTriggerError,
    InvalidCronError,
    InvalidTimezoneError,
    InvalidTriggerError,
    SchedulerError,
    SchedulerNotRunningError,
    ScheduleStateError,
    TriggerNotFoundError,
)

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
