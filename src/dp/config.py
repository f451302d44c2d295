"""The wiring: builds the backends the settings (`dp.settings`) name and hands them down.

The top floor, beside the CLI and the server that call it: it imports the engine, the store,
the bus and the IO managers; nothing below imports it (the engine, the stores and the workers
take what it builds as ports). The settings are re-exported, so `dp.config.resolve()` and
`dp.config.Settings` keep working. Optional backends (Redis, Kafka, S3, Celery) are imported
only when chosen: their third-party packages are extras that may not be installed.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from dp.engine import Executor, Orchestrator
from dp.errors import ConfigError, StoreNotFoundError
from dp.events import InMemoryBroker
from dp.events.ports import Broker
from dp.io import FilesystemIOManager, InMemoryIOManager, IOManager
from dp.settings import (
    BUS_SCHEMES,
    CELERY_BROKER_SCHEMES,
    DEFAULT_HOME,
    DEFAULT_MAX_RESUME_ATTEMPTS,
    EXECUTORS,
    RESULTS_SCHEMES,
    SETTINGS,
    STORE_SCHEMES,
    Settings,
    celery_broker,
    find_config_file,
    mask,
    resolve,
)
from dp.store import MemoryRunStore
from dp.store.records import RunStore

__all__ = [
    "BUS_SCHEMES",
    "CELERY_BROKER_SCHEMES",
    "DEFAULT_HOME",
    "DEFAULT_MAX_RESUME_ATTEMPTS",
    "EXECUTORS",
    "RESULTS_SCHEMES",
    "SETTINGS",
    "STORE_SCHEMES",
    "Settings",
    "build_orchestrator",
    "celery_broker",
    "find_config_file",
    "mask",
    "open_broker",
    "open_results",
    "open_results_url",
    "open_store",
    "resolve",
]


def open_store(settings: Settings, *, must_exist: bool = False) -> RunStore:
    """The run store the settings name.

    Args:
        must_exist: refuse to create a new SQLite file (for commands that only read runs),
            and refuse `memory://`, which never holds an earlier process's runs.

    Raises:
        StoreNotFoundError: with `must_exist`, there is no run store to read.
        StoreError: the database cannot be opened (or its driver is not installed).
    """
    scheme = settings.store.partition("://")[0]
    if scheme == "memory":
        if must_exist:
            raise StoreNotFoundError(
                mask(settings.store),
                settings.source("store"),
                "a memory:// run store holds only the runs of its own process",
            )
        return MemoryRunStore()
    # SQLAlchemy costs ~130 ms to import: `dp plan`, `dp --help` and memory:// never pay it
    from dp.store.sql import SQLRunStore

    if scheme == "sqlite":
        file, _, query = settings.store.removeprefix("sqlite:///").partition("?")
        path = Path(file).absolute()
        if must_exist and not path.exists():
            raise StoreNotFoundError(
                mask(settings.store),
                settings.source("store"),
                f"no run store at {path}",
                first="run a pipeline first (dp run FILE), or ",
            )
        # an absolute path, so the store stays where it is if the working directory changes
        return SQLRunStore(f"sqlite:///{path}?{query}") if query else SQLRunStore(path=path)
    return SQLRunStore(settings.store)


def open_broker(settings: Settings) -> Broker:
    """The event bus the settings name; Redis or Kafka is imported only when chosen.

    Raises:
        ConfigError: the Redis (Kafka) bus is chosen but its module, redis-py (aiokafka), is
            missing.
    """
    if settings.bus == "memory://":
        return InMemoryBroker()
    source = settings.source("bus")
    kind = "kafka" if settings.bus.startswith("kafka://") else "redis"
    try:
        module = importlib.import_module(f"dp.events.{kind}")
        broker = getattr(module, f"{kind.capitalize()}Broker")(settings.bus)
    except ModuleNotFoundError as exc:
        if exc.name == f"dp.events.{kind}":
            problem = f"needs dp.events.{kind}, which this dp does not have; upgrade dp"
        else:
            problem = (
                f"needs the {exc.name!r} package, which is not installed; pip install 'dp[{kind}]'"
            )
        raise ConfigError("bus", mask(settings.bus), source, problem) from None
    if not isinstance(broker, Broker):
        raise ConfigError(
            "bus", mask(settings.bus), source, f"gave {broker!r}, which is not a Broker"
        )
    return broker


def open_results(settings: Settings) -> IOManager:
    """The IO manager the settings name: a directory (`file://`), an S3 bucket (`s3://`, boto3
    imported only then) or this process's memory."""
    if settings.results.startswith("s3://"):
        try:  # the S3 adapter imports boto3, an extra (dp[s3]) that may not be installed
            from dp.io.s3 import S3IOManager
        except ModuleNotFoundError as exc:  # pragma: no cover - boto3 is in the s3 extra
            raise ConfigError(
                "results",
                settings.results,
                settings.source("results"),
                f"needs the {exc.name!r} package, which is not installed; pip install 'dp[s3]'",
            ) from None
        return S3IOManager.from_url(settings.results)
    path = settings.results_path
    if path is None:
        return InMemoryIOManager()
    return FilesystemIOManager(path, frames=settings.results_frames)


def open_results_url(url: str, source: str = "a run's record") -> IOManager:
    """The IO manager a results URL names, e.g. the one a run recorded (`RunRecord.results`).

    Raises:
        ConfigError: the URL is not a results URL dp can open.
    """
    return open_results(Settings.for_results(url, source))


def build_orchestrator(settings: Settings, **options: Any) -> Orchestrator:
    """An `Orchestrator` on the settings' store, results and executor.

    Args:
        options: more `Orchestrator` options (`max_concurrent_pipelines`, `listeners`, ...).

    Raises:
        ConfigError: `memory://` results with the process executor (workers cannot see them).
    """
    if settings.results == "memory://" and settings.executor in ("process", "celery"):
        raise ConfigError(
            "results",
            settings.results,
            settings.source("results"),
            f"lives in this process's memory, which the workers of the {settings.executor} "
            "executor cannot reach; use file://PATH (a shared path), or the inprocess executor",
        )
    executor: str | Executor = settings.executor
    if executor == "celery":
        # the Celery modules cost ~30 ms to import; only runs on the celery executor pay it
        # (celery and redis-py themselves, an extra, are imported when it starts)
        from dp.engine.celery_executor import CeleryExecutor

        executor = CeleryExecutor(celery_broker(settings))
    options.setdefault("max_resume_attempts", settings.max_resume_attempts)
    return Orchestrator(
        io_manager=open_results(settings),
        store=open_store(settings),
        executor=executor,
        workers=settings.workers,
        **options,
    )
