"""Errors of the IO manager: where results are stored, and reading them back."""

from __future__ import annotations

from dp.errors.base import DependencyUnavailableError, DPError

__all__ = [
    "InvalidIdError",
    "InvalidResultsURLError",
    "ResultDamagedError",
    "ResultNotFoundError",
    "ResultsUnavailableError",
    "SaveError",
    "SerializationError",
]


class InvalidIdError(DPError, ValueError):
    """A run id, task name or result id is empty or could escape its storage location."""

    def __init__(self, kind: str, value: object, reason: str) -> None:
        self.kind = kind
        self.value = value
        self.reason = reason
        super().__init__(
            f"invalid {kind} {value!r}: {reason}. Use letters, digits, '_', '-', '.' "
            "(not starting with '.'), at most 200 characters."
        )


class ResultNotFoundError(DPError, LookupError):
    """No stored result exists for (run, task, result id)."""

    def __init__(self, run_id: str, task_name: str, task_result_id: str) -> None:
        self.run_id = run_id
        self.task_name = task_name
        self.task_result_id = task_result_id
        super().__init__(
            f"no result {task_result_id!r} of task {task_name!r} in run {run_id!r}; "
            "the task has not produced it yet, or the run was cleared."
        )


class SerializationError(DPError):
    """A value could not be serialized (saved) or deserialized (loaded)."""

    def __init__(self, run_id: str, task_name: str, task_result_id: str, reason: str) -> None:
        self.run_id = run_id
        self.task_name = task_name
        self.task_result_id = task_result_id
        self.reason = reason
        super().__init__(
            f"result {task_result_id!r} of task {task_name!r} in run {run_id!r}: {reason}"
        )


class ResultDamagedError(SerializationError):
    """A stored result cannot be read back: truncated, corrupt, or its class is gone. It names
    the run, the task, the result id and where the bytes are, so nobody re-runs blindly."""

    def __init__(
        self, run_id: str, task_name: str, task_result_id: str, location: str, problem: str
    ) -> None:
        self.location = location
        self.problem = problem
        super().__init__(
            run_id,
            task_name,
            task_result_id,
            f"is damaged at {location}: {problem}. `dp runs verify {run_id}` lists every "
            f"damaged result of the run; `dp runs resume {run_id}` runs their tasks again",
        )


class SaveError(SerializationError):
    """A result could not be written where results go: a full disk, no permission, a
    read-only file system. It names the result and the location (`errno` says which)."""

    def __init__(
        self, run_id: str, task_name: str, task_result_id: str, location: str, cause: OSError
    ) -> None:
        self.location = location
        self.errno = cause.errno
        problem = cause.strerror or type(cause).__name__
        super().__init__(
            run_id,
            task_name,
            task_result_id,
            f"could not be written to {location}: {problem} (errno {cause.errno}). Free space "
            "there or make it writable, or choose another place with --results / "
            "DP_RESULTS_URL; then resume the run",
        )


class InvalidResultsURLError(DPError, ValueError):
    """A results URL (e.g. `s3://BUCKET/PREFIX?endpoint=...`) that dp cannot use."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"results URL {url!r} {problem}")


class ResultsUnavailableError(DependencyUnavailableError):
    """The results store could not be reached or refused a request (e.g. an S3 bucket)."""

    dependency = "results"

    def __init__(self, where: str, action: str, problem: str) -> None:
        self.where = where
        self.action = action
        self.problem = problem
        super().__init__(f"cannot {action} at {where}: {problem}")
