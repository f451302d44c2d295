"""Backends by URL: where each setting comes from, what is refused, and what gets built."""

from __future__ import annotations

import json
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dp.cli import app
from dp.config import (
    build_orchestrator,
    celery_broker,
    find_config_file,
    mask,
    open_broker,
    open_results,
    open_store,
    resolve,
)
from dp.errors import ConfigError, ConfigFileError, DPError
from dp.events import Broker, InMemoryBroker
from dp.io import FilesystemIOManager, InMemoryIOManager
from dp.store import MemoryRunStore, RunStatus, SQLRunStore
from postgres_server import PostgresServer

NO_ENV: dict[str, str] = {}
runner = CliRunner()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# --- where settings come from ---------------------------------------------------------------------


def test_defaults_are_the_embedded_backends_under_dp(tmp_path: Path) -> None:
    """With no flag, variable or file: SQLite and results under .dp, memory bus, inprocess."""
    settings = resolve(env=NO_ENV, cwd=tmp_path)
    assert (settings.store, settings.bus, settings.results, settings.executor) == (
        "sqlite:///.dp/runs.db",
        "memory://",
        "file://.dp/results",
        "inprocess",
    )
    assert settings.workers is None
    assert settings.file is None
    assert {settings.source(name) for name in ("store", "bus", "results", "executor")} == {
        "default"
    }


def test_home_moves_the_default_store_and_results(tmp_path: Path) -> None:
    """--root / DP_HOME sets where the default store and results live."""
    settings = resolve(home=tmp_path / "state", env=NO_ENV, cwd=tmp_path)
    assert settings.store == f"sqlite:///{tmp_path}/state/runs.db"
    assert settings.results == f"file://{tmp_path}/state/results"
    assert settings.results_path == tmp_path / "state" / "results"


def test_the_file_beats_the_defaults(tmp_path: Path) -> None:
    """A dp.toml in the working directory sets what it names; the rest stay defaults."""
    write(tmp_path / "dp.toml", 'bus = "redis://127.0.0.1:6379/0"\nworkers = 3\n')
    settings = resolve(env=NO_ENV, cwd=tmp_path)
    assert settings.bus == "redis://127.0.0.1:6379/0"
    assert settings.source("bus") == str(tmp_path / "dp.toml")
    assert settings.workers == 3
    assert settings.source("store") == "default"
    assert settings.file == tmp_path / "dp.toml"


def test_the_environment_beats_the_file(tmp_path: Path) -> None:
    """DP_STORE_URL wins over the file's store."""
    write(tmp_path / "dp.toml", 'store = "memory://"\n')
    env = {"DP_STORE_URL": "sqlite:////srv/dp/runs.db"}
    settings = resolve(env=env, cwd=tmp_path)
    assert settings.store == "sqlite:////srv/dp/runs.db"
    assert settings.source("store") == "DP_STORE_URL"


def test_flags_beat_the_environment(tmp_path: Path) -> None:
    """A flag wins over the variable and the file."""
    write(tmp_path / "dp.toml", 'executor = "inline"\n')
    settings = resolve(
        {"executor": "process", "results": "memory://"},
        env={"DP_EXECUTOR": "inprocess", "DP_RESULTS_URL": "file:///srv/results"},
        cwd=tmp_path,
    )
    assert (settings.executor, settings.source("executor")) == ("process", "--executor")
    assert (settings.results, settings.source("results")) == ("memory://", "--results")


def test_every_setting_has_its_variable(tmp_path: Path) -> None:
    """DP_STORE_URL, DP_BUS_URL, DP_RESULTS_URL, DP_EXECUTOR, DP_WORKERS,
    DP_CELERY_BROKER_URL and DP_MAX_RESUME_ATTEMPTS are all read."""
    env = {
        "DP_STORE_URL": "memory://",
        "DP_BUS_URL": "redis://cache:6380/2",
        "DP_RESULTS_URL": "memory://",
        "DP_EXECUTOR": "inline",
        "DP_WORKERS": "2",
        "DP_CELERY_BROKER_URL": "redis://broker:6379/1",
        "DP_MAX_RESUME_ATTEMPTS": "5",
    }
    settings = resolve(env=env, cwd=tmp_path)
    assert (settings.store, settings.bus, settings.results, settings.executor) == (
        "memory://",
        "redis://cache:6380/2",
        "memory://",
        "inline",
    )
    assert (settings.workers, settings.celery_broker) == (2, "redis://broker:6379/1")
    assert settings.max_resume_attempts == 5
    assert dict(settings.sources) == dict(zip(settings.sources, env, strict=True))


