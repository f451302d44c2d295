"""The exceptions dp raises.

Every error derives from `DPError`, carries the offending names as attributes, and says in its
message what is wrong, where, and how to fix it.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dp.store.records import RunStatus


class DPError(Exception):
    """Root of every error dp raises on purpose."""


# --- registry -----------------------------------------------------------------------------


class TaskDefinitionError(DPError):
    """A `@task` declaration is invalid (bad option, bad name, unsupported signature)."""

    def __init__(self, task_name: str, problem: str) -> None:
        self.task_name = task_name
        self.problem = problem
        super().__init__(f"task {task_name!r}: {problem}")


class DuplicateTaskError(DPError):
    """A different function was registered under a name that is already taken."""

    def __init__(self, name: str, existing: str, new: str) -> None:
        self.name = name
        self.existing = existing
        self.new = new
        super().__init__(
            f"task {name!r} is already registered by {existing}; {new} cannot take the same "
            f"name. Rename one of them with @task(name=...)."
        )


class TaskNotFoundError(DPError, KeyError):
    """A task name was looked up that no registered task has."""

    def __init__(self, name: str, suggestions: Sequence[str] = (), referenced_by: str = "") -> None:
        self.name = name
        self.suggestions = tuple(suggestions)
        self.referenced_by = referenced_by
        if referenced_by:
            message = f"task {referenced_by!r} depends on task {name!r}, which is not registered"
        else:
            message = f"no task named {name!r} is registered"
        if self.suggestions:
            message += f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?"
        else:
            message += (
                "; register it with @task or remove it from the dependencies."
                if referenced_by
                else "; `dp plan FILE` lists the tasks there are."
            )
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0])


# --- planner ------------------------------------------------------------------------------


class PlanError(DPError):
    """A DAG cannot be built or validated."""


class CycleError(PlanError):
    """The dependencies form a cycle; `cycle` lists it with the first task repeated at the end."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = tuple(cycle)
        super().__init__(
            f"dependency cycle: {' -> '.join(self.cycle)}. "
            "Remove one of these dependencies to break it."
        )


class SchemaMismatch:
    """One incompatible data edge: what the upstream returns and what the parameter accepts."""

    __slots__ = ("downstream", "expected", "parameter", "provided", "upstream")

    def __init__(
        self, upstream: str, downstream: str, parameter: str, provided: str, expected: str
    ) -> None:
        self.upstream = upstream
        self.downstream = downstream
        self.parameter = parameter
        self.provided = provided
        self.expected = expected

    def __str__(self) -> str:
        return (
            f"{self.upstream} -> {self.downstream}: {self.upstream!r} returns {self.provided} "
            f"but parameter {self.parameter!r} of {self.downstream!r} expects {self.expected}"
        )

    def __repr__(self) -> str:
        return f"SchemaMismatch({self})"


class SchemaMismatchError(PlanError):
    """Data edges whose upstream return type does not fit the downstream parameter."""

    def __init__(self, edges: Sequence[SchemaMismatch]) -> None:
        self.edges = tuple(edges)
        lines = "\n  ".join(str(e) for e in self.edges)
        super().__init__(
            f"{len(self.edges)} data edge(s) have incompatible types:\n  {lines}\n"
            "Fix the annotations, or make the parameter accept the upstream's type."
        )


class MissingRunParameterError(PlanError):
    """A run was started without a value for a required run parameter."""

    def __init__(self, missing: Mapping[str, Sequence[str]]) -> None:
        #: parameter name -> tasks that need it
        self.missing = {name: tuple(tasks) for name, tasks in missing.items()}
        parts = [
            f"{name!r} (needed by {', '.join(repr(t) for t in tasks)})"
            for name, tasks in sorted(self.missing.items())
        ]
        super().__init__(
            f"missing run parameter(s): {'; '.join(parts)}. "
            "Pass them with --param NAME=VALUE, the API body or the event payload."
        )


class UnknownRunParameterError(PlanError):
    """Run parameters were given that no task of the plan accepts."""

    def __init__(self, unknown: Sequence[str], accepted: Sequence[str]) -> None:
        self.unknown = tuple(unknown)
        self.accepted = tuple(accepted)
        super().__init__(
            f"unknown run parameter(s) {list(self.unknown)}; this plan accepts "
            f"{list(self.accepted) or 'no parameters'}."
        )


