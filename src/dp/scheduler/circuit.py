"""The circuit breaker: one state machine for the scheduler's triggers and the poller's sources.

After `threshold` failures in a row the circuit opens: nothing goes through until `retry_at`
(when one is set). Then one trial goes through (half-open): its success closes the circuit,
its failure opens it again. What the owner does around it (log, count skips, announce on the
bus, persist) stays with the owner; the counting and the transitions are here only.
"""

from __future__ import annotations

from datetime import datetime

from dp.scheduler.health import CircuitState

__all__ = ["Circuit"]


class Circuit:
    """Consecutive failures of one thing (a trigger, a source) and the circuit over them."""

    __slots__ = ("consecutive", "retry_at", "state")

    def __init__(self) -> None:
        self.state: CircuitState = "closed"
        self.consecutive = 0
        #: when an open circuit lets the next trial through (None: its owner decides)
        self.retry_at: datetime | None = None

    def allows(self, now: datetime) -> bool:
        """Whether a call may go through now; an open circuit whose time came turns half-open
        (this call is its trial)."""
        if self.state == "open":
            if self.retry_at is not None and now < self.retry_at:
                return False
            self.state = "half_open"
        return True

    def trial(self) -> None:
        """Let one trial through now: its owner waited until `retry_at` itself."""
        self.state = "half_open"

    def seen(self, now: datetime) -> CircuitState:
        """The state as seen now: an open circuit whose time came reports half-open."""
        if self.state == "open" and self.retry_at is not None and now >= self.retry_at:
            return "half_open"
        return self.state

    def succeeded(self) -> bool:
        """A call went through: close the circuit. True when it was not closed (recovered)."""
        recovered = self.state != "closed"
        self.state, self.consecutive, self.retry_at = "closed", 0, None
        return recovered

    def failed(self, threshold: int, retry_at: datetime | None = None) -> bool:
        """Count a failure; the circuit opens once `threshold` failed in a row, or at once
        when its trial failed, until `retry_at` (an open circuit's failure moves it on).
        True when the circuit opened at this failure (it was not open before)."""
        self.consecutive += 1
        if self.state != "half_open" and self.consecutive < threshold:
            return False
        opened = self.state != "open"
        self.state, self.retry_at = "open", retry_at
        return opened

    def restore(self, state: CircuitState, consecutive: int) -> None:
        """Take over a state recorded elsewhere (a source's, from the store)."""
        self.state, self.consecutive, self.retry_at = state, consecutive, None
