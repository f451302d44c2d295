"""The messages between an orchestrator and its workers, named and versioned.

A `TaskMessage` hands one attempt to a worker by reference (the task's import path, the run
id, the input result ids, never a pickled function or value); a worker answers with
`StartedMessage` (the clock of a timeout starts), a `ChunkMessage` per saved chunk of a stream,
and one `CompletionMessage` carrying the `TaskOutcome`. A Celery worker also sends a
`HeartbeatMessage` every few seconds listing the attempts it holds, so the orchestrator tells
a dead or frozen worker from a slow task in seconds (`dp.engine.celery_beat`).

On the wire each is a JSON object with `"kind"` and `"v"` (the format version). Readers are
lenient in the compatible direction: a field added later (always with a default) is ignored by
an older reader and defaulted by a newer one reading an older message, so workers and
orchestrators of neighbouring releases talk to each other. Only an incompatible change bumps
`VERSION`, and a reader refuses a version it does not know with `MessageFormatError` instead of
guessing.
"""

from __future__ import annotations

import json
import operator
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from dp.engine.model import ExecutableTask, Input, TaskOutcome
from dp.errors import MessageFormatError
from dp.store.records import HOST
from dp.tasks import TaskMetadata

__all__ = [
    "VERSION",
    "ChunkMessage",
    "CompletionMessage",
    "HeartbeatMessage",
    "StartedMessage",
    "TaskMessage",
    "WorkerMessage",
    "decode",
]

#: The message format; bumped only by a change an older reader would misread.
VERSION = 1

_M = TypeVar("_M", bound="_Message")


