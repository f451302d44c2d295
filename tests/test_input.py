"""Hostile input against `dp serve` as users run it: one rule, one limit, never a 5xx.

Every test starts `dp serve` through the CLI and talks HTTP to it; stores and buses are the
real ones (SQLite file, a private PostgreSQL, a private redis-server).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from dp.limits import check_storable, preview, storable_text
from dp.service.middleware import host_of
from dp.service.server import allowed_hosts
from ports import free_port
from postgres_server import PostgresServer
from redis_server import RedisServer
from test_serve import AUTH, PATIENCE, dp_serve, wait_for

redis = pytest.importorskip("redis")

PIPELINE = textwrap.dedent(
    """
    from typing import Any

    from dp import pipeline, task


    @task
    def echo(data: Any, x: float = 0.0) -> None:
        pass


    @task
    def noisy() -> None:
        print("before\\x00after")
        raise RuntimeError("failed\\x00here")


    @task
    def odd() -> None:
        raise RuntimeError("odd \\udc80 text")


    pipeline("echo", tasks=["echo"], on="in.echo")
    pipeline("noisy", tasks=["noisy"])
    pipeline("odd", tasks=["odd"])
    """
)

JSON = {"Content-Type": "application/json", **AUTH}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    return tmp_path


def nested(depth: int) -> Any:
    """A JSON value `depth` levels deep: `{"a": {"a": ... 1}}`."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def redis_bus(server: RedisServer, db: int) -> str:
    """The URL of database `db` of `server`, emptied: each test has a database of its own."""
    url = server.url.rsplit("/", 1)[0] + f"/{db}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


def run_of(client: httpx.Client, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = client.get(f"/runs/{response.json()['run_id']}").json()
    return answer


# --- the one rule through HTTP ------------------------------------------------------------------


def test_deep_run_parameters_are_a_422_naming_the_field_and_the_limit(project: Path) -> None:
    """Parameters nested 300 deep get 422 naming `params.data` and DP_MAX_DEPTH (main: 500);
    60 deep is accepted and reads back equal."""
    port = free_port()
    with (
        dp_serve(project, port),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as client,
    ):
        refused = client.post("/pipelines/echo/runs", json={"params": {"data": nested(300)}})
        assert refused.status_code == 422, refused.text
        detail = refused.json()["detail"]
        assert "params.data.a.a" in detail, detail
        assert "64 levels (DP_MAX_DEPTH)" in detail, detail
        accepted = client.post("/pipelines/echo/runs", json={"params": {"data": nested(60)}})
        assert run_of(client, accepted)["params"] == {"data": nested(60)}


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_nan_and_infinity_are_a_422_on_every_store(
    project: Path, store: str, postgres: PostgresServer
) -> None:
    """NaN as a float parameter and Infinity inside a value are refused with 422 naming the
    field, on SQLite as on PostgreSQL (main: 500 on PostgreSQL, `null` on SQLite)."""
    port = free_port()
    args = ["--store", postgres.create_database()] if store == "postgres" else []
    with (
        dp_serve(project, port, *args),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=JSON) as client,
    ):
        nan = client.post("/pipelines/echo/runs", content=b'{"params":{"data":1,"x":NaN}}')
        assert nan.status_code == 422, nan.text
        assert "params.x" in nan.json()["detail"], nan.text
        inf = client.post("/pipelines/echo/runs", content=b'{"params":{"data":{"y":Infinity}}}')
        assert inf.status_code == 422, inf.text
        assert "params.data.y" in inf.json()["detail"], inf.text
        assert client.get("/runs").json()["total"] == 0


