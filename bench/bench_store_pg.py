"""HTTP fire to recorded run on each run store, each figure beside a baseline of the same run.

`POST /triggers/noop/fire` answered 202 once the run is recorded, served by uvicorn with the
store chosen by URL (`dp.config`), as `dp serve --store ...` would:

1. SQLite (`sqlite:///...`, the default), beside a plain FastAPI hello endpoint;
2. PostgreSQL (`postgresql+psycopg://...`, a private server this benchmark starts with
   `initdb`, default durability settings), beside the SQLite figure;
3. `SQLRunStore.create_run` on that PostgreSQL, one at a time, beside a bare psycopg
   `INSERT` of the same row size, autocommit: what the store adds to the database's own cost.

The three HTTP servers run side by side and the load (wrk, else httpx) alternates between them
round by round; each figure is the median of the rounds.
"""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from fastapi import FastAPI

from bench._harness import Report, alternate
from bench.bench_service import CONNECTIONS, PIPELINES, TOKEN, _load, _serving, _wait_idle
from dp.config import build_orchestrator, resolve
from dp.engine import new_run_id
from dp.service import Service
from dp.service.api import create_app
from dp.store import RunRecord, SQLRunStore

SECTION = "store"
ROUNDS = 3
INSERTS = 500


def run(report: Report) -> None:
    postgres_server = _postgres_server_module()
    with (
        postgres_server.PostgresServer() as server,
        tempfile.TemporaryDirectory(prefix="dp-bench-") as root,
    ):
        _http_fire(report, server.create_database(), Path(root))
        _inserts(report, server, server.create_database())


def _http_fire(report: Report, postgres_url: str, root: Path) -> None:
    hello = FastAPI()

    @hello.post("/hello")
    async def say_hello() -> dict[str, str]:
        return {"hello": "world"}

    services = {
        "sqlite": _service(f"sqlite:///{root}/runs.db", root),
        "postgresql": _service(postgres_url, root),
    }
    rates: dict[str, list[float]] = {"hello": [], "sqlite": [], "postgresql": []}
    with (
        _serving(hello) as hello_url,
        _serving(create_app(services["sqlite"], token=TOKEN)) as sqlite_url,
        _serving(create_app(services["postgresql"], token=TOKEN)) as postgres_url_http,
    ):
        targets = {
            "hello": (hello_url + "/hello", "{}", 200),
            "sqlite": (sqlite_url + "/triggers/noop/fire", '{"payload": {}}', 202),
            "postgresql": (postgres_url_http + "/triggers/noop/fire", '{"payload": {}}', 202),
        }
        for _ in range(ROUNDS):
            for name, (url, body, ok) in targets.items():
                statuses, seconds = _load(url, body)
                rates[name].append(statuses[ok] / seconds)
                if name in services:
                    _wait_idle(services[name])
    recorded = {}
    for name, service in services.items():
        recorded[name] = service.orchestrator.store.count_runs(pipeline="noop")
        service.orchestrator.store.close()
    median = {name: statistics.median(values) for name, values in rates.items()}
    report.add(
        SECTION,
        f"POST /triggers/noop/fire -> 202, run recorded in SQLite ({CONNECTIONS} connections)",
        median["sqlite"],
        "req/s",
        baseline_name="FastAPI hello via uvicorn",
        baseline=median["hello"],
    )
    report.add(
        SECTION,
        f"POST /triggers/noop/fire -> 202, run recorded in PostgreSQL ({CONNECTIONS} conn.)",
        median["postgresql"],
        "req/s",
        baseline_name="the same on SQLite",
        baseline=median["sqlite"],
    )
    report.console.print(f"  runs recorded: {recorded}; rounds (req/s): {rates}")


def _service(store_url: str, root: Path) -> Service:
    settings = resolve({"store": store_url, "results": f"file://{root}/results"}, env={}, cwd=root)
    orchestrator = build_orchestrator(settings, max_queued_pipelines=1_000_000)
    return Service(PIPELINES, orchestrator=orchestrator, task_events=False)


def _inserts(report: Report, server: Any, url: str) -> None:
    import psycopg

    store = SQLRunStore(url)
    plan = PIPELINES.get("noop").plan()
    conn = psycopg.connect(
        f"host=127.0.0.1 port={server.port} user={server.user} dbname={url.rsplit('/', 1)[1]}",
        autocommit=True,
    )
    conn.execute(
        "CREATE TABLE raw_runs (run_id text PRIMARY KEY, dag_id text, pipeline text, "
        "status text, created_at timestamptz, plan jsonb)"
    )
    plan_json = plan.to_json()

    def via_store() -> None:
        for _ in range(INSERTS):
            record = RunRecord(new_run_id(), plan.dag_id, "noop", plan=plan.to_dict())
            store.create_run(record)

    def raw() -> None:
        for _ in range(INSERTS):
            conn.execute(
                "INSERT INTO raw_runs VALUES (%s, %s, 'noop', 'queued', now(), %s)",
                (new_run_id(), plan.dag_id, plan_json),
            )

    seconds = alternate({"store": via_store, "raw": raw}, rounds=ROUNDS)
    store.close()
    conn.close()
    report.add(
        SECTION,
        "SQLRunStore.create_run on PostgreSQL, one at a time",
        INSERTS / seconds["store"],
        "runs/s",
        baseline_name="psycopg INSERT, autocommit",
        baseline=INSERTS / seconds["raw"],
    )


def _postgres_server_module() -> ModuleType:
    """tests/postgres_server.py, which starts a private server (not a package to import)."""
    path = Path(__file__).parent.parent / "tests" / "postgres_server.py"
    spec = importlib.util.spec_from_file_location("postgres_server", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
