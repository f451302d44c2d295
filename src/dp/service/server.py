"""`serve`: load a task file, build the embedded service around it, and run the HTTP API.

What `dp serve FILE` calls. The run store, bus, results and executor are the `Settings` of
`dp.config` (by default results under `root/results`, runs in `root/runs.db`, an in-memory
bus); cron fire times go into the run store, shared by every instance on one database
(`root/schedule.json` only when runs are not recorded). SIGTERM or SIGINT stops it gracefully:
triggers stop, running pipelines get `grace` seconds to finish, the rest are recorded as
interrupted and resumed by the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from dp.config import (
    Settings,
    build_orchestrator,
    mask,
    open_broker,
    open_results_url,
    resolve,
)
from dp.engine.lease import DEFAULT_LEASE_SECONDS
from dp.errors import (
    BusRefusedError,
    BusUnavailableError,
    InvalidPipelineError,
    ListenError,
    NoPipelinesError,
    PipelineProblemsError,
    ServeError,
    TokenRequiredError,
)
from dp.events.ports import BusHealth
from dp.loader import load_tasks
from dp.logs import configure_logging, get_logger
from dp.pipelines import get_pipelines
from dp.scheduler import FileScheduleState, Scheduler
from dp.scheduler.poller import SourcePoller
from dp.service.api import create_app
from dp.service.runtime import Service
from dp.sources import get_sources

__all__ = ["ServeError", "allowed_hosts", "is_loopback", "listen", "serve"]

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = ("", "0.0.0.0", "::")

_log = get_logger("dp.service")

#: Seconds uvicorn waits for open HTTP requests before the service itself starts stopping.
_REQUEST_GRACE = 5


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (or `localhost`): reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> tuple[list[str], bool]:
    """The Host header values a service listening on `host` answers to, and whether any IP
    address is accepted as well: `localhost`, `127.0.0.1` and `[::1]` (and `host`) on
    loopback, `host` itself otherwise; on every address (`0.0.0.0`, `::`) those loopback names
    and any IP address. `extra` adds names (`--allowed-host`, `DP_ALLOWED_HOSTS`; each may be
    comma-separated; `*.example.com` for subdomains, `*` for any host).
    """
    bare = host.strip("[]").lower()
    names = [bare]
    if is_loopback(bare) or bare in _WILDCARDS:
        names += _LOOPBACK_NAMES
    names += [n.strip() for item in extra for n in item.split(",") if n.strip()]
    return list(dict.fromkeys(names)), bare in _WILDCARDS


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
    claim_idle: float = 60.0,
    log_level: str = "INFO",
    allowed_host: Iterable[str] = (),
) -> None:
    """Serve the pipelines defined in `target` until SIGTERM or SIGINT.

    Args:
        target: a `.py` file or an importable module with `@task`s and `pipeline(...)`s.
        host: the address to listen on; without a token only a loopback address is allowed.
        port: the TCP port.
        token: the API token state-changing requests must carry (`Authorization: Bearer`).
        root: where the schedule state lives, and the default store and results.
        settings: the backends (default: `dp.config.resolve(home=root)` with the process
            executor as default, i.e. environment, `dp.toml`, defaults).
        grace: seconds running pipelines may take to finish on shutdown.
        max_concurrent_pipelines: runs executing at once; more wait in a queue.
        max_queued_pipelines: runs allowed to wait; beyond, starts are refused (HTTP 429).
        lease: seconds a run's (and a polling source's) lease lasts; when an instance dies,
            another instance on the same store takes its runs and sources over once their
            leases ran out.
        claim_idle: seconds an event taken by an instance may stay unacknowledged before
            another instance takes it over (the taker died); see `Broker.durable`.
        log_level: the lowest level logged (JSON lines unless stderr is a terminal).
        allowed_host: more Host names to answer to besides the listening address's (see
            `allowed_hosts`); any other Host is refused with 400 (against DNS rebinding).

    Raises:
        ServeError: a non-loopback host without a token, or a file without pipelines.
        ListenError: the port is in use (or cannot be taken); nothing has started then.
        ConfigError: a backend setting is invalid.
        LoadError, PipelineError: the file cannot be imported or a pipeline cannot be planned.
    """
    import uvicorn

    if not token and not is_loopback(host):
        raise TokenRequiredError(host)
    configure_logging(level=log_level)
    _route_uvicorn_logs()
    settings = resolve(home=root, default_executor="process") if settings is None else settings
    service = build_service(
        target,
        root=root,
        settings=settings,
        grace=grace,
        max_concurrent_pipelines=max_concurrent_pipelines,
        max_queued_pipelines=max_queued_pipelines,
        lease=lease,
        claim_idle=claim_idle,
    )
    probe_bus(settings)
    hosts, any_ip = allowed_hosts(host, allowed_host)
    app = create_app(
        service,
        token=token,
        protect_reads=not is_loopback(host),
        allowed_hosts=hosts,
        any_ip_host=any_ip,
    )
    with listen(host, port) as listener:  # before saying "serving": the port may be taken
        port = listener.getsockname()[1]  # the one the system chose, for port 0
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
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=_REQUEST_GRACE,
            lifespan="on",
            ws="none",
        )
        # uvicorn re-raises the SIGINT it handled once it has shut down: our normal end
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(config).run(sockets=[listener])


_PROBE_SECONDS = 5.0  # how long dp serve's start waits for the bus's answer


def probe_bus(settings: Settings) -> None:
    """Publish one probe on the bus before serving (a Kafka broker that refuses the producer's
    settings answers at once), so a bus that can never take an event stops `dp serve` at
    start with the setting to change, not later in the log while events are lost.

    An unreachable bus does not stop it: it serves, `/health` says the bus is failing, and
    events wait (outbox) or are refused with 503 until the bus returns.

    Raises:
        BusRefusedError: the bus refuses these settings; the message names the option.
    """
    broker = open_broker(settings)
    if not isinstance(broker, BusHealth):
        return

    async def probe() -> None:
        try:
            await asyncio.wait_for(broker.probe(), _PROBE_SECONDS)
        finally:
            await broker.close()

    try:
        asyncio.run(probe())
    except BusRefusedError:
        raise
    except (BusUnavailableError, TimeoutError) as exc:
        error = str(exc) or f"no answer within {_PROBE_SECONDS:g}s"
        _log.warning("bus.unreachable_at_start", bus=mask(settings.bus), error=error)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port`, as uvicorn would bind it (IPv6 for a host with ':').

    Raises:
        ListenError: the port is in use, needs privileges, or the host is not this machine's.
    """
    host = host.strip("[]")
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it a response can wait ~40 ms for a delayed ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart over TIME_WAIT
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(host, port, exc.errno, exc.strerror or str(exc)) from exc
    except OverflowError as exc:  # a port beyond 65535
        sock.close()
        raise ListenError(host, port, None, str(exc)) from exc
    return sock


