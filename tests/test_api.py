"""The HTTP API over real HTTP: a uvicorn server on loopback, driven with httpx."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings

from dp.engine import Orchestrator
from dp.io import FilesystemIOManager, InMemoryIOManager
from dp.service import Service
from dp.service.api import create_app
from dp.store import RunRecord, RunStatus, SQLRunStore, TaskRunRecord, TaskStatus
from service_pipelines import GATE, PIPELINES

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: how long a test waits for something that must happen (never reached when dp works; it
#: turns a would-be hang into a clear failure)
PATIENCE = 20.0
#: seconds the test server keeps an idle connection open: longer than any test here
KEEP_ALIVE = 600


@dataclass
class Api:
    """A running server: its URL, an authenticated client, and the service behind it."""

    url: str
    client: httpx.Client
    service: Service

    def start(self, pipeline: str, **params: Any) -> str:
        response = self.client.post(f"/pipelines/{pipeline}/runs", json={"params": params})
        assert response.status_code == 202, response.text
        run_id: str = response.json()["run_id"]
        return run_id

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.client.get(f"/runs/{run_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_for_status(self, run_id: str, status: str) -> dict[str, Any]:
        return wait_for(lambda: (run := self.run(run_id))["status"] == status and run, status)

    def runs(self, pipeline: str) -> dict[str, Any]:
        response = self.client.get("/runs", params={"pipeline": pipeline, "limit": 1000})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def wait_for(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + PATIENCE
    while not (result := check()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)
    return result


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yield its URL."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # A kept-alive connection stays open for the whole test. With uvicorn's default (5 s) the
    # server closes one that sat idle that long, and a client that picked it from its pool at
    # that moment reads EOF (httpx.ReadError; a POST is never retried): under heavy load a
    # pooled connection does sit idle that long.
    config = uvicorn.Config(
        app,
        log_config=None,
        lifespan="on",
        ws="none",
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), "the server to start")
        assert server.started, "the server failed to start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(PATIENCE)
        sock.close()


@contextmanager
def serving(root: Path, *, token: str | None = TOKEN, **limits: int) -> Iterator[Api]:
    """The test pipelines behind a live API, runs recorded in SQLite under `root`."""
    orchestrator = Orchestrator(
        io_manager=FilesystemIOManager(root / "results"),
        store=SQLRunStore(path=root / "runs.db"),
        executor="inprocess",
        **limits,
    )
    service = Service(PIPELINES, orchestrator=orchestrator, grace=5.0)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with (
        live_server(create_app(service, token=token)) as url,
        httpx.Client(base_url=url, headers=headers, timeout=PATIENCE) as client,
    ):
        try:
            yield Api(url, client, service)
        finally:
            GATE.set()  # let held tasks end, so the service stops at once


@pytest.fixture
def gate() -> Iterator[None]:
    """`hold` tasks wait until the test ends (or sets `GATE`)."""
    GATE.clear()
    yield
    GATE.set()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with serving(tmp_path_factory.mktemp("api")) as running:
        yield running


# --- authentication -------------------------------------------------------------------------

POSTS = [
    ("/pipelines/noop/runs", {"params": {}}),
    ("/triggers/noop/fire", {"payload": {}}),
    ("/events", {"topic": "sales.orders.created", "payload": {"order_id": "A-0"}}),
    ("/runs/some-run/cancel", None),
]


@pytest.mark.parametrize(("path", "body"), POSTS)
def test_post_without_token_is_401(api: Api, path: str, body: Any) -> None:
    """A state-changing request without a token is refused with 401 and a Bearer challenge."""
    response = httpx.post(api.url + path, json=body)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"] == "Unauthorized"


@pytest.mark.parametrize(("path", "body"), POSTS)
def test_post_with_wrong_token_is_403(api: Api, path: str, body: Any) -> None:
    """A state-changing request with the wrong token is refused with 403."""
    response = httpx.post(api.url + path, json=body, headers={"Authorization": "Bearer nope"})
    assert response.status_code == 403
    assert response.json() == {"error": "Forbidden", "detail": "the API token is wrong."}


@pytest.mark.parametrize(("path", "body"), POSTS[:3])
def test_post_with_the_token_is_accepted(api: Api, path: str, body: Any) -> None:
    """With the right token, starting runs, firing triggers and publishing events get 202."""
    response = httpx.post(api.url + path, json=body, headers=AUTH)
    assert response.status_code == 202, response.text


def test_reads_need_no_token(api: Api) -> None:
    """GET endpoints answer without a token."""
    assert httpx.get(api.url + "/pipelines").status_code == 200
    assert httpx.get(api.url + "/runs").status_code == 200


# --- pipelines and bad input ------------------------------------------------------------------


def test_pipelines_list_triggers_and_parameters(api: Api) -> None:
    """GET /pipelines describes each pipeline's triggers, defaults and run parameters."""
    items = {p["name"]: p for p in api.client.get("/pipelines").json()["items"]}
    assert set(items) == set(PIPELINES.names())
    assert items["extract"]["triggers"]["cron"] == [
        {"expression": "0 3 * * *", "timezone": "UTC", "misfire": "run_once"}
    ]
    assert items["load"]["triggers"]["events"] == [
        {"pattern": "dp.run.succeeded", "where": {"pipeline": "extract"}}
    ]
    assert items["orders"]["triggers"]["api"] is False
    (param,) = items["hello"]["run_parameters"]
    assert param == {
        "name": "name",
        "type": "str",
        "required": False,
        "tasks": ["greet"],
        "default": "world",
    }


