"""The exceptions dp raises.

Every error derives from `DPError`, carries the offending names as attributes, and says in its
message what is wrong, where, and how to fix it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


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
