"""Polling sources: plain functions that look at a system which cannot push, every few seconds.

Defined next to the tasks and pipelines, in the same Python file::

    @source(every="5s", topic="files.arrived")
    def inbox(cursor: float | None) -> Poll:
        seen = cursor or 0.0
        new = [p for p in Path("inbox").iterdir() if p.stat().st_mtime > seen]
        return Poll(
            events=[{"path": str(p), "mtime": p.stat().st_mtime} for p in new],
            cursor=max((p.stat().st_mtime for p in new), default=seen),
        )

    pipeline("ingest", tasks=["load"], on="files.arrived")

`dp serve FILE` polls each source (see `dp.scheduler.poller.SourcePoller`) and publishes what
it returns on its topic, like any other event; pipelines bind to it with `on=`.

What a source may return (or, as a generator, yield):

- a `Poll(events=[...], cursor=...)`: the events and the cursor the next poll gets;
- an iterable of payloads (mappings) and `EventBase`s: events, the cursor unchanged;
- `None`: nothing new.

A generator (sync or async) yields payloads, events or `Poll`s; the last `Poll`'s cursor wins.

Each event's id is derived from the source's name and the payload it carries
(`source_event_id`), so a re-poll that sees the same thing again publishes the same id, and
the service starts no second run for it. Put what tells two sightings apart (a version, an
mtime) into the payload.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, overload

from dp.errors import DPError, InvalidArgumentError, SourceDefinitionError
from dp.events.event import EventBase
from dp.events.topics import validate_topic
from dp.ids import name_problem
from dp.jsonable import canonical_json

__all__ = [
    "Poll",
    "Source",
    "SourceDefinitionError",
    "SourceRegistry",
    "get_sources",
    "parse_interval",
    "source",
    "source_event_id",
]

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True, slots=True)
class Poll:
    """What one poll saw: the events to publish and the cursor the next poll starts from.

    Attributes:
        events: payloads (JSON-ready mappings) or `EventBase`s.
        cursor: any JSON value (kept in the run store); `None` leaves the cursor as it was.
    """

    events: list[Mapping[str, Any] | EventBase] = field(default_factory=list)
    cursor: Any = None


@dataclass(frozen=True)
class Source:
    """A registered polling source.

    Attributes:
        name: the registration name (letters, digits, '_', '-').
        func: the polling function, sync or async, plain or generator.
        topic: where its events are published.
        every: seconds between polls (at least 0.01).
        timeout: seconds a poll may take before it is cancelled and counted as a failure.
        max_failures: consecutive failures that open its circuit.
        max_backoff: the longest wait between polls while the circuit is open, in seconds.
        takes_cursor: whether `func` takes the cursor as its one argument.
    """

    name: str
    func: Callable[..., Any] = field(repr=False)
    topic: str
    every: float
    timeout: float
    max_failures: int = 5
    max_backoff: float = 300.0
    takes_cursor: bool = True
    description: str = ""

    @property
    def unhealthy_topic(self) -> str:
        """Published when the source's circuit opens."""
        return f"dp.sources.{self.name}.unhealthy"

    @property
    def healthy_topic(self) -> str:
        """Published when the first success closes the source's circuit again."""
        return f"dp.sources.{self.name}.healthy"

    @property
    def is_async(self) -> bool:
        """Whether polling it runs on the event loop (async function or async generator)."""
        return inspect.iscoroutinefunction(self.func) or inspect.isasyncgenfunction(self.func)


class SourceRegistry:
    """Sources by name. `get_sources()` is the one `@source` fills by default."""

    def __init__(self) -> None:
        self._sources: dict[str, Source] = {}

    def register(self, definition: Source) -> Source:
        """Add `definition`; the same function again (a module reload) replaces it.

        Raises:
            SourceDefinitionError: another function holds the name.
        """
        existing = self._sources.get(definition.name)
        if existing is not None and _qualified(existing.func) != _qualified(definition.func):
            raise SourceDefinitionError(
                definition.name,
                f"the name is taken by {_qualified(existing.func)}; give one of them another "
                "name with @source(name=...)",
            )
        self._sources[definition.name] = definition
        return definition

    def get(self, name: str) -> Source:
        """The source `name`.

        Raises:
            SourceDefinitionError: no source has that name.
        """
        try:
            return self._sources[name]
        except KeyError:
            known = ", ".join(sorted(self._sources)) or "none"
            raise SourceDefinitionError(name, f"no such source (registered: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._sources

    def __iter__(self) -> Iterator[Source]:
        return iter(list(self._sources.values()))

    def __len__(self) -> int:
        return len(self._sources)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._sources)

    def clear(self) -> None:
        """Forget every source."""
        self._sources.clear()