def build_service(
    target: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] = ".dp",
    settings: Settings | None = None,
    grace: float = 30.0,
    max_concurrent_pipelines: int = 8,
    max_queued_pipelines: int = 100,
    lease: float = DEFAULT_LEASE_SECONDS,
    claim_idle: float = 60.0,
) -> Service:
    """Load `target` and build the service for its pipelines on the backends of `settings`
    (default: `dp.config.resolve(home=root)`); not started yet.

    Every pipeline is planned here, so a broken definition fails before anything listens.
    """
    text = os.fspath(target)
    load_tasks(text)
    recorded = str(Path(text).resolve()) if text.endswith(".py") else text
    pipelines = get_pipelines()
    if not len(pipelines):
        raise NoPipelinesError(text)
    problems = []
    for definition in pipelines:
        try:
            definition.plan()
        except InvalidPipelineError as exc:
            problems.append(exc)
    if problems:
        raise PipelineProblemsError(problems)
    settings = resolve(home=root, default_executor="process") if settings is None else settings
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
    sources = None
    if len(get_sources()):  # polled by one instance at a time, under a lease like a run's
        sources = SourcePoller(get_sources(), broker, state=store, lease=lease)
    return Service(
        pipelines,
        orchestrator=orchestrator,
        broker=broker,
        scheduler=scheduler,
        target=recorded,
        grace=grace,
        sources=sources,
        claim_idle=claim_idle,
        open_results=open_results_url,
    )


def _route_uvicorn_logs() -> None:
    """Send uvicorn's own logs (startup, errors) through dp's handler, so they look alike."""
    logger = logging.getLogger("uvicorn")
    logger.handlers = [h for h in logging.getLogger("dp").handlers if h.get_name() == "dp"]
    logger.setLevel(logging.INFO)
    logger.propagate = False