def test_dp_serve_defaults_to_worker_processes_unless_results_are_in_memory(
    tmp_path: Path,
) -> None:
    """The service's default executor is `process`; `memory://` results keep `inprocess`."""
    served = resolve(env=NO_ENV, cwd=tmp_path, default_executor="process")
    assert (served.executor, served.source("executor")) == ("process", "default")
    in_memory = resolve(
        {"results": "memory://"}, env=NO_ENV, cwd=tmp_path, default_executor="process"
    )
    assert in_memory.executor == "inprocess"
    assert resolve(env=NO_ENV, cwd=tmp_path).executor == "inprocess"  # dp run keeps threads


def test_max_resume_attempts_must_be_a_whole_number(tmp_path: Path) -> None:
    """DP_MAX_RESUME_ATTEMPTS=0 is refused, naming the setting and where it came from."""
    with pytest.raises(ConfigError, match=r"max_resume_attempts.*DP_MAX_RESUME_ATTEMPTS"):
        resolve(env={"DP_MAX_RESUME_ATTEMPTS": "0"}, cwd=tmp_path)
    assert resolve(env=NO_ENV, cwd=tmp_path).max_resume_attempts == 3


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    """DP_BUS_URL= (empty) leaves the bus to the file or the default."""
    settings = resolve(env={"DP_BUS_URL": ""}, cwd=tmp_path)
    assert (settings.bus, settings.source("bus")) == ("memory://", "default")


def test_workers_alone_mean_the_process_executor(tmp_path: Path) -> None:
    """Asking for workers and no executor runs worker processes, as `dp run -w 4` always did."""
    settings = resolve({"workers": 4}, env=NO_ENV, cwd=tmp_path)
    assert (settings.executor, settings.workers) == ("process", 4)
    assert settings.source("executor") == "default with --workers"
    threads = resolve({"workers": 4, "executor": "inprocess"}, env=NO_ENV, cwd=tmp_path)
    assert threads.executor == "inprocess"


def test_postgresql_urls_use_psycopg_3(tmp_path: Path) -> None:
    """postgresql:// means psycopg 3, the driver dp[postgres] installs."""
    settings = resolve({"store": "postgresql://dp@db:5432/dp"}, env=NO_ENV, cwd=tmp_path)
    assert settings.store == "postgresql+psycopg://dp@db:5432/dp"


# --- the file -------------------------------------------------------------------------------------


def test_the_file_is_found_from_a_subdirectory(tmp_path: Path) -> None:
    """The nearest dp.toml from the working directory upward is read."""
    write(tmp_path / "dp.toml", 'executor = "inline"\n')
    deep = tmp_path / "pipelines" / "sales"
    deep.mkdir(parents=True)
    assert resolve(env=NO_ENV, cwd=deep).executor == "inline"


def test_relative_paths_in_the_file_are_relative_to_it(tmp_path: Path) -> None:
    """A project's dp.toml points at the same store from whichever subdirectory dp runs in."""
    write(tmp_path / "dp.toml", 'store = "sqlite:///state/runs.db"\nresults = "file://out"\n')
    deep = tmp_path / "src"
    deep.mkdir()
    settings = resolve(env=NO_ENV, cwd=deep)
    assert settings.store == f"sqlite:///{tmp_path}/state/runs.db"
    assert settings.results_path == tmp_path / "out"


def test_pyproject_tool_dp_is_read(tmp_path: Path) -> None:
    """[tool.dp] in pyproject.toml works like a dp.toml."""
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n\n[tool.dp]\nbus = "memory://"\n')
    settings = resolve(env=NO_ENV, cwd=tmp_path)
    assert settings.source("bus") == f"{tmp_path / 'pyproject.toml'} [tool.dp]"


