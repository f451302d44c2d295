"""The `dp` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Coroutine
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.pretty import Pretty
from rich.text import Text

from dp import cli_worker, config
from dp.cli_events import events_app
from dp.display import (
    LiveProgress,
    duration_text,
    pipeline_label,
    plural,
    print_attempts,
    print_plan,
    print_runs,
    print_task_table,
    status_text,
    task_row,
)
from dp.engine import Orchestrator, RunResult
from dp.engine.orchestrator import plan_for_record
from dp.errors import CLIError, DPError, ListenError
from dp.loader import load_tasks
from dp.logs import configure_logging, uncaptured
from dp.planner import ExecutionPlan, Planner
from dp.store.records import (
    RunRecord,
    RunStatus,
    RunStore,
    is_stale,
    owner_of,
)

app = typer.Typer(
    name="dp",
    help="dp: event-driven data pipelines. Plan and run @task functions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: full option names, no `<bool>` type column
)


runs_app = typer.Typer(
    help="Inspect and resume recorded runs.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(runs_app, name="runs")
app.add_typer(events_app, name="events")


def _dp_version() -> str:
    try:
        return version("dp")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        print(f"dp {_dp_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print dp's version."
        ),
    ] = False,
) -> None:
    """dp: event-driven data pipelines. Plan and run @task functions."""


err_console = Console(stderr=True)

TargetArg = Annotated[
    str,
    typer.Argument(metavar="TARGET", help="A .py file or importable module with @task functions."),
]
TagsOpt = Annotated[
    list[str] | None,
    typer.Option("--tags", "-t", metavar="TAG", help="Select tasks with this tag (repeatable)."),
]
TaskOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--task", metavar="NAME", help="Select this task (repeatable); upstream comes too."
    ),
]


def _fail(exc: Exception, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=code)


def _plan(target: str, tags: list[str] | None, tasks: list[str] | None) -> ExecutionPlan:
    try:
        load_tasks(target)
        execution_plan = Planner().create_execution_plan(
            tags=tags or None, task_names=tasks or None
        )
    except DPError as exc:
        raise _fail(exc) from exc
    if not execution_plan.execution_order:
        raise _fail(
            CLIError(
                f"{target!r} defines no @task functions; decorate a function with @task "
                "(from dp import task) and plan it again."
            )
        )
    return execution_plan


def _command() -> str:
    """How to call dp again, as this process was called: `dp` when that is on PATH, else the
    path it was started by (e.g. `.venv/bin/dp` after `make run`)."""
    argv0 = sys.argv[0]
    if Path(argv0).name != "dp":
        return "dp"  # python -m dp.cli, or a test runner
    on_path = shutil.which("dp")
    if on_path and Path(on_path).resolve() == Path(argv0).resolve():
        return "dp"
    if not Path(argv0).is_absolute():
        return argv0
    relative = os.path.relpath(argv0)
    return argv0 if relative.startswith("..") else relative


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
    print_plan(Console(), execution_plan)


# --- running ---------------------------------------------------------------------------------

ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        "-p",
        metavar="NAME=VALUE",
        help="A run parameter (repeatable); lists and dicts as JSON, e.g. ids=[1,2].",
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        "-w",
        min=1,
        metavar="N",
        help="Run tasks in N worker processes (with -e inprocess: at most N threads).",
    ),
]
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        "--executor",
        "-e",
        metavar="NAME",
        help="inline, inprocess (default; alias threads), process (alias processes) or "
        "celery (tasks go to `dp worker`s) [env DP_EXECUTOR].",
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
        help="Where results go: file://PATH, s3://BUCKET/PREFIX or memory:// "
        "[env DP_RESULTS_URL; default file://ROOT/results].",
        show_default=False,
    ),
]
RootOpt = Annotated[
    Path,
    typer.Option(
        "--root",
        envvar="DP_HOME",
        metavar="DIR",
        help="Home of the default run store and results.",
    ),
]

#: exit codes: 0 succeeded, 1 failed, 2 bad input, 3 partial (fail-safe tasks failed)
_EXIT = {RunStatus.SUCCEEDED: 0, RunStatus.PARTIAL: 3}
#: `dp serve` cannot listen on its address (the port is in use, or needs privileges)
EXIT_CANNOT_LISTEN = 4


def _parse_params(pairs: list[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise _fail(
                CLIError(f"--param {pair!r} must look like NAME=VALUE, e.g. --param day=2026-01-31")
            )
        params[name.strip()] = value
    return params


def _settings(root: Path, **flags: str | int | None) -> config.Settings:
    """The backends: these flags, else DP_* variables, else dp.toml, else defaults."""
    executor, workers = flags.get("executor"), flags.get("workers")
    if executor == "inline" and workers is not None:
        raise _fail(
            CLIError(
                f"--workers {workers} and --executor inline contradict each other: inline runs "
                "one task at a time in this process. Drop one of them."
            )
        )
    try:
        return config.resolve(flags, home=root)
    except DPError as exc:
        raise _fail(exc) from exc


class _Stderr:
    """stderr as it was when the command started, written through the progress display's
    rich Console: log lines print above the live bar instead of across it, and never land in
    a task's captured output (the engine routes `sys.stderr` per task while tasks run)."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)

    def reset(self) -> None:
        self.console = Console(file=uncaptured(sys.stderr))

    def write(self, text: str) -> int:
        if self.console.file.closed:  # the command has ended and its stderr with it (a test's
            self.reset()  # CliRunner closes the stream it swapped in); a thread still logs
        if text.strip():
            self.console.print(Text.from_ansi(text.rstrip("\n")), soft_wrap=True, highlight=False)
        return len(text)

    def flush(self) -> None:
        self.console.file.flush()

    def isatty(self) -> bool:
        return self.console.is_terminal


