"""What the `dp` commands share: the options they take, how they fail, and how they find
the backends and the runs recorded there."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from dp import config
from dp.errors import CLIError, DependencyUnavailableError, DPError
from dp.loader import load_tasks
from dp.planner import ExecutionPlan, Planner
from dp.store.records import RunRecord, RunStore

__all__ = [
    "EXIT_UNAVAILABLE",
    "BusOpt",
    "ExecutorOpt",
    "ParamOpt",
    "ResultsOpt",
    "RootOpt",
    "StoreOpt",
    "TagsOpt",
    "TargetArg",
    "TaskOpt",
    "WorkersOpt",
    "dp_command",
    "err_console",
    "fail",
    "get_run",
    "open_store",
    "plan_tasks",
    "settings_for",
]

err_console = Console(stderr=True)

#: the exit code when the run store, the bus or the results store cannot be reached (an
#: outage: try again once it is back); sysexits' EX_TEMPFAIL
EXIT_UNAVAILABLE = 75

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


def fail(exc: Exception, code: int = 2) -> typer.Exit:
    """Print `exc` as one line; the exit code says what kind of failure (`EXIT_UNAVAILABLE`
    for an outage of the store, the bus or the results store, whatever `code` says)."""
    if isinstance(exc, DependencyUnavailableError):
        code = EXIT_UNAVAILABLE
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=code)


def plan_tasks(target: str, tags: list[str] | None, tasks: list[str] | None) -> ExecutionPlan:
    try:
        load_tasks(target)
        execution_plan = Planner().create_execution_plan(
            tags=tags or None, task_names=tasks or None
        )
    except DPError as exc:
        raise fail(exc) from exc
    if not execution_plan.execution_order:
        raise fail(
            CLIError(
                f"{target!r} defines no @task functions; decorate a function with @task "
                "(from dp import task) and plan it again."
            )
        )
    return execution_plan


def dp_command() -> str:
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
        help=(
            "Event bus URL: memory://, redis://HOST:PORT/DB or kafka://HOST:PORT "
            "[env DP_BUS_URL; default memory://]."
        ),
        show_default=False,
    ),
]
ResultsOpt = Annotated[
    str | None,
    typer.Option(
        help="Where results go: file://PATH, s3://BUCKET/PREFIX or memory://, "
        "?frames=parquet to keep DataFrames as Parquet "
        "[env DP_RESULTS_URL; default file://ROOT/results; a recorded run: where it went].",
        show_default=False,
    ),
]
MaxResumeOpt = Annotated[
    int | None,
    typer.Option(
        "--max-resume-attempts",
        min=1,
        metavar="N",
        help="Fail a run as a crash loop, instead of resuming it, once its owner died N times "
        "while running it [env DP_MAX_RESUME_ATTEMPTS; default 3].",
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


def settings_for(
    root: Path, *, default_executor: str = "inprocess", **flags: str | int | None
) -> config.Settings:
    """The backends: these flags, else DP_* variables, else dp.toml, else defaults."""
    executor, workers = flags.get("executor"), flags.get("workers")
    if executor == "inline" and workers is not None:
        raise fail(
            CLIError(
                f"--workers {workers} and --executor inline contradict each other: inline runs "
                "one task at a time in this process. Drop one of them."
            )
        )
    try:
        return config.resolve(flags, home=root, default_executor=default_executor)
    except DPError as exc:
        raise fail(exc) from exc


def run_results(settings: config.Settings, record: RunRecord, flag: str | None) -> config.Settings:
    """The settings with the results URL the run recorded, unless `--results` was given: a
    run's results are read (and resumed) where they went, without repeating the flag."""
    if flag is not None or not record.results or record.results == settings.results:
        return settings
    sources = {**settings.sources, "results": f"the record of run {record.run_id}"}
    return dataclasses.replace(settings, results=record.results, sources=sources)


def open_store(ctx: typer.Context, settings: config.Settings) -> RunStore:
    """The run store to read earlier runs from: it must exist already."""
    try:
        store = config.open_store(settings, must_exist=True)
    except DPError as exc:
        raise fail(exc) from exc
    ctx.call_on_close(store.close)  # its database connections
    return store


def get_run(store: RunStore, run_id: str) -> RunRecord:
    try:
        return store.get_run(run_id)
    except DPError as exc:
        raise fail(exc) from exc
