"""The Kafka broker dies under `dp serve` and comes back: SIGKILL of a real Tansu while
events flow over HTTP, then a restart on the same port. Runs are counted through a file
each task appends to.

Tansu keeps its data in S3 here (a moto server, bucket `tansu`): with its default memory
storage a restart forgets every topic, record and committed offset, so events the broker
had taken but dp had not consumed yet would be gone with it (no client can prevent that;
use durable storage, as with any Kafka)."""

from __future__ import annotations

import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from dp.events.kafka_options import kafka_url
from kafka_server import KafkaServer
from ports import free_port
from s3_server import CREDENTIALS, S3Server
from test_serve import AUTH, PATIENCE, dp_serve, wait_for

pytestmark = pytest.mark.chaos

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
def tansu(tmp_path: Path) -> Iterator[KafkaServer]:
    """A Tansu of this test alone, storing in a moto S3 server of its own."""
    s3 = S3Server.start(tmp_path)
    try:
        boto3.client(
            "s3",
            endpoint_url=s3.url,
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket="tansu")
        server = KafkaServer.start(tmp_path / "kafka", s3=s3.url)
        yield server
        server.stop()
    finally:
        s3.stop()


def ran(project: Path) -> list[int]:
    log = project / "log.txt"
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def health(base: str) -> tuple[int, dict[str, object]]:
    answer = httpx.get(f"{base}/health", timeout=PATIENCE)
    return answer.status_code, answer.json()["bus"]


@pytest.mark.parametrize(
    "topic",
    [
        pytest.param("dp.pipelines.orders.start", id="start-topic"),
        # an on= trigger reads through its pipeline's durable group: an event it took
        # whose forward fails during the outage stays pending and is forwarded later
        pytest.param("shop.orders.created", id="on-trigger"),
    ],
)
def test_a_killed_broker_makes_health_fail_and_no_accepted_event_is_lost_or_run_twice(
    tmp_path: Path, tansu: KafkaServer, topic: str
) -> None:
    """Events flow over HTTP (one publisher, back to back) to the pipeline's start topic, or
    to the topic of its `on=` trigger; the broker is SIGKILLed: publishes are refused (an
    error to the caller, nothing accepted and dropped) and /health answers 503 with the
    bus's error; the broker restarts: /health is 200 again, and every event accepted
    before, during or after ran exactly once."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # What a Tansu user sets (README), plus a shorter publish timeout so a refusal is quick.
    bus = kafka_url(
        tansu.url, idempotence=False, session_timeout=1, fetch_wait=0.05, request_timeout=2
    )
    accepted: list[int] = []
    refused: list[int] = []
    statuses: Counter[int] = Counter()
    flowing = threading.Event()

    def publish(n: int) -> None:
        answer = httpx.post(
            f"{base}/events",
            json={"topic": topic, "payload": {"n": n}, "event_id": f"e{n}"},
            headers=AUTH,
            timeout=PATIENCE,
        )
        statuses[answer.status_code] += 1
        (accepted if answer.status_code == 202 else refused).append(n)
        assert answer.status_code == 202 or "BusUnavailableError" in answer.text, answer.text

    def flow() -> None:
        n = 0
        while flowing.is_set():
            publish(n)
            n += 1
            time.sleep(0.01)

    with dp_serve(tmp_path, port, "--bus", bus) as process:
        publish(-1)  # the groups of the trigger and of the start events are up once it ran
        wait_for(lambda: -1 in ran(tmp_path), "the first run", process)
        flowing.set()
        publisher = threading.Thread(target=flow)
        publisher.start()
        try:
            wait_for(lambda: len(accepted) >= 20, "20 events accepted", process)
            tansu.kill()
            killed = time.monotonic()
            wait_for(lambda: health(base)[0] == 503, "/health to fail", process)
            status, down_health = health(base)
            wait_for(lambda: refused, "a refused publish", process)
            tansu.restart()
            down = time.monotonic() - killed
            wait_for(lambda: health(base)[0] == 200, "/health to recover", process)
            recovered = time.monotonic() - killed
            after = len(accepted)
            wait_for(lambda: len(accepted) >= after + 20, "20 more events accepted", process)
        finally:
            flowing.clear()
            publisher.join(PATIENCE)
        wanted = set(accepted)
        wait_for(lambda: wanted <= set(ran(tmp_path)), "every accepted event's run", process)
        time.sleep(2.0)  # a duplicate would show by now
    counts = Counter(ran(tmp_path))
    duplicates = sum(c - 1 for c in counts.values())
    lost = sorted(set(accepted) - set(counts))
    refused_but_ran = sorted(set(refused) & set(counts))
    print(
        f"\n{topic}: broker down: /health {status}, bus {down_health}\n"
        f"events in {len(accepted) + len(refused)}, accepted {len(accepted)}, refused "
        f"{len(refused)}, runs {sum(counts.values())}, duplicates {duplicates}, lost "
        f"{len(lost)}, refused but ran {len(refused_but_ran)}; broker down {down:.1f}s, "
        f"/health ok again {recovered:.1f}s after the kill; HTTP statuses {dict(statuses)}"
    )
    assert down_health["ok"] is False
    assert "unreachable" in str(down_health["error"])
    assert (duplicates, lost) == (0, [])
