"""Errors of the run store and the engine that runs pipelines."""

from __future__ import annotations

from dp.errors.base import DependencyUnavailableError, DPError

__all__ = [
    "DuplicateRunError",
    "ExecutorSetupError",
    "FencedError",
    "MessageFormatError",
    "NoTaskValueError",
    "ResumeError",
    "RunNotFoundError",
    "StoreError",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "TooManyPipelinesError",
    "UnreachableIOManagerError",
]


class RunNotFoundError(DPError, LookupError):
    """No run with this id is recorded in the run store."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} is not in the run store; `dp runs list` shows the runs.")


class DuplicateRunError(DPError):
    """A run with this run id, or started by this event id, is already recorded."""

    def __init__(self, run_id: str, event_id: str | None = None) -> None:
        self.run_id = run_id
        self.event_id = event_id
        what = (
            f"event {event_id!r} already started run {run_id!r}"
            if event_id
            else (f"run {run_id!r} already exists")
        )
        super().__init__(f"{what}; a run id (and an event id) can start only one run.")


class StoreError(DPError):
    """The run store cannot be opened or used (e.g. its schema is newer than this dp)."""


class StoreUnavailableError(StoreError, DependencyUnavailableError):
    """The run store's server could not be reached or timed out (an outage, not bad data)."""

    dependency = "store"

    def __init__(self, url: str, action: str, reason: str) -> None:
        self.url = url  # credentials removed
        self.action = action
        self.reason = reason
        super().__init__(
            f"the run store at {url} is unavailable ({reason}) while trying to {action}; "
            "check that the database server runs and accepts connections."
        )


class StoreNotFoundError(StoreError):
    """A command that only reads runs found no run store where the settings point."""

    def __init__(self, store: str, source: str, problem: str, *, first: str = "") -> None:
        self.store = store  # the URL, with any password masked
        self.source = source
        self.problem = problem
        super().__init__(
            f"{problem} (store {store}, from {source}); {first}point --store or DP_STORE_URL "
            "at the store the runs were recorded in."
        )


class TooManyPipelinesError(DPError):
    """The orchestrator runs `max_concurrent_pipelines` runs and its wait queue is full."""

    def __init__(self, running: int, queued: int) -> None:
        self.running = running
        self.queued = queued
        super().__init__(
            f"{running} pipelines are running and {queued} are waiting, the most allowed; "
            "retry later, or raise max_concurrent_pipelines / max_queued_pipelines."
        )


class ResumeError(DPError):
    """A run cannot be resumed; the message says why."""

    def __init__(self, run_id: str, reason: str) -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"run {run_id!r} cannot be resumed: {reason}.")


class RetryError(DPError):
    """A run cannot be retried (`dp runs retry`); the message says why and what to do."""

    def __init__(self, run_id: str, reason: str) -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"run {run_id!r} cannot be retried: {reason}.")


class UnreachableIOManagerError(DPError, TypeError):
    """The process executor was given an IO manager its worker processes cannot reach."""

    def __init__(self, io_manager: str, reason: str) -> None:
        self.io_manager = io_manager  # its class name
        self.reason = reason
        super().__init__(
            f"the process executor needs an IO manager its worker processes can reach; "
            f"{io_manager} cannot be sent to them ({reason}). Use FilesystemIOManager (or "
            "another shared store), or the in-process executor."
        )


class ExecutorSetupError(DPError):
    """An executor cannot start or run as configured (its broker is unreachable, a task's
    timeout exceeds what its broker allows, a worker started the wrong way)."""

    def __init__(self, executor: str, problem: str) -> None:
        self.executor = executor
        self.problem = problem
        super().__init__(problem)


class NoTaskValueError(DPError, LookupError):
    """A finished run holds no value of a task: the task did not succeed (or saved nothing)."""

    def __init__(self, run_id: str, task_name: str, status: str, error: str | None) -> None:
        self.run_id = run_id
        self.task_name = task_name
        self.status = status
        self.error = error
        super().__init__(
            f"task {task_name!r} has no value: it {status}" + (f" ({error})" if error else "")
        )


class FencedError(DPError):
    """A run was taken over by a newer owner; what its old owner still tries to write is refused.

    Every resume or takeover takes a new ownership epoch in the run store. Writes that carry an
    older epoch (late task states, results of workers the old owner left behind) fail with
    this error instead of overwriting what the new owner records.
    """

    def __init__(self, run_id: str, epoch: int, current: int | None = None) -> None:
        self.run_id = run_id
        self.epoch = epoch
        self.current = current
        now = f" it is at epoch {current}" if current is not None else ""
        super().__init__(
            f"run {run_id!r} was taken over by a newer owner: this owner holds epoch {epoch},"
            f"{now}; what this owner still writes is refused (the new owner finishes the run)."
        )


class MessageFormatError(DPError):
    """A message between an orchestrator and its workers cannot be read: not JSON, an unknown
    kind or format version, or a required field missing."""

    def __init__(self, kind: str, problem: str) -> None:
        self.kind = kind
        self.problem = problem
        super().__init__(f"{kind} message {problem}.")