class RunParametersError(PlanError):
    """Several run parameters are wrong at once; `problems` holds one error for each."""

    def __init__(self, problems: Sequence[PlanError]) -> None:
        self.problems = tuple(problems)
        lines = "\n  ".join(str(p) for p in self.problems)
        super().__init__(f"{len(self.problems)} problems with the run parameters:\n  {lines}")


class UnselectedDependencyError(PlanError):
    """A selected task needs the result of a task the selection left out."""

    def __init__(self, task_name: str, dependency: str) -> None:
        self.task_name = task_name
        self.dependency = dependency
        super().__init__(
            f"task {task_name!r} needs the result of {dependency!r}, which is not selected; "
            "select it too or build with include_upstream=True."
        )


class UnknownTagError(PlanError):
    """No registered task has any of the tags a selection asks for."""

    def __init__(self, tags: Sequence[str], known: Sequence[str]) -> None:
        self.tags = tuple(tags)
        self.known = tuple(known)
        super().__init__(
            f"no task has any of the tags {list(self.tags)}; known tags: "
            f"{list(self.known) or 'none'}."
        )


class ShadowedTaskError(PlanError):
    """A parameter has the name of a task that is not among the task's dependencies."""

    def __init__(self, task_name: str, parameter: str) -> None:
        self.task_name = task_name
        self.parameter = parameter
        super().__init__(
            f"parameter {parameter!r} of task {task_name!r} has the name of task {parameter!r}, "
            f"which is not in its dependencies; add dependencies=[{parameter!r}] to receive "
            "its result, or rename the parameter."
        )


class SeveralStreamsError(PlanError):
    """A task takes single chunks from more than one streaming upstream."""

    def __init__(self, task_name: str, streams: Sequence[str]) -> None:
        self.task_name = task_name
        self.streams = tuple(streams)
        super().__init__(
            f"task {task_name!r} takes chunks from several streams ({', '.join(self.streams)}); "
            "a task can be mapped over one stream only: type the others as list[...] "
            "to receive them whole."
        )


class ConflictingRunParameterError(PlanError):
    """Two tasks declare the same run parameter with types one value cannot satisfy both."""

    def __init__(self, name: str, first: tuple[str, str], second: tuple[str, str]) -> None:
        #: (task, type name) of each declaration
        self.name = name
        self.first = first
        self.second = second
        super().__init__(
            f"run parameter {name!r} is {first[1]} in task {first[0]!r} but {second[1]} in "
            f"task {second[0]!r}; one value cannot be both: rename one of them."
        )


# --- IO manager ---------------------------------------------------------------------------


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


class InvalidResultsURLError(DPError, ValueError):
    """A results URL (e.g. `s3://BUCKET/PREFIX?endpoint=...`) that dp cannot use."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"results URL {url!r} {problem}")


class ResultsUnavailableError(DPError):
    """The results store could not be reached or refused a request (e.g. an S3 bucket)."""

    def __init__(self, where: str, action: str, problem: str) -> None:
        self.where = where
        self.action = action
        self.problem = problem
        super().__init__(f"cannot {action} at {where}: {problem}")


# --- events -------------------------------------------------------------------------------


class InvalidTopicError(DPError, ValueError):
    """A topic name or subscription pattern is malformed."""

    def __init__(self, topic: str, reason: str, *, pattern: bool = False) -> None:
        self.topic = topic
        self.reason = reason
        kind = "topic pattern" if pattern else "topic"
        super().__init__(
            f"invalid {kind} {topic!r}: {reason}. Topics are dot-separated segments of "
            "letters, digits, '_' and '-', e.g. 'sales.orders.created'"
            + ("; patterns may use '*' (one segment) and '**' (any number)." if pattern else ".")
        )


class EventFormatError(DPError, ValueError):
    """An event on the wire (JSON) is malformed."""


class BrokerClosedError(DPError):
    """Publishing to, or subscribing on, a broker that has been closed."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        super().__init__(f"cannot use topic {topic!r}: the broker is closed.")


class QueueFullError(DPError):
    """A bounded queue with the 'raise' overflow policy is full."""

    def __init__(self, where: str, maxsize: int) -> None:
        self.where = where
        self.maxsize = maxsize
        super().__init__(
            f"queue for {where} is full ({maxsize} items); the consumer is too slow. "
            "Raise maxsize or choose overflow='block' or 'drop_oldest'."
        )


