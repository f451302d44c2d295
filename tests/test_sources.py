"""`@source`: declaring polling sources, their options, and what a poll may return."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import dp
from dp.errors import InvalidArgumentError
from dp.events import EventBase
from dp.sources import (
    Poll,
    SourceDefinitionError,
    SourceRegistry,
    collect,
    items_of,
    parse_interval,
    source,
    source_event_id,
)


@pytest.fixture
def registry() -> SourceRegistry:
    return SourceRegistry()


def test_a_source_registers_with_its_options(registry: SourceRegistry) -> None:
    """@source keeps the function as it is and records interval, topic, timeout and limits."""

    @source(every="5s", topic="files.arrived", timeout=2, max_failures=3, registry=registry)
    def inbox(cursor: float | None) -> Poll:
        """Files that landed in the inbox."""
        return Poll(cursor=cursor)

    definition = registry.get("inbox")
    assert inbox(1.0) == Poll(cursor=1.0)
    assert (definition.topic, definition.every, definition.timeout) == ("files.arrived", 5.0, 2.0)
    assert (definition.max_failures, definition.takes_cursor) == (3, True)
    assert definition.description == "Files that landed in the inbox."
    assert definition.unhealthy_topic == "dp.sources.inbox.unhealthy"
    assert definition.healthy_topic == "dp.sources.inbox.healthy"


def test_the_timeout_defaults_to_the_interval_but_at_least_a_second(
    registry: SourceRegistry,
) -> None:
    """Without timeout=, a poll may take its interval, and never less than 1 s."""
    source(every="100ms", topic="a.b", name="fast", registry=registry)(lambda: None)
    source(every="2m", topic="a.b", name="slow", registry=registry)(lambda: None)
    assert registry.get("fast").timeout == 1.0
    assert registry.get("slow").timeout == 120.0


def test_a_source_without_a_parameter_is_called_without_the_cursor(
    registry: SourceRegistry,
) -> None:
    """A function of no arguments is a source that keeps no cursor."""

    @source(every=1, topic="a.b", registry=registry)
    def ping() -> list[dict[str, int]]:
        return [{"n": 1}]

    assert registry.get("ping").takes_cursor is False


def test_async_sources_are_recognised(registry: SourceRegistry) -> None:
    """Coroutine functions and async generators run on the event loop."""

    @source(every=1, topic="a.b", registry=registry)
    async def one(cursor: Any) -> None:
        return None

    @source(every=1, topic="a.b", registry=registry)
    async def many(cursor: Any) -> Any:
        yield {"n": 1}

    assert registry.get("one").is_async
    assert registry.get("many").is_async


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("100ms", 0.1), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1.5", 1.5), (3, 3.0)],
)
def test_intervals_are_read_from_text_numbers_and_timedeltas(text: Any, seconds: float) -> None:
    """Durations are seconds, or text with ms/s/m/h."""
    assert parse_interval(text) == seconds
    assert parse_interval(timedelta(milliseconds=250)) == 0.25


@pytest.mark.parametrize("bad", ["soon", "5 days", "", True, None])
def test_bad_intervals_are_refused(bad: Any) -> None:
    """Anything else raises InvalidArgumentError with an example of what works."""
    with pytest.raises(InvalidArgumentError, match="'100ms', '5s'"):
        parse_interval(bad)


def test_negative_intervals_are_refused() -> None:
    """A negative duration is refused, saying so."""
    with pytest.raises(InvalidArgumentError, match="zero or positive, got -1"):
        parse_interval(-1)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"topic": "a.b"}, "every= is required"),
        ({"every": "1s"}, "topic= is required"),
        ({"every": "1ms", "topic": "a.b"}, "at least 10ms"),
        ({"every": "soon", "topic": "a.b"}, "every: the interval must be"),
        ({"every": 1, "topic": "a..b"}, "topic"),
        ({"every": 1, "topic": "a.b", "timeout": 0}, "timeout must be positive"),
        ({"every": 1, "topic": "a.b", "max_failures": 0}, "max_failures must be an int >= 1"),
        ({"every": 1, "topic": "a.b", "name": "no spaces"}, "use 1-100 letters"),
    ],
)
def test_bad_declarations_name_the_source_and_the_problem(
    registry: SourceRegistry, options: dict[str, Any], problem: str
) -> None:
    """Each bad option raises SourceDefinitionError naming the source and what to change."""

    def inbox(cursor: Any) -> None: ...

    with pytest.raises(SourceDefinitionError, match=problem) as raised:
        source(registry=registry, **options)(inbox)
    assert raised.value.name == options.get("name", "inbox")
    assert len(registry) == 0


def test_a_bare_source_decorator_says_what_it_needs() -> None:
    """@source without arguments is refused with the form that works."""
    with pytest.raises(SourceDefinitionError, match=r'@source\(every="5s", topic='):

        @source
        def inbox() -> None: ...


def test_a_source_taking_two_arguments_is_refused(registry: SourceRegistry) -> None:
    """A source takes at most the cursor."""
    with pytest.raises(SourceDefinitionError, match=r"takes \(a, b\).*at most one argument"):
        source(every=1, topic="a.b", name="two", registry=registry)(lambda a, b: None)


def test_two_functions_cannot_share_a_name(registry: SourceRegistry) -> None:
    """A second function under a taken name is refused; the same function again is not."""

    def inbox() -> None: ...

    def other() -> None: ...

    source(every=1, topic="a.b", registry=registry)(inbox)
    source(every=2, topic="a.b", registry=registry)(inbox)  # a module reload
    assert registry.get("inbox").every == 2.0
    with pytest.raises(SourceDefinitionError, match="name is taken by"):
        source(every=1, topic="a.b", name="inbox", registry=registry)(other)


def test_an_unknown_source_lists_the_known_ones(registry: SourceRegistry) -> None:
    """get() of a missing name says which names exist."""
    source(every=1, topic="a.b", name="inbox", registry=registry)(lambda: None)
    with pytest.raises(SourceDefinitionError, match=r"no such source \(registered: inbox\)"):
        registry.get("outbox")


def test_event_ids_depend_on_the_source_and_the_payload_only() -> None:
    """The same payload seen again gives the same id, whatever the key order; others differ."""
    first = source_event_id("inbox", {"path": "a.csv", "mtime": 1.5})
    assert first == source_event_id("inbox", {"mtime": 1.5, "path": "a.csv"})
    assert first != source_event_id("inbox", {"path": "b.csv", "mtime": 1.5})
    assert first != source_event_id("outbox", {"path": "a.csv", "mtime": 1.5})
    assert first.startswith("src-inbox-")


def test_a_poll_result_becomes_addressed_events_and_a_cursor(registry: SourceRegistry) -> None:
    """Payloads, events and Polls all become events on the source's topic with derived ids."""

    @source(every=1, topic="files.arrived", registry=registry)
    def inbox(cursor: int | None) -> None: ...

    definition = registry.get("inbox")
    typed = EventBase(topic="elsewhere", payload={"path": "c"}, event_type="FileSeen")
    events, cursor = collect(
        definition,
        [{"path": "a"}, Poll(events=[{"path": "b"}], cursor=7), typed],
        cursor=3,
    )
    assert cursor == 7
    assert [e.payload["path"] for e in events] == ["a", "b", "c"]
    assert {e.topic for e in events} == {"files.arrived"}
    assert {e.source for e in events} == {"source:inbox"}
    assert events[2].event_type == "FileSeen"
    assert events[0].event_id == source_event_id("inbox", {"path": "a"})


def test_a_poll_returning_something_else_is_a_clear_error(registry: SourceRegistry) -> None:
    """A poll that returns a number or yields a string names the source and the fix."""

    @source(every=1, topic="a.b", registry=registry)
    def odd() -> None: ...

    with pytest.raises(SourceDefinitionError, match="source 'odd': a poll returned int"):
        items_of(registry.get("odd"), 42)
    with pytest.raises(SourceDefinitionError, match="a poll returned str"):
        collect(registry.get("odd"), ["text"], None)


def test_dp_exports_the_source_api() -> None:
    """`from dp import source, Poll` works, and lazily."""
    assert dp.source is source
    assert dp.Poll is Poll
    assert "source" in dp.__all__
    assert "get_sources" in dir(dp)