def test_a_pyproject_without_tool_dp_is_passed_over(tmp_path: Path) -> None:
    """A package's own pyproject.toml without [tool.dp] does not hide the project's dp.toml."""
    write(tmp_path / "dp.toml", 'executor = "inline"\n')
    write(tmp_path / "lib" / "pyproject.toml", '[project]\nname = "lib"\n')
    assert resolve(env=NO_ENV, cwd=tmp_path / "lib").executor == "inline"


def test_dp_toml_beats_pyproject_in_the_same_directory(tmp_path: Path) -> None:
    """Both in one directory: dp.toml is the one read."""
    write(tmp_path / "dp.toml", 'executor = "inline"\n')
    write(tmp_path / "pyproject.toml", '[tool.dp]\nexecutor = "process"\n')
    found = find_config_file(tmp_path)
    assert found is not None
    assert found[0].name == "dp.toml"


def test_a_file_that_is_not_toml_names_the_file_and_line(tmp_path: Path) -> None:
    """A TOML syntax error says which file and where."""
    path = write(tmp_path / "dp.toml", 'store = "memory://"\nbus = \n')
    with pytest.raises(ConfigFileError, match=r"dp\.toml: not valid TOML: .*line 2") as caught:
        resolve(env=NO_ENV, cwd=tmp_path)
    assert caught.value.path == str(path)


def test_an_unknown_key_in_the_file_suggests_the_close_one(tmp_path: Path) -> None:
    """A misspelt key is refused with the likely one and the list of keys."""
    write(tmp_path / "dp.toml", 'stroe = "memory://"\n')
    with pytest.raises(ConfigFileError, match=r"unknown setting 'stroe'; did you mean 'store'\?"):
        resolve(env=NO_ENV, cwd=tmp_path)


def test_a_wrong_type_in_the_file_is_refused(tmp_path: Path) -> None:
    """workers must be a number and URLs strings."""
    write(tmp_path / "pyproject.toml", '[tool.dp]\nworkers = "four"\n')
    with pytest.raises(ConfigFileError, match=r"\[tool\.dp\] workers must be a number"):
        resolve(env=NO_ENV, cwd=tmp_path)
    write(tmp_path / "pyproject.toml", "[tool.dp]\nstore = 5\n")
    with pytest.raises(ConfigFileError, match="store must be a string"):
        resolve(env=NO_ENV, cwd=tmp_path)


def test_tool_dp_must_be_a_table(tmp_path: Path) -> None:
    """`tool.dp = "x"` is refused, naming the file."""
    write(tmp_path / "pyproject.toml", '[tool]\ndp = "sqlite:///x.db"\n')
    with pytest.raises(ConfigFileError, match=r"tool\.dp must be a table"):
        resolve(env=NO_ENV, cwd=tmp_path)


# --- what is refused ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "accepted"),
    [
        ("store", "mysql://dp@db/dp", "sqlite:///PATH, postgresql://"),
        ("store", "postgresql+psycopg2://dp@db/dp", "postgresql+psycopg://"),
        ("bus", "nats://broker:4222", "memory://, redis://HOST:PORT/DB"),
        ("results", "gs://bucket/results", "file://PATH?frames=parquet, memory://, s3://BUCKET"),
    ],
)
def test_an_unknown_scheme_names_the_setting_its_source_and_the_schemes(
    tmp_path: Path, setting: str, value: str, accepted: str
) -> None:
    """The error says which setting, where it was set, and every accepted scheme."""
    with pytest.raises(ConfigError) as caught:
        resolve({setting: value}, env=NO_ENV, cwd=tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{setting} {value!r} (from --{setting}) has unknown scheme")
    assert accepted in message
    assert (caught.value.setting, caught.value.source) == (setting, f"--{setting}")


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("store", "runs.db", "is not a URL"),
        ("store", "sqlite://", "needs a file path"),
        ("store", "sqlite:///", "needs a file path"),
        ("store", "postgresql://dp@db:fivefourthreetwo/dp", "has port 'fivefourthreetwo'"),
        ("store", "memory://somewhere", "takes nothing after memory://"),
        ("bus", "redis://cache:port/0", "has port 'port'"),
        ("bus", "redis://cache:6379/events", "a Redis database is a number"),
        ("bus", "redis://[::1/0", "is malformed"),
        ("bus", "kafka://k1:9092,k2:port", "names server 'k2:port'; list host:port pairs"),
        ("bus", "kafka://:9092", "names server ':9092'"),
        ("results", "file://", "needs a directory"),
        ("executor", "dask", "is not an executor; accepted: inline, inprocess, process, celery"),
        ("workers", "0", "must be a whole number >= 1"),
        ("workers", "many", "must be a whole number >= 1"),
    ],
)
def test_malformed_values_are_refused_with_the_reason(
    tmp_path: Path, setting: str, value: str, problem: str
) -> None:
    """Each kind of bad value gets its own explanation, naming the setting and source."""
    variable = {"store": "DP_STORE_URL", "bus": "DP_BUS_URL", "results": "DP_RESULTS_URL"}
    variable |= {"executor": "DP_EXECUTOR", "workers": "DP_WORKERS"}
    with pytest.raises(ConfigError, match="^" + setting) as caught:
        resolve(env={variable[setting]: value}, cwd=tmp_path)
    assert problem in str(caught.value)
    assert f"(from {variable[setting]})" in str(caught.value)