def test_pipeline_detail_includes_its_plan(api: Api) -> None:
    """GET /pipelines/{name} adds the execution plan."""
    body = api.client.get("/pipelines/hello").json()
    assert body["plan"]["execution_order"] == ["greet"]
    assert body["plan"]["dag_id"] == body["dag_id"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/pipelines/nope"),
        ("POST", "/pipelines/nope/runs"),
        ("POST", "/triggers/nope/fire"),
        ("GET", "/runs/no-such-run"),
        ("GET", "/runs/no-such-run/tasks/greet/logs"),
        ("POST", "/runs/no-such-run/cancel"),
    ],
)
def test_unknown_names_are_404(api: Api, method: str, path: str) -> None:
    """An unknown pipeline, trigger or run is a 404 whose detail names it."""
    response = api.client.request(method, path, json={} if method == "POST" else None)
    assert response.status_code == 404
    assert "nope" in response.json()["detail"] or "no-such-run" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/pipelines/hello/runs", {"params": {"name": "x"}, "extra": 1}, "body.extra"),
        ("/pipelines/hello/runs", {"params": ["x"]}, "body.params"),
        ("/pipelines/hello/runs", {"run_id": "../etc"}, "body.run_id"),
        ("/pipelines/hello/runs", {"params": {"nmae": "x"}}, "'nmae'"),
        ("/triggers/hello/fire", {"payload": {"name": 3, "x": 1}}, "'x'"),
        ("/events", {"topic": "sales..orders"}, "'sales..orders'"),
        ("/events", {"payload": {}}, "body.topic"),
    ],
)
def test_bad_bodies_are_refused_with_detail(api: Api, path: str, body: Any, named: str) -> None:
    """A malformed or invalid body is a 4xx whose detail names the offending field or value."""
    response = api.client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert named in response.json()["detail"]


def test_bad_run_parameter_type_names_the_parameter(api: Api) -> None:
    """A run parameter of the wrong type is a 422 that names the parameter."""
    response = api.client.post("/triggers/hello/fire", json={"payload": {"name": ["a", "b"]}})
    assert response.status_code == 422
    assert response.json()["error"] == "InvalidRunParameterError"
    assert "'name'" in response.json()["detail"]