def test_a_lone_surrogate_in_an_event_is_a_422_on_the_redis_bus(
    project: Path, redis_server: RedisServer
) -> None:
    """A lone surrogate in an event payload gets 422 naming `payload.data` (main: 500), and
    the bus goes on carrying the next event to its run."""
    port = free_port()
    bus = redis_bus(redis_server, 3)
    with (
        dp_serve(project, port, "--bus", bus) as server,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=JSON) as client,
    ):
        body = b'{"topic":"in.echo","payload":{"data":"\\ud800"}}'
        refused = client.post("/events", content=body)
        assert refused.status_code == 422, refused.text
        assert "payload.data" in refused.json()["detail"]
        assert "lone surrogate" in refused.json()["detail"]
        accepted = client.post("/events", json={"topic": "in.echo", "payload": {"data": "é\x00"}})
        assert accepted.status_code == 202, accepted.text
        wait_for(lambda: client.get("/runs").json()["total"] == 1, "the event's run", server)
        assert client.get("/runs").json()["items"][0]["params"] == {"data": "é\x00"}


def test_a_task_printing_nul_is_recorded_on_postgres(
    project: Path, postgres: PostgresServer
) -> None:
    """A task that prints a NUL and fails ends `failed`, its output and error stored with
    U+FFFD for the NUL (main: DataError on every write, the run looped); a NUL inside a
    parameter is kept as it is."""
    port = free_port()
    with (
        dp_serve(project, port, "--store", postgres.create_database()) as server,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as client,
    ):
        run_id = client.post("/pipelines/noisy/runs", json={}).json()["run_id"]
        wait_for(
            lambda: client.get(f"/runs/{run_id}").json()["status"] == "failed",
            "the noisy run to fail",
            server,
        )
        logs = client.get(f"/runs/{run_id}/tasks/noisy/logs").json()
        assert "before\ufffdafter" in logs["output"], logs
        assert "failed\ufffdhere" in logs["error"], logs
        kept = client.post("/pipelines/echo/runs", json={"params": {"data": "a\x00b"}})
        assert run_of(client, kept)["params"] == {"data": "a\x00b"}


def test_a_task_error_with_a_lone_surrogate_is_stored_and_published_on_redis(
    project: Path, redis_server: RedisServer
) -> None:
    """A task whose error holds a lone surrogate fails its run with the error stored and
    published escaped (U+FFFD), and the lifecycle events of the next run still arrive (main:
    the Redis sender died on the event, and the events queued with it were lost)."""
    port = free_port()
    bus = redis_bus(redis_server, 6)
    with (
        dp_serve(project, port, "--bus", bus) as server,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as client,
    ):
        for _ in range(2):
            run_id = client.post("/pipelines/odd/runs", json={}).json()["run_id"]

            def ended(run_id: str = run_id) -> bool:
                return bool(client.get(f"/runs/{run_id}").json()["status"] == "failed")

            wait_for(ended, "the odd run to fail", server)
            assert "odd \ufffd text" in client.get(f"/runs/{run_id}").json()["error"]

            def failed(run_id: str = run_id) -> list[dict[str, Any]]:
                items = client.get("/ui/events", params={"pattern": "dp.run.failed"}).json()
                return [e for e in items["items"] if run_id in e["payload"]]

            wait_for(failed, "the run's dp.run.failed event", server)
            assert "odd \ufffd text" in failed()[0]["payload"]


# --- the Host allow-list ---------------------------------------------------------------------


