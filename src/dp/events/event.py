"""The one event schema dp uses everywhere, and its JSON wire format.

On the wire an event is a JSON object with camelCase keys, so services in other languages can
produce and consume dp events::

    {"eventId": "9f1c...", "eventType": "OrderCreated", "topic": "sales.orders.created",
     "timestamp": "2025-01-31T09:00:00.000000Z", "source": "shop", "payload": {...},
     "correlationId": null}
"""

from __future__ import annotations

import json
import json.decoder
import json.encoder
import os
import random
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from functools import partial
from typing import Any, Self

from dp.errors import EventFormatError, InvalidTopicError, UnstorableValueError
from dp.events.topics import _valid_topics, validate_topic
from dp.jsonable import compact_json
from dp.limits import check_storable, plain_json

__all__ = ["EventBase", "new_event_id"]

# Ids come from a private Mersenne Twister seeded from the OS: an id costs ~0.15 us instead of
# ~2 us for uuid.uuid4(), which pays a getrandom() system call per id. Kept for `make bench`'s
# "create EventBase" figure: 510,000/s against 203,000/s with uuid4 (alternating rounds). Ids
# are unique, not secret. The generator is reseeded in forked children so they never repeat
# the parent's ids.
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)
_VERSION_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_BITS = (0x4000 << 64) | (0x8000 << 48)  # RFC 4122 version 4, variant 1


def new_event_id() -> str:
    """A random (version 4) UUID as 32 hex digits."""
    return (_random.getrandbits(128) & _VERSION_MASK | _VERSION_BITS).to_bytes(16).hex()


_quote = json.encoder.encode_basestring  # a str as a JSON string literal, quotes included


def _no_constant(name: str) -> Any:
    raise EventFormatError(f"{name} is not a JSON number; send a finite number or null")


# json.loads without its per-call argument checks, refusing NaN and infinities
_decode = json.decoder.JSONDecoder(parse_constant=_no_constant).decode
_parse_time = datetime.fromisoformat
_KEYS = ("eventId", "eventType", "topic", "timestamp", "source", "payload", "correlationId")
#: envelope fields stored as text (the run store keeps event ids): no NUL in them
_TEXT_KEYS = ("eventId", "eventType", "topic", "source", "correlationId")
_typed_fields: dict[type, tuple[str, ...]] = {}


