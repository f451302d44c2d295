"""The `dp` command line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dp import config
from dp.engine import ExecutionContext, Orchestrator, RunResult, TaskRunResult
from dp.engine.orchestrator import plan_for_record
from dp.errors import DPError
from dp.loader import load_tasks
from dp.logs import configure_logging
from dp.planner import ExecutionPlan, Planner, type_name
from dp.store.records import (
    RunRecord,
    RunStatus,
    RunStore,
    TaskRunRecord,
    TaskStatus,
    is_stale,
    owner_of,
)

app = typer.Typer(
    name="dp",
    help="dp: event-driven data pipelines. Plan and run @task functions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


runs_app = typer.Typer(help="Inspect and resume recorded runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


@app.callback()
def _root() -> None:
    """dp: event-driven data pipelines. Plan and run @task functions."""


err_console = Console(stderr=True)

TargetArg = Annotated[
    str, typer.Argument(help="A .py file or importable module with @task functions.")
]
TagsOpt = Annotated[
    list[str] | None, typer.Option("--tags", "-t", help="Select tasks with this tag (repeatable).")
]
TaskOpt = Annotated[
    list[str] | None,
    typer.Option("--task", help="Select this task (repeatable); upstream comes too."),
]


def _fail(exc: Exception) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _plan(target: str, tags: list[str] | None, tasks: list[str] | None) -> ExecutionPlan:
    try:
        load_tasks(target)
        return Planner().create_execution_plan(tags=tags or None, task_names=tasks or None)
    except DPError as exc:
        raise _fail(exc) from exc


@app.command()
def plan(
    target: TargetArg,
    tags: TagsOpt = None,
    task: TaskOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Print the execution plan of the tasks in TARGET: order, levels, parameters, dag_id."""
    execution_plan = _plan(target, tags, task)
    if as_json:
        print(execution_plan.to_json(indent=2))
        return
    print_plan(execution_plan)


def print_plan(execution_plan: ExecutionPlan) -> None:
    """Render a plan for humans."""
    console = Console()
    tasks = execution_plan.tasks
    console.print(
        f"[bold]Plan[/] dag_id=[cyan]{execution_plan.dag_id}[/]  "
        f"{len(tasks)} tasks in {len(execution_plan.parallel_levels)} levels"
    )
    table = Table(show_header=True, header_style="bold")
    for column in ("#", "level", "task", "inputs", "returns", "after", "options"):
        table.add_column(column)
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
    console.print(table)
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


# --- running ---------------------------------------------------------------------------------

ParamOpt = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="A run parameter NAME=VALUE (repeatable)."),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers", "-w", min=1, help="Run tasks in N worker processes (process executor)."
    ),
]
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        "--executor",
        "-e",
        help="inline, inprocess (default) or process [env DP_EXECUTOR].",
        show_default=False,
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        help="Run store URL: sqlite:///PATH, postgresql://USER@HOST/DB or memory:// "
        "[env DP_STORE_URL; default sqlite:///ROOT/runs.db].",
        show_default=False,
    ),
]
BusOpt = Annotated[
    str | None,
    typer.Option(
        help="Event bus URL: memory:// or redis://HOST:PORT/DB [env DP_BUS_URL; default memory://].",
        show_default=False,
    ),
]
ResultsOpt = Annotated[
    str | None,
    typer.Option(
        help="Where results go: file://PATH or memory:// "
        "[env DP_RESULTS_URL; default file://ROOT/results].",
        show_default=False,
    ),
]
RootOpt = Annotated[
    Path,
    typer.Option("--root", envvar="DP_HOME", help="Home of the default run store and results."),
]

#: exit codes: 0 succeeded, 1 failed, 2 bad input, 3 partial (fail-safe tasks failed)
_EXIT = {RunStatus.SUCCEEDED: 0, RunStatus.PARTIAL: 3}


