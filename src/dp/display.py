"""How the `dp` command line shows plans, live progress, runs and results to people.

Everything here renders with rich and fits an 80-column terminal: tables have no borders,
the columns that cannot be shortened (ids, times) never wrap, and only the last, free-text
column folds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dp.engine import ExecutionContext, RunResult, TaskRunResult
from dp.planner import ExecutionPlan, type_name
from dp.store.records import RunRecord, TaskRunRecord, TaskStatus, is_stale

__all__ = [
    "TaskRow",
    "duration_text",
    "plural",
    "print_plan",
    "print_runs",
    "print_task_table",
    "status_text",
]

#: task, instance, status, attempts, duration in seconds, error
TaskRow = tuple[str, str, str, int, float | None, str | None]


def plural(count: int, word: str) -> str:
    """`1 task`, `3 tasks`."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def duration_text(seconds: float | None) -> str:
    """A duration for people: `1.9 ms`, `8.00 s`, `2m 05s`, `1h 02m`; `""` when unknown."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def status_text(status: str) -> str:
    """`status` in its colour, as rich markup."""
    colour = {
        "succeeded": "green",
        "running": "cyan",
        "queued": "cyan",
        "pending": "cyan",
        "partial": "yellow",
        "skipped": "yellow",
        "interrupted": "magenta",
        "lost": "magenta",
        "stale": "magenta",
    }.get(status, "red")
    return f"[{colour}]{status}[/]"


#: the narrowest a wrapping column gets on a narrow terminal: text folds onto more lines
#: instead of becoming a column of two-letter fragments or vanishing
#: (the widths are chosen so `dp runs list` and `dp runs show --attempts` fit 80 columns)
_MIN_WRAPPED = {"error": 16, "pipeline": 10, "task": 10, "inputs": 12, "trigger": 7}


def _table(*columns: str, wrap: Sequence[str] = ()) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    for column in columns:
        wraps = column in wrap
        table.add_column(
            column,
            no_wrap=not wraps,
            overflow="fold" if wraps else "ellipsis",
            min_width=_MIN_WRAPPED.get(column) if wraps else None,
        )
    return table


def _print_table(console: Console, table: Table) -> None:
    """On a terminal, fit its width; in a pipe or a file, never wrap or cut: a line per row,
    whole, for grep and cut (rich would assume 80 columns)."""
    if console.is_terminal:
        console.print(table)
        return
    width = console.width
    console.width = 10_000  # print's own width= is capped at the console's width
    try:
        console.print(table, crop=False)
    finally:
        console.width = width


def print_plan(console: Console, execution_plan: ExecutionPlan) -> None:
    """Render a plan: a table of tasks, the parallel levels and the run parameters."""
    tasks = execution_plan.tasks
    console.print(
        f"[bold]Plan[/] dag_id=[cyan]{execution_plan.dag_id}[/]  "
        f"{plural(len(tasks), 'task')} in "
        f"{plural(len(execution_plan.parallel_levels), 'level')}"
    )
    table = _table("#", "level", "task", "inputs", "returns", "after", "options", wrap=("inputs",))
    level_of = {name: i for i, level in enumerate(execution_plan.parallel_levels) for name in level}
    data_edges: dict[str, list[str]] = {}
    control_edges: dict[str, list[str]] = {}
    for edge in execution_plan.edges:
        if edge.kind == "data":
            label = (
                edge.upstream
                + {"value": "", "chunk": " (each chunk)", "collect": " (all)"}[edge.mode]
            )
            data_edges.setdefault(edge.downstream, []).append(label)
        else:
            control_edges.setdefault(edge.downstream, []).append(edge.upstream)
    for i, name in enumerate(execution_plan.execution_order, 1):
        meta = tasks[name]
        options = []
        if meta.stream_output:
            options.append("stream")
        if meta.max_retries:
            options.append(f"retries={meta.max_retries}")
        if meta.timeout:
            options.append(f"timeout={meta.timeout:g}s")
        if meta.fail_safe:
            options.append("fail_safe")
        if meta.is_async:
            options.append("async")
        cells = (
            str(i),
            str(level_of[name]),
            name,
            ", ".join(data_edges.get(name, [])),
            type_name(meta.output_schema),
            ", ".join(control_edges.get(name, [])),
            " ".join(options),
        )
        table.add_row(*(escape(cell) for cell in cells))
    _print_table(console, table)
    console.print("[bold]Parallel levels[/]")
    for i, level in enumerate(execution_plan.parallel_levels):
        console.print(f"  {i}: {', '.join(level)}", highlight=False)
    if execution_plan.run_parameters:
        console.print("[bold]Run parameters[/] (pass with --param NAME=VALUE)")
        for param in execution_plan.run_parameters:
            need = "required" if param.required else f"default {param.default!r}"
            console.print(
                escape(
                    f"  {param.name}: {type_name(param.annotation)} ({need}; "
                    f"used by {', '.join(param.tasks)})"
                ),
                highlight=False,
            )
    else:
        console.print("[bold]Run parameters[/] none")


def task_row(result: TaskRunResult) -> TaskRow:
    """The table row of one task's final state."""
    return (
        result.task_name,
        result.instance,
        result.status.value,
        result.attempts,
        result.duration,
        result.error,
    )


