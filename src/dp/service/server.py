"""`serve`: load a task file, build the embedded service around it, and run the HTTP API.

What `dp serve FILE` calls. The run store, bus, results and executor are the `Settings` of
`dp.config` (by default results under `root/results`, runs in `root/runs.db`, an in-memory
bus); cron fire times go into the run store, shared by every instance on one database
(`root/schedule.json` only when runs are not recorded). SIGTERM or SIGINT stops it gracefully:
triggers stop, running pipelines get `grace` seconds to finish, the rest are recorded as
interrupted and resumed by the next start.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from pathlib import Path

from dp.config import Settings, build_orchestrator, mask, open_broker, resolve
from dp.engine.lease import DEFAULT_LEASE_SECONDS
from dp.errors import DPError
from dp.loader import load_tasks
from dp.logs import configure_logging, get_logger
from dp.pipelines import PipelineError, get_pipelines
from dp.service.api import create_app
from dp.service.runtime import Service

__all__ = ["ServeError", "is_loopback", "serve"]

_log = get_logger("dp.service")

#: Seconds uvicorn waits for open HTTP requests before the service itself starts stopping.
_REQUEST_GRACE = 5


class ServeError(DPError):
    """The service cannot be served as asked (e.g. a public address without a token)."""


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (or `localhost`): reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def serve(
    target: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | None = None,
    root: str | os.PathLike[str] = ".dp",
    settings: Settings | None = None,
    grace: float = 30.0,
    max_concurrent_pipelines: int = 8,
    max_queued_pipelines: int = 100,
    lease: float = DEFAULT_LEASE_SECONDS,
    log_level: str = "INFO",
) -> None:
    """Serve the pipelines defined in `target` until SIGTERM or SIGINT.

    Args:
        target: a `.py` file or an importable module with `@task`s and `pipeline(...)`s.
        host: the address to listen on; without a token only a loopback address is allowed.
        port: the TCP port.
        token: the API token state-changing requests must carry (`Authorization: Bearer`).
        root: where the schedule state lives, and the default store and results.
        settings: the backends (default: `dp.config.resolve(home=root)`, i.e. environment,
            `dp.toml`, defaults).
        grace: seconds running pipelines may take to finish on shutdown.
        max_concurrent_pipelines: runs executing at once; more wait in a queue.
        max_queued_pipelines: runs allowed to wait; beyond, starts are refused (HTTP 429).
        lease: seconds a run's lease lasts; when an instance dies, another instance on the
            same store takes its runs over once their leases ran out.
        log_level: the lowest level logged (JSON lines unless stderr is a terminal).

    Raises:
        ServeError: a non-loopback host without a token, or a file without pipelines.
        ConfigError: a backend setting is invalid.
        LoadError, PipelineError: the file cannot be imported or a pipeline cannot be planned.
    """
    import uvicorn

    if not token and not is_loopback(host):
        raise ServeError(
            f"refusing to listen on {host!r} without an API token: anyone who can reach it "
            "could start runs. Set DP_API_TOKEN (or pass --token), or listen on 127.0.0.1."
        )
    configure_logging(level=log_level)
    _route_uvicorn_logs()
    settings = resolve(home=root) if settings is None else settings
    service = build_service(
        target,
        root=root,
        settings=settings,
        grace=grace,
        max_concurrent_pipelines=max_concurrent_pipelines,
        max_queued_pipelines=max_queued_pipelines,
        lease=lease,
    )
    if not token:
        _log.warning(
            f"no DP_API_TOKEN set: state-changing endpoints accept any local caller; "
            f"listening on {host} only"
        )
    _log.info(
        "api.serving",
        url=f"http://{host}:{port}",
        docs=f"http://{host}:{port}/docs",
        pipelines=sorted(service.pipelines),
        store=mask(settings.store),
        bus=mask(settings.bus),
        results=settings.results,
        executor=settings.executor,
    )
    config = uvicorn.Config(
        create_app(service, token=token, protect_reads=not is_loopback(host)),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=_REQUEST_GRACE,
        lifespan="on",
        ws="none",
    )
    # uvicorn re-raises the SIGINT it handled once it has shut down: that is our normal end
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


def build_service(
    target: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] = ".dp",
    settings: Settings | None = None,
    grace: float = 30.0,
    max_concurrent_pipelines: int = 8,
    max_queued_pipelines: int = 100,
    lease: float = DEFAULT_LEASE_SECONDS,
) -> Service:
    """Load `target` and build the service for its pipelines on the backends of `settings`
    (default: `dp.config.resolve(home=root)`); not started yet.

    Every pipeline is planned here, so a broken definition fails before anything listens.
    """
    from dp.scheduler import FileScheduleState, Scheduler

    text = os.fspath(target)
    load_tasks(text)
    recorded = str(Path(text).resolve()) if text.endswith(".py") else text
    pipelines = get_pipelines()
    if not len(pipelines):
        raise ServeError(
            f"{text!r} defines no pipelines; add one next to the tasks, e.g. "
            "pipeline('daily', tags=['sales'], cron='0 3 * * *'), then serve it again."
        )
    problems = []
    for definition in pipelines:
        try:
            definition.plan()
        except PipelineError as exc:
            problems.append(str(exc))
    if problems:
        raise PipelineError("\n".join(problems))
    settings = resolve(home=root) if settings is None else settings
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    broker = open_broker(settings)
    orchestrator = build_orchestrator(
        settings,
        max_concurrent_pipelines=max_concurrent_pipelines,
        max_queued_pipelines=max_queued_pipelines,
        lease_seconds=lease,
    )
    store = orchestrator.store
    state = store if store is not None else FileScheduleState(root / "schedule.json")
    scheduler = Scheduler(broker, state=state)
    return Service(
        pipelines,
        orchestrator=orchestrator,
        broker=broker,
        scheduler=scheduler,
        target=recorded,
        grace=grace,
    )


def _route_uvicorn_logs() -> None:
    """Send uvicorn's own logs (startup, errors) through dp's handler, so they look alike."""
    logger = logging.getLogger("uvicorn")
    logger.handlers = [h for h in logging.getLogger("dp").handlers if h.get_name() == "dp"]
    logger.setLevel(logging.INFO)
    logger.propagate = False