class _Message:
    """JSON encoding shared by every message: `kind`, `v`, then the fields by name."""

    kind: ClassVar[str]
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        names, values = _NAMES[type(self)], _VALUES[type(self)](self)
        data: dict[str, Any] = {"kind": self.kind, "v": VERSION}
        data.update(zip(names, values, strict=True))
        return data

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled as the class and its field values: several times cheaper than the default
        # state dict of a frozen dataclass, and the process executor pickles every message
        return (type(self), _VALUES[type(self)](self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls: type[_M], data: Mapping[str, Any]) -> _M:
        return _build(cls, data)

    @classmethod
    def from_json(cls: type[_M], text: str | bytes) -> _M:
        return cls.from_dict(_parse(text, cls.kind))


@dataclass(frozen=True, slots=True)
class TaskMessage(_Message):
    """One attempt of one task, as handed to a worker.

    Attributes:
        handle: the sender's number for this attempt; every answer carries it back.
        run_id, task_name, result_id, instance: which task of which run (see `ExecutableTask`).
        import_path: `module:qualname` of the task function, imported by the worker.
        inputs: parameter -> `[upstream_task, result_id]` or `[upstream_task, [result_id...]]`.
        params: the run parameters the task takes (JSON values).
        retry_count: retries before this attempt; `attempt` is its number in the run record.
        epoch: the run's ownership epoch when the attempt was handed out (fencing).
        timed: the task has a timeout, so the worker says when it starts.
        timeout: the task's timeout in seconds (a Celery worker enforces it itself).
        queue: the Celery queue the task is routed to (`@task(queue=...)`; None: the default).
        streams: the task yields chunks (a worker checks its stream's manifest on redelivery).
        reply_to: where the answers go (the Celery executor's Redis list); empty locally.
        heartbeat: seconds without a heartbeat after which the sender takes the attempt for
            lost and hands it out again (Celery executor; 0: it does not watch).
        sources: upstream task -> the run whose results its inputs are (a retry's reused
            results, read where its parent stored them); absent: `run_id`.
    """

    kind: ClassVar[str] = "task"

    handle: int
    run_id: str
    task_name: str
    result_id: str
    import_path: str
    inputs: Mapping[str, Input] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    retry_count: int = 0
    attempt: int = 1
    instance: str = ""
    epoch: int = 0
    timed: bool = False
    timeout: float | None = None
    queue: str | None = None
    streams: bool = False
    reply_to: str = ""
    heartbeat: float = 0.0
    sources: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls, task: ExecutableTask, handle: int, reply_to: str = "", heartbeat: float = 0.0
    ) -> TaskMessage:
        meta = task.metadata
        return cls(
            handle,
            task.run_id,
            task.task_name,
            task.task_result_id,
            meta.import_path,
            task.inputs,
            task.params,
            task.retry_count,
            task.attempt,
            task.instance,
            task.epoch,
            meta.timeout is not None,
            meta.timeout,
            meta.queue,
            meta.stream_output,
            reply_to,
            heartbeat,
            task.sources,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskMessage:
        message = _build(cls, data)
        # JSON has no tuples: an input comes back as [upstream, id] or [upstream, [ids]]
        inputs: dict[str, Input] = {}
        for parameter, entry in message.inputs.items():
            if not (isinstance(entry, list | tuple) and len(entry) == 2):
                raise MessageFormatError(
                    "task", f"input {parameter!r} is {entry!r}, not [upstream, result id(s)]"
                )
            upstream, rid = entry
            inputs[parameter] = (upstream, tuple(rid) if isinstance(rid, list | tuple) else rid)
        object.__setattr__(message, "inputs", inputs)
        return message

    def task(self, metadata: TaskMetadata) -> ExecutableTask:
        """The `ExecutableTask` a worker runs, with the task's imported metadata."""
        return ExecutableTask(
            self.run_id,
            self.task_name,
            self.result_id,
            metadata,
            dict(self.inputs),
            dict(self.params),
            self.retry_count,
            self.instance,
            self.epoch,
            self.attempt - self.retry_count - 1,
            dict(self.sources),
        )


@dataclass(frozen=True, slots=True)
class StartedMessage(_Message):
    """The worker started the attempt `handle` (a timeout counts from here), in process `pid`
    on `host` at `started_at` (`time.time()`): a second start of the same attempt from
    elsewhere is the broker delivering it again after its first worker was lost."""

    kind: ClassVar[str] = "started"

    handle: int
    host: str = ""
    pid: int = 0
    started_at: float = 0.0


@dataclass(frozen=True, slots=True)
class HeartbeatMessage(_Message):
    """Worker `pid` on `host` (the `dp worker` process) holds the attempts `handles`:
    `pids[i]` is the pool process running `handles[i]`, or 0 while it waits there unstarted."""

    kind: ClassVar[str] = "beat"

    host: str
    pid: int
    handles: list[int] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ChunkMessage(_Message):
    """The attempt `handle` saved one more chunk of its stream under `result_id`."""

    kind: ClassVar[str] = "chunk"

    handle: int
    result_id: str


@dataclass(frozen=True, slots=True)
class CompletionMessage(_Message):
    """How the attempt `handle` ended: the fields of `TaskOutcome`, and where it ran."""

    kind: ClassVar[str] = "done"

    handle: int
    task_name: str
    instance: str
    ok: bool
    result_ids: list[str] = field(default_factory=list)
    started_at: float = 0.0
    duration: float = 0.0
    error: str | None = None
    traceback: str | None = None
    output: str = ""
    retryable: bool = True
    host: str | None = None
    pid: int | None = None

    @classmethod
    def of(cls, handle: int, outcome: TaskOutcome) -> CompletionMessage:
        return cls(
            handle,
            outcome.task_name,
            outcome.instance,
            outcome.ok,
            outcome.result_ids,
            outcome.started_at,
            outcome.duration,
            outcome.error,
            outcome.traceback,
            outcome.output,
            outcome.retryable,
            outcome.host,
            outcome.pid,
        )

    @classmethod
    def refused(
        cls, task: TaskMessage, error: str, *, retryable: bool = False
    ) -> CompletionMessage:
        """The answer to an attempt that did not run: its task cannot be imported, its run
        was taken over, ..."""
        return cls(
            task.handle,
            task.task_name,
            task.instance,
            False,
            [],
            time.time(),
            0.0,
            error,
            retryable=retryable,
            host=HOST,
            pid=os.getpid(),
        )

    def outcome(self) -> TaskOutcome:
        return TaskOutcome(
            self.task_name,
            self.instance,
            self.ok,
            list(self.result_ids),
            self.started_at,
            self.duration,
            self.error,
            self.traceback,
            self.output,
            self.retryable,
            self.host,
            self.pid,
        )


#: What a worker sends back.
WorkerMessage = StartedMessage | ChunkMessage | CompletionMessage | HeartbeatMessage


def _values_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if len(names) > 1:
        return operator.attrgetter(*names)
    (name,) = names  # attrgetter of one name gives the value, not a tuple
    return lambda message: (getattr(message, name),)


_KINDS: dict[str, type[_Message]] = {
    m.kind: m
    for m in (TaskMessage, StartedMessage, ChunkMessage, CompletionMessage, HeartbeatMessage)
}
_NAMES: dict[type[_Message], tuple[str, ...]] = {
    m: tuple(f.name for f in fields(m))  # type: ignore[arg-type]
    for m in _KINDS.values()
}
_FIELDS = {m: frozenset(names) for m, names in _NAMES.items()}
#: each message's field values as a tuple, in order
_VALUES: dict[type[_Message], Callable[[Any], tuple[Any, ...]]] = {
    m: _values_getter(names) for m, names in _NAMES.items()
}


def decode(text: str | bytes | Mapping[str, Any]) -> TaskMessage | WorkerMessage:
    """Any message from its JSON text (or its parsed object), by its `kind`.

    Raises:
        MessageFormatError: not JSON, not an object, an unknown kind or version, or a
            required field missing.
    """
    data = text if isinstance(text, Mapping) else _parse(text, "message")
    kind = data.get("kind")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageFormatError(
            "message", f"has unknown kind {kind!r}; dp sends {', '.join(sorted(_KINDS))}"
        )
    return cls.from_dict(data)  # type: ignore[return-value]


def _build(cls: type[_M], data: Mapping[str, Any]) -> _M:
    """`cls` from a parsed message: header checked, unknown (newer) fields left out."""
    _check_header(data, cls.kind)
    known = _FIELDS[cls]
    try:
        return cls(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:  # a required field is missing
        raise MessageFormatError(cls.kind, f"is incomplete: {exc}") from None


def _parse(text: str | bytes, kind: str) -> Mapping[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise MessageFormatError(kind, f"is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageFormatError(kind, f"is a JSON {type(data).__name__}, not an object")
    return data


def _check_header(data: Mapping[str, Any], kind: str) -> None:
    version = data.get("v")
    if version != VERSION:
        raise MessageFormatError(
            kind,
            f"has format version {version!r}, and this dp reads version {VERSION}; run the "
            "same dp release on the orchestrator and its workers",
        )
    if data.get("kind", kind) != kind:
        raise MessageFormatError(kind, f"is a {data.get('kind')!r} message")
