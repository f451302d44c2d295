"""How the command line words counts and durations, and lays out its tables."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from dp.display import duration_text, plural, print_attempts, print_runs
from dp.store.records import RunRecord, RunStatus, TaskRunRecord, TaskStatus


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


def _runs(pipeline: str) -> list[RunRecord]:
    return [
        RunRecord(
            run_id="20261206-052351-f0ed5583",
            dag_id="0ea9c9887cb1543e",
            pipeline=pipeline,
            status=RunStatus.FAILED,
            trigger="manual",
        )
    ]


def _attempts(error: str) -> list[TaskRunRecord]:
    return [
        TaskRunRecord(
            run_id="r",
            task_name="failing_task_with_a_long_name",
            status=TaskStatus.FAILED,
            attempt=n,
            error=error,
            host="vm",
            pid=17447,
        )
        for n in (1, 2)
    ]


ERROR = "ValueError: this is a rather long error message that explains what went wrong"


def test_in_a_pipe_a_run_is_one_whole_line() -> None:
    """`dp runs list | grep` sees each run's id and pipeline whole, on its line, at any width."""
    out = io.StringIO()
    print_runs(Console(file=out, width=80), _runs("/srv/jobs/long_pipeline_name_example.py"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].split()[0] == "20261206-052351-f0ed5583"
    assert lines[1].split()[-1] == "long_pipeline_name_example.py"


def test_on_an_80_column_terminal_every_column_and_every_word_shows() -> None:
    """Narrow terminals fold the long columns onto more lines: nothing vanishes or is cut."""
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    print_runs(console, _runs("long_pipeline_name_example.py"))
    print_attempts(console, _attempts(ERROR))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    text = out.getvalue()
    assert "20261206-052351-f0ed5583" in text
    assert "pipeline" in lines[0]
    for word in ERROR.split():  # whole words: folded at spaces, not into 2-letter fragments
        assert word in text, word