def test_a_bad_value_in_the_file_names_the_file(tmp_path: Path) -> None:
    """A value from dp.toml is reported with the file it came from."""
    write(tmp_path / "dp.toml", 'executor = "threads please"\n')
    with pytest.raises(ConfigError, match=rf"from {tmp_path / 'dp.toml'}"):
        resolve(env=NO_ENV, cwd=tmp_path)


def test_passwords_never_appear_in_errors(tmp_path: Path) -> None:
    """A refused URL is shown with its password masked."""
    with pytest.raises(ConfigError) as caught:
        resolve({"bus": "redis://:hunter2@cache:bad/0"}, env=NO_ENV, cwd=tmp_path)
    assert "hunter2" not in str(caught.value)
    assert "redis://:***@cache:bad/0" in str(caught.value)


def test_mask_hides_only_the_password() -> None:
    """User, host, port and database stay readable; URLs without a password are unchanged."""
    assert mask("postgresql://dp:s3cret@db:5432/dp") == "postgresql://dp:***@db:5432/dp"
    assert mask("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert mask("postgresql://dp@db/dp") == "postgresql://dp@db/dp"
    assert mask("sqlite:///.dp/runs.db") == "sqlite:///.dp/runs.db"


# --- what gets built ------------------------------------------------------------------------------


def test_store_urls_open_their_store(tmp_path: Path) -> None:
    """memory:// is a MemoryRunStore, sqlite:///PATH a SQLite file at PATH."""
    memory = open_store(resolve({"store": "memory://"}, env=NO_ENV, cwd=tmp_path))
    assert isinstance(memory, MemoryRunStore)
    path = tmp_path / "state" / "runs.db"
    sqlite = open_store(resolve({"store": f"sqlite:///{path}"}, env=NO_ENV, cwd=tmp_path))
    assert isinstance(sqlite, SQLRunStore)
    sqlite.close()
    assert path.exists()


def test_a_postgresql_url_opens_a_store_on_that_server(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """postgresql:// (without +psycopg) reaches the server and records runs there."""
    from dp.store import RunRecord

    url = postgres.create_database().replace("postgresql+psycopg://", "postgresql://")
    store = open_store(resolve({"store": url}, env=NO_ENV, cwd=tmp_path))
    try:
        store.create_run(RunRecord("r1", dag_id="d"))
        assert store.get_run("r1").status == RunStatus.QUEUED
        assert "postgresql+psycopg" in repr(store)
    finally:
        store.close()


def test_commands_that_read_runs_need_an_existing_store(tmp_path: Path) -> None:
    """Reading runs never creates an empty SQLite file, nor reads a fresh memory store."""
    missing = resolve({"store": f"sqlite:///{tmp_path}/none.db"}, env=NO_ENV, cwd=tmp_path)
    with pytest.raises(DPError, match=r"no run store at .*none\.db .*from --store"):
        open_store(missing, must_exist=True)
    assert not (tmp_path / "none.db").exists()
    memory = resolve({"store": "memory://"}, env=NO_ENV, cwd=tmp_path)
    with pytest.raises(DPError, match="holds only the runs of its own process"):
        open_store(memory, must_exist=True)


def test_results_urls_open_their_io_manager(tmp_path: Path) -> None:
    """file://PATH is a directory of results, memory:// this process's memory."""
    files = open_results(resolve({"results": f"file://{tmp_path}/r"}, env=NO_ENV, cwd=tmp_path))
    assert isinstance(files, FilesystemIOManager)
    files.save("run1", "t", "0", 42)
    assert (tmp_path / "r" / "run1" / "t" / "0.pkl").is_file()
    memory = open_results(resolve({"results": "memory://"}, env=NO_ENV, cwd=tmp_path))
    assert isinstance(memory, InMemoryIOManager)


def test_memory_results_cannot_feed_worker_processes(tmp_path: Path) -> None:
    """The process executor's workers cannot see this process's memory: refused up front."""
    settings = resolve({"results": "memory://", "workers": 2}, env=NO_ENV, cwd=tmp_path)
    with pytest.raises(
        ConfigError, match=r"workers of the process executor cannot reach; use file://PATH"
    ):
        build_orchestrator(settings)


async def test_build_orchestrator_uses_every_setting(tmp_path: Path) -> None:
    """The orchestrator gets the store, results and executor the settings name."""
    from dp.engine.executors import InlineExecutor

    settings = resolve(
        {"store": "memory://", "results": "memory://", "executor": "inline"},
        env=NO_ENV,
        cwd=tmp_path,
    )
    orchestrator = build_orchestrator(settings, max_concurrent_pipelines=2)
    try:
        assert isinstance(orchestrator.store, MemoryRunStore)
        assert isinstance(orchestrator.io_manager, InMemoryIOManager)
        assert isinstance(orchestrator.executor, InlineExecutor)
    finally:
        await orchestrator.shutdown()


def test_the_memory_bus_is_an_in_memory_broker(tmp_path: Path) -> None:
    """memory:// builds an InMemoryBroker, which satisfies the Broker port."""
    broker = open_broker(resolve(env=NO_ENV, cwd=tmp_path))
    assert isinstance(broker, InMemoryBroker)
    assert isinstance(broker, Broker)


def _fake_redis_module(monkeypatch: pytest.MonkeyPatch, broker_class: type) -> list[str]:
    module = types.ModuleType("dp.events.redis")
    module.RedisBroker = broker_class  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dp.events.redis", module)
    return []


def test_a_redis_url_builds_the_redis_broker_with_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis:// is resolved by importing dp.events.redis and calling RedisBroker(url)."""
    urls: list[str] = []

    class FakeRedisBroker(InMemoryBroker):
        def __init__(self, url: str) -> None:
            super().__init__()
            urls.append(url)

    _fake_redis_module(monkeypatch, FakeRedisBroker)
    settings = resolve({"bus": "redis://127.0.0.1:6379/1"}, env=NO_ENV, cwd=tmp_path)
    assert isinstance(open_broker(settings), FakeRedisBroker)
    assert urls == ["redis://127.0.0.1:6379/1"]


def test_a_redis_bus_without_its_module_says_to_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dp without dp.events.redis names the module that is missing."""
    monkeypatch.setitem(sys.modules, "dp.events.redis", None)
    settings = resolve({"bus": "redis://:pw@127.0.0.1:6379/0"}, env=NO_ENV, cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"needs dp\.events\.redis") as caught:
        open_broker(settings)
    assert "pw@" not in str(caught.value)


def test_a_redis_bus_without_redis_py_says_to_install_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With redis-py missing, the error says `pip install 'dp[redis]'`."""

    class NeedsRedis:
        def __init__(self, url: str) -> None:
            import redis  # noqa: F401  -- blocked below, as if not installed

    monkeypatch.setitem(sys.modules, "redis", None)
    _fake_redis_module(monkeypatch, NeedsRedis)
    settings = resolve({"bus": "redis://127.0.0.1:6379/0"}, env=NO_ENV, cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"needs the 'redis' package.*pip install 'dp\[redis\]'"):
        open_broker(settings)


def test_a_redis_module_that_gives_no_broker_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever RedisBroker builds must satisfy the Broker port the service relies on."""

    class NotABroker:
        def __init__(self, url: str) -> None:
            self.url = url

    _fake_redis_module(monkeypatch, NotABroker)
    settings = resolve({"bus": "redis://127.0.0.1:6379/0"}, env=NO_ENV, cwd=tmp_path)
    with pytest.raises(ConfigError, match="which is not a Broker"):
        open_broker(settings)


# --- the command line -----------------------------------------------------------------------------

TASKS = """
    from dp import pipeline, task


    @task
    def numbers() -> list[int]:
        return [1, 2, 3]


    @task(dependencies=["numbers"])
    def total(numbers: list[int]) -> int:
        return sum(numbers)
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_default_registry: None) -> Path:
    """An empty project directory as the working directory, with no DP_* variables set."""
    for variable in ("DP_STORE_URL", "DP_BUS_URL", "DP_RESULTS_URL", "DP_EXECUTOR", "DP_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("DP_WORKERS", raising=False)
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "tasks.py", TASKS)
    return tmp_path


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def test_dp_config_prints_each_setting_and_its_source_with_passwords_masked(
    project: Path,
) -> None:
    """`dp config` shows the effective values, where each came from, and no password."""
    write(project / "dp.toml", 'results = "memory://"\n')
    result = invoke(
        "config",
        "--executor",
        "inline",
        env={"DP_STORE_URL": "postgresql://dp:s3cret@db.internal:5432/dp"},
    )
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    lines = result.output.splitlines()
    assert lines[0] == f"config file: {project / 'dp.toml'}"
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["store"] == ["postgresql+psycopg://dp:***@db.internal:5432/dp", "DP_STORE_URL"]
    assert rows["bus"] == ["memory://", "default"]
    assert rows["results"] == ["memory://", str(project / "dp.toml")]
    assert rows["executor"] == ["inline", "--executor"]


def test_dp_config_json_is_machine_readable(project: Path) -> None:
    """`dp config --json` gives each value and source, passwords masked."""
    result = invoke("config", "--json", "--bus", "redis://:pw@cache:6379/0")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["file"] is None
    assert shown["settings"]["bus"] == {"value": "redis://:***@cache:6379/0", "source": "--bus"}
    assert shown["settings"]["workers"] == {"value": None, "source": "default"}


def test_dp_config_shows_the_celery_broker_the_redis_bus_gives(project: Path) -> None:
    """With a Redis bus and no broker of its own, Celery uses the bus: `dp config` says so."""
    result = invoke("config", "--json", "--bus", "redis://:pw@cache:6379/0")
    shown = json.loads(result.output)["settings"]["celery_broker"]
    assert shown == {
        "value": "redis://:***@cache:6379/0",
        "source": "the bus (no broker of its own set)",
    }
    memory = json.loads(invoke("config", "--json").output)["settings"]["celery_broker"]
    assert memory == {"value": None, "source": "default"}


def test_a_bad_setting_exits_2_naming_it(project: Path) -> None:
    """An unknown scheme on the command line is a clear error and exit code 2."""
    result = invoke("run", "tasks.py", "--store", "mongodb://db/dp")
    assert result.exit_code == 2
    assert "store 'mongodb://db/dp' (from --store) has unknown scheme 'mongodb'" in result.output
    assert "postgresql://" in result.output


def test_a_bad_variable_exits_2_on_every_command(project: Path) -> None:
    """DP_EXECUTOR=dask is refused by dp config and dp runs alike."""
    for args in (["config"], ["runs", "list"], ["serve", "tasks.py"]):
        result = invoke(*args, env={"DP_EXECUTOR": "dask"})
        assert result.exit_code == 2, args
        assert "executor 'dask' (from DP_EXECUTOR) is not an executor" in result.output


def test_dp_run_records_in_the_store_the_flag_names(project: Path) -> None:
    """`--store` and `--results` switch where the run goes; nothing is written to .dp."""
    store_path = project / "elsewhere" / "runs.db"
    result = invoke(
        "run", "tasks.py", "--store", f"sqlite:///{store_path}", "--results", "file://out"
    )
    assert result.exit_code == 0, result.output
    assert not (project / ".dp").exists()
    store = SQLRunStore(path=store_path)
    try:
        (run,) = store.list_runs()
    finally:
        store.close()
    assert run.status == RunStatus.SUCCEEDED
    assert FilesystemIOManager(project / "out").load(run.run_id, "total", "output") is not None
    assert f"results: out/{run.run_id}" in result.output


def test_dp_run_on_memory_backends_leaves_no_files(project: Path) -> None:
    """memory:// store and results run the pipeline without touching the disk."""
    result = invoke(
        "run", "tasks.py", env={"DP_STORE_URL": "memory://", "DP_RESULTS_URL": "memory://"}
    )
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.output
    assert "results: in memory" in result.output
    assert sorted(p.name for p in project.iterdir()) == ["tasks.py"]


def test_dp_runs_read_the_store_of_the_environment(project: Path, postgres: PostgresServer) -> None:
    """A run recorded on PostgreSQL through DP_STORE_URL is listed and shown from it."""
    env = {"DP_STORE_URL": postgres.create_database()}
    assert invoke("run", "tasks.py", env=env).exit_code == 0
    listed = invoke("runs", "list", env=env)
    assert listed.exit_code == 0, listed.output
    assert "succeeded" in listed.output
    assert not (project / ".dp" / "runs.db").exists()
    store = SQLRunStore(env["DP_STORE_URL"])
    try:
        (run,) = store.list_runs()
    finally:
        store.close()
    assert run.run_id in listed.output
    run_id = run.run_id
    shown = invoke("runs", "show", run_id, "--store", env["DP_STORE_URL"])
    assert shown.exit_code == 0, shown.output
    assert "total" in shown.output


def test_dp_runs_without_a_store_says_so(project: Path) -> None:
    """`dp runs list` before any run names the missing store and how to point at one."""
    result = invoke("runs", "list")
    assert result.exit_code == 2
    assert "no run store at" in result.output
    assert "DP_STORE_URL" in result.output


def test_dp_serve_with_an_unavailable_bus_exits_2(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dp serve --bus redis://...` without the Redis adapter fails before listening."""
    from dp.pipelines import get_pipelines

    monkeypatch.setitem(sys.modules, "dp.events.redis", None)
    write(project / "served.py", TASKS + '\n    pipeline("sum", tasks=["total"])\n')
    try:
        result = invoke("serve", "served.py", "--bus", "redis://127.0.0.1:6379/0")
    finally:
        get_pipelines().clear()
    assert result.exit_code == 2, result.output
    assert "bus 'redis://127.0.0.1:6379/0' (from --bus) needs dp.events.redis" in result.output


def test_the_celery_broker_defaults_to_a_redis_bus(tmp_path: Path) -> None:
    """With no DP_CELERY_BROKER_URL, the Celery executor uses the Redis bus as its broker."""
    settings = resolve({"bus": "redis://bus:6379/0"}, cwd=tmp_path)
    assert celery_broker(settings) == "redis://bus:6379/0"


def test_the_celery_executor_without_a_broker_says_what_to_set(tmp_path: Path) -> None:
    """The Celery executor on a memory bus and no broker names DP_CELERY_BROKER_URL."""
    settings = resolve({"executor": "celery"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"set DP_CELERY_BROKER_URL"):
        celery_broker(settings)


def test_a_celery_broker_that_is_not_redis_is_refused(tmp_path: Path) -> None:
    """DP_CELERY_BROKER_URL=amqp://... is refused, naming the accepted schemes."""
    with pytest.raises(ConfigError, match=r"unknown scheme 'amqp'; accepted: redis://"):
        resolve(env={"DP_CELERY_BROKER_URL": "amqp://rabbit//"}, cwd=tmp_path)


def test_celery_with_results_in_memory_is_refused(tmp_path: Path) -> None:
    """Celery workers cannot reach memory:// results: the error says to use a shared path."""
    settings = resolve(
        {"executor": "celery", "results": "memory://", "bus": "redis://b:6379/0"}, cwd=tmp_path
    )
    with pytest.raises(ConfigError, match=r"workers of the celery executor cannot reach"):
        build_orchestrator(settings)