def test_a_rebinding_host_is_refused_before_anything_runs(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tokenless `dp serve` refuses `Host: evil.example` with 400 (main: a web page could
    publish events and read every run), answers its own addresses and the names of
    DP_ALLOWED_HOSTS, or of --allowed-host, which overrides it."""
    port = free_port()
    monkeypatch.setenv("DP_ALLOWED_HOSTS", "dp.internal,*.corp.example")
    evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    with (
        dp_serve(project, port, token=None),
        httpx.Client(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        event = {"topic": "in.echo", "payload": {"data": 1}}
        refused = client.post("/events", json=event, headers=evil)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "InvalidHost"
        assert "--allowed-host" in refused.json()["detail"]
        assert client.get("/runs", headers=evil).status_code == 400
        assert client.get("/ui/stream", headers=evil).status_code == 400
        assert client.get("/ui/events").json()["items"] == []  # nothing was published
        for host in ("localhost", "127.0.0.1", "[::1]", "dp.internal", "a.corp.example"):
            answer = client.get("/runs", headers={"Host": f"{host}:{port}"})
            assert answer.status_code == 200, (host, answer.text)
        assert client.get("/runs", headers={"Host": "corp.example"}).status_code == 400
    with (
        dp_serve(project, port, "--allowed-host", "proxy.example", token=None),
        httpx.Client(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        assert client.get("/runs", headers={"Host": "proxy.example"}).status_code == 200
        assert client.get("/runs", headers={"Host": "dp.internal"}).status_code == 400


def test_the_hosts_a_service_answers_to_follow_its_address() -> None:
    """Loopback: the loopback names; one address: itself; every address: also any IP."""
    assert allowed_hosts("127.0.0.1") == (["127.0.0.1", "localhost", "::1"], False)
    assert allowed_hosts("10.1.2.3", ["a.example, b.example"]) == (
        ["10.1.2.3", "a.example", "b.example"],
        False,
    )
    assert allowed_hosts("0.0.0.0")[1] is True
    assert host_of("[::1]:8080") == "::1"
    assert host_of("Example.COM:80") == "example.com"
    assert host_of("::1") == "::1"


# --- the dashboard renders whatever the bus accepted -------------------------------------------


class Stream:
    """The dashboard's live feed (/ui/stream), read on a thread: the event ids it delivered."""

    def __init__(self, url: str) -> None:
        self.seen: list[str] = []
        self._client = httpx.Client(timeout=httpx.Timeout(PATIENCE, read=None))
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._open = threading.Event()

    def __enter__(self) -> Stream:
        self._thread.start()
        assert self._open.wait(PATIENCE), "the live feed did not open"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._response is not None:
            self._response.close()
        self._client.close()
        self._thread.join(PATIENCE)

    def _read(self, url: str) -> None:
        try:
            with self._client.stream("GET", url) as response:
                self._response = response
                self._open.set()
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        batch = json.loads(line[6:])
                        self.seen += [e["event_id"] for e in batch.get("events", [])]
        except (httpx.HTTPError, RuntimeError):
            pass  # closed by __exit__


@pytest.mark.parametrize("bus", ["memory", "redis"])
def test_a_deep_event_and_dead_letter_leave_the_dashboard_working(
    project: Path, bus: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a 190-deep payload on the bus (DP_MAX_DEPTH=200) and, on Redis, a foreign producer's
    300-deep start event dead-lettered, /ui/events answers 200 and shows both cut short, and
    the live feed delivers the next event (main: a 256-deep event ended the feed for good,
    a deep dead letter made /ui/events a 500)."""
    port = free_port()
    monkeypatch.setenv("DP_MAX_DEPTH", "200")
    url = f"http://127.0.0.1:{port}"
    args = ["--bus", redis_bus(redis_server, 4)] if bus == "redis" else []
    with (
        dp_serve(project, port, *args) as server,
        httpx.Client(base_url=url, headers=AUTH) as client,
        Stream(f"{url}/ui/stream?events=**") as stream,
    ):
        deep = client.post("/events", json={"topic": "misc.deep", "payload": nested(190)})
        assert deep.status_code == 202, deep.text
        if bus == "redis":
            _produce_foreign(args[1], "dp.pipelines.echo.start", nested(300))
            wait_for(
                lambda: client.get("/ui/events").json()["dead_letters"], "a dead letter", server
            )
        wait_for(
            lambda: "misc.deep" in [e["topic"] for e in client.get("/ui/events").json()["items"]],
            "the deep event on the events page",
            server,
        )
        events = client.get("/ui/events")
        assert events.status_code == 200, events.text
        shown = {e["topic"]: e for e in events.json()["items"]}
        assert "…" in shown["misc.deep"]["payload"]
        for letter in events.json()["dead_letters"]:
            assert "nested deeper than 200 levels" in letter["error"], letter
        after = client.post("/events", json={"topic": "misc.after", "payload": {"n": 1}})
        event_id = after.json()["event_id"]
        wait_for(lambda: event_id in stream.seen, "the live feed to deliver the next event")
        assert deep.json()["event_id"] in stream.seen


def _produce_foreign(bus: str, topic: str, payload: Any) -> None:
    """Add an event to the Redis stream of `topic` the way another language's producer does."""
    event = {
        "eventId": "foreign-deep",
        "eventType": "Deep",
        "topic": topic,
        "timestamp": "2026-01-01T00:00:00Z",
        "source": "elsewhere",
        "payload": payload,
    }
    client = redis.Redis.from_url(bus)
    try:
        client.xadd(f"dp:stream:{topic}", {"event": json.dumps(event)})
        client.sadd("dp:topics", topic)
    finally:
        client.close()


def test_a_bad_limit_setting_stops_dp_serve_before_it_listens(project: Path) -> None:
    """DP_MAX_DEPTH beyond what can be shown again (200) is a setting error: exit 2, naming it."""
    env = {**os.environ, "DP_MAX_DEPTH": "500"}
    done = subprocess.run(
        [sys.executable, "-m", "dp.cli", "serve", "pipeline.py", "--port", str(free_port())],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "DP_MAX_DEPTH '500' (from the environment) must be a whole number from 2 to 200" in (
        done.stderr
    )


# --- the rule itself ---------------------------------------------------------------------------


def test_the_rule_names_the_item_that_breaks_it() -> None:
    """check_storable names the path inside the field; deep values are refused, not recursed."""
    from dp.errors import UnstorableValueError

    cases = {
        "params.rows[1].name": {"rows": [{}, {"name": "\udc80"}]},
        "params.x": {"x": float("-inf")},
    }
    for field, value in cases.items():
        with pytest.raises(UnstorableValueError) as caught:
            check_storable(value, where="params")
        assert caught.value.field == field
    with pytest.raises(UnstorableValueError, match="deeper than 64 levels") as deep:
        check_storable(nested(100_000), where="params")
    assert deep.value.limit == 64
    check_storable({"ok": ["\x00", 1.5, None, True, nested(60)]}, where="params")


def test_text_a_task_produced_is_stored_escaped() -> None:
    """NUL and lone surrogates become U+FFFD; None stays None; anything previews."""
    assert storable_text("a\x00b\ud800c") == "a\ufffdb\ufffdc"
    assert storable_text(None) is None
    assert preview(nested(100_000), depth=2) == {"a": {"a": "…"}}
    assert preview({"x": float("nan")}) == {"x": "nan"}


def test_the_codec_keeps_the_rule_both_ways() -> None:
    """to_json refuses what breaks the rule; from_json refuses it from a foreign producer (so a
    durable group dead-letters it), each naming the field."""
    from dp.errors import EventFormatError
    from dp.events import EventBase

    big = {"blob": "x" * (1024 * 1024 + 1)}
    for payload, problem in [
        (big, "'payload' is over 1048576 bytes"),
        ({"n": float("nan")}, "'payload.n' is nan"),
        ({"s": "\ud800"}, "'payload.s' contains a lone surrogate"),
        (nested(70), "'payload.a.a"),
    ]:
        with pytest.raises(EventFormatError, match=problem):
            EventBase(topic="a.b", payload=payload).to_json()
    wire = EventBase(topic="a.b", payload={"v": 1}).to_json()
    for text, problem in [
        (wire.replace('{"v":1}', json.dumps(big)), "'payload' is over 1048576 bytes"),
        (wire.replace('{"v":1}', '{"s":"\\udc80"}'), "'payload.s' contains a lone surrogate"),
        (wire.replace('{"v":1}', '{"n":Infinity}'), "Infinity is not a JSON number"),
        (wire.replace('"source":"dp"', '"source":"d\\u0000p"'), "'source' contains a NUL"),
    ]:
        with pytest.raises(EventFormatError, match=problem):
            EventBase.from_json(text.encode())
    nul = wire.replace('{"v":1}', '{"v":"\\u0000"}')
    assert EventBase.from_json(nul).payload == {"v": "\x00"}  # NUL in a value is kept
