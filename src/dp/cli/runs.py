"""`dp runs list|show|logs|result|verify|cancel`: the runs recorded in the run store.

`dp runs resume` runs a pipeline again, so it is written beside `dp run` in `dp.cli.run`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.pretty import Pretty

from dp import config
from dp.cli.common import (
    ResultsOpt,
    RootOpt,
    StoreOpt,
    dp_command,
    fail,
    get_run,
    open_store,
    run_results,
    settings_for,
)
from dp.cli.results import runs_verify
from dp.cli.run import runs_resume, runs_retry
from dp.display import (
    lineage_lines,
    pipeline_label,
    plural,
    print_attempts,
    print_runs,
    print_task_table,
    status_text,
)
from dp.engine.retry import reused_map, stored_in
from dp.engine.takeover import cancel_recorded
from dp.errors import CLIError, DPError
from dp.jsonable import jsonable
from dp.store.records import HOST, RunStatus, TaskRunRecord, TaskStatus, is_stale, owner_of

__all__ = ["runs_app"]

runs_app = typer.Typer(
    help="Inspect, resume and retry recorded runs.", no_args_is_help=True, rich_markup_mode=None
)
runs_app.command("resume")(runs_resume)
runs_app.command("retry")(runs_retry)
runs_app.command("verify")(runs_verify)


@runs_app.command("cancel")
def runs_cancel(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to cancel.")],
    store: StoreOpt = None,
    root: RootOpt = Path(".dp"),
) -> None:
    """Cancel a run that has not finished, whoever owns it: a stale or interrupted run (its
    owner died or stopped) ends cancelled at once; a live owner (a `dp serve`, a `dp run`) is
    fenced, starts nothing more and stops within a third of its lease."""
    settings = settings_for(root, store=store)
    run_store = open_store(ctx, settings)
    before = get_run(run_store, run_id)
    try:
        record = cancel_recorded(run_store, run_id, by=f"dp runs cancel ({HOST}:{os.getpid()})")
    except DPError as exc:
        raise fail(exc) from exc
    host, pid = owner_of(before)
    live = before.status.live and not is_stale(before)
    owner = f" (its owner {host}:{pid} is fenced and stops)" if live else ""
    print(f"run {run_id} {record.status.value}; it was {before.status.value}{owner}")


@runs_app.command("list")
def runs_list(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(metavar="STATUS", help="Only runs with this status.")
    ] = None,
    pipeline: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="Only runs of this pipeline (or task file, e.g. sales.py)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, metavar="N", help="How many runs to show.")] = 20,
    store: StoreOpt = None,
    root: RootOpt = Path(".dp"),
) -> None:
    """List recent runs, newest first."""
    run_store = open_store(ctx, settings_for(root, store=store))
    try:
        wanted = RunStatus(status) if status else None
    except ValueError as exc:
        raise fail(
            CLIError(f"unknown status {status!r}; one of {', '.join(s.value for s in RunStatus)}.")
        ) from exc
    if pipeline is None:
        records = run_store.list_runs(status=wanted, limit=limit)
    else:
        # a task file's runs are recorded under its file name (older dp: its absolute path)
        names = {pipeline, pipeline_label(pipeline), str(Path(pipeline).resolve())}
        found = [
            r
            for name in names
            for r in run_store.list_runs(status=wanted, pipeline=name, limit=limit)
        ]
        found.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        records = found[:limit]
    console = Console()
    if not records:
        what = " and ".join(
            f"{option} {value}"
            for option, value in (("--status", status), ("--pipeline", pipeline))
            if value
        )
        console.print(
            f"no runs match {what} in {root}." if what else f"no runs recorded in {root} yet.",
            highlight=False,
        )
        return
    print_runs(console, records)
    stale = [record.run_id for record in records if is_stale(record)]
    if stale:
        console.print(
            f"stale: the owner of {plural(len(stale), 'run')} is gone; resume with "
            f"`{dp_command()} runs resume {stale[0]}`",
            highlight=False,
        )


@runs_app.command("show")
def runs_show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to show.")],
    attempts: Annotated[
        bool, typer.Option("--attempts", help="List every attempt of every task.")
    ] = False,
    store: StoreOpt = None,
    root: RootOpt = Path(".dp"),
) -> None:
    """Show a run and the status, attempts, duration and error of each task."""
    run_store = open_store(ctx, settings_for(root, store=store))
    record = get_run(run_store, run_id)
    console = Console()
    console.print(
        f"run [cyan]{record.run_id}[/] {status_text(record.status.value)}  "
        f"dag_id {record.dag_id}  trigger {escape(record.trigger)}",
        highlight=False,
    )
    console.print(f"pipeline: {escape(record.pipeline)}", highlight=False)
    for line in lineage_lines(record):
        console.print(escape(line), highlight=False, soft_wrap=True)
    if record.results:
        console.print(f"results: {escape(record.results)}", highlight=False, soft_wrap=True)
    host, pid = owner_of(record)
    if host is not None:
        console.print(f"owner: {escape(host)} pid {pid}, epoch {record.epoch}", highlight=False)
    if is_stale(record):
        console.print(
            f"[magenta]stale[/]: its owner is gone; resume it with `dp runs resume {run_id}`",
            highlight=False,
        )
    if record.params:
        console.print(f"params: {escape(json.dumps(record.params))}", highlight=False)
    if record.error:
        console.print(f"[red]{escape(record.error)}[/]", highlight=False)
    if attempts:
        print_attempts(console, run_store.get_attempts(run_id))
        return
    task_runs = run_store.get_task_runs(run_id)
    lost = _lost_attempts(run_store.get_attempts(run_id)) if _retried(task_runs) else {}
    reused = reused_map(record)
    rows = [
        (
            r.task_name,
            r.instance,
            r.status.value,
            r.attempt,
            r.duration,
            "; ".join(
                filter(
                    None,
                    (
                        f"reused from {reused[r.task_name]}" if r.task_name in reused else None,
                        r.error or _where(r),
                        *lost.get((r.task_name, r.instance), ()),
                    ),
                )
            ),
        )
        for r in task_runs
    ]
    print_task_table(console, rows)


@runs_app.command("logs")
def runs_logs(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run.")],
    task_name: Annotated[
        str | None, typer.Argument(metavar="[TASK]", help="Only this task.")
    ] = None,
    attempt: Annotated[
        int | None, typer.Option(help="Only this attempt (1 is the first); default: the last.")
    ] = None,
    store: StoreOpt = None,
    root: RootOpt = Path(".dp"),
) -> None:
    """Print what each task printed, and the traceback of each failure."""
    run_store = open_store(ctx, settings_for(root, store=store))
    get_run(run_store, run_id)
    if attempt is None:
        rows = [r for r in run_store.get_task_runs(run_id) if task_name in (None, r.task_name)]
    else:
        rows = [
            r
            for r in run_store.get_attempts(run_id)
            if task_name in (None, r.task_name) and r.attempt == attempt
        ]
    if task_name is not None and not rows:
        if attempt is not None:
            raise fail(CLIError(f"run {run_id!r} has no attempt {attempt} of task {task_name!r}."))
        raise fail(_no_such_task(run_id, task_name, run_store))
    console = Console()
    for row in rows:
        label = row.task_name + (f"[{row.instance}]" if row.instance else "")
        console.rule(f"{escape(label)} ({row.status.value}, attempt {row.attempt})")
        if row.output:
            console.print(
                escape(row.output), end="" if row.output.endswith("\n") else "\n", highlight=False
            )
        if row.traceback:
            console.print(f"[red]{escape(row.traceback)}[/]", highlight=False)
        if not row.output and not row.traceback:
            console.print("[dim](no output)[/]")


def _where(record: TaskRunRecord) -> str | None:
    """Where a task sent to a broker is: waiting in its queue, held by a worker that has not
    started it, or running on a worker (the Celery executor records each)."""
    if record.queue is None:
        return None
    worker = f"worker {record.host} pid {record.pid}" if record.host else None
    if record.status == TaskStatus.QUEUED:
        if worker is None:
            return f"queued on {record.queue} (no worker has taken it yet)"
        return f"queued on {record.queue}, held by {worker} (not started yet)"
    if record.status == TaskStatus.RUNNING and worker is not None:
        return f"running on {worker}"
    return None


def _retried(records: list[TaskRunRecord]) -> bool:
    return any(r.attempt > 1 for r in records)


def _lost_attempts(attempts: list[TaskRunRecord]) -> dict[tuple[str, str], list[str]]:
    """Per task, a line for each attempt lost with its worker and dispatched again."""
    lost: dict[tuple[str, str], list[str]] = {}
    for a in attempts:
        if a.status == TaskStatus.LOST:
            where = f"worker {a.host} pid {a.pid}" if a.host else "its worker"
            lost.setdefault((a.task_name, a.instance), []).append(
                f"attempt {a.attempt} lost with {where}, dispatched again"
            )
    return lost


def _no_such_task(run_id: str, task_name: str, store: Any) -> CLIError:
    names = sorted({r.task_name for r in store.get_task_runs(run_id)})
    return CLIError(
        f"run {run_id!r} has no task {task_name!r}; its tasks are {', '.join(names) or 'none'}."
    )


@runs_app.command("result")
def runs_result(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run.")],
    task_name: Annotated[
        str, typer.Argument(metavar="TASK", help="The task whose result to print.")
    ],
    chunk: Annotated[
        int | None,
        typer.Option(min=0, metavar="N", help="Only chunk N (from 0) of a streaming task."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    store: StoreOpt = None,
    results: ResultsOpt = None,
    root: RootOpt = Path(".dp"),
) -> None:
    """Print the result a task stored in a run (each chunk, for a streaming or mapped task)."""
    settings = settings_for(root, store=store, results=results)
    run_store = open_store(ctx, settings)
    record = get_run(run_store, run_id)
    settings = run_results(settings, record, results)
    rows = [r for r in run_store.get_task_runs(run_id) if r.task_name == task_name]
    if not rows:
        raise fail(_no_such_task(run_id, task_name, run_store))
    result_ids = [rid for row in rows for rid in row.result_ids]
    if not result_ids:
        states = ", ".join(sorted({r.status.value for r in rows}))
        raise fail(
            CLIError(
                f"task {task_name!r} of run {run_id!r} stored no result (it is {states}); "
                f"{dp_command()} runs show {run_id} says why."
            )
        )
    streamed = len(result_ids) > 1 or any(r.instance for r in rows)
    if chunk is not None:
        if chunk >= len(result_ids):
            raise fail(
                CLIError(
                    f"task {task_name!r} of run {run_id!r} stored "
                    f"{plural(len(result_ids), 'chunk')}; --chunk takes 0 to {len(result_ids) - 1}."
                )
            )
        result_ids = [result_ids[chunk]]
        streamed = False
    try:
        io_manager = config.open_results(settings)
        source = stored_in(record, task_name)  # a retry reads reused results where they are
        values = [io_manager.load(source, task_name, rid) for rid in result_ids]
    except DPError as exc:
        raise fail(exc) from exc
    value: Any = values if streamed else values[0]
    if as_json:
        print(json.dumps(jsonable(value), indent=2))
    elif isinstance(value, str):
        print(value)
    else:
        Console().print(Pretty(value))
