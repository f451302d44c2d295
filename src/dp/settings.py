"""The settings of dp: which backends it runs on, each chosen by a URL (the run store, the
bus, the results, the executor), read and validated; nothing is built here.

Every setting is taken from the first of these that sets it:

1. a command-line flag: `--store`, `--bus`, `--results`, `--executor`, `--workers`,
   `--max-resume-attempts`;
2. an environment variable: `DP_STORE_URL`, `DP_BUS_URL`, `DP_RESULTS_URL`, `DP_EXECUTOR`,
   `DP_WORKERS`, `DP_MAX_RESUME_ATTEMPTS` (an empty one counts as unset);
3. the nearest `dp.toml`, or `pyproject.toml` with a `[tool.dp]` table, from the working
   directory upward (keys `store`, `bus`, `results`, `executor`, `workers`,
   `max_resume_attempts`; relative paths in it are relative to the file's directory);
4. the defaults, under the home directory (`--root` / `DP_HOME`, `.dp` by default):
   `sqlite:///.dp/runs.db`, `memory://`, `file://.dp/results`, `inprocess` (`process` under
   `dp serve`), 3.

`resolve()` gives the `Settings` and where each came from (what `dp config` prints). This
module is on the ground floor (it imports only the errors and the S3 URL parser); the wiring
that builds the backends from it is `dp.config`, on the top floor.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

from dp.errors import ConfigError, ConfigFileError, InvalidBusURLError, InvalidResultsURLError
from dp.io.s3 import parse_s3_url  # no boto3 here: only the URL is read

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
    "celery_broker",
    "find_config_file",
    "mask",
    "resolve",
]

DEFAULT_HOME: Final = Path(".dp")

#: Each setting: (environment variable, command-line flag).
SETTINGS: Final[Mapping[str, tuple[str, str]]] = {
    "store": ("DP_STORE_URL", "--store"),
    "bus": ("DP_BUS_URL", "--bus"),
    "results": ("DP_RESULTS_URL", "--results"),
    "executor": ("DP_EXECUTOR", "--executor"),
    "workers": ("DP_WORKERS", "--workers"),
    "celery_broker": ("DP_CELERY_BROKER_URL", "--celery-broker"),
    "max_resume_attempts": ("DP_MAX_RESUME_ATTEMPTS", "--max-resume-attempts"),
}
#: the settings that are whole numbers (the rest are strings)
_NUMBERS: Final = ("workers", "max_resume_attempts")
#: the default of `max_resume_attempts`: a run whose owner died this often is a crash loop
DEFAULT_MAX_RESUME_ATTEMPTS: Final = 3

STORE_SCHEMES: Final = (
    "sqlite:///PATH",
    "postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
    "postgresql+psycopg://...",
    "memory://",
)
BUS_SCHEMES: Final = (
    "memory://",
    "redis://HOST:PORT/DB",
    "rediss://HOST:PORT/DB",
    "kafka://HOST:PORT[,HOST:PORT][?idempotence=false&acks=all&compression=gzip...]",
)
RESULTS_SCHEMES: Final = (
    "file://PATH?frames=parquet",
    "memory://",
    "s3://BUCKET/PREFIX?endpoint=URL&frames=parquet",
)
EXECUTORS: Final = ("inline", "inprocess", "process", "celery")
CELERY_BROKER_SCHEMES: Final = ("redis://HOST:PORT/DB", "rediss://HOST:PORT/DB")

_PYPROJECT_TABLE = "[tool.dp]"


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective backends, validated, and where each setting came from.

    Attributes:
        store: the run store URL (`sqlite:///...`, `postgresql+psycopg://...`, `memory://`).
        bus: the event bus URL (`memory://`, `redis://...`).
        results: where task results go (`file://PATH`, `memory://`, `s3://BUCKET/PREFIX`).
        executor: `inline`, `inprocess`, `process` or `celery`.
        workers: threads or worker processes of the executor (None: its default).
        celery_broker: the Celery executor's broker (default: the bus, when it is Redis).
        max_resume_attempts: a run whose owner died this many times while running it is
            failed as a crash loop instead of being resumed again (default 3).
        sources: setting name -> `--store`, `DP_STORE_URL`, the config file, or `default`.
        file: the config file that was read, if any.
    """

    store: str
    bus: str
    results: str
    executor: str
    workers: int | None = None
    celery_broker: str | None = None
    max_resume_attempts: int = DEFAULT_MAX_RESUME_ATTEMPTS
    sources: Mapping[str, str] = field(default_factory=dict)
    file: Path | None = None

    def source(self, name: str) -> str:
        """Where setting `name` came from."""
        return self.sources.get(name, "default")

    def masked(self) -> dict[str, str | int | None]:
        """The settings with any password in a URL replaced by `***`, for printing."""
        return {
            "store": mask(self.store),
            "bus": mask(self.bus),
            "results": self.results,
            "executor": self.executor,
            "workers": self.workers,
            "celery_broker": None if self.celery_broker is None else mask(self.celery_broker),
            "max_resume_attempts": self.max_resume_attempts,
        }

    @property
    def results_path(self) -> Path | None:
        """The results directory of a `file://` URL; None for `memory://`."""
        return _file_path(self.results) if self.results.startswith("file://") else None

    @property
    def results_frames(self) -> str:
        """How DataFrames and Arrow tables are kept: "pickle", or "parquet" (`?frames=`)."""
        _, _, query = self.results.partition("?")
        return query.removeprefix("frames=") if query.startswith("frames=") else "pickle"

    @classmethod
    def for_results(cls, url: str, source: str = "a run's record") -> Settings:
        """Settings naming only results at `url` (e.g. the URL a run recorded), checked.

        Raises:
            ConfigError: the URL is not a results URL dp can open.
        """
        return cls("memory://", "memory://", _check_results(url, source, None), "inline")


