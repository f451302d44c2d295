"""Generated input against `dp serve` over HTTP, on SQLite and PostgreSQL, with the memory and
the Redis bus: never a 5xx, and every accepted value reads back equal.

Examples are bounded and derandomized (the same every run), so the whole file takes about a
minute on a loaded 2-core machine and cannot flake.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dp.events import new_event_id
from ports import free_port
from postgres_server import PostgresServer
from redis_server import RedisServer
from test_api import SCHEMA
from test_input import PIPELINE, nested, redis_bus
from test_serve import AUTH, dp_serve, wait_for

JSON = {"Content-Type": "application/json"}
#: examples per generator and backend
EXAMPLES = 60
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

#: any character, lone surrogates included (hypothesis leaves them out by default)
_text = st.text(st.characters(exclude_categories=()), max_size=12)
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | _text
#: JSON-like values as clients send them: odd text, NaN and infinities, deep nesting
VALUES = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4)
) | st.builds(nested, st.integers(55, 75))


def storable(value: Any, depth: int = 1) -> bool:
    """Whether dp's rule accepts `value` as the field `data` inside params or a payload
    (`depth` levels deep already): what the test expects, written independently of dp."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return depth < 64 and all(storable(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return depth < 64 and all(storable(k) and storable(v, depth + 1) for k, v in value.items())
    return True


@pytest.fixture(params=["sqlite+memory", "sqlite+redis", "postgres+memory", "postgres+redis"])
def served(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres: PostgresServer,
    redis_server: RedisServer,
) -> Any:
    """`dp serve` on one store and bus; yields an HTTP client of it."""
    store, bus = request.param.split("+")
    args = ["--max-queued-pipelines", "10000"]
    if store == "postgres":
        args += ["--store", postgres.create_database()]
    if bus == "redis":
        args += ["--bus", redis_bus(redis_server, 5)]
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    port = free_port()
    with (
        dp_serve(tmp_path, port, *args) as server,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=60) as client,
    ):
        yield server, client


def test_generated_requests_never_get_a_5xx(served: Any) -> None:
    """Requests generated from the OpenAPI schema, valid or not, never get a 5xx."""
    _, client = served
    url = str(client.base_url)

    @FUZZ
    @given(
        case=SCHEMA.as_strategy(schemathesis.GenerationMode.POSITIVE)
        | SCHEMA.as_strategy(schemathesis.GenerationMode.NEGATIVE)
    )
    def call(case: Any) -> None:
        response = case.call(base_url=url, headers=AUTH)
        assert response.status_code < 500, (response.text, case.as_curl_command())

    call()


def test_accepted_params_and_payloads_read_back_equal(served: Any) -> None:
    """A run parameter or event payload is accepted (202) exactly when dp's rule allows it,
    else refused with 422; every accepted one reads back equal from the run it started."""
    server, client = served
    runs: list[tuple[str, Any]] = []
    events: list[tuple[str, Any]] = []

    @FUZZ
    @given(value=VALUES)
    def start(value: Any) -> None:
        body = json.dumps({"params": {"data": value}}).encode()
        response = client.post("/pipelines/echo/runs", content=body, headers=JSON)
        assert response.status_code == (202 if storable(value) else 422), response.text
        if response.status_code == 202:
            runs.append((response.json()["run_id"], value))

    @FUZZ
    @given(value=VALUES)
    def publish(value: Any) -> None:
        event_id = new_event_id()
        event = {"topic": "dp.pipelines.echo.start", "event_id": event_id}
        body = json.dumps({**event, "payload": {"data": value}}).encode()
        response = client.post("/events", content=body, headers=JSON)
        assert response.status_code == (202 if storable(value) else 422), response.text
        if response.status_code == 202:
            events.append((f"echo/{event_id}", value))

    start()
    publish()
    assert runs, "no generated value was accepted"
    for run_id, value in runs:
        answer = client.get(f"/runs/{run_id}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["params"] == {"data": value}

    def started() -> dict[str, Any]:
        page = client.get("/runs", params={"pipeline": "echo", "limit": 1000}).json()
        return {r["event_id"]: r["params"] for r in page["items"] if r["event_id"]}

    wait_for(lambda: len(started()) == len(events), "a run for every accepted event", server)
    found = started()
    for key, value in events:
        assert found[key] == {"data": value}
    print(f"runs accepted {len(runs)}, events accepted {len(events)} of {EXAMPLES} each")


#: requests a fuzzer reaches only by luck: NUL, lone surrogates and odd bytes where the store
#: or the JSON encoder would see them
HOSTILE = [
    ("GET", "/runs?pipeline=%00", None),
    ("GET", "/runs?trigger=%00x", None),
    ("GET", "/runs?pipeline=%ED%A0%80", None),
    ("GET", "/runs/%00", None),
    ("GET", "/runs/a%00b/tasks/t/logs", None),
    ("GET", "/runs/r/tasks/%00/logs?instance=%00", None),
    ("GET", "/pipelines/%00", None),
    ("GET", "/ui/events?pattern=%00", None),
    ("POST", "/triggers/%00/fire", b"{}"),
    ("POST", "/runs/%00/cancel", None),
    ("POST", "/runs/%00/resume", None),
    ("POST", "/pipelines/echo/runs", b'{"run_id": "a\\u0000b", "params": {"data": 1}}'),
    ("POST", "/pipelines/echo/runs", b'{"params": {"\\ud800": 1}}'),
    ("POST", "/pipelines/echo/runs", b'{"params": {"data": 1}, "\\udc00": 1}'),
    ("POST", "/pipelines/echo/runs", b'{"params": {"data": 1e999}}'),
    ("POST", "/pipelines/echo/runs", b"[" * 100_000 + b"]" * 100_000),
    ("POST", "/pipelines/echo/runs", b'{"params": {"data": "\xff\xfe"}}'),
    ("POST", "/events", b'{"topic": "in.echo", "event_id": "a\\u0000", "payload": {}}'),
    ("POST", "/events", b'{"topic": "in\\u0000.echo", "payload": {}}'),
    ("POST", "/events", b'{"topic": "in.echo", "correlation_id": "\\ud800", "payload": {}}'),
    ("POST", "/events", b'{"topic": "in.echo", "event_type": "\\u0000", "payload": {}}'),
    ("POST", "/events", b'{"topic": "in.echo", "payload": {"data": NaN}}'),
]


def test_hostile_requests_get_a_4xx(served: Any) -> None:
    """NUL bytes, lone surrogates, undecodable and absurdly deep bodies in every part of a
    request get a 4xx (a GET of what is not there may be an empty 200), never a 5xx, on
    every store and bus."""
    _, client = served
    for method, path, body in HOSTILE:
        response = client.request(method, path, content=body, headers=JSON)
        assert response.status_code < 500, (method, path, body, response.text[:300])
        if method == "POST" or "%00" in path:  # nothing to change, no NUL to query by
            assert response.status_code >= 400, (method, path, body, response.text[:300])