_stderr = _Stderr()


#: engine events the CLI reports itself, in the task table and the closing line
_SHOWN_BY_THE_CLI = frozenset({"task.failed", "run.finished"})


def _not_shown_by_the_cli(record: logging.LogRecord) -> bool:
    event = record.msg.get("event") if isinstance(record.msg, dict) else None
    return event not in _SHOWN_BY_THE_CLI


def _cli_logging() -> None:
    """Warnings as readable lines (never JSON) on stderr, above the progress bar."""
    _stderr.reset()
    configure_logging(level="WARNING", json=False, stream=_stderr)  # type: ignore[arg-type]
    for handler in logging.getLogger("dp").handlers:
        if handler.get_name() == "dp":
            handler.addFilter(_not_shown_by_the_cli)


def _check_params(execution_plan: ExecutionPlan, params: dict[str, str]) -> None:
    try:
        execution_plan.bind_params(params)
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
    _cli_logging()
    settings = _settings(root, store=store, results=results, executor=executor, workers=workers)
    execution_plan = _plan(target, tags, task)
    params = _parse_params(param)
    _check_params(execution_plan, params)
    target_path = str(Path(target).resolve()) if target.endswith(".py") else target
    selection = {"tags": tags or [], "task_names": task or []}
    orchestrator = _orchestrator(ctx, settings)

    async def go() -> RunResult:
        try:
            return await orchestrator.start_pipeline(
                execution_plan,
                params,
                target=target_path,
                pipeline=pipeline_label(target),
                selection=selection,
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
    _cli_logging()
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
    progress = LiveProgress(len(execution_plan.execution_order), _stderr.console)
    orchestrator.listeners.append(progress)
    try:
        with progress.live():
            return asyncio.run(go())
    except DPError as exc:
        raise _fail(exc) from exc
    except KeyboardInterrupt:
        run_id = progress.run_id or "RUN_ID"
        err_console.print(
            f"[yellow]interrupted[/]: resume with `{_command()} runs resume {run_id}`"
        )
        raise typer.Exit(code=130) from None


def _report(result: RunResult, settings: config.Settings) -> None:
    console = Console()
    rows = [task_row(r) for r in result.tasks.values()]
    print_task_table(console, rows)
    colour = {RunStatus.SUCCEEDED: "green", RunStatus.PARTIAL: "yellow"}.get(result.status, "red")
    duration = f" in {duration_text(result.duration)}" if result.duration is not None else ""
    console.print(
        f"run [cyan]{result.run_id}[/] [bold {colour}]{result.status.value}[/]{duration}",
        highlight=False,
    )
    if result.error and not any(error for *_, error in rows):  # else the table shows it
        console.print(f"[red]{escape(result.error)}[/]", highlight=False)
    dp = _command()
    last = next((r.task_name for r in reversed(result.tasks.values()) if r.result_ids), None)
    results = settings.results_path
    where = (
        f"{settings.results.partition('?')[0].rstrip('/')}/{result.run_id}/<task>/"
        if settings.results.startswith("s3://")
        else "in memory (gone when dp exits)"
        if results is None
        else f"{results / result.run_id}/<task>/"
    )
    console.print(
        f"results: {where}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"details: {dp} runs show {result.run_id}", highlight=False, soft_wrap=True)
    if last is not None:
        console.print(
            f"a result: {dp} runs result {result.run_id} {last}", highlight=False, soft_wrap=True
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
    run_store = _store(ctx, _settings(root, store=store))
    try:
        wanted = RunStatus(status) if status else None
    except ValueError as exc:
        raise _fail(
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
            f"`{_command()} runs resume {stale[0]}`",
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
    run_store = _store(ctx, _settings(root, store=store))
    record = _get_run(run_store, run_id)
    console = Console()
    console.print(
        f"run [cyan]{record.run_id}[/] {status_text(record.status.value)}  "
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
        console.print(f"params: {escape(json.dumps(record.params))}", highlight=False)
    if record.error:
        console.print(f"[red]{escape(record.error)}[/]", highlight=False)
    if attempts:
        print_attempts(console, run_store.get_attempts(run_id))
        return
    rows = [
        (r.task_name, r.instance, r.status.value, r.attempt, r.duration, r.error)
        for r in run_store.get_task_runs(run_id)
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
        if attempt is not None:
            raise _fail(CLIError(f"run {run_id!r} has no attempt {attempt} of task {task_name!r}."))
        raise _fail(_no_such_task(run_id, task_name, run_store))
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
    from dp.jsonable import jsonable

    settings = _settings(root, store=store, results=results)
    run_store = _store(ctx, settings)
    _get_run(run_store, run_id)
    rows = [r for r in run_store.get_task_runs(run_id) if r.task_name == task_name]
    if not rows:
        raise _fail(_no_such_task(run_id, task_name, run_store))
    result_ids = [rid for row in rows for rid in row.result_ids]
    if not result_ids:
        states = ", ".join(sorted({r.status.value for r in rows}))
        raise _fail(
            CLIError(
                f"task {task_name!r} of run {run_id!r} stored no result (it is {states}); "
                f"{_command()} runs show {run_id} says why."
            )
        )
    streamed = len(result_ids) > 1 or any(r.instance for r in rows)
    if chunk is not None:
        if chunk >= len(result_ids):
            raise _fail(
                CLIError(
                    f"task {task_name!r} of run {run_id!r} stored "
                    f"{plural(len(result_ids), 'chunk')}; --chunk takes 0 to {len(result_ids) - 1}."
                )
            )
        result_ids = [result_ids[chunk]]
        streamed = False
    try:
        io_manager = config.open_results(settings)
        values = [io_manager.load(run_id, task_name, rid) for rid in result_ids]
    except DPError as exc:
        raise _fail(exc) from exc
    value: Any = values if streamed else values[0]
    if as_json:
        print(json.dumps(jsonable(value), indent=2))
    elif isinstance(value, str):
        print(value)
    else:
        Console().print(Pretty(value))


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
    lease: Annotated[
        float,
        typer.Option(
            min=0.5,
            metavar="SECONDS",
            help="How long a run's lease lasts: another instance on the same store takes the "
            "runs of one that died over once their leases ran out.",
        ),
    ] = 30.0,
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
            lease=lease,
        )
    except ListenError as exc:
        raise _fail(exc, code=EXIT_CANNOT_LISTEN) from exc
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


app.command("worker")(cli_worker.worker)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