def print_task_table(console: Console, rows: Sequence[TaskRow]) -> None:
    """One line per task (instance): status, attempts, duration, error."""
    table = _table("task", "status", "attempts", "duration", "error", wrap=("task", "error"))
    for name, instance, status, attempts, duration, error in rows:
        table.add_row(
            escape(name + (f"[{instance}]" if instance else "")),
            status_text(status),
            str(attempts),
            duration_text(duration),
            escape(error or ""),
        )
    _print_table(console, table)


def print_attempts(console: Console, attempts: Sequence[TaskRunRecord]) -> None:
    """One line per attempt of each task: number, status, start, duration, where, error."""
    table = _table(
        "task", "attempt", "status", "started", "duration", "where", "error", wrap=("task", "error")
    )
    for a in attempts:
        table.add_row(
            escape(a.task_name + (f"[{a.instance}]" if a.instance else "")),
            str(a.attempt),
            status_text(a.status.value),
            f"{a.started_at:%H:%M:%S}" if a.started_at else "",
            duration_text(a.duration),
            escape(f"{a.host}:{a.pid}" if a.host else f"queue {a.queue}" if a.queue else ""),
            escape(a.error or ""),
        )
    _print_table(console, table)


def print_runs(console: Console, records: Sequence[RunRecord]) -> None:
    """One line per run, newest first; fits 80 columns with default run ids."""
    table = _table(
        "run id",
        "status",
        "started",
        "duration",
        "trigger",
        *(["for"] if (timed := any(r.scheduled_for for r in records)) else []),
        "pipeline",
        wrap=("trigger", "for", "pipeline"),
    )
    for record in records:
        # a run whose owner is gone says "running" in the store: show what it really is
        table.add_row(
            escape(record.run_id),
            status_text("stale" if is_stale(record) else record.status.value),
            f"{record.started_at:%m-%d %H:%M}" if record.started_at else "",
            _between(record.started_at, record.finished_at),
            escape(record.trigger),
            # the time a cron run is for, in its zone: a column only when a listed run has one
            *([escape(scheduled_text(record, "%m-%d %H:%M %Z"))] if timed else []),
            escape(pipeline_label(record.pipeline)),
        )
    _print_table(console, table)


def scheduled_text(record: RunRecord, form: str = "%Y-%m-%d %H:%M:%S %Z") -> str:
    """A run's scheduled time in its schedule's zone (`2026-03-29 00:00:00 CET`); "" if none."""
    when = record.scheduled_for
    if when is None:
        return ""
    try:
        from zoneinfo import ZoneInfo

        when = when.astimezone(ZoneInfo(record.schedule_tz or "UTC"))
    except (ValueError, KeyError):  # a zone this machine does not know: show UTC
        pass
    return when.strftime(form)


