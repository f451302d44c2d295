"""`dp serve --bus kafka://...` as a user runs it against a Kafka-protocol broker (Tansu): the
only bus option set is the one a Tansu user must set (`?idempotence=false`), and without it
`dp serve` refuses to start, naming that option."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from dp.events.kafka_options import kafka_url
from kafka_server import KafkaServer
from ports import free_port
from test_serve import AUTH, PATIENCE, TOKEN, dp_serve, wait_for

PIPELINE = textwrap.dedent(
    """
    import os
    from pathlib import Path

    from dp import pipeline, task


    @task
    def record(n: int) -> int:
        with Path(os.environ["DP_TEST_LOG"]).open("a") as log:
            log.write(f"{n}\\n")
        return n


    pipeline("orders", tasks=["record"], on="shop.orders.*")
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    return tmp_path


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[KafkaServer]:
    """A Tansu of this test alone (the service's groups and topics start empty)."""
    server = KafkaServer.start(tmp_path / "kafka")
    yield server
    server.stop()


def ran(project: Path) -> list[int]:
    """The `n` of every run's task, one per execution (a file each task appends to)."""
    log = project / "log.txt"
    return [int(line) for line in log.read_text().split()] if log.exists() else []


async def produce_raw(bootstrap: str, topic: str, numbers: range) -> None:
    """Records in dp's JSON wire format from a plain producer (any language could)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for n in numbers:
            record = {
                "eventId": f"raw-{n}",
                "eventType": "OrderCreated",
                "topic": topic,
                "timestamp": "2026-01-31T09:00:00.000Z",
                "source": "kotlin-shop",
                "payload": {"n": n},
            }
            await producer.send_and_wait(topic, json.dumps(record).encode(), key=b"%d" % n)
    finally:
        await producer.stop()


def test_dp_serve_on_tansu_runs_events_from_http_and_from_a_plain_producer(
    project: Path, tansu: KafkaServer
) -> None:
    """With `--bus kafka://HOST:PORT?idempotence=false` and nothing else, events published
    over HTTP and records a plain producer writes to the topic each start one run; /health
    reports the Kafka bus ok."""
    port = free_port()
    bus = kafka_url(tansu.url, idempotence=False)
    with dp_serve(project, port, "--bus", bus) as process:
        base = f"http://127.0.0.1:{port}"
        for n in range(3):
            answer = httpx.post(
                f"{base}/events",
                json={"topic": "shop.orders.created", "payload": {"n": n}},
                headers=AUTH,
            )
            assert answer.status_code == 202, answer.text
        asyncio.run(produce_raw(tansu.bootstrap, "shop.orders.created", range(3, 6)))
        wait_for(lambda: len(ran(project)) >= 6, "six runs", process)
        health = httpx.get(f"{base}/health").json()
        assert (health["bus"]["ok"], health["bus"]["error"]) == (True, None)
        time.sleep(1.0)  # a second run of any event would show by now
    assert sorted(ran(project)) == list(range(6))


def test_dp_serve_refuses_to_start_when_the_broker_refuses_idempotence(
    project: Path, tansu: KafkaServer
) -> None:
    """On the defaults (idempotent producer) Tansu refuses every publish: dp serve says so at
    start, naming the option to add, and exits instead of serving and dropping events."""
    env = {**os.environ, "DP_TEST_LOG": str(project / "log.txt")}
    done = subprocess.run(
        [sys.executable, "-m", "dp.cli", "serve", "pipeline.py", "--port", str(free_port())],
        cwd=project,
        env={**env, "DP_BUS_URL": tansu.url},
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "refused idempotent producers" in output, output
    assert "add ?idempotence=false to the bus URL" in output, output


def test_dp_serve_with_the_broker_down_serves_reports_it_and_recovers(
    project: Path, tmp_path: Path
) -> None:
    """Kafka unreachable at start is an outage, not a refusal: dp serve logs it and serves;
    /health answers 503 saying why (once something failed to publish) until the broker is
    up, then 200, and publishing is accepted again. (Runs from those events are not
    asserted: the subscriptions that start them do not retry a broker unreachable when
    they start; that is the consumer groups' work on another branch.)"""
    tansu = KafkaServer(tmp_path / "kafka", free_port())  # not started yet
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    bus = kafka_url(tansu.url, idempotence=False, request_timeout=1)
    env = {**os.environ, "DP_TEST_LOG": str(project / "log.txt"), "DP_API_TOKEN": TOKEN}
    with (project / "serve.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dp.cli", "serve", "pipeline.py", "--port", str(port)],
            cwd=project,
            env={**env, "DP_BUS_URL": bus},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def answers() -> bool:
            try:
                return httpx.get(f"{base}/health/live").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, "dp serve to answer", process)
        refused = httpx.post(
            f"{base}/events", json={"topic": "shop.orders.created", "payload": {"n": 0}},
            headers=AUTH, timeout=PATIENCE,
        )  # fmt: skip
        assert refused.status_code != 202
        health = httpx.get(f"{base}/health", timeout=PATIENCE)
        assert health.status_code == 503
        assert "unreachable" in health.json()["bus"]["error"]
        tansu._launch()
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, "health", process)
        accepted = httpx.post(
            f"{base}/events", json={"topic": "shop.orders.created", "payload": {"n": 1}},
            headers=AUTH, timeout=PATIENCE,
        )  # fmt: skip
        assert accepted.status_code == 202, accepted.text
    finally:
        process.kill()
        process.wait(PATIENCE)
        tansu.stop()
    assert "bus.unreachable_at_start" in (project / "serve.log").read_text()
