"""`dp worker FILE|MODULE`: a Celery worker (prefork pool) that runs the tasks of that file."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from dp import config
from dp.errors import ConfigError, DPError
from dp.loader import LoadError, load_tasks, module_name_for
from dp.store.records import HOST
from dp.tasks import get_registry

__all__ = ["worker"]

_errors = Console(stderr=True)


def worker(
    target: Annotated[str, typer.Argument(help="The task file (.py) or module the runs use.")],
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency", "-c", min=1, metavar="N", help="Pool processes (default: CPUs)."
        ),
    ] = None,
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues",
            "-Q",
            metavar="A,B",
            help="Queues to serve, comma-separated (default: dp, where tasks without "
            "@task(queue=...) go).",
        ),
    ] = None,
    celery_broker: Annotated[
        str | None,
        typer.Option(
            "--celery-broker",
            metavar="URL",
            help="Celery broker [env DP_CELERY_BROKER_URL; default: the bus, if Redis].",
            show_default=False,
        ),
    ] = None,
    bus: Annotated[
        str | None, typer.Option(help="Event bus URL [env DP_BUS_URL].", show_default=False)
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(help="Run store URL, for fencing [env DP_STORE_URL].", show_default=False),
    ] = None,
    results: Annotated[
        str | None,
        typer.Option(
            help="Where results go: file://SHARED_PATH or s3://BUCKET/PREFIX [env DP_RESULTS_URL].",
            show_default=False,
        ),
    ] = None,
    root: Annotated[
        Path, typer.Option("--root", envvar="DP_HOME", metavar="DIR", help="dp's home.")
    ] = Path(".dp"),
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Celery's log level.")] = "INFO",
) -> None:
    """Run the tasks of TARGET for `--executor celery` orchestrators, on this machine."""
    # celery and redis-py are an extra (dp[celery]): imported only by the command that needs them
    from dp.engine.celery_beat import Heartbeat
    from dp.engine.celery_worker import (
        DEFAULT_QUEUE,
        WorkerConfig,
        check_timeouts,
        configure,
        make_app,
        visibility_timeout,
    )

    names = [q.strip() for q in (queues or DEFAULT_QUEUE).split(",") if q.strip()]
    try:
        flags = {"celery_broker": celery_broker, "bus": bus, "store": store, "results": results}
        settings = config.resolve(flags, home=root)
        broker = config.celery_broker(settings)
        if settings.results == "memory://":
            raise ConfigError(
                "results",
                settings.results,
                settings.source("results"),
                "lives in one process's memory; workers and the orchestrator need a shared "
                "place: file://SHARED_PATH or s3://BUCKET/PREFIX",
            )
        try:
            load_tasks(target)
        except LoadError as exc:
            _report_broken(broker, names, target, exc)
            raise
        visibility = visibility_timeout()
        check_timeouts(get_registry(), visibility)
        app = make_app(broker, visibility=visibility)
    except DPError as exc:
        _errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    open_store = (
        None
        if settings.store == "memory://"
        else functools.partial(config.open_store, settings, must_exist=True)
    )
    configure(WorkerConfig(broker, functools.partial(config.open_results, settings), open_store))
    heartbeat = Heartbeat(broker, names)
    celery_worker = app.Worker(
        concurrency=concurrency or os.cpu_count() or 2,
        queues=names,
        pool="prefork",
        task_events=True,
        loglevel=loglevel,
        hostname=heartbeat.name,
    )
    _serve(broker, names)
    heartbeat.start()
    try:
        celery_worker.start()
    finally:
        heartbeat.stop()
        with contextlib.suppress(Exception):
            heartbeat.leave()
    raise typer.Exit(code=celery_worker.exitcode or 0)


def _report_broken(broker: str, queues: list[str], target: str, error: LoadError) -> None:
    """Leave the import failure where orchestrators waiting on `queues` find it, so their
    runs fail with it instead of waiting for a worker that is not coming."""
    import redis

    from dp.engine.celery_beat import BrokenReport, report_broken

    path = Path(target)
    is_file = target.endswith(".py") or path.is_file()
    report = BrokenReport(
        host=HOST,
        pid=os.getpid(),
        target=str(path.resolve()) if is_file else target,
        module=module_name_for(path)[0] if is_file else target,
        error=str(error),
    )
    try:
        with redis.Redis.from_url(broker, socket_timeout=5, socket_connect_timeout=5) as client:
            report_broken(client, queues, report)
    except redis.RedisError as exc:
        _errors.print(
            f"(could not tell the orchestrators through {escape(broker)}: {escape(str(exc))})",
            highlight=False,
        )
        return
    _errors.print(
        f"told the orchestrators waiting on queue {', '.join(queues)}: their tasks of "
        f"{escape(report.target)} fail with this error while no other worker serves "
        f"{'it' if len(queues) == 1 else 'them'}.",
        highlight=False,
        soft_wrap=True,
    )


def _serve(broker: str, queues: list[str]) -> None:
    """This worker imports its file: import failures reported on its queues are moot."""
    import redis

    from dp.engine.celery_beat import clear_broken

    client = redis.Redis.from_url(broker, socket_timeout=5, socket_connect_timeout=5)
    with client, contextlib.suppress(redis.RedisError):  # Celery reports a missing broker
        clear_broken(client, queues)
