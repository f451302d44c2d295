"""The statuses of runs and tasks, and the sets of them the code asks about.

One module on the ground floor (it imports nothing of dp): the store records them, the errors
name them, the API and the CLI filter by them, and the dashboard's `statuses.js` spells the
same sets (tests/test_statuses.py holds the two together).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

__all__ = [
    "FINISHED_RUN",
    "FINISHED_TASK",
    "LIVE_RUN",
    "LIVE_TASK",
    "RunStatus",
    "TaskStatus",
]


class RunStatus(StrEnum):
    """Where a run is in its life cycle."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIAL = "partial"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the run is over for good; an interrupted run can still be resumed."""
        return self in FINISHED_RUN

    @property
    def live(self) -> bool:
        """Whether the run is running or queued (an owner is, or should be, at work on it)."""
        return self in LIVE_RUN


class TaskStatus(StrEnum):
    """Where one task (or one mapped instance of it) is within a run."""

    PENDING = "pending"
    #: handed to a broker (the Celery executor), waiting in its queue until a worker takes it
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    #: its owner died (or was fenced) while this attempt ran; a resume runs it again
    INTERRUPTED = "interrupted"
    #: (an earlier attempt) its worker stopped answering or died, and the attempt was handed
    #: out again as the next one (Celery executor); never a task's final status
    LOST = "lost"

    @property
    def finished(self) -> bool:
        """Whether this task (instance) will not change any more in this run."""
        return self not in LIVE_TASK


#: a run someone is (or should be) working on: what cancel stops, what staleness is asked of
LIVE_RUN: Final = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
#: a run that is over for good (an interrupted run is not: it can be resumed)
FINISHED_RUN: Final = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.PARTIAL, RunStatus.CANCELLED}
)
#: a task (instance) that can still change in its run
LIVE_TASK: Final = frozenset({TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RUNNING})
#: a task (instance) that will not change any more in its run
FINISHED_TASK: Final = frozenset(set(TaskStatus) - LIVE_TASK)