@dataclass(slots=True, kw_only=True)
class EventBase:
    """An event: what happened (`event_type`), where it is published (`topic`) and its data.

    Subclass it for typed events; their own fields travel inside `payload` on the wire::

        @dataclass(slots=True, kw_only=True)
        class OrderCreated(EventBase):
            topic: str = "sales.orders.created"
            order_id: str

    Events are shared by every subscriber that receives them, so treat them as immutable
    (use `dataclasses.replace` to derive one). They are not `frozen` because that doubles the
    cost of creating one, and creating events is on every pipeline's hot path.

    Attributes:
        topic: where the event is published, e.g. `sales.orders.created`.
        payload: JSON-serialisable data.
        event_type: what happened; defaults to the class name, or to the topic for `EventBase`.
        source: who produced the event.
        correlation_id: ties events of one run or request together.
        event_id: unique id (UUID4 hex); consumers use it to drop duplicates.
        timestamp: when the event was created, timezone-aware, stored in UTC.
    """

    topic: str
    payload: dict[str, Any] = field(default_factory=dict)
    event_type: str = ""
    source: str = "dp"
    correlation_id: str | None = None
    event_id: str = field(default_factory=new_event_id)
    timestamp: datetime = field(default_factory=partial(datetime.now, UTC))

    def __post_init__(self) -> None:
        if not self.event_type:
            cls = type(self)
            self.event_type = self.topic if cls is EventBase else cls.__name__
        tz = self.timestamp.tzinfo
        if tz is not UTC:
            if tz is None or self.timestamp.utcoffset() is None:
                raise EventFormatError(
                    f"event {self.event_id}: timestamp {self.timestamp.isoformat()} has no time "
                    "zone; pass an aware datetime, e.g. datetime.now(UTC)."
                )
            self.timestamp = self.timestamp.astimezone(UTC)

    # --- encoding -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The wire form as a dict of JSON types (timestamp as ISO 8601 UTC, e.g. `...Z`)."""
        payload = self.payload
        extra = _typed_fields.get(type(self))
        if extra is None:
            extra = _typed_field_names(type(self))
        if extra:
            payload = {**payload, **{name: getattr(self, name) for name in extra}}
        return {
            "eventId": self.event_id,
            "eventType": self.event_type,
            "topic": self.topic,
            "timestamp": _format_timestamp(self.timestamp),
            "source": self.source,
            "payload": payload,
            "correlationId": self.correlation_id,
        }

    def to_json(self) -> str:
        """The wire form as a compact JSON string.

        Raises:
            EventFormatError: if the event breaks `dp.limits`' rule (a NaN or infinity, a
                lone surrogate, nesting deeper than `DP_MAX_DEPTH`, more than `DP_MAX_BYTES`,
                a NUL in an envelope field) or holds something JSON cannot represent; the
                message names the field.
        """
        text = None
        try:
            if type(self) is EventBase:  # no typed fields: format the envelope directly
                correlation_id = self.correlation_id
                text = (
                    f'{{"eventId":{_quote(self.event_id)},"eventType":{_quote(self.event_type)},'
                    f'"topic":{_quote(self.topic)},'
                    f'"timestamp":"{_format_timestamp(self.timestamp)}",'
                    f'"source":{_quote(self.source)},"payload":{compact_json(self.payload)},'
                    f'"correlationId":'
                    f"{'null' if correlation_id is None else _quote(correlation_id)}}}"
                )
        except (TypeError, ValueError, AttributeError, RecursionError):
            pass  # the general path below names the field that is wrong
        if text is None:
            try:
                text = compact_json(self.to_dict())
            except (TypeError, ValueError, RecursionError) as exc:
                self._check(self.to_dict)  # names a broken rule, with the field
                raise EventFormatError(
                    f"event {self.event_id} on {self.topic!r}: field 'payload' is not "
                    f"JSON-serialisable ({exc}); keep payloads to dicts, lists, str, numbers, "
                    "bools and None."
                ) from exc
        if not plain_json(text):
            self._check(self.to_dict)
        return text

    def _check(self, wire: Callable[[], dict[str, Any]]) -> None:
        """Raise `EventFormatError` if the wire form breaks `dp.limits`' rule."""
        try:
            data = wire()
            _check_rule(data)
        except UnstorableValueError as exc:
            raise EventFormatError(
                f"event {self.event_id} on {self.topic!r}: field {exc.field!r} {exc.problem}."
            ) from None
        except RecursionError:  # a typed field nested beyond Python's limit
            raise EventFormatError(
                f"event {self.event_id} on {self.topic!r}: a field is nested too deeply to "
                "encode; flatten the payload."
            ) from None
        _check_text_keys(data)

    # --- decoding -----------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: str | bytes) -> Self:
        """Decode an event from its JSON wire form (a str, or UTF-8/16/32 bytes).

        Raises:
            EventFormatError: naming the field that is missing or malformed.
        """
        try:
            if type(data) is bytes and data[:1] == b"{" and data[1:2] != b"\x00":
                decoded = _decode(data.decode())  # UTF-8, as every dp producer writes it
            else:
                decoded = json.loads(data, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EventFormatError(f"event is not valid JSON: {exc}") from exc
        except RecursionError:
            raise EventFormatError(
                "event JSON is nested too deeply to decode; flatten the payload"
            ) from None
        if not plain_json(data):
            _check_decoded(decoded)
        if cls is EventBase:
            event = _plain_event(decoded)
            if event is not None:
                return event  # type: ignore[return-value]  # cls is EventBase
        return cls.from_dict(decoded)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Build an event from its wire form as a dict; unknown keys are ignored.

        Raises:
            EventFormatError: naming the field that is missing or malformed.
        """
        if not isinstance(data, dict):
            raise EventFormatError(
                f"event must be a JSON object with the keys {', '.join(_KEYS)}; "
                f"got {type(data).__name__}"
            )
        event_id = _text(data, "eventId")
        topic = _text(data, "topic")
        try:
            validate_topic(topic)
        except InvalidTopicError as exc:
            raise _field_error("topic", f"is not a valid topic ({exc.reason})", data) from exc
        payload = data.get("payload", MISSING)
        if payload is MISSING:
            raise _field_error("payload", "is missing; send {} for no data", data)
        if not isinstance(payload, dict):
            raise _field_error("payload", f"must be an object, got {_json_type(payload)}", data)
        correlation_id = data.get("correlationId")
        if correlation_id is not None and not isinstance(correlation_id, str):
            raise _field_error(
                "correlationId", f"must be a string or null, got {_json_type(correlation_id)}", data
            )
        kwargs: dict[str, Any] = {
            "topic": topic,
            "event_type": _text(data, "eventType"),
            "source": _text(data, "source"),
            "correlation_id": correlation_id,
            "event_id": event_id,
            "timestamp": _timestamp(data),
        }
        extra = _typed_fields.get(cls)
        if extra is None:
            extra = _typed_field_names(cls)
        if extra:
            payload = dict(payload)
            required = _required_fields(cls)
            for name in extra:
                if name in payload:
                    kwargs[name] = payload.pop(name)
                elif name in required:
                    raise _field_error(
                        f"payload.{name}", f"is missing (needed by {cls.__name__})", data
                    )
        kwargs["payload"] = payload
        return cls(**kwargs)


def _check_decoded(decoded: Any) -> None:
    """Raise `EventFormatError` if decoded wire data breaks `dp.limits`' rule, so a foreign
    producer's event is refused (and dead-lettered) before anything stores or shows it."""
    try:
        _check_rule(decoded)
    except UnstorableValueError as exc:
        raise _field_error(exc.field, exc.problem, decoded) from None
    _check_text_keys(decoded)


def _check_rule(data: Any) -> None:
    """The payload (as deep as a run parameter may be: a payload becomes run parameters) and
    the envelope's fields against `dp.limits`' rule; raises `UnstorableValueError`."""
    if isinstance(data, dict):
        check_storable(data.get("payload"), where="payload")
        for key, value in data.items():
            if key != "payload":
                check_storable(value, where=key)


def _check_text_keys(data: Any) -> None:
    if isinstance(data, dict):
        for key in _TEXT_KEYS:
            value = data.get(key)
            if isinstance(value, str) and "\x00" in value:
                raise _field_error(key, "contains a NUL character, which ids cannot hold", data)


def _plain_event(data: object) -> EventBase | None:
    """The `EventBase` in a decoded wire dict when every field is well formed, else None.

    The fast path of `from_json`: the same checks as `from_dict`, written as plain type tests.
    Anything unusual (a field missing or malformed, a topic not seen valid before, a timestamp
    not in UTC) returns None and takes `from_dict`, which names what is wrong.
    """
    if type(data) is not dict:
        return None
    event_id = data.get("eventId")
    topic = data.get("topic")
    event_type = data.get("eventType")
    source = data.get("source")
    text = data.get("timestamp")
    payload = data.get("payload")
    correlation_id = data.get("correlationId")
    if not (
        type(event_id) is str
        and event_id
        and type(topic) is str
        and topic in _valid_topics
        and type(event_type) is str
        and event_type
        and type(source) is str
        and source
        and type(payload) is dict
        and type(text) is str
        and (correlation_id is None or type(correlation_id) is str)
    ):
        return None
    try:
        timestamp = _parse_time(text)
    except ValueError:
        return None
    if timestamp.tzinfo is not UTC:  # no offset (an error) or another offset (converted)
        return None
    return EventBase(
        topic=topic,
        payload=payload,
        event_type=event_type,
        source=source,
        correlation_id=correlation_id,
        event_id=event_id,
        timestamp=timestamp,
    )


def _typed_field_names(cls: type) -> tuple[str, ...]:
    """The fields a subclass adds to `EventBase`; they travel inside `payload`."""
    base = {f.name for f in fields(EventBase)}
    names = tuple(f.name for f in fields(cls) if f.name not in base)
    _typed_fields[cls] = names
    return names


def _required_fields(cls: type) -> set[str]:
    return {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}


def _field_error(key: str, problem: str, data: dict[str, Any]) -> EventFormatError:
    event_id = data.get("eventId")
    where = f"event {event_id}" if isinstance(event_id, str) and event_id else "event"
    return EventFormatError(f"{where}: field {key!r} {problem}.")


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"a number ({value!r})"
    return names.get(type(value), type(value).__name__)


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, MISSING)
    if value is MISSING:
        raise _field_error(key, "is missing", data)
    if not isinstance(value, str) or not value:
        got = "an empty string" if value == "" else _json_type(value)
        raise _field_error(key, f"must be a non-empty string, got {got}", data)
    return value


def _format_timestamp(value: datetime) -> str:
    if value.tzinfo is not UTC:  # only if someone assigned a new timestamp after creation
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"


def _timestamp(data: dict[str, Any]) -> datetime:
    text = _text(data, "timestamp")
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _field_error(
            "timestamp", f"is not ISO 8601 ({text!r}); use e.g. '2025-01-31T09:00:00Z'", data
        ) from exc
    if value.tzinfo is None or value.utcoffset() is None:
        raise _field_error(
            "timestamp", f"has no UTC offset ({text!r}); end it with 'Z' or '+00:00'", data
        )
    return value.astimezone(UTC)
