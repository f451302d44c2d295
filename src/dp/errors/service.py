"""Errors of task files and pipelines, and of the service (`dp serve`, the HTTP API)."""

from __future__ import annotations

import errno as _errno
from collections.abc import Sequence

from dp.errors.base import DPError
from dp.statuses import RunStatus

__all__ = [
    "ApiDisabledError",
    "AttemptNotFoundError",
    "InvalidPipelineError",
    "ListenError",
    "LoadError",
    "NoPipelinesError",
    "NoRunStoreError",
    "PipelineBusyError",
    "PipelineError",
    "PipelineNotFoundError",
    "PipelineProblemsError",
    "RunNotActiveError",
    "ServeError",
    "ServiceUnavailableError",
    "TaskRunNotFoundError",
    "TokenRequiredError",
]


class LoadError(DPError):
    """A task file or module could not be found or imported."""

    def __init__(self, target: str, message: str, *, extra: str | None = None) -> None:
        self.target = target
        #: the dp extra that installs the missing module, if that is what failed
        self.extra = extra
        super().__init__(message)


class PipelineError(DPError):
    """A pipeline definition is invalid, or no pipeline has the requested name."""


class InvalidPipelineError(PipelineError):
    """A pipeline definition is invalid: bad name, bad trigger, or tasks that cannot be planned."""

    def __init__(self, pipeline: object, problem: str) -> None:
        self.pipeline = pipeline  # the name as given (it may be the invalid part)
        self.problem = problem
        super().__init__(f"pipeline {pipeline!r}: {problem}")


class PipelineProblemsError(PipelineError):
    """Several pipelines of one file are invalid; `problems` holds one error for each."""

    def __init__(self, problems: Sequence[InvalidPipelineError]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PipelineNotFoundError(PipelineError, LookupError):
    """No pipeline has the requested name."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = tuple(known)
        super().__init__(f"no pipeline named {name!r}; defined: {', '.join(known) or 'none'}.")

    def __str__(self) -> str:  # LookupError must not quote the whole message
        return str(self.args[0])


class ServiceUnavailableError(DPError):
    """The service is starting or shutting down and does not accept runs."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class PipelineBusyError(DPError):
    """A pipeline already runs `max_concurrent_runs` runs."""

    def __init__(self, pipeline: str, limit: int) -> None:
        self.pipeline = pipeline
        self.limit = limit
        super().__init__(
            f"pipeline {pipeline!r} already runs {limit} run(s), its max_concurrent_runs; "
            "retry when one finishes."
        )


class ApiDisabledError(DPError):
    """The pipeline is defined with `api=False`: HTTP calls may not start it."""

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        super().__init__(
            f"pipeline {pipeline!r} is not started over HTTP (api=False); it starts on its "
            "cron and event triggers. Define it with api=True to allow HTTP calls."
        )


class RunNotActiveError(DPError):
    """A run cannot be cancelled: it finished, or no process is running it here."""

    def __init__(self, run_id: str, status: RunStatus) -> None:
        self.run_id = run_id
        self.status = status
        reason = (
            f"it already {status.value}"
            if status.finished
            else f"it is {status.value} but not running in this service"
        )
        super().__init__(f"run {run_id!r} cannot be cancelled: {reason}.")


class TaskRunNotFoundError(DPError, LookupError):
    """A run has no task run with this task name and instance."""

    def __init__(self, run_id: str, task: str, instance: str, instances: Sequence[str]) -> None:
        self.run_id = run_id
        self.task = task
        self.instance = instance
        self.instances = tuple(instances)
        hint = f"; its instances: {', '.join(instances)}" if instances else ""
        super().__init__(f"run {run_id!r} has no task {task!r} (instance {instance!r}){hint}.")

    def __str__(self) -> str:  # LookupError must not quote the whole message
        return str(self.args[0])


class AttemptNotFoundError(DPError, LookupError):
    """A task run has no attempt with this number."""

    def __init__(self, run_id: str, task: str, attempt: int, attempts: Sequence[int]) -> None:
        self.run_id = run_id
        self.task = task
        self.attempt = attempt
        self.attempts = tuple(attempts)
        made = ", ".join(map(str, attempts))
        super().__init__(
            f"task {task!r} of run {run_id!r} has no attempt {attempt}; it made {made}."
        )

    def __str__(self) -> str:  # LookupError must not quote the whole message
        return str(self.args[0])


class NoRunStoreError(DPError):
    """The service's orchestrator records no runs, so there are none to list or show."""

    def __init__(self) -> None:
        super().__init__("this service records no runs: its orchestrator has no run store.")


class ServeError(DPError):
    """The service cannot be served as asked."""


class TokenRequiredError(ServeError):
    """`dp serve` was asked to listen beyond loopback without an API token."""

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(
            f"refusing to listen on {host!r} without an API token: anyone who can reach it "
            "could start runs. Set DP_API_TOKEN (or pass --token), or listen on 127.0.0.1."
        )


class NoPipelinesError(ServeError):
    """The file given to `dp serve` defines no pipelines."""

    def __init__(self, target: str) -> None:
        self.target = target
        super().__init__(
            f"{target!r} defines no pipelines; add one next to the tasks, e.g. "
            "pipeline('daily', tags=['sales'], cron='0 3 * * *'), then serve it again."
        )


class ListenError(ServeError):
    """`dp serve` cannot listen on its address: the port is in use, or not ours to take.

    Attributes:
        host, port: the address asked for.
        errno: the operating system's error number (`errno.EADDRINUSE` for a port in use).
        reason: the operating system's words for it.
    """

    def __init__(self, host: str, port: int, errno: int | None, reason: str) -> None:
        self.host = host
        self.port = port
        self.errno = errno
        self.reason = reason
        if errno == _errno.EADDRINUSE:
            problem = (
                f"port {port} is already in use on {host}: another process (perhaps another "
                f"dp serve) listens there. Stop it, or serve on another port with --port"
            )
        elif errno == _errno.EACCES:
            problem = (
                f"no permission to listen on port {port} of {host} (ports below 1024 need "
                "privileges); serve on a port above 1023 with --port"
            )
        else:
            problem = f"cannot listen on {host}:{port}: {reason}; check --host and --port"
        super().__init__(problem + ".")
