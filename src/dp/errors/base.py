"""The root of dp's errors, and the errors any dp call can raise about its arguments."""

from __future__ import annotations

__all__ = [
    "ArgumentTypeError",
    "DPError",
    "DependencyUnavailableError",
    "InvalidArgumentError",
    "UnstorableValueError",
    "is_outage",
]


class DPError(Exception):
    """Root of every error dp raises on purpose."""


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


class UnstorableValueError(DPError, ValueError):
    """A value breaks dp's one rule for what it stores and passes on (`dp.limits`): a lone
    surrogate, a NaN or infinity, nesting deeper than `DP_MAX_DEPTH`, or more than
    `DP_MAX_BYTES`. Refused before anything stores or sends it.

    `field` is where, e.g. `params.rows[3].name`; `limit` the limit broken, if one was.
    """

    def __init__(self, field: str, problem: str, *, limit: int | None = None) -> None:
        self.field = field
        self.problem = problem
        self.limit = limit
        super().__init__(f"field {field!r} {problem}.")


class DependencyUnavailableError(DPError):
    """A service dp depends on (the run store, the event bus, the results store) cannot be
    reached or timed out: an outage, not bad input.

    Callers tell the two apart by this class: an outage is retried with backoff until the
    dependency returns (an event stays pending, the API answers 503), never dead-lettered or
    recorded as the input's fault. `dependency` is one of "store", "bus", "results".
    """

    dependency: str = "dependency"


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` is an outage rather than bad input: a `DependencyUnavailableError`, a
    connection error or a timeout, raised itself or as what led to `exc` (its cause or
    context). Everything else on the way from the bus to a recorded run is the event's own
    fault (it cannot be decoded, validated or stored) and is dead-lettered at once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DependencyUnavailableError | ConnectionError | TimeoutError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