def resolve(
    flags: Mapping[str, str | int | None] | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    default_executor: str = "inprocess",
) -> Settings:
    """The effective settings: flags over environment over the config file over defaults.

    Args:
        flags: values given on the command line, by setting name (None: not given).
        home: where the default store and results live (`--root` / `DP_HOME`; `.dp`).
        env: the environment (default: `os.environ`).
        cwd: where the search for `dp.toml` starts (default: the working directory).
        default_executor: the executor when nothing chooses one: `inprocess` for `dp run`,
            `process` for `dp serve` (a task cannot take the service down from a worker
            process); `inprocess` anyway with `memory://` results, which workers cannot reach.

    Raises:
        ConfigError: a setting has an unknown scheme, a malformed URL or a bad value; the
            error names the setting, where it came from and what is accepted.
        ConfigFileError: the config file is not valid TOML or has unknown keys.
    """
    env = os.environ if env is None else env
    start = Path.cwd() if cwd is None else Path(cwd)
    found = find_config_file(start)
    file_values, file_label = ({}, "") if found is None else (found[1], _label(found[0]))
    base = DEFAULT_HOME if home is None else Path(home)
    defaults: dict[str, str | int | None] = {
        "store": f"sqlite:///{(base / 'runs.db').as_posix()}",
        "bus": "memory://",
        "results": f"file://{(base / 'results').as_posix()}",
        "executor": default_executor,
        "workers": None,
        "celery_broker": None,
        "max_resume_attempts": DEFAULT_MAX_RESUME_ATTEMPTS,
    }
    raw: dict[str, str | int | None] = {}
    sources: dict[str, str] = {}
    for name, (variable, flag) in SETTINGS.items():
        given = (flags or {}).get(name)
        if given is not None:
            raw[name], sources[name] = given, flag
        elif env.get(variable):
            raw[name], sources[name] = env[variable], variable
        elif name in file_values:
            raw[name], sources[name] = file_values[name], file_label
        else:
            raw[name], sources[name] = defaults[name], "default"
    if sources["executor"] == "default" and raw["results"] == "memory://":
        raw["executor"] = "inprocess"  # worker processes could not reach the results
    if sources["executor"] == "default" and raw["workers"] is not None:
        raw["executor"] = "process"  # asking for N workers, and nothing else, means processes
        sources["executor"] = f"default with {sources['workers']}"
    relative_to = found[0].parent if found is not None else None

    def base_of(name: str) -> Path | None:
        return relative_to if sources[name] == file_label and relative_to else None

    return Settings(
        store=_check_store(str(raw["store"]), sources["store"], base_of("store")),
        bus=_check_bus(str(raw["bus"]), sources["bus"]),
        results=_check_results(str(raw["results"]), sources["results"], base_of("results")),
        executor=_check_executor(str(raw["executor"]), sources["executor"]),
        workers=_check_workers(raw["workers"], sources["workers"]),
        celery_broker=_check_celery_broker(raw["celery_broker"], sources["celery_broker"]),
        max_resume_attempts=_check_whole(
            "max_resume_attempts", raw["max_resume_attempts"], sources["max_resume_attempts"]
        ),
        sources=sources,
        file=None if found is None else found[0],
    )


