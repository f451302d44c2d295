"""Errors of the event bus, its consumer groups and dp's queues."""

from __future__ import annotations

from dp.errors.base import DependencyUnavailableError, DPError

__all__ = [
    "BrokerClosedError",
    "BusUnavailableError",
    "EventFormatError",
    "GroupError",
    "InvalidBusURLError",
    "InvalidTopicError",
    "NotPendingError",
    "QueueClosedError",
    "QueueEmptyError",
    "QueueFullError",
    "UnpicklableItemError",
]


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


class BusUnavailableError(DependencyUnavailableError):
    """The event bus's server could not be reached within the time allowed."""

    dependency = "bus"

    def __init__(self, url: str, waited: float, reason: str) -> None:
        self.url = url
        self.waited = waited
        self.reason = reason
        super().__init__(
            f"the event bus at {url} is unreachable ({reason}); gave up after {waited:.1f}s. "
            "Check that the server runs, or allow it longer (Redis: publish_timeout; Kafka: "
            "?request_timeout= in the bus URL)."
        )


class BusRefusedError(BusUnavailableError):
    """The bus's server answered but refused what dp asked with these settings (e.g. an
    idempotent producer on a broker without it): publishing cannot work until the setting
    the message names is changed. Still an outage to callers (an event is kept, the API
    answers 503), but `dp serve` refuses to start on it."""

    def __init__(self, url: str, reason: str, fix: str) -> None:
        DependencyUnavailableError.__init__(
            self, f"the event bus at {url} refuses to publish: {reason}; {fix}."
        )
        self.url = url
        self.waited = 0.0
        self.reason = reason
        self.fix = fix


class InvalidBusURLError(DPError, ValueError):
    """An event bus URL (or option) that dp cannot use."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(
            f"invalid event bus URL {url!r}: {problem}. Use e.g. redis://127.0.0.1:6379/0 "
            "or kafka://127.0.0.1:9092."
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
