"""The `dp` command line: the root app, `dp plan`, `dp serve` and `dp config` here, and
every other command group registered from its own module (see "Sub-commands" below)."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dp.cli import run as cli_run
from dp.cli import worker as cli_worker
from dp.cli.common import (
    BusOpt,
    ExecutorOpt,
    MaxResumeOpt,
    ResultsOpt,
    RootOpt,
    StoreOpt,
    TagsOpt,
    TargetArg,
    TaskOpt,
    WorkersOpt,
    fail,
    plan_tasks,
    settings_for,
)
from dp.cli.events import events_app
from dp.cli.runs import runs_app
from dp.cli.sources import sources_app
from dp.display import print_plan
from dp.errors import DPError, ListenError

app = typer.Typer(
    name="dp",
    help="dp: event-driven data pipelines. Plan and run @task functions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: full option names, no `<bool>` type column
)


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


def plan(
    target: TargetArg,
    tags: TagsOpt = None,
    task: TaskOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Print the execution plan of the tasks in TARGET: order, levels, parameters, dag_id."""
    execution_plan = plan_tasks(target, tags, task)
    if as_json:
        print(execution_plan.to_json(indent=2))
        return
    print_plan(Console(), execution_plan)


#: `dp serve` cannot listen on its address (the port is in use, or needs privileges)
EXIT_CANNOT_LISTEN = 4


# --- serving ---------------------------------------------------------------------------------


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
            help="How long a run's or a polling source's lease lasts: another instance on "
            "the same store takes the runs and sources of one that died over once their "
            "leases ran out.",
        ),
    ] = 30.0,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            envvar="DP_ALLOWED_HOSTS",
            metavar="NAME",
            help="A Host name the API also answers to (repeatable, or comma-separated in "
            "DP_ALLOWED_HOSTS), e.g. a proxy's; other names get 400 (DNS rebinding).",
            show_default=False,
        ),
    ] = None,
    claim_idle: Annotated[
        float,
        typer.Option(
            min=0.5,
            metavar="SECONDS",
            envvar="DP_CLAIM_IDLE",
            help="How long an event an instance took stays unacknowledged before another "
            "instance takes it over (its taker died) on a Redis or Kafka bus.",
        ),
    ] = 60.0,
    max_resume_attempts: MaxResumeOpt = None,
) -> None:
    """Serve the pipelines in TARGET: cron and event triggers, and the HTTP API (/docs).

    Tasks run in worker processes by default (-e process), so no task can take the
    service down; -e inprocess runs them on threads of the service itself.
    """
    # the server (FastAPI, uvicorn) costs ~170 ms to import: only `dp serve` pays it
    from dp.service.server import serve as serve_forever

    settings = settings_for(
        root,
        default_executor="process",
        store=store,
        bus=bus,
        results=results,
        executor=executor,
        workers=workers,
        max_resume_attempts=max_resume_attempts,
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
            allowed_host=allowed_host or (),
            claim_idle=claim_idle,
        )
    except ListenError as exc:
        raise fail(exc, code=EXIT_CANNOT_LISTEN) from exc
    except DPError as exc:
        raise fail(exc) from exc


# --- configuration -----------------------------------------------------------------------------


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
    settings = settings_for(
        root, store=store, bus=bus, results=results, executor=executor, workers=workers
    )
    values = settings.masked()
    sources = {name: settings.source(name) for name in values}
    if settings.celery_broker is None and settings.bus.startswith(("redis://", "rediss://")):
        values["celery_broker"] = values["bus"]  # what the Celery executor would use
        sources["celery_broker"] = "the bus (no broker of its own set)"
    if as_json:
        print(
            json.dumps(
                {
                    "file": None if settings.file is None else str(settings.file),
                    "settings": {
                        name: {"value": value, "source": sources[name]}
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
    names = max(len(name) for name in shown)
    for name, value in shown.items():
        print(f"{name:<{names}}  {value:<{width}}  {sources[name]}")


# --- the commands, in the order `dp --help` lists them -------------------------------------
# A command group of its own module (dp.cli.runs, dp.cli.events, ...) is registered here too.

app.command()(plan)
app.command()(cli_run.run)
app.command()(serve)
app.command("config")(show_config)
app.command("worker")(cli_worker.worker)
app.add_typer(runs_app, name="runs")
app.add_typer(events_app, name="events")
app.add_typer(sources_app, name="sources")


def main() -> None:
    app()
