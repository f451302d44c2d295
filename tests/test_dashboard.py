"""The dashboard's server side: its page and assets, the live feed, the guards, resume, filters."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dp.engine import ExecutionContext, Orchestrator, RunResult, TaskRunResult
from dp.io import InMemoryIOManager
from dp.service import Service
from dp.service.api import create_app
from dp.service.dashboard import STATIC, LiveFeed, Subscriber
from dp.store import MemoryRunStore, RunRecord, RunStatus, SQLRunStore, TaskStatus
from service_pipelines import GATE, PIPELINES
from test_api import AUTH, TOKEN, Api, serving, wait_for


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with serving(tmp_path_factory.mktemp("dashboard")) as running:
        yield running


def _context(run_id: str = "r1") -> ExecutionContext:
    plan = PIPELINES.get("noop").plan()
    return ExecutionContext(
        run_id=run_id, dag_id=plan.dag_id, plan=plan, io_manager=InMemoryIOManager()
    )


# --- the page and its assets ------------------------------------------------------------------


def test_the_dashboard_is_served_at_the_root(api: Api) -> None:
    """GET / is the dashboard's page, and every asset it names is served by dp itself."""
    page = httpx.get(f"{api.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page.text)
    assert "/ui/static/app.js" in assets
    for asset in assets:
        assert httpx.get(f"{api.url}{asset}").status_code == 200, asset


def test_every_script_module_the_page_imports_ships_in_the_package() -> None:
    """Each `import ... from "./x.js"` of the dashboard's scripts names a file in the package."""
    for script in STATIC.glob("*.js"):
        for name in re.findall(r'from "\./([^"]+)"', script.read_text()):
            assert (STATIC / name).is_file(), f"{script.name} imports missing {name}"


def test_the_scripts_never_write_html() -> None:
    """The dashboard builds DOM with textContent only: no innerHTML, outerHTML or document.write."""
    for script in STATIC.glob("*.js"):
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            assert sink not in text, f"{script.name} uses {sink}"


def test_the_api_docs_load_nothing_from_elsewhere(api: Api) -> None:
    """/docs names only swagger-ui files served by dp, so it works without internet."""
    page = httpx.get(f"{api.url}/docs")
    assert page.status_code == 200
    urls = re.findall(r'(?:src|href|url)\s*[=:]\s*[\'"]([^\'"]+)[\'"]', page.text)
    assert urls, page.text
    for url in urls:
        assert not url.startswith(("http:", "https:", "//")), url
        assert httpx.get(f"{api.url}{url}").status_code == 200, url


# --- the live feed ------------------------------------------------------------------------------


async def test_many_updates_of_a_task_reach_a_page_as_one_entry() -> None:
    """1,000 updates of one task between two batches are sent once, in the latest state."""
    feed = LiveFeed()
    page = Subscriber(run_id="r1")
    feed._subscribers.add(page)
    context = _context()
    for attempt in range(1, 1001):
        task = TaskRunResult("noop", TaskStatus.RUNNING, attempts=attempt)
        feed.on_task_update(context=context, task=task)
    feed.flush()
    (batch,) = page.take()
    assert [(t["task"], t["attempt"]) for t in batch["tasks"]] == [("noop", 1000)]


async def test_a_page_gets_only_its_own_runs_tasks() -> None:
    """Task changes go to pages following that run; run changes go to every page."""
    feed = LiveFeed()
    mine, other, runs_page = Subscriber(run_id="r1"), Subscriber(run_id="r2"), Subscriber()
    feed._subscribers.update({mine, other, runs_page})
    context = _context("r1")
    feed.on_run_start(context=context)
    feed.on_task_update(context=context, task=TaskRunResult("noop", TaskStatus.SUCCEEDED))
    feed.flush()
    assert [len(b.get("tasks", [])) for b in mine.take()] == [1]
    assert [b.get("tasks") for b in other.take()] == [None]
    assert [b["runs"][0]["status"] for b in runs_page.take()] == ["running"]


async def test_nothing_is_sent_while_nothing_changes() -> None:
    """A flush with no change sends no batch."""
    feed = LiveFeed()
    page = Subscriber()
    feed._subscribers.add(page)
    feed.flush()
    assert page.take() == []


async def test_a_stalled_page_is_told_to_reload_instead_of_buffering() -> None:
    """A page that reads nothing holds a bounded backlog ending in a resync marker."""
    feed = LiveFeed()
    page = Subscriber()
    feed._subscribers.add(page)
    context = _context()
    result = RunResult("r1", context.dag_id, RunStatus.SUCCEEDED)
    for _ in range(100):
        feed.on_run_end(context=context, result=result)
        feed.flush()
    backlog = page.take()
    assert len(backlog) <= 20
    assert {"resync": True} in backlog


def test_the_stream_pushes_a_run_and_its_tasks(api: Api) -> None:
    """GET /ui/stream?run=ID delivers the run's start, its task states and its end."""
    seen: list[dict[str, Any]] = []
    run_id = "streamed-run"

    def follow() -> None:
        with httpx.stream("GET", f"{api.url}/ui/stream", params={"run": run_id}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    runs = [r for b in seen for r in b.get("runs", [])]
                    if any(r["status"] == "succeeded" for r in runs):
                        return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    feed = next(x for x in api.service.orchestrator.listeners if isinstance(x, LiveFeed))
    wait_for(lambda: feed.subscribers, "the page to subscribe")
    response = api.client.post("/pipelines/noop/runs", json={"run_id": run_id})
    assert response.status_code == 202, response.text
    reader.join(20)
    assert not reader.is_alive(), f"the run's end never came; saw {seen}"
    tasks = [t for b in seen for t in b.get("tasks", [])]
    assert {t["run_id"] for t in tasks} == {run_id}
    assert tasks[-1]["status"] == "succeeded"


def test_recent_events_are_listed_and_filtered(api: Api) -> None:
    """GET /ui/events lists the bus's recent events, filtered by a topic pattern."""
    topic = "dash.orders.created"
    response = api.client.post("/events", json={"topic": topic, "payload": {"id": "<b>1</b>"}})
    assert response.status_code == 202, response.text

    def listed() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = api.client.get(
            "/ui/events", params={"pattern": "dash.*.created"}
        ).json()["items"]
        return items

    (event,) = wait_for(listed, "the event to be listed")
    assert event["topic"] == topic
    assert json.loads(event["payload"]) == {"id": "<b>1</b>"}
    everything = api.client.get("/ui/events", params={"pattern": "other.**"}).json()
    assert everything == {"items": [], "dead_letters": []}


def test_a_malformed_topic_pattern_is_a_422_naming_it(api: Api) -> None:
    """A bad pattern is refused with the pattern in the message."""
    response = api.client.get("/ui/events", params={"pattern": "a..b"})
    assert response.status_code == 422
    assert "a..b" in response.json()["detail"]


# --- resume ---------------------------------------------------------------------------------------


def test_resume_restarts_an_interrupted_run(api: Api) -> None:
    """POST /runs/{id}/resume runs an interrupted run's missing tasks to success."""
    plan = PIPELINES.get("noop").plan()
    run_id = "interrupted-run"
    store = api.service.orchestrator.store
    assert store is not None
    store.create_run(
        RunRecord(
            run_id=run_id,
            dag_id=plan.dag_id,
            pipeline="noop",
            status=RunStatus.INTERRUPTED,
            plan=plan.to_dict(),
        )
    )
    response = api.client.post(f"/runs/{run_id}/resume", json={})
    assert response.status_code == 202, response.text
    assert response.json() == {"run_id": run_id, "status": "resuming"}
    api.wait_for_status(run_id, "succeeded")


def test_resuming_a_finished_run_is_a_409_saying_why(api: Api) -> None:
    """A succeeded run cannot be resumed: 409 with the reason."""
    run_id = api.start("noop")
    api.wait_for_status(run_id, "succeeded")
    response = api.client.post(f"/runs/{run_id}/resume")
    assert response.status_code == 409
    assert "already succeeded" in response.json()["detail"]


def test_resume_needs_the_token(api: Api) -> None:
    """Resume is a mutation: without the token it is a 401."""
    response = httpx.post(f"{api.url}/runs/any-run/resume")
    assert response.status_code == 401


# --- the guards -----------------------------------------------------------------------------------


def test_a_post_from_another_site_is_refused(api: Api) -> None:
    """A browser POST with a foreign Origin is a 403, even with the token."""
    response = api.client.post(
        "/pipelines/noop/runs", json={}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403
    assert response.json()["error"] == "CrossOriginRequest"
    assert "evil.example" in response.json()["detail"]


def test_a_post_from_the_dashboard_itself_is_accepted(api: Api) -> None:
    """The same Origin as the service passes the check."""
    response = api.client.post("/pipelines/noop/runs", json={}, headers={"Origin": api.url})
    assert response.status_code == 202, response.text


@pytest.fixture
def public_app() -> Iterator[httpx.AsyncClient]:
    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), store=MemoryRunStore())
    service = Service(PIPELINES, orchestrator=orchestrator)
    app = create_app(service, token=TOKEN, protect_reads=True)
    transport = httpx.ASGITransport(app=app)
    yield httpx.AsyncClient(transport=transport, base_url="http://dp.example")
    GATE.set()


@pytest.mark.parametrize("path", ["/runs", "/pipelines", "/ui/events", "/runs/x/tasks/t/logs"])
async def test_reads_need_the_token_when_reads_are_protected(
    public_app: httpx.AsyncClient, path: str
) -> None:
    """With protect_reads (dp serve beyond loopback), data reads without the token are 401."""
    response = await public_app.get(path)
    assert response.status_code == 401
    wrong = await public_app.get(path, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403


@pytest.mark.parametrize("path", ["/", "/ui/static/app.js", "/docs", "/health/live", "/metrics"])
async def test_static_pages_health_and_metrics_stay_open(
    public_app: httpx.AsyncClient, path: str
) -> None:
    """The page shells, health checks and metrics hold no data and need no token."""
    response = await public_app.get(path)
    assert response.status_code == 200, response.text


async def test_reads_with_the_token_pass(public_app: httpx.AsyncClient) -> None:
    """With the token, a protected read is answered."""
    response = await public_app.get("/ui/events", headers=AUTH)
    assert response.status_code == 200


def test_protecting_reads_without_a_token_is_refused() -> None:
    """protect_reads with no token to check against is a clear error."""
    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), store=MemoryRunStore())
    service = Service(PIPELINES, orchestrator=orchestrator)
    with pytest.raises(ValueError, match="protect_reads needs a token"):
        create_app(service, protect_reads=True)


