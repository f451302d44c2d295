"""Errors in defining tasks (the registry) and in planning them into a DAG."""

from __future__ import annotations

import reprlib
from collections.abc import Mapping, Sequence

from dp.errors.base import DPError

__all__ = [
    "ConflictingRunParameterError",
    "CycleError",
    "DuplicateTaskError",
    "InvalidRunParameterError",
    "MissingRunParameterError",
    "PlanError",
    "RunParametersError",
    "SchemaMismatch",
    "SchemaMismatchError",
    "SeveralStreamsError",
    "ShadowedTaskError",
    "TaskDefinitionError",
    "TaskNotFoundError",
    "UnknownRunParameterError",
    "UnknownTagError",
    "UnselectedDependencyError",
]


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


class ScheduledForTypeError(PlanError):
    """A task's `scheduled_for` parameter is annotated with a type dp cannot give it."""

    def __init__(self, task_name: str, annotation: str) -> None:
        self.task_name = task_name
        super().__init__(
            f"task {task_name!r} declares scheduled_for: {annotation}, but dp gives that "
            "parameter the run's scheduled time as a datetime; annotate it `datetime` "
            "(or leave it unannotated)."
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
        try:
            shown = repr(value)
        except RecursionError:  # a value nested too deeply: dp.limits refuses it
            shown = reprlib.repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(
            f"run parameter {name!r} = {shown} is not a valid {expected} "
            f"(needed by {', '.join(repr(t) for t in self.tasks)}): {reason}"
        )