def _parse_params(pairs: list[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise _fail(DPError(f"--param {pair!r} must look like NAME=VALUE"))
        params[name.strip()] = value
    return params


def _settings(root: Path, **flags: str | int | None) -> config.Settings:
    """The backends: these flags, else DP_* variables, else dp.toml, else defaults."""
    try:
        return config.resolve(flags, home=root)
    except DPError as exc:
        raise _fail(exc) from exc


@app.command()
def run(
    ctx: typer.Context,
    target: TargetArg,
    tags: TagsOpt = None,
    task: TaskOpt = None,
    param: ParamOpt = None,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = None,
    store: StoreOpt = None,
    results: ResultsOpt = None,
    root: RootOpt = Path(".dp"),
) -> None:
    """Plan and run the tasks in TARGET once, with a live progress display."""
    configure_logging(level="WARNING")
    settings = _settings(root, store=store, results=results, executor=executor, workers=workers)
    execution_plan = _plan(target, tags, task)
    params = _parse_params(param)
    target_path = str(Path(target).resolve()) if target.endswith(".py") else target
    selection = {"tags": tags or [], "task_names": task or []}
    orchestrator = _orchestrator(ctx, settings)

    async def go() -> RunResult:
        try:
            return await orchestrator.start_pipeline(
                execution_plan, params, target=target_path, selection=selection
            )
        finally:
            await orchestrator.shutdown()

    result = _with_progress(orchestrator, execution_plan, go)
    _report(result, settings)


@runs_app.command("resume")
def runs_resume(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The interrupted run.")],
    workers: WorkersOpt = None,
    executor: ExecutorOpt = None,
    store: StoreOpt = None,
    results: ResultsOpt = None,
    root: RootOpt = Path(".dp"),
    force: Annotated[
        bool,
        typer.Option(help="Take over a run marked running on another host (that host is gone)."),
    ] = False,
) -> None:
    """Resume an interrupted run: tasks whose results are stored do not run again."""
    configure_logging(level="WARNING")
    settings = _settings(root, store=store, results=results, executor=executor, workers=workers)
    record = _get_run(_store(ctx, settings), run_id)
    try:
        execution_plan = plan_for_record(record)
    except DPError as exc:
        raise _fail(exc) from exc
    orchestrator = _orchestrator(ctx, settings)

    async def go() -> RunResult:
        try:
            return await orchestrator.resume_pipeline(run_id, plan=execution_plan, force=force)
        finally:
            await orchestrator.shutdown()

    result = _with_progress(orchestrator, execution_plan, go)
    _report(result, settings)


def _orchestrator(ctx: typer.Context, settings: config.Settings) -> Orchestrator:
    try:
        orchestrator = config.build_orchestrator(settings)
    except DPError as exc:
        raise _fail(exc) from exc
    if orchestrator.store is not None:
        ctx.call_on_close(orchestrator.store.close)  # its database connections
    return orchestrator


def _with_progress(
    orchestrator: Orchestrator,
    execution_plan: ExecutionPlan,
    go: Callable[[], Coroutine[Any, Any, RunResult]],
) -> RunResult:
    progress = _Progress(len(execution_plan.execution_order))
    orchestrator.listeners.append(progress)
    try:
        with progress.live():
            return asyncio.run(go())
    except DPError as exc:
        raise _fail(exc) from exc
    except KeyboardInterrupt:
        run_id = progress.run_id or "<run id>"
        err_console.print(f"[yellow]interrupted[/]: resume with `dp runs resume {run_id}`")
        raise typer.Exit(code=130) from None


class _Progress:
    """A RunListener that drives a rich progress bar: tasks done/total, running, failed."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.run_id: str | None = None
        self.state: dict[tuple[str, str], TaskStatus] = {}
        # kept up to date per change (not recounted), so updates cost O(1) however big the run
        self.open: dict[str, int] = {}  # task name -> instances not finished
        self.done = 0  # task names whose every instance finished
        self.running = 0
        self.failed = 0
        self.console = Console(stderr=True)
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

    def live(self) -> Progress:
        return self.bar

    def on_run_start(self, *, context: ExecutionContext, **_: Any) -> None:
        self.run_id = context.run_id
        self.console.print(
            f"run [cyan]{context.run_id}[/] started: {self.total} tasks, dag_id {context.dag_id}",
            highlight=False,
        )
        self.bar.update(self.bar_id, description=context.run_id)

    def on_task_update(self, *, task: TaskRunResult, **_: Any) -> None:
        before = self.state.get(task.key)
        after = self.state[task.key] = task.status
        self.running += (after == TaskStatus.RUNNING) - (before == TaskStatus.RUNNING)
        self.failed += (after == TaskStatus.FAILED) - (before == TaskStatus.FAILED)
        name = task.task_name
        if name not in self.open:  # a task seen for the first time counts as done until...
            self.open[name] = 0
            self.done += 1
        was_open = before is not None and before not in _FINISHED
        is_open = after not in _FINISHED
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


_FINISHED = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.SKIPPED, TaskStatus.CANCELLED)


def _report(result: RunResult, settings: config.Settings) -> None:
    console = Console()
    _print_task_table(console, [_row_of(r) for r in result.tasks.values()])
    colour = {RunStatus.SUCCEEDED: "green", RunStatus.PARTIAL: "yellow"}.get(result.status, "red")
    duration = f" in {result.duration:.2f}s" if result.duration is not None else ""
    console.print(
        f"run [cyan]{result.run_id}[/] [bold {colour}]{result.status.value}[/]{duration}",
        highlight=False,
    )
    if result.error:
        console.print(f"[red]{escape(result.error)}[/]", highlight=False)
    results = settings.results_path
    where = "in memory (gone when dp exits)" if results is None else results / result.run_id
    console.print(
        f"results: {where}   details: dp runs show {result.run_id}",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(code=_EXIT.get(result.status, 1))


# --- inspecting runs --------------------------------------------------------------------------


def _store(ctx: typer.Context, settings: config.Settings) -> RunStore:
    """The run store to read earlier runs from: it must exist already."""
    try:
        store = config.open_store(settings, must_exist=True)
    except DPError as exc:
        raise _fail(exc) from exc
    ctx.call_on_close(store.close)  # its database connections
    return store


def _get_run(store: RunStore, run_id: str) -> RunRecord:
    try:
        return store.get_run(run_id)
    except DPError as exc:
        raise _fail(exc) from exc


@runs_app.command("list")
def runs_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    pipeline: Annotated[str | None, typer.Option(help="Only runs of this pipeline.")] = None,
    limit: Annotated[int, typer.Option(help="How many runs to show.")] = 20,
    store: StoreOpt = None,
    root: RootOpt = Path(".dp"),
) -> None:
    """List recent runs, newest first."""
    run_store = _store(ctx, _settings(root, store=store))
    try:
        records = run_store.list_runs(
            status=RunStatus(status) if status else None, pipeline=pipeline, limit=limit
        )
    except ValueError as exc:
        raise _fail(
            DPError(f"unknown status {status!r}; one of {[s.value for s in RunStatus]}")
        ) from exc
    table = Table(show_header=True, header_style="bold")
    for column in ("run id", "pipeline", "status", "trigger", "started", "duration"):
        table.add_column(column, no_wrap=column in ("run id", "started"))
    stale = [record.run_id for record in records if is_stale(record)]
    for record in records:
        status_text = _status_text(record.status.value)
        if record.run_id in stale:
            status_text += " [magenta](stale)[/]"
        table.add_row(
            record.run_id,
            escape(Path(record.pipeline).name if record.pipeline else ""),
            status_text,
            escape(record.trigger),
            f"{record.started_at:%Y-%m-%d %H:%M:%S}" if record.started_at else "",
            _duration(record.started_at, record.finished_at),
        )
    Console().print(table)
    if stale:
        Console().print(
            f"stale: the owner of {len(stale)} run(s) is gone; resume one with "
            f"`dp runs resume {stale[0]}`",
            highlight=False,
        )


@runs_app.command("show")
def runs_show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run to show.")],
    attempts: Annotated[
        bool, typer.Option("--attempts", help="List every attempt of every task.")
    ] = False,
    store: StoreOpt = None,
    root: RootOpt = Path(".dp"),
) -> None:
    """Show a run and the status, attempts, duration and error of each task."""
    run_store = _store(ctx, _settings(root, store=store))
    record = _get_run(run_store, run_id)
    console = Console()
    console.print(
        f"run [cyan]{record.run_id}[/] {_status_text(record.status.value)}  "
        f"dag_id {record.dag_id}  trigger {escape(record.trigger)}",
        highlight=False,
    )
    console.print(f"pipeline: {escape(record.pipeline)}", highlight=False)
    host, pid = owner_of(record)
    if host is not None:
        console.print(f"owner: {escape(host)} pid {pid}, epoch {record.epoch}", highlight=False)
    if is_stale(record):
        console.print(
            f"[magenta]stale[/]: its owner is gone; resume it with `dp runs resume {run_id}`",
            highlight=False,
        )
    if record.params:
        console.print(f"params: {escape(repr(record.params))}", highlight=False)
    if record.error:
        console.print(f"[red]{escape(record.error)}[/]", highlight=False)
    if attempts:
        _print_attempts(console, run_store.get_attempts(run_id))
        return
    rows = [
        (r.task_name, r.instance, r.status.value, r.attempt, r.duration, r.error)
        for r in run_store.get_task_runs(run_id)
    ]
    _print_task_table(console, rows)


def _print_attempts(console: Console, attempts: list[TaskRunRecord]) -> None:
    table = Table(show_header=True, header_style="bold")
    for column in ("task", "attempt", "status", "started", "duration", "where", "error"):
        table.add_column(column)
    for a in attempts:
        table.add_row(
            escape(a.task_name + (f"[{a.instance}]" if a.instance else "")),
            str(a.attempt),
            _status_text(a.status.value),
            f"{a.started_at:%H:%M:%S}" if a.started_at else "",
            "" if a.duration is None else f"{a.duration * 1000:.1f} ms",
            escape(f"{a.host}:{a.pid}" if a.host else ""),
            escape(a.error or ""),
        )
    console.print(table)


@runs_app.command("logs")
def runs_logs(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run.")],
    task_name: Annotated[str | None, typer.Argument(help="Only this task.")] = None,
    attempt: Annotated[
        int | None, typer.Option(help="Only this attempt (1 is the first); default: the last.")
    ] = None,
    store: StoreOpt = None,
    root: RootOpt = Path(".dp"),
) -> None:
    """Print what each task printed, and the traceback of each failure."""
    run_store = _store(ctx, _settings(root, store=store))
    _get_run(run_store, run_id)
    if attempt is None:
        rows = [r for r in run_store.get_task_runs(run_id) if task_name in (None, r.task_name)]
    else:
        rows = [
            r
            for r in run_store.get_attempts(run_id)
            if task_name in (None, r.task_name) and r.attempt == attempt
        ]
    if task_name is not None and not rows:
        which = f" attempt {attempt} of" if attempt is not None else ""
        raise _fail(DPError(f"run {run_id!r} has no{which} task {task_name!r}."))
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


def _print_task_table(
    console: Console, rows: list[tuple[str, str, str, int, float | None, str | None]]
) -> None:
    table = Table(show_header=True, header_style="bold")
    for column in ("task", "status", "attempts", "duration", "error"):
        table.add_column(column)
    for name, instance, status, attempts, duration, error in rows:
        table.add_row(
            escape(name + (f"[{instance}]" if instance else "")),
            _status_text(status),
            str(attempts),
            "" if duration is None else f"{duration * 1000:.1f} ms",
            escape(error or ""),
        )
    console.print(table)


def _row_of(result: TaskRunResult) -> tuple[str, str, str, int, float | None, str | None]:
    return (
        result.task_name,
        result.instance,
        result.status.value,
        result.attempts,
        result.duration,
        result.error,
    )


def _status_text(status: str) -> str:
    colour = {
        "succeeded": "green",
        "running": "cyan",
        "queued": "cyan",
        "partial": "yellow",
        "skipped": "yellow",
        "interrupted": "magenta",
    }.get(status, "red")
    return f"[{colour}]{status}[/]"


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return f"{(end - start).total_seconds():.2f}s"


# --- serving ---------------------------------------------------------------------------------


@app.command()
def serve(
    target: TargetArg,
    host: Annotated[
        str, typer.Option(help="Address to listen on; without a token, loopback only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8080,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="DP_API_TOKEN",
            help="Bearer token that POST requests must carry (prefer the environment variable).",
            show_default=False,
        ),
    ] = None,
    root: RootOpt = Path(".dp"),
    workers: WorkersOpt = None,
    executor: ExecutorOpt = None,
    store: StoreOpt = None,
    bus: BusOpt = None,
    results: ResultsOpt = None,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds running pipelines may finish in on shutdown.")
    ] = 30.0,
    max_concurrent_pipelines: Annotated[
        int, typer.Option(min=1, help="Runs executing at once; more wait in a queue.")
    ] = 8,
    max_queued_pipelines: Annotated[
        int, typer.Option(min=0, help="Runs allowed to wait; beyond, starts get HTTP 429.")
    ] = 100,
) -> None:
    """Serve the pipelines in TARGET: cron and event triggers, and the HTTP API (/docs)."""
    from dp.service.server import serve as serve_forever

    settings = _settings(
        root, store=store, bus=bus, results=results, executor=executor, workers=workers
    )
    try:
        serve_forever(
            target,
            host=host,
            port=port,
            token=token,
            root=root,
            settings=settings,
            grace=grace,
            max_concurrent_pipelines=max_concurrent_pipelines,
            max_queued_pipelines=max_queued_pipelines,
        )
    except DPError as exc:
        raise _fail(exc) from exc


# --- configuration -----------------------------------------------------------------------------


@app.command("config")
def show_config(
    store: StoreOpt = None,
    bus: BusOpt = None,
    results: ResultsOpt = None,
    executor: ExecutorOpt = None,
    workers: WorkersOpt = None,
    root: RootOpt = Path(".dp"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the settings as JSON.")] = False,
) -> None:
    """Print the backends dp would use here, and where each setting came from.

    Flags beat DP_* environment variables, which beat dp.toml (or [tool.dp] in
    pyproject.toml, the nearest from here upward), which beats the defaults. Passwords are
    masked.
    """
    settings = _settings(
        root, store=store, bus=bus, results=results, executor=executor, workers=workers
    )
    values = settings.masked()
    if as_json:
        print(
            json.dumps(
                {
                    "file": None if settings.file is None else str(settings.file),
                    "settings": {
                        name: {"value": value, "source": settings.source(name)}
                        for name, value in values.items()
                    },
                },
                indent=2,
            )
        )
        return
    if settings.file is None:
        print(f"config file: none (no dp.toml or pyproject.toml [tool.dp] from {Path.cwd()} up)")
    else:
        print(f"config file: {settings.file}")
    shown = {name: "-" if value is None else str(value) for name, value in values.items()}
    width = max(len(value) for value in shown.values())
    for name, value in shown.items():
        print(f"{name:<9} {value:<{width}}  {settings.source(name)}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
