"""Two `dp serve` instances on one Redis and one PostgreSQL, as a user runs them: real
processes, a cron every second, 1,000 events from a foreign producer (raw XADD), one instance
SIGKILLed and Redis restarted midway. Every event starts exactly one run, every scheduled
second exactly one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dp.store import RunStatus, SQLRunStore
from ports import free_port
from postgres_server import PostgresServer
from redis_server import RedisServer

redis = pytest.importorskip("redis")

PIPELINES = textwrap.dedent(
    """
    from pathlib import Path

    from dp import pipeline, task

    EFFECTS = Path(__file__).parent / "effects"


    @task
    def tick() -> int:
        return 1


    @task
    def handle(order_id: str) -> str:
        with EFFECTS.open("a") as log:
            log.write(order_id + "\\n")
        return order_id


    pipeline("every_second", tasks=["tick"], cron="* * * * * *", api=False)
    pipeline("orders", tasks=["handle"], on="shop.orders.created", api=False)
    """
)
EVENTS = 1000


def _serve(project: Path, port: int, bus: str, store: str) -> subprocess.Popen[bytes]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    with (project / f"serve-{port}.log").open("wb") as log:
        return _popen(project, port, bus, store, src, log)


def _popen(
    project: Path, port: int, bus: str, store: str, src: str, log: Any
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dp.cli",
            "serve",
            "pipelines.py",
            "--port",
            str(port),
            "--bus",
            bus,
            "--store",
            store,
            "--results",
            f"file://{project / 'results'}",
            "--lease",
            "2",
            "--grace",
            "5",
            "--claim-idle",  # the survivor takes the dead instance's events over after 5 s
            "5",
        ],
        cwd=project,
        env={**os.environ, "PYTHONPATH": src, "DP_API_TOKEN": "scale-out-test"},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def _ready(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"dp serve on port {port} never became ready")


def _publish(url: str, stop_at: float, published: list[str]) -> None:
    """A foreign producer: the JSON wire format with raw XADD, paced over a few seconds,
    retrying through the Redis restart (at-least-once on its side too)."""
    client = redis.Redis.from_url(url)
    client.sadd("dp:topics", "shop.orders.created")
    pause = max(0.0, (stop_at - time.monotonic()) / EVENTS)
    for i in range(EVENTS):
        event = {
            "eventId": f"order-{i:04d}",
            "eventType": "OrderCreated",
            "topic": "shop.orders.created",
            "timestamp": datetime.now(UTC).isoformat(),
            "source": "kotlin-shop",
            "payload": {"order_id": f"order-{i:04d}"},
        }
        while True:
            try:
                client.xadd("dp:stream:shop.orders.created", {"event": json.dumps(event)})
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        published.append(event["eventId"])
        time.sleep(pause)


def test_two_instances_lose_nothing_and_run_nothing_twice(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """Cron and events across two instances, one SIGKILLed, Redis restarted: 0 duplicate
    runs, 0 lost events, exactly one run for every scheduled second."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "pipelines.py").write_text(PIPELINES)
    server = RedisServer.start(tmp_path / "redis")
    store_url = postgres.create_database()
    ports = [free_port(), free_port()]
    began = time.monotonic()
    instances = [_serve(project, port, server.url, store_url) for port in ports]
    try:
        for port in ports:
            _ready(port, time.monotonic() + 60)
        started = datetime.now(UTC)
        published: list[str] = []
        producer = threading.Thread(
            target=_publish, args=(server.url, time.monotonic() + 6, published)
        )
        producer.start()
        time.sleep(3)
        instances[0].send_signal(signal.SIGKILL)  # one instance dies mid-way
        instances[0].wait(10)
        time.sleep(1)
        server.restart()  # and Redis restarts (AOF on: nothing it acknowledged is lost)
        producer.join(60)
        time.sleep(10 - (datetime.now(UTC) - started).total_seconds())
        stopped = datetime.now(UTC)

        store = SQLRunStore(store_url)
        print(f"activity over after {time.monotonic() - began:.1f}s")
        deadline = time.monotonic() + 90
        while True:  # the survivor works through the backlog and adopts the dead one's runs
            orders = store.list_runs(pipeline="orders", limit=5000)
            unfinished = store.count_runs(
                status=[RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.INTERRUPTED]
            )
            # the list is read before the count: a run it saw running may have ended since
            if len(orders) >= EVENTS and unfinished == 0 and all(r.status.finished for r in orders):
                break
            assert time.monotonic() < deadline, (
                f"{len(orders)} order runs of {EVENTS}, {unfinished} unfinished runs"
            )
            time.sleep(0.5)
        ticks = store.list_runs(pipeline="every_second", limit=5000)
        store.close()
        print(f"all recorded after {time.monotonic() - began:.1f}s")
    finally:
        for instance in instances:
            if instance.poll() is None:
                instance.send_signal(signal.SIGTERM)
        for instance in instances:
            try:
                instance.wait(30)
            except subprocess.TimeoutExpired:
                instance.kill()
        server.stop()

    assert len(published) == EVENTS
    per_event = Counter(run.params["order_id"] for run in orders)
    assert [order for order, runs in per_event.items() if runs > 1] == []  # no duplicates
    assert sorted(per_event) == sorted(published)  # none lost
    assert {run.status for run in orders} == {RunStatus.SUCCEEDED}

    due = Counter(run.event_id.rsplit("-", 1)[1] for run in ticks if run.event_id)
    assert [second for second, runs in due.items() if runs > 1] == []  # one run per second
    # the field and the key agree: each tick's run records the second its event id names
    assert [r.run_id for r in ticks if r.event_id and r.scheduled_for is None] == []
    assert [
        r.run_id
        for r in ticks
        if r.event_id and f"{r.scheduled_for:%Y%m%dT%H%M%SZ}" != r.event_id.rsplit("-", 1)[1]
    ] == []
    seconds = [
        (started + timedelta(seconds=s)).strftime("%Y%m%dT%H%M%SZ")
        for s in range(2, int((stopped - started).total_seconds()) - 1)
    ]
    assert [second for second in seconds if second not in due] == []  # none skipped
