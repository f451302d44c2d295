"""The event schema and its JSON wire format."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from dp.errors import EventFormatError
from dp.events import EventBase


@dataclass(slots=True, kw_only=True)
class OrderCreated(EventBase):
    topic: str = "sales.orders.created"
    order_id: str
    amount: float = 0.0


def wire(**overrides: Any) -> dict[str, Any]:
    """A valid wire-format event, with some keys replaced (or removed when set to ...)."""
    data: dict[str, Any] = {
        "eventId": "4f9a3c1e2b7d4e8f9a0b1c2d3e4f5a6b",
        "eventType": "OrderCreated",
        "topic": "sales.orders.created",
        "timestamp": "2025-01-31T09:00:00.000000Z",
        "source": "shop",
        "payload": {"order_id": "A-1"},
        "correlationId": "run-7",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not ...}


def from_wire_bytes(data: dict[str, Any]) -> EventBase:
    """Decode `data` the way the brokers do: as UTF-8 JSON bytes through from_json."""
    return EventBase.from_json(json.dumps(data).encode())


DECODERS = pytest.mark.parametrize(
    "decode", [EventBase.from_dict, from_wire_bytes], ids=["from_dict", "from_json"]
)


def test_defaults_fill_id_type_time_and_source() -> None:
    """A bare event gets a UUID4 id, its topic as type, the current UTC time and source 'dp'."""
    before = datetime.now(UTC)
    event = EventBase(topic="sales.orders.created")
    assert uuid.UUID(event.event_id).version == 4
    assert len(event.event_id) == 32
    assert event.event_type == "sales.orders.created"
    assert event.timestamp.tzinfo is UTC
    assert before <= event.timestamp <= datetime.now(UTC)
    assert (event.source, event.payload, event.correlation_id) == ("dp", {}, None)


def test_each_event_gets_its_own_id() -> None:
    """Event ids do not repeat."""
    assert len({EventBase(topic="a").event_id for _ in range(10_000)}) == 10_000


def test_typed_event_type_defaults_to_the_class_name() -> None:
    """A subclass names its events after itself unless told otherwise."""
    assert OrderCreated(order_id="A-1").event_type == "OrderCreated"
    assert OrderCreated(order_id="A-1", event_type="order.created").event_type == "order.created"


def test_payloads_are_not_shared_between_events() -> None:
    """Each event gets its own empty payload dict."""
    first, second = EventBase(topic="a"), EventBase(topic="a")
    first.payload["x"] = 1
    assert second.payload == {}


def test_aware_timestamps_are_stored_in_utc() -> None:
    """A timestamp in another zone is converted to UTC."""
    seoul = datetime(2025, 1, 31, 18, 0, tzinfo=timezone(timedelta(hours=9)))
    event = EventBase(topic="a", timestamp=seoul)
    assert event.timestamp == datetime(2025, 1, 31, 9, 0, tzinfo=UTC)
    assert event.timestamp.tzinfo is UTC


def test_naive_timestamps_are_rejected() -> None:
    """A timestamp without a time zone is ambiguous, so creating the event fails."""
    with pytest.raises(EventFormatError, match="no time zone"):
        EventBase(topic="a", timestamp=datetime(2025, 1, 31, 9, 0))


def test_to_dict_uses_the_camel_case_wire_keys() -> None:
    """The wire form has the keys other languages expect, the time as ISO 8601 with 'Z'."""
    event = EventBase(
        topic="sales.orders.created",
        payload={"order_id": "A-1"},
        event_type="OrderCreated",
        source="shop",
        correlation_id="run-7",
        event_id="4f9a3c1e2b7d4e8f9a0b1c2d3e4f5a6b",
        timestamp=datetime(2025, 1, 31, 9, 0, tzinfo=UTC),
    )
    assert event.to_dict() == wire()


def test_absent_correlation_id_is_null_on_the_wire() -> None:
    """Every key is always present; a missing correlation id is null."""
    assert json.loads(EventBase(topic="a").to_json())["correlationId"] is None


def test_json_round_trip() -> None:
    """from_json(to_json(event)) gives the same event back."""
    event = EventBase(topic="sales.orders.created", payload={"n": 1, "tags": ["x"], "ok": True})
    assert EventBase.from_json(event.to_json()) == event


def test_typed_event_round_trip_carries_its_fields_in_the_payload() -> None:
    """A subclass's own fields travel inside payload and come back as fields."""
    event = OrderCreated(order_id="A-1", amount=9.5, payload={"note": "gift"})
    data = event.to_dict()
    assert data["payload"] == {"note": "gift", "order_id": "A-1", "amount": 9.5}
    assert OrderCreated.from_dict(data) == event


def test_events_from_other_languages_decode() -> None:
    """A producer writing millisecond 'Z' timestamps and no correlationId is understood."""
    text = (
        '{"eventId":"e1","eventType":"OrderCreated","topic":"sales.orders.created",'
        '"timestamp":"2025-01-31T09:00:00.123Z","source":"kotlin-core","payload":{"order_id":"A-1"}}'
    )
    event = OrderCreated.from_json(text)
    assert event.order_id == "A-1"
    assert event.payload == {}
    assert event.correlation_id is None
    assert event.timestamp == datetime(2025, 1, 31, 9, 0, 0, 123_000, tzinfo=UTC)


@DECODERS
def test_offset_timestamps_are_converted_to_utc_when_decoding(
    decode: Callable[[dict[str, Any]], EventBase],
) -> None:
    """A wire timestamp with an offset becomes the same instant in UTC."""
    event = decode(wire(timestamp="2025-01-31T18:00:00+09:00"))
    assert event.timestamp == datetime(2025, 1, 31, 9, 0, tzinfo=UTC)
    assert event.timestamp.tzinfo is UTC