def reused_by_run(record: RunRecord) -> dict[str, list[str]]:
    """A retry's reused tasks, by the run whose results they read."""
    reused = record.metadata.get("reused")
    found: dict[str, list[str]] = {}
    if isinstance(reused, dict):
        for name, source in reused.items():
            found.setdefault(str(source), []).append(str(name))
    return found


def lineage_lines(record: RunRecord) -> list[str]:
    """What `dp runs show` says about a run's time and lineage."""
    lines = []
    if record.scheduled_for is not None:
        zone = record.schedule_tz or "UTC"
        lines.append(f"scheduled for: {scheduled_text(record)} ({zone})")
    if record.parent_run_id is not None:
        retry = record.metadata.get("retry")
        start = retry.get("from") if isinstance(retry, dict) else None
        suffix = f", from task {start}" if start else ""
        lines.append(f"retry of: {record.parent_run_id}{suffix}")
        for source, names in reused_by_run(record).items():
            lines.append(f"reused from {source}: {', '.join(names)}")
    return lines


def pipeline_label(pipeline: str) -> str:
    """A run's pipeline as `dp runs list` shows it (and `--pipeline` accepts): a task file by
    its file name, anything else (a pipeline name, a module) as it is."""
    return Path(pipeline).name if pipeline.endswith(".py") else pipeline


def _between(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return duration_text((end - start).total_seconds())


class LiveProgress:
    """A RunListener that drives a rich progress bar: tasks done/total, running, failed."""

    def __init__(self, total: int, console: Console) -> None:
        self.total = total
        self.run_id: str | None = None  # once the run started: what to resume after Ctrl-C
        self.state: dict[tuple[str, str], TaskStatus] = {}
        # kept up to date per change (not recounted), so updates cost O(1) however big the run
        self.open: dict[str, int] = {}  # task name -> instances not finished
        self.done = 0  # task names whose every instance finished
        self.running = 0
        self.failed = 0
        self.console = console
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} tasks"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.bar_id = self.bar.add_task("run", total=total, detail="")

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        """Show the bar from the run's start to the end of the block: a run refused before it
        starts (e.g. resuming a finished run) prints its error without an empty bar."""
        try:
            yield
        finally:
            if self.run_id is not None:
                self.bar.stop()

    def on_run_start(self, *, context: ExecutionContext, **_: Any) -> None:
        self.run_id = context.run_id
        self.console.print(
            f"run [cyan]{context.run_id}[/] started: {plural(self.total, 'task')}, "
            f"dag_id {context.dag_id}",
            highlight=False,
        )
        self.bar.update(self.bar_id, description=context.run_id)
        self.bar.start()

    def on_task_update(self, *, task: TaskRunResult, **_: Any) -> None:
        before = self.state.get(task.key)
        after = self.state[task.key] = task.status
        self.running += (after == TaskStatus.RUNNING) - (before == TaskStatus.RUNNING)
        self.failed += (after == TaskStatus.FAILED) - (before == TaskStatus.FAILED)
        name = task.task_name
        if name not in self.open:  # a task seen for the first time counts as done until...
            self.open[name] = 0
            self.done += 1
        was_open = before is not None and not before.finished
        is_open = not after.finished
        if is_open and not was_open:  # ...one of its instances is running
            if self.open[name] == 0:
                self.done -= 1
            self.open[name] += 1
        elif was_open and not is_open:
            self.open[name] -= 1
            if self.open[name] == 0:
                self.done += 1
        failed = f", [red]{self.failed} failed[/]" if self.failed else ""
        self.bar.update(self.bar_id, completed=self.done, detail=f"{self.running} running{failed}")

    def on_run_end(self, *, result: RunResult, **_: Any) -> None:
        self.bar.update(self.bar_id, completed=self.total if result.ok else None)