class BusUnavailableError(DPError):
    """The event bus's server could not be reached within the time allowed."""

    def __init__(self, url: str, waited: float, reason: str) -> None:
        self.url = url
        self.waited = waited
        self.reason = reason
        super().__init__(
            f"the event bus at {url} is unreachable ({reason}); gave up after {waited:.1f}s. "
            "Check that the server runs, or raise the broker's publish_timeout."
        )


class InvalidBusURLError(DPError, ValueError):
    """An event bus URL (or option) that dp cannot use."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(
            f"invalid event bus URL {url!r}: {problem}. Use e.g. redis://127.0.0.1:6379/0."
        )


class GroupError(DPError, ValueError):
    """A durable subscription's group is malformed, or taken by another pattern."""

    def __init__(self, group: str, problem: str) -> None:
        self.group = group
        self.problem = problem
        super().__init__(f"subscription group {group!r}: {problem}")


class NotPendingError(DPError, LookupError):
    """`ack`/`nack` of an event this durable subscription has not delivered, or has settled."""

    def __init__(self, group: str, event_id: str) -> None:
        self.group = group
        self.event_id = event_id
        super().__init__(
            f"event {event_id} is not pending in group {group!r}: acknowledge only events this "
            "subscription delivered, once each."
        )


class UnpicklableItemError(DPError, TypeError):
    """An item put into a queue between processes cannot be pickled."""

    def __init__(self, item_type: str, reason: str) -> None:
        self.item_type = item_type
        self.reason = reason
        super().__init__(
            f"cannot send {item_type} through a MultiprocessQueue: {reason}. "
            "Items must be picklable: send data and ids, not open resources or lambdas."
        )


class QueueEmptyError(DPError):
    """A non-blocking get found nothing waiting (or a blocking one timed out)."""


class QueueClosedError(DPError):
    """Putting into, or getting from an empty, closed queue."""


# --- run store and engine -----------------------------------------------------------------


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


class InvalidRunParameterError(PlanError):
    """A run parameter's value does not fit the type the tasks declare."""

    def __init__(
        self, name: str, value: object, expected: str, reason: str, tasks: Sequence[str]
    ) -> None:
        self.name = name
        self.value = value
        self.expected = expected
        self.reason = reason
        self.tasks = tuple(tasks)
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(
            f"run parameter {name!r} = {shown} is not a valid {expected} "
            f"(needed by {', '.join(repr(t) for t in self.tasks)}): {reason}"
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


# --- scheduler ------------------------------------------------------------------------------


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


# --- task files and pipelines ---------------------------------------------------------------


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


# --- the service ----------------------------------------------------------------------------


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


# --- configuration --------------------------------------------------------------------------


class ConfigError(DPError):
    """A setting (`--store`, `DP_BUS_URL`, a `dp.toml` key, ...) has a value dp cannot use."""

    def __init__(
        self, setting: str, value: str, source: str, problem: str, accepted: Sequence[str] = ()
    ) -> None:
        self.setting = setting
        self.value = value
        self.source = source
        self.problem = problem
        self.accepted = tuple(accepted)
        hint = f"; accepted: {', '.join(self.accepted)}" if self.accepted else ""
        super().__init__(f"{setting} {value!r} (from {source}) {problem}{hint}.")


class ConfigFileError(DPError):
    """A `dp.toml` (or the `[tool.dp]` table of a `pyproject.toml`) cannot be read."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


# --- command line ---------------------------------------------------------------------------


class CLIError(DPError):
    """Bad command-line input: a malformed or contradictory option, a name that is not there."""


# --- arguments ------------------------------------------------------------------------------


class InvalidArgumentError(DPError, ValueError):
    """An argument given to a dp class or function has a value it cannot use."""

    def __init__(self, argument: str, value: object, expected: str, *, hint: str = "") -> None:
        self.argument = argument
        self.value = value
        self.expected = expected
        super().__init__(
            f"{argument} must be {expected}, got {self._shown(value)}"
            + (f"; {hint}" if hint else "")
            + "."
        )

    @staticmethod
    def _shown(value: object) -> str:
        shown = repr(value)
        return shown if len(shown) <= 80 else shown[:77] + "..."


class ArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument given to a dp class or function is of a type it cannot use."""

    @staticmethod
    def _shown(value: object) -> str:
        return type(value).__name__
