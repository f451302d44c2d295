"""The one circuit breaker (dp/scheduler/circuit.py) that the scheduler's triggers and the
poller's sources share: its transitions, one by one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dp.scheduler.circuit import Circuit

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


def test_it_opens_after_the_threshold_in_a_row_and_a_success_resets_the_count() -> None:
    circuit = Circuit()
    assert not circuit.failed(3, LATER)
    assert not circuit.succeeded()  # was closed: nothing recovered
    assert (circuit.failed(3, LATER), circuit.failed(3, LATER)) == (False, False)
    assert circuit.failed(3, LATER)  # the third in a row opens it
    assert (circuit.state, circuit.consecutive, circuit.retry_at) == ("open", 3, LATER)


def test_an_open_circuit_refuses_until_its_time_then_lets_one_trial_through() -> None:
    circuit = Circuit()
    circuit.failed(1, LATER)
    assert not circuit.allows(NOW)
    assert circuit.seen(NOW) == "open"
    assert circuit.seen(LATER) == "half_open"
    assert circuit.allows(LATER)
    assert circuit.state == "half_open"
    assert circuit.failed(5, LATER + timedelta(minutes=5))  # a failed trial opens it at once
    assert circuit.retry_at == LATER + timedelta(minutes=5)
    assert circuit.allows(LATER + timedelta(minutes=5))
    assert circuit.succeeded()  # the trial's success closes it: recovered
    assert (circuit.state, circuit.consecutive, circuit.retry_at) == ("closed", 0, None)


def test_a_failure_while_open_moves_the_time_on_but_does_not_open_it_again() -> None:
    """The poller announces `unhealthy` once per opening, not once per failed trial."""
    circuit = Circuit()
    assert circuit.failed(2) is False
    assert circuit.failed(2) is True
    assert circuit.failed(2, LATER) is False
    assert (circuit.state, circuit.consecutive, circuit.retry_at) == ("open", 3, LATER)


def test_a_recorded_state_is_taken_over() -> None:
    circuit = Circuit()
    circuit.restore("open", 7)
    assert (circuit.state, circuit.consecutive, circuit.retry_at) == ("open", 7, None)
    assert circuit.allows(NOW)  # no time set: the owner (the poller's backoff) decides