def test_a_pipeline_without_api_refuses_http_starts(api: Api) -> None:
    """Starting a pipeline defined with api=False over HTTP is a 403 that says why."""
    response = api.client.post("/pipelines/orders/runs", json={})
    assert response.status_code == 403
    assert "api=False" in response.json()["detail"]


def test_malformed_json_is_422(api: Api) -> None:
    """A body that is not JSON is a 422, not a 500."""
    response = api.client.post(
        "/pipelines/hello/runs", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"] == "ValidationError"


@pytest.mark.parametrize(
    "query", [{"status": "bogus"}, {"limit": 0}, {"limit": 1001}, {"offset": -1}]
)
def test_run_listing_validates_its_query(api: Api, query: dict[str, Any]) -> None:
    """An unknown status or an out-of-range limit/offset is a 422 naming the parameter."""
    response = api.client.get("/runs", params=query)
    assert response.status_code == 422
    assert f"query.{next(iter(query))}" in response.json()["detail"]


# --- runs -------------------------------------------------------------------------------------


def test_run_succeeds_with_task_runs_and_logs(tmp_path: Path) -> None:
    """A started run succeeds; GET shows its task runs, and the logs show what a task printed."""
    # A server of its own: the engine routes sys.stdout when its first run starts, and pytest
    # swaps sys.stdout between tests, which would hide later prints from a shared server.
    with serving(tmp_path) as api:
        response = api.client.post("/pipelines/hello/runs", json={"params": {"name": "ada"}})
        assert response.status_code == 202
        body = response.json()
        assert body["status"] == "queued"
        assert response.headers["Location"] == f"/runs/{body['run_id']}"
        run = api.wait_for_status(body["run_id"], "succeeded")
        logs = api.client.get(f"/runs/{body['run_id']}/tasks/greet/logs").json()
    assert run["params"] == {"name": "ada"}
    assert [(t["task"], t["status"]) for t in run["tasks"]] == [("greet", "succeeded")]
    assert logs["output"] == "hello ada\n"
    assert logs["status"] == "succeeded"
    assert logs["attempt"] == 1
    assert (run["epoch"], run["stale"], run["owner"]["pid"]) == (1, False, os.getpid())
    (attempt,) = run["tasks"][0]["attempts"]
    assert (attempt["attempt"], attempt["status"], attempt["pid"]) == (1, "succeeded", os.getpid())


def test_a_task_waiting_in_a_broker_queue_shows_the_queue(api: Api) -> None:
    """A task recorded queued on 'gpu' (Celery) reads back queued there, attempts included."""
    store = api.service.orchestrator.store
    assert store is not None
    store.create_run(RunRecord("gpu-wait-1", "dag", status=RunStatus.RUNNING))
    waiting = TaskRunRecord("gpu-wait-1", "train", status=TaskStatus.QUEUED, attempt=2, queue="gpu")
    lost = TaskRunRecord("gpu-wait-1", "train", status=TaskStatus.FAILED, attempt=1, queue="gpu")
    store.save_task_runs([waiting], attempts=[lost])
    (task,) = api.run("gpu-wait-1")["tasks"]
    assert (task["status"], task["queue"]) == ("queued", "gpu")
    assert [(a["status"], a["queue"]) for a in task["attempts"]] == [
        ("failed", "gpu"),
        ("queued", "gpu"),
    ]


def test_a_runs_tick_zone_and_lineage_read_back(api: Api) -> None:
    """GET /runs and /runs/{id} give scheduled_for (UTC), schedule_tz, parent_run_id and the
    reused tasks; a run without them gives null and {}."""
    store = api.service.orchestrator.store
    assert store is not None
    tick = datetime(2026, 3, 28, 23, tzinfo=UTC)
    store.create_run(RunRecord("tick-1", "dag", scheduled_for=tick, schedule_tz="Europe/Berlin"))
    store.create_run(
        RunRecord(
            "tick-1-retry", "dag", parent_run_id="tick-1", metadata={"reused": {"a": "tick-1"}}
        )
    )
    run = api.run("tick-1")
    assert (run["scheduled_for"], run["schedule_tz"], run["parent_run_id"], run["reused"]) == (
        "2026-03-28T23:00:00+00:00",
        "Europe/Berlin",
        None,
        {},
    )
    listed = {r["run_id"]: r for r in api.client.get("/runs").json()["items"]}
    assert listed["tick-1"]["scheduled_for"] == "2026-03-28T23:00:00+00:00"
    assert (listed["tick-1-retry"]["parent_run_id"], listed["tick-1-retry"]["reused"]) == (
        "tick-1",
        {"a": "tick-1"},
    )


def test_logs_of_an_attempt_that_does_not_exist_are_404(tmp_path: Path) -> None:
    """`?attempt=N` beyond what the task made is a 404 naming the attempts it made."""
    with serving(tmp_path) as api:
        run_id = api.client.post("/pipelines/hello/runs", json={}).json()["run_id"]
        api.wait_for_status(run_id, "succeeded")
        first = api.client.get(f"/runs/{run_id}/tasks/greet/logs?attempt=1")
        missing = api.client.get(f"/runs/{run_id}/tasks/greet/logs?attempt=2")
    assert first.json()["output"] == "hello world\n"
    assert missing.status_code == 404
    assert missing.json()["detail"] == (
        f"task 'greet' of run '{run_id}' has no attempt 2; it made 1."
    )


def test_a_run_id_starts_one_run(api: Api) -> None:
    """Starting a run with an id that is already taken is a 409."""
    first = api.client.post("/pipelines/noop/runs", json={"run_id": "my-run-1"})
    assert first.status_code == 202
    second = api.client.post("/pipelines/noop/runs", json={"run_id": "my-run-1"})
    assert second.status_code == 409
    assert second.json()["error"] == "DuplicateRunError"


@pytest.mark.parametrize("run_id", ["a..b", ".hidden", "-x", "a/b", "x" * 201])
def test_a_run_id_that_cannot_name_a_folder_is_refused_up_front(api: Api, run_id: str) -> None:
    """A run id the IO manager would refuse is a 422 before any run is recorded."""
    response = api.client.post("/pipelines/noop/runs", json={"run_id": run_id})
    assert response.status_code == 422, response.text
    assert "run_id" in response.json()["detail"]
    assert all(r["run_id"] != run_id for r in api.client.get("/runs").json()["items"])


def test_a_parameter_that_cannot_be_stored_is_refused(api: Api) -> None:
    """A lone surrogate in a parameter is a 422, and the run list stays readable."""
    response = api.client.post(
        "/pipelines/hello/runs",
        content='{"params": {"name": "\\ud800"}}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert "lone surrogate" in response.json()["detail"]
    assert api.client.get("/runs").status_code == 200


def test_pipelines_selected_by_tag_list_their_tasks(api: Api) -> None:
    """GET /pipelines lists the tasks a pipeline runs, also when it selects them by tag."""
    items = {p["name"]: p for p in api.client.get("/pipelines").json()["items"]}
    assert items["hello"]["tags"] == ["hello"]
    assert items["hello"]["tasks"] == ["greet"]


def test_run_listing_filters_by_pipeline(api: Api) -> None:
    """GET /runs?pipeline= lists only that pipeline's runs, with the total and the page."""
    run_id = api.start("noop")
    listed = api.runs("noop")
    assert run_id in [r["run_id"] for r in listed["items"]]
    assert {r["pipeline"] for r in listed["items"]} == {"noop"}
    assert listed["total"] == len(listed["items"])
    assert (listed["limit"], listed["offset"]) == (1000, 0)


def test_event_starts_one_run_per_event_id(api: Api) -> None:
    """An event starts its pipeline with the payload as parameters; its id posted twice, once."""
    event = {"topic": "sales.orders.created", "payload": {"order_id": "A-7", "amount": 2.5}}
    first = api.client.post("/events", json={**event, "event_id": "evt-7"})
    again = api.client.post("/events", json={**event, "event_id": "evt-7"})
    assert first.status_code == again.status_code == 202
    assert first.json() == {"event_id": "evt-7"}
    # events are handled in order: once a later event's run exists, evt-7 was handled twice
    later = api.client.post("/events", json={**event, "event_id": "evt-8"})
    assert later.status_code == 202
    runs = wait_for(
        lambda: [r for r in api.runs("orders")["items"] if "evt-8" in (r["event_id"] or "")],
        "the run of the later event",
    )
    assert runs
    started = [r for r in api.runs("orders")["items"] if "evt-7" in (r["event_id"] or "")]
    assert len(started) == 1
    assert started[0]["params"] == {"order_id": "A-7", "amount": 2.5}
    assert started[0]["trigger"] == "event:sales.orders.created"


def test_a_succeeded_extract_starts_the_load_pipeline(api: Api) -> None:
    """A pipeline on `dp.run.succeeded` of another runs after it, given the upstream run id."""
    extract_id = api.start("extract")
    api.wait_for_status(extract_id, "succeeded")
    load = wait_for(
        lambda: [r for r in api.runs("load")["items"] if r["params"] == {"run_id": extract_id}],
        "the chained load run",
    )
    api.wait_for_status(load[0]["run_id"], "succeeded")


def test_triggers_list_api_and_scheduler_triggers(api: Api) -> None:
    """GET /triggers lists an API trigger per HTTP-startable pipeline and the scheduler's."""
    items = {t["name"]: t for t in api.client.get("/triggers").json()["items"]}
    assert items["hello"]["kind"] == "api"
    assert "orders" not in items  # api=False
    assert items["extract.cron"]["kind"] == "cron"
    assert items["extract.cron"]["pipeline"] == "extract"
    assert items["extract.cron"]["next_fire"] is not None
    assert items["load.on"]["kind"] == "event"
    assert items["orders.on"]["source"] == "sales.orders.created"


def test_firing_an_api_trigger_starts_a_run(api: Api) -> None:
    """Firing a pipeline's API trigger starts a run with the payload as run parameters."""
    response = api.client.post("/triggers/hello/fire", json={"payload": {"name": "bo"}})
    assert response.status_code == 202
    run = api.wait_for_status(response.json()["run_id"], "succeeded")
    assert run["trigger"] == "api:hello"
    assert run["params"] == {"name": "bo"}


def test_a_cron_trigger_cannot_be_fired_by_a_call(api: Api) -> None:
    """Firing a cron trigger is a 404 that says it fires by itself and lists fireable ones."""
    response = api.client.post("/triggers/extract.cron/fire", json={})
    assert response.status_code == 404
    assert "fires by itself" in response.json()["detail"]
    assert "'hello'" in response.json()["detail"]


@pytest.mark.usefixtures("gate")
def test_cancel_a_running_run(api: Api) -> None:
    """Cancelling a running run is a 202, it ends cancelled; cancelling it again is a 409."""
    run_id = api.start("hold")
    api.wait_for_status(run_id, "running")
    response = api.client.post(f"/runs/{run_id}/cancel")
    assert response.status_code == 202
    run = api.wait_for_status(run_id, "cancelled")
    assert [t["status"] for t in run["tasks"]] == ["cancelled"]
    again = api.client.post(f"/runs/{run_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"] == "RunNotActiveError"


# --- health and metrics -------------------------------------------------------------------


def test_health_reports_each_part(api: Api) -> None:
    """/health, /health/live and /health/ready answer 200 on a running service."""
    health = api.client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert (body["status"], body["ready"]) == ("ok", True)
    assert body["store"]["ok"]
    assert body["bus"]["ok"]
    assert body["scheduler"]["status"] == "ok"
    assert api.client.get("/health/live").json() == {"status": "ok"}
    assert body["unavailable"] == []
    ready = {"ready": True, "status": "ok", "unavailable": []}
    assert api.client.get("/health/ready").json() == ready


def test_metrics_count_pipeline_executions(api: Api) -> None:
    """/metrics serves Prometheus text with pipeline_executions_total per pipeline."""
    api.wait_for_status(api.start("noop"), "succeeded")
    response = api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'pipeline_executions_total{pipeline="noop",status="succeeded"}' in response.text


def test_metrics_include_the_scheduler_trigger_counters(api: Api) -> None:
    """/metrics serves the scheduler's per-trigger counters, trigger failures among them."""
    text = api.client.get("/metrics").text
    assert re.search(
        r'^scheduler_trigger_failures_total\{kind="\w+",trigger="[^"]+"\} 0\.0$', text, re.M
    )
    assert "# TYPE scheduler_trigger_circuit_open gauge" in text


async def test_metrics_list_every_family_before_its_first_sample() -> None:
    """An alert on trigger failures or retries finds its family on a service that has had none."""
    service = Service(PIPELINES, orchestrator=Orchestrator(io_manager=InMemoryIOManager()))
    transport = httpx.ASGITransport(create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://dp") as client:
        text = (await client.get("/metrics")).text
    for family in ("scheduler_trigger_failures_total", "task_retries_total"):
        assert f"# TYPE {family} counter" in text, family
    assert "# TYPE source_circuit_open gauge" not in text  # this service polls no sources


async def test_a_service_that_is_not_accepting_answers_503() -> None:
    """A service that is not started (or is stopping) refuses runs with 503 and Retry-After."""
    service = Service(PIPELINES, orchestrator=Orchestrator(io_manager=InMemoryIOManager()))
    transport = httpx.ASGITransport(create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://dp") as client:
        response = await client.post("/pipelines/hello/runs", json={})
        ready = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"] == "ServiceUnavailableError"
    assert ready.status_code == 503


# --- limits ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("gate")
def test_overload_is_429_with_retry_after(tmp_path: Path) -> None:
    """With every run slot and queue place taken, a start is a 429 with Retry-After."""
    with serving(tmp_path, token=None, max_concurrent_pipelines=1, max_queued_pipelines=1) as api:
        running = api.start("hold")
        queued = api.start("hold")
        refused = api.client.post("/pipelines/hold/runs", json={})
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"] == "TooManyPipelinesError"
        GATE.set()
        api.wait_for_status(running, "succeeded")
        api.wait_for_status(queued, "succeeded")
        assert api.runs("hold")["total"] == 2


def test_thousand_concurrent_triggers_lose_nothing(tmp_path: Path) -> None:
    """1,000 concurrent fires each end 202 with a recorded run, or an explicit 429."""
    with serving(tmp_path, max_queued_pipelines=50) as api:
        statuses = asyncio.run(_fire_many(api.url, "/triggers/noop/fire", 1000, 100))
        assert set(statuses) <= {202, 429}, statuses
        assert statuses[202] + statuses[429] == 1000
        assert statuses[202] > 0
        assert api.runs("noop")["total"] == statuses[202]


async def _fire_many(url: str, path: str, count: int, concurrency: int) -> Counter[int]:
    """POST `count` times, `concurrency` at a time, over 10 connection pools (one big httpx
    pool spends more time choosing a connection than the server spends answering)."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=max(1, concurrency // 10))
    clients = [
        httpx.AsyncClient(base_url=url, headers=AUTH, limits=limits, timeout=PATIENCE)
        for _ in range(10)
    ]

    async def fire(client: httpx.AsyncClient) -> int:
        async with gate:
            return (await client.post(path, json={"payload": {}})).status_code

    try:
        return Counter(await asyncio.gather(*(fire(clients[i % 10]) for i in range(count))))
    finally:
        for client in clients:
            await client.aclose()


# --- the schema -----------------------------------------------------------------------------

SCHEMA = schemathesis.openapi.from_dict(
    create_app(
        Service(PIPELINES, orchestrator=Orchestrator(io_manager=InMemoryIOManager())), token=TOKEN
    ).openapi()
)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    GATE.set()  # a generated request may start `hold`: let it end at once
    with serving(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    case=SCHEMA.as_strategy(schemathesis.GenerationMode.POSITIVE)
    | SCHEMA.as_strategy(schemathesis.GenerationMode.NEGATIVE)
)
def test_generated_requests_never_get_a_5xx(fuzzed: Api, case: Any) -> None:
    """Requests generated from the OpenAPI schema, valid or not, never get a 5xx."""
    response = case.call(base_url=fuzzed.url, headers=AUTH)
    assert response.status_code < 500, (response.status_code, response.text, case.as_curl_command())


def test_every_get_answer_is_described_by_the_openapi_document(api: Api) -> None:
    """GET answers about real pipelines, triggers and runs match their documented schemas."""
    from schemathesis.specs.openapi.checks import response_schema_conformance

    run_id = api.start("hello", name="schema")
    api.wait_for_status(run_id, "succeeded")
    calls = [
        ("/pipelines", {}),
        ("/pipelines/{name}", {"name": "hello"}),
        ("/triggers", {}),
        ("/runs", {}),
        ("/runs/{run_id}", {"run_id": run_id}),
        ("/runs/{run_id}/tasks/{task}/logs", {"run_id": run_id, "task": "greet"}),
        ("/runs/{run_id}", {"run_id": "no-such-run"}),
        ("/health", {}),
        ("/health/ready", {}),
        ("/health/live", {}),
    ]
    documented = SCHEMA.raw_schema["paths"]
    for path, parameters in calls:
        answer = documented[path]["get"]["responses"]["200"]["content"]["application/json"]
        assert "$ref" in answer["schema"], path  # a named model, not "any object"
        case = SCHEMA[path]["GET"].Case(path_parameters=parameters)
        response = case.call(base_url=api.url)
        assert response.status_code in (200, 404), (path, response.text)
        case.validate_response(response, checks=[response_schema_conformance])


def test_an_oversized_body_is_refused_with_413(api: Api) -> None:
    """A request body over the limit (1 MiB) is a 413 naming the limit; nothing starts."""
    before = api.runs("hello")["total"]
    huge = {"params": {"name": "x" * (1024 * 1024 + 1)}}
    response = api.client.post("/pipelines/hello/runs", json=huge)
    assert response.status_code == 413
    assert response.json()["error"] == "RequestTooLarge"
    assert "over 1048576 bytes" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"params": {"name": "'
        for _ in range(2048):
            yield b"x" * 1024
        yield b'"}}'

    chunked = api.client.post(
        "/pipelines/hello/runs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413
    assert api.runs("hello")["total"] == before


@pytest.mark.parametrize("topic", ["dp.run.succeeded", "dp.task.failed"])
def test_lifecycle_topics_cannot_be_published_over_http(api: Api, topic: str) -> None:
    """A client cannot fake dp's own lifecycle events (which start chained pipelines)."""
    response = api.client.post("/events", json={"topic": topic, "payload": {"pipeline": "x"}})
    assert response.status_code == 422
    assert "lifecycle events dp itself publishes" in response.json()["detail"]


def test_a_pipeline_start_topic_can_be_published_over_http(api: Api) -> None:
    """Publishing on dp.pipelines.<name>.start starts that pipeline with the payload."""
    before = api.runs("hello")["total"]
    response = api.client.post(
        "/events", json={"topic": "dp.pipelines.hello.start", "payload": {"name": "bus"}}
    )
    assert response.status_code == 202
    wait_for(lambda: api.runs("hello")["total"] > before, "a hello run")