def test_unknown_keys_are_ignored() -> None:
    """Newer producers may add keys; older consumers still decode the event."""
    assert EventBase.from_dict(wire(schemaVersion=2)).event_id == wire()["eventId"]


def test_from_json_accepts_bytes() -> None:
    """Bytes straight off a socket or a stream decode too."""
    assert EventBase.from_json(json.dumps(wire()).encode()).source == "shop"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_from_json_accepts_the_other_json_encodings(encoding: str) -> None:
    """Bytes in any encoding json.loads detects (BOM, UTF-16, UTF-32) decode too."""
    text = json.dumps(wire(source="café"), ensure_ascii=False)
    assert EventBase.from_json(text.encode(encoding)).source == "café"


def test_non_ascii_text_round_trips_unescaped() -> None:
    """Non-ASCII text travels as UTF-8 on the wire and comes back unchanged."""
    event = EventBase(topic="a", source="köln", correlation_id='"ü"', payload={"名": "é\n"})
    assert "köln" in event.to_json()
    assert EventBase.from_json(event.to_json().encode()) == event


def test_invalid_utf8_bytes_are_reported() -> None:
    """Bytes that are not UTF-8 raise EventFormatError, not UnicodeDecodeError."""
    with pytest.raises(EventFormatError, match="not valid JSON"):
        EventBase.from_json(b'{"eventId": "\xff"}')


@pytest.mark.parametrize("key", ["eventId", "eventType", "topic", "timestamp", "source", "payload"])
@DECODERS
def test_a_missing_key_is_named(key: str, decode: Callable[[dict[str, Any]], EventBase]) -> None:
    """Each required key, when missing, is named in the error."""
    with pytest.raises(EventFormatError, match=f"field '{key}' is missing"):
        decode(wire(**{key: ...}))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"eventId": 7}, r"'eventId' must be a non-empty string, got a number \(7\)"),
        ({"eventId": ""}, "'eventId' must be a non-empty string, got an empty string"),
        ({"eventType": None}, "'eventType' must be a non-empty string, got null"),
        ({"source": ["a"]}, "'source' must be a non-empty string, got an array"),
        ({"topic": "sales..orders"}, r"'topic' is not a valid topic \(segment 1 is empty"),
        ({"timestamp": "yesterday"}, "'timestamp' is not ISO 8601"),
        ({"timestamp": "2025-01-31T09:00:00"}, "'timestamp' has no UTC offset"),
        ({"payload": [1, 2]}, "'payload' must be an object, got an array"),
        ({"correlationId": True}, "'correlationId' must be a string or null, got a boolean"),
    ],
)
@DECODERS
def test_a_malformed_field_is_named(
    overrides: dict[str, Any], message: str, decode: Callable[[dict[str, Any]], EventBase]
) -> None:
    """Each malformed field is named, with what was expected and what came."""
    with pytest.raises(EventFormatError, match=message):
        decode(wire(**overrides))


def test_errors_name_the_event_id() -> None:
    """When the event id is readable, the error says which event was bad."""
    with pytest.raises(EventFormatError, match=r"^event 4f9a3c1e2b7d4e8f9a0b1c2d3e4f5a6b: "):
        EventBase.from_dict(wire(source=""))


def test_a_missing_typed_field_is_named_inside_the_payload() -> None:
    """A typed event's required field missing from payload is reported as payload.<name>."""
    with pytest.raises(EventFormatError, match=r"'payload\.order_id' is missing"):
        OrderCreated.from_dict(wire(payload={}))


def test_invalid_json_is_reported() -> None:
    """Text that is not JSON raises EventFormatError, not a bare JSONDecodeError."""
    with pytest.raises(EventFormatError, match="not valid JSON"):
        EventBase.from_json('{"eventId": ')


def test_deeply_nested_json_is_a_format_error() -> None:
    """JSON nested deeper than Python can decode raises EventFormatError, not RecursionError."""
    with pytest.raises(EventFormatError, match="nested too deeply"):
        EventBase.from_json("[" * 100_000 + "]" * 100_000)


def test_a_json_value_that_is_not_an_object_is_reported() -> None:
    """An event must be a JSON object."""
    with pytest.raises(EventFormatError, match=r"must be a JSON object.*got list"):
        EventBase.from_json("[1, 2]")


def test_an_unserialisable_payload_is_reported() -> None:
    """to_json names the payload when it holds something JSON cannot represent."""
    event = EventBase(topic="a", payload={"when": datetime.now(UTC)})
    with pytest.raises(EventFormatError, match="'payload' is not JSON-serialisable"):
        event.to_json()


def test_a_payload_too_deep_to_decode_is_refused_when_encoding() -> None:
    """to_json refuses a payload nested too deeply to be read back, naming the payload."""
    deep: dict[str, Any] = {}
    for _ in range(100_000):
        deep = {"x": deep}
    with pytest.raises(EventFormatError, match=r"'payload\.x\.x.*' is nested deeper than 64"):
        EventBase(topic="a", payload=deep).to_json()


def test_replace_derives_an_event_for_another_topic() -> None:
    """dataclasses.replace copies an event, e.g. to forward it to another topic."""
    event = EventBase(topic="a.b", payload={"x": 1})
    moved = replace(event, topic="dead.letter")
    assert (moved.topic, moved.event_id, moved.payload) == ("dead.letter", event.event_id, {"x": 1})
