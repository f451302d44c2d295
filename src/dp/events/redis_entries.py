"""Redis stream entries as dp reads and writes them: ids, the `event` field, URLs.

Shared by `dp.events.redis` (the broker) and `dp.events.redis_reader` (its subscriptions).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from dp.errors import EventFormatError, InvalidBusURLError
from dp.events.event import EventBase

try:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the Redis event bus needs redis-py; install it with: pip install 'dp[redis]'"
    ) from exc

__all__ = [
    "CONNECTION_ERRORS",
    "Entries",
    "StreamId",
    "after",
    "check_url",
    "decode_entry",
    "format_id",
    "just_before",
    "mask",
    "parse_id",
    "text",
]

CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a lost or refused connection raises; everything else is a real error."""

StreamId = tuple[int, int]
"""A stream entry id `<ms>-<seq>` as numbers, so ids compare correctly."""

Entries = list[tuple[bytes, dict[bytes, bytes]]]
"""Stream entries as redis-py returns them without `decode_responses`: (id, fields)."""


def text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def parse_id(entry_id: bytes | str) -> StreamId:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(entry_id: StreamId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def after(entry_id: StreamId) -> StreamId:
    """The smallest id greater than `entry_id`."""
    return entry_id[0], entry_id[1] + 1


def just_before(ms: int) -> str:
    """The id to read "after" so that entries from millisecond `ms` on are included."""
    return f"{ms - 1}-18446744073709551615" if ms > 0 else "0-0"


def decode_entry(fields: dict[bytes, bytes], topic: str | None) -> EventBase:
    """The event in a stream entry; `topic` (when given) must be the event's topic.

    Raises:
        EventFormatError: the entry has no `event` field, or it is not a dp event.
    """
    data = fields.get(b"event")
    if data is None:
        present = ", ".join(sorted(k.decode(errors="replace") for k in fields)) or "none"
        raise EventFormatError(
            f"stream entry has no 'event' field (fields: {present}); add events with "
            "XADD <prefix>:stream:<topic> * event '<JSON wire format>'"
        )
    event = EventBase.from_json(data)
    if topic is not None and event.topic != topic:
        raise EventFormatError(
            f"event {event.event_id} says topic {event.topic!r} but is on the stream of "
            f"{topic!r}; add it to the stream of its own topic"
        )
    return event


def check_url(url: str) -> str:
    """Return `url` if it is a Redis URL dp can use.

    Raises:
        InvalidBusURLError: naming the URL and what is wrong.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port raises ValueError when it is malformed
    except ValueError as exc:
        raise InvalidBusURLError(url, str(exc)) from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise InvalidBusURLError(url, f"scheme {parts.scheme!r} is not redis, rediss or unix")
    if parts.scheme != "unix":
        if not parts.hostname:
            raise InvalidBusURLError(url, "it names no host, e.g. redis://127.0.0.1:6379/0")
        database = parts.path.strip("/")
        if database and not database.isdigit():
            raise InvalidBusURLError(url, f"database {database!r} must be a number, e.g. /0")
    return url


def mask(url: str) -> str:
    """`url` with its password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
