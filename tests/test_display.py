"""How the command line words counts and durations."""

from __future__ import annotations

import pytest

from dp.display import duration_text, plural


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, ""),
        (0.0019, "1.9 ms"),
        (0.2002, "200.2 ms"),
        (8.0014, "8.00 s"),
        (125.4, "2m 05s"),
        (3725, "1h 02m"),
    ],
)
def test_durations_use_the_unit_that_reads_best(seconds: float | None, text: str) -> None:
    """Milliseconds below a second, seconds below a minute, then minutes and hours."""
    assert duration_text(seconds) == text


def test_counts_agree_with_their_noun() -> None:
    """One task, two tasks, no tasks."""
    assert [plural(n, "task") for n in (0, 1, 2)] == ["0 tasks", "1 task", "2 tasks"]