_default_sources = SourceRegistry()


def get_sources() -> SourceRegistry:
    """The process-wide source registry that `@source` fills by default."""
    return _default_sources


@overload
def source(func: Callable[..., Any], /) -> Callable[..., Any]: ...
@overload
def source(
    *,
    every: str | float | timedelta,
    topic: str,
    name: str | None = None,
    timeout: str | float | timedelta | None = None,
    max_failures: int = 5,
    max_backoff: str | float | timedelta = 300.0,
    description: str = "",
    registry: SourceRegistry | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...


def source(
    func: Callable[..., Any] | None = None,
    /,
    *,
    every: str | float | timedelta | None = None,
    topic: str | None = None,
    name: str | None = None,
    timeout: str | float | timedelta | None = None,
    max_failures: int = 5,
    max_backoff: str | float | timedelta = 300.0,
    description: str = "",
    registry: SourceRegistry | None = None,
) -> Any:
    """Register a polling source; the decorated function is returned unchanged.

    Args:
        every: the interval: seconds, a `timedelta`, or text like `"100ms"`, `"5s"`, `"2m"`.
        topic: where its events are published (pipelines bind with `on=topic`).
        name: the source's name (default: the function's name).
        timeout: how long one poll may take (default: the interval, at least 1 s).
        max_failures: consecutive failures before its circuit opens.
        max_backoff: the longest wait between polls while its circuit is open.
        description: shown by `GET /sources`.
        registry: the registry to add it to (default: `get_sources()`).

    Raises:
        SourceDefinitionError: a bad name, option or signature, or the name is taken.
    """
    if func is not None:
        raise SourceDefinitionError(
            getattr(func, "__name__", repr(func)),
            'a source needs an interval and a topic: @source(every="5s", topic="files.arrived")',
        )

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        definition = define_source(
            fn,
            every=every,
            topic=topic,
            name=name,
            timeout=timeout,
            max_failures=max_failures,
            max_backoff=max_backoff,
            description=description,
        )
        (registry if registry is not None else _default_sources).register(definition)
        return fn

    return register


def define_source(
    fn: Callable[..., Any],
    *,
    every: str | float | timedelta | None,
    topic: str | None,
    name: str | None = None,
    timeout: str | float | timedelta | None = None,
    max_failures: int = 5,
    max_backoff: str | float | timedelta = 300.0,
    description: str = "",
) -> Source:
    """Check a source's options and build its `Source` (what `@source` registers)."""
    label = name if name is not None else getattr(fn, "__name__", repr(fn))
    if not callable(fn):
        raise SourceDefinitionError(str(label), f"{fn!r} is not a function")
    problem = name_problem(label)  # it becomes a topic segment and a URL part
    if problem is not None:
        raise SourceDefinitionError(
            str(label), f"the name {problem}; use 1-100 letters, digits, '_' or '-', e.g. 'inbox'"
        )

    def interval(option: str, value: str | float | timedelta) -> float:
        try:
            return parse_interval(value)
        except InvalidArgumentError as exc:
            raise SourceDefinitionError(label, f"{option}: {exc}") from None

    if every is None:
        raise SourceDefinitionError(label, 'every= is required, e.g. @source(every="5s", ...)')
    seconds = interval("every", every)
    if seconds < 0.01:
        raise SourceDefinitionError(label, f"every must be at least 10ms, got {seconds}s")
    if not topic:
        raise SourceDefinitionError(label, 'topic= is required, e.g. topic="files.arrived"')
    try:
        validate_topic(topic)
    except DPError as exc:
        raise SourceDefinitionError(label, str(exc)) from None
    limit = max(seconds, 1.0) if timeout is None else interval("timeout", timeout)
    if limit <= 0:
        raise SourceDefinitionError(label, f"timeout must be positive, got {limit}s")
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 1:
        raise SourceDefinitionError(
            label, f"max_failures must be an int >= 1, got {max_failures!r}"
        )
    backoff = interval("max_backoff", max_backoff)
    return Source(
        name=label,
        func=fn,
        topic=topic,
        every=seconds,
        timeout=limit,
        max_failures=max_failures,
        max_backoff=max(backoff, seconds),
        takes_cursor=_takes_cursor(label, fn),
        description=description or (inspect.getdoc(fn) or "").partition("\n")[0],
    )


def parse_interval(value: str | float | timedelta) -> float:
    """Seconds from `5`, `0.1`, `timedelta(seconds=5)`, `"100ms"`, `"5s"`, `"2m"` or `"1h"`.

    Raises:
        InvalidArgumentError: anything else, or a negative duration.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise InvalidArgumentError(
            "the interval", value, "seconds or a duration such as '100ms', '5s', '2m' or '1h'"
        )
    if seconds < 0:
        raise InvalidArgumentError("the interval", value, "zero or positive")
    return seconds


def source_event_id(name: str, payload: Mapping[str, Any]) -> str:
    """The id of the event source `name` publishes for `payload`: the same payload seen
    again (a re-poll after a crash, another instance) gives the same id."""
    try:
        text = canonical_json(payload)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"a payload of source {name!r}", payload, "a JSON-ready mapping", hint=str(exc)
        ) from None
    digest = hashlib.sha256(f"{name}\0{text}".encode()).hexdigest()[:32]
    return f"src-{name}-{digest}"


def collect(definition: Source, items: Iterable[Any], cursor: Any) -> tuple[list[EventBase], Any]:
    """The events to publish for what a poll returned, and the cursor after it.

    Raises:
        SourceDefinitionError: an item is neither a payload, an event nor a `Poll`.
    """
    events: list[EventBase] = []
    for item in items:
        if isinstance(item, Poll):
            more, _ = collect(definition, item.events, None)
            events += more
            if item.cursor is not None:
                cursor = item.cursor
        elif isinstance(item, EventBase):
            events.append(_addressed(definition, item, dict(item.payload)))
        elif isinstance(item, Mapping):
            payload = dict(item)
            event = EventBase(topic=definition.topic, payload=payload)
            events.append(_addressed(definition, event, payload))
        else:
            raise SourceDefinitionError(
                definition.name,
                f"a poll returned {type(item).__name__}; return a Poll, payload dicts or "
                "EventBase objects (or None when there is nothing new)",
            )
    return events, cursor


def items_of(definition: Source, result: Any) -> list[Any]:
    """What a plain (non-generator) call returned, as a list for `collect`."""
    if result is None:
        return []
    if isinstance(result, Poll | EventBase | Mapping):
        return [result]
    if isinstance(result, Iterable) and not isinstance(result, str | bytes):
        return list(result)
    raise SourceDefinitionError(
        definition.name,
        f"a poll returned {type(result).__name__}; return a Poll, a list of payload dicts or "
        "EventBase objects, or None",
    )


def _addressed(definition: Source, event: EventBase, payload: dict[str, Any]) -> EventBase:
    return dataclasses.replace(
        event,
        topic=definition.topic,
        event_type=event.event_type if event.event_type != event.topic else "",
        source=f"source:{definition.name}",
        event_id=source_event_id(definition.name, payload),
    )


def _takes_cursor(label: str, fn: Callable[..., Any]) -> bool:
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    required = [
        p
        for p in parameters
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if len(required) > 1 or any(p.kind == p.KEYWORD_ONLY for p in required):
        names = ", ".join(p.name for p in required)
        raise SourceDefinitionError(
            label,
            f"it takes ({names}); a source takes at most one argument, the cursor "
            "(None on the first poll)",
        )
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return bool(positional) or any(p.kind == p.VAR_POSITIONAL for p in parameters)


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