def find_config_file(start: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]] | None:
    """The nearest `dp.toml`, or `pyproject.toml` with `[tool.dp]`, in `start` or above it,
    and its settings; None if there is none.

    Raises:
        ConfigFileError: the file is not valid TOML, or has unknown keys or wrong types.
    """
    directory = Path(start).absolute()
    for folder in (directory, *directory.parents):
        dp_toml = folder / "dp.toml"
        if dp_toml.is_file():
            return dp_toml, _check_table(dp_toml, _read_toml(dp_toml))
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            table = _read_toml(pyproject).get("tool", {}).get("dp")
            if table is not None:
                if not isinstance(table, dict):
                    raise ConfigFileError(str(pyproject), "tool.dp must be a table")
                return pyproject, _check_table(pyproject, table)
    return None


def mask(url: str) -> str:
    """`url` with its password, if any, replaced by `***`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()


def celery_broker(settings: Settings) -> str:
    """The Celery broker: `DP_CELERY_BROKER_URL`, else the bus when it is Redis.

    Raises:
        ConfigError: neither is set to a Redis URL.
    """
    if settings.celery_broker is not None:
        return settings.celery_broker
    if settings.bus.startswith(("redis://", "rediss://")):
        return settings.bus
    raise ConfigError(
        "celery_broker",
        "(not set)",
        "default",
        "is needed by the celery executor: set DP_CELERY_BROKER_URL (or a redis:// bus, "
        "which it defaults to)",
        CELERY_BROKER_SCHEMES,
    )


# --- validation --------------------------------------------------------------------------------


def _check_store(value: str, source: str, base: Path | None) -> str:
    scheme, url = _split("store", value, source, STORE_SCHEMES)
    if scheme == "memory":
        return _memory("store", value, source, url, STORE_SCHEMES)
    if scheme == "sqlite":
        path = value[len("sqlite://") :]
        if not path.startswith("/") or not path.lstrip("/").partition("?")[0]:
            raise ConfigError(
                "store",
                value,
                source,
                "needs a file path, e.g. sqlite:///.dp/runs.db (relative) or "
                "sqlite:////var/lib/dp/runs.db (absolute); for runs kept in memory use memory://",
            )
        relative = path[1:]
        if base is not None and not relative.startswith("/"):
            return f"sqlite:///{(base / relative).as_posix()}"
        return value
    if scheme in ("postgresql", "postgresql+psycopg"):
        _check_port("store", value, source, url)
        return "postgresql+psycopg" + value[len(scheme) :]
    raise _unknown_scheme("store", value, source, scheme, STORE_SCHEMES)


def _check_bus(value: str, source: str) -> str:
    scheme, url = _split("bus", value, source, BUS_SCHEMES)
    if scheme == "memory":
        return _memory("bus", value, source, url, BUS_SCHEMES)
    if scheme in ("redis", "rediss"):
        _check_port("bus", value, source, url)
        database = url.path.strip("/")
        if database and not database.isdigit():
            raise ConfigError(
                "bus",
                mask(value),
                source,
                f"names database {database!r}; a Redis database is a number, "
                "e.g. redis://127.0.0.1:6379/0",
            )
        return value
    if scheme == "kafka":
        # only the URL parser, no aiokafka; at the top it would load dp.events (the buses)
        from dp.events.kafka_options import parse_kafka_url

        try:
            parse_kafka_url(value)
        except InvalidBusURLError as exc:
            raise ConfigError("bus", mask(value), source, exc.problem, BUS_SCHEMES) from None
        return value
    raise _unknown_scheme("bus", value, source, scheme, BUS_SCHEMES)


def _check_results(value: str, source: str, base: Path | None) -> str:
    scheme, url = _split("results", value, source, RESULTS_SCHEMES)
    if scheme == "memory":
        return _memory("results", value, source, url, RESULTS_SCHEMES)
    if scheme == "file":
        path, _, query = value[len("file://") :].partition("?")
        if query and query not in ("frames=pickle", "frames=parquet"):
            raise ConfigError(
                "results",
                value,
                source,
                f"has ?{query}; a file:// URL takes only ?frames=parquet (or ?frames=pickle)",
            )
        if not path or "#" in path:
            raise ConfigError(
                "results",
                value,
                source,
                "needs a directory, e.g. file://.dp/results (relative) or "
                "file:///srv/dp/results (absolute)",
            )
        if base is not None and not path.startswith("/"):
            return f"file://{(base / path).as_posix()}" + (f"?{query}" if query else "")
        return value
    if scheme == "s3":
        try:
            parse_s3_url(value)
        except InvalidResultsURLError as exc:
            raise ConfigError("results", value, source, exc.problem, RESULTS_SCHEMES) from None
        return value
    raise _unknown_scheme("results", value, source, scheme, RESULTS_SCHEMES)


def _check_executor(value: str, source: str) -> str:
    if value not in EXECUTORS:
        raise ConfigError("executor", value, source, "is not an executor", EXECUTORS)
    return value


def _check_celery_broker(value: str | int | None, source: str) -> str | None:
    if value is None:
        return None
    text = str(value)
    scheme, url = _split("celery_broker", text, source, CELERY_BROKER_SCHEMES)
    if scheme not in ("redis", "rediss"):
        raise _unknown_scheme("celery_broker", text, source, scheme, CELERY_BROKER_SCHEMES)
    _check_port("celery_broker", text, source, url)
    return text


def _check_workers(value: str | int | None, source: str) -> int | None:
    if value is None:
        return None
    return _check_whole("workers", value, source)


def _check_whole(name: str, value: str | int | None, source: str) -> int:
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or number < 1:
        raise ConfigError(name, str(value), source, "must be a whole number >= 1")
    return number


def _split(
    setting: str, value: str, source: str, accepted: tuple[str, ...]
) -> tuple[str, SplitResult]:
    scheme, sep, _ = value.partition("://")
    if not sep or not scheme:
        raise ConfigError(setting, mask(value), source, "is not a URL (SCHEME://...)", accepted)
    try:
        url = urlsplit(value)
    except ValueError as exc:
        raise ConfigError(setting, mask(value), source, f"is malformed: {exc}", accepted) from None
    return scheme.lower(), url


def _memory(
    setting: str, value: str, source: str, url: SplitResult, accepted: tuple[str, ...]
) -> str:
    if url.netloc or url.path.strip("/") or url.query:
        raise ConfigError(setting, mask(value), source, "takes nothing after memory://", accepted)
    return "memory://"


def _check_port(setting: str, value: str, source: str, url: SplitResult) -> None:
    try:
        url.port  # noqa: B018 -- parsing the port is the check
    except ValueError:
        port = url.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ConfigError(
            setting, mask(value), source, f"has port {port!r}, which is not a number 0-65535"
        ) from None


def _unknown_scheme(
    setting: str, value: str, source: str, scheme: str, accepted: tuple[str, ...]
) -> ConfigError:
    return ConfigError(setting, mask(value), source, f"has unknown scheme {scheme!r}", accepted)


def _file_path(url: str) -> Path:
    return Path(url[len("file://") :].partition("?")[0])


# --- the file ----------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(str(path), f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigFileError(str(path), f"cannot be read: {exc.strerror}") from None


def _check_table(path: Path, table: Mapping[str, Any]) -> dict[str, Any]:
    where = f"{_PYPROJECT_TABLE} " if path.name == "pyproject.toml" else ""
    for key, value in table.items():
        if key not in SETTINGS:
            close = difflib.get_close_matches(key, SETTINGS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigFileError(
                str(path),
                f"{where}unknown setting {key!r}; {hint}dp reads {', '.join(SETTINGS)}.",
            )
        wanted = int if key in _NUMBERS else str
        if not isinstance(value, wanted) or isinstance(value, bool):
            example = "4" if key in _NUMBERS else '"memory://"'
            raise ConfigFileError(
                str(path),
                f"{where}{key} must be a {'number' if wanted is int else 'string'}, "
                f"e.g. {key} = {example}; got {value!r}.",
            )
    return dict(table)


def _label(path: Path) -> str:
    return f"{path} {_PYPROJECT_TABLE}" if path.name == "pyproject.toml" else str(path)