# --- the trigger filter ---------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    chosen = MemoryRunStore() if request.param == "memory" else SQLRunStore(path=tmp_path / "r.db")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for index, trigger in enumerate(["api", "api:daily", "cron:daily.cron", "event:a.b", "x%"]):
        chosen.create_run(
            RunRecord(
                run_id=f"run-{index}",
                dag_id="d",
                trigger=trigger,
                created_at=start + timedelta(minutes=index),
            )
        )
    yield chosen
    chosen.close()


@pytest.mark.parametrize(
    ("trigger", "expected"),
    [
        ("api", ["run-1", "run-0"]),
        ("cron", ["run-2"]),
        ("cron:daily.cron", ["run-2"]),
        ("event", ["run-3"]),
        ("x", []),
        ("x%", ["run-4"]),
        ("manual", []),
    ],
)
def test_runs_filter_by_trigger_kind_or_exact_trigger(
    store: Any, trigger: str, expected: list[str]
) -> None:
    """`trigger="cron"` matches `cron:<name>`; a full trigger matches itself; % is literal."""
    assert [r.run_id for r in store.list_runs(trigger=trigger)] == expected
    assert store.count_runs(trigger=trigger) == len(expected)


def test_the_runs_endpoint_filters_by_trigger(api: Api) -> None:
    """GET /runs?trigger=api lists only runs started over HTTP."""
    api.wait_for_status(api.start("noop"), "succeeded")
    page = api.client.get("/runs", params={"trigger": "api", "limit": 1000}).json()
    assert page["total"] >= 1
    assert all(r["trigger"].split(":")[0] == "api" for r in page["items"])
    none = api.client.get("/runs", params={"trigger": "cron"}).json()
    assert none["total"] == 0
