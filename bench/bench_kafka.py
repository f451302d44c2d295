"""The Kafka bus beside raw aiokafka on the same private Tansu broker (tests/kafka_server.py).

Every figure is publish-to-delivery: the clock runs from the first publish until the last
event was received (and, for groups, acknowledged). Both sides join their consumer group and
receive one warm-up event before the clock starts (a group join takes about a second on
Tansu), then alternate round after round, each round on topics and groups of its own. Both
fetch with `fetch.max.wait.ms` 20 (dp's `fetch_wait`): with Kafka's default of 500 ms dp's
group deliveries waited ~250 ms each on Tansu (see the README's Tansu notes). Both start
from the same `EventBase`s: the raw side encodes each with `to_json` inside the clock (as
bench_redis's raw side does), decodes with `json.loads` and commits every getmany batch; dp
also decodes into validated `EventBase`s and commits after `ack`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from tests.kafka_server import KafkaServer, tansu_url

from bench._harness import Report
from dp.events import EventBase
from dp.events.kafka import KafkaBroker
from dp.events.kafka_reader import KafkaDurableSubscription

SECTION = "kafka bus"
TOPIC = "sales.orders.created"
BATCH = 100
_rounds = itertools.count(1)


def run(report: Report) -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = KafkaServer.start(Path(directory))
        try:
            asyncio.run(_all(report, server))
        finally:
            server.stop()


async def _all(report: Report, server: KafkaServer) -> None:
    events = [EventBase(topic=TOPIC, payload={"n": i, "order": "A-1"}) for i in range(5_000)]

    async def rounds(variants: dict[str, Callable[[], Awaitable[float]]]) -> dict[str, float]:
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_number in range(4):
            for name, fn in variants.items():
                elapsed = await fn()
                if round_number:  # the first round warms up
                    times[name].append(elapsed)
        return {name: statistics.median(t) for name, t in times.items()}

    n = len(events)
    took = await rounds(
        {
            "dp": lambda: _dp_group(server.url, events[:n]),
            "raw": lambda: _raw_group(server.bootstrap, events[:n]),
        }
    )
    report.add(SECTION, f"group, 1 consumer, batches of {BATCH} (publish_many, ack(*batch))",
               n / took["dp"], "events/s",
               baseline_name="raw aiokafka send batches, group getmany + commit",
               baseline=n / took["raw"], target=">= 50% of raw")  # fmt: skip

    dp_lat = await _dp_latency(server.url, events[:500])
    raw_lat = await _raw_latency(server.bootstrap, events[:500])
    loop_lat = await _raw_latency(server.bootstrap, events[:500], polling=True)
    for q, label in ((49, "p50"), (98, "p99")):
        dp_q = statistics.quantiles(dp_lat, n=100)[q] * 1e3
        report.add(SECTION, f"latency publish -> group delivery, {label}", dp_q, "ms",
                   baseline_name="raw send_and_wait -> group getone",
                   baseline=statistics.quantiles(raw_lat, n=100)[q] * 1e3,
                   higher_is_better=False)  # fmt: skip
        report.add(SECTION, f"latency publish -> group delivery, {label} (polling reader)",
                   dp_q, "ms",
                   baseline_name="raw send_and_wait -> a task looping on getmany",
                   baseline=statistics.quantiles(loop_lat, n=100)[q] * 1e3,
                   higher_is_better=False)  # fmt: skip


# --- dp -------------------------------------------------------------------------------------


async def _dp_ready(url: str) -> tuple[KafkaBroker, KafkaDurableSubscription]:
    broker = KafkaBroker(tansu_url(url, namespace=f"b{next(_rounds)}."))
    group = broker.durable(TOPIC, group="bench")
    warm = EventBase(topic=TOPIC)
    await broker.publish(TOPIC, warm)
    got = await anext(group)
    await group.ack(got)
    return broker, group


async def _dp_group(url: str, events: list[EventBase]) -> float:
    broker, group = await _dp_ready(url)

    async def drain() -> None:
        left = len(events)
        taken: list[EventBase] = []
        while left:
            taken.append(await anext(group))
            left -= 1
            if len(taken) == BATCH or not left:
                await group.ack(*taken)
                taken: list[EventBase] = []

    started = time.perf_counter()
    reader = asyncio.ensure_future(drain())
    for i in range(0, len(events), BATCH):
        await broker.publish_many(events[i : i + BATCH])
    await reader
    elapsed = time.perf_counter() - started
    await broker.close()
    return elapsed


async def _dp_latency(url: str, events: list[EventBase]) -> list[float]:
    broker, group = await _dp_ready(url)
    latencies = []
    for event in events:
        started = time.perf_counter()
        await broker.publish(TOPIC, event)
        got = await anext(group)
        latencies.append(time.perf_counter() - started)
        await group.ack(got)
    await broker.close()
    return latencies


# --- raw aiokafka ---------------------------------------------------------------------------


async def _raw_ready(bootstrap: str) -> tuple[AIOKafkaProducer, AIOKafkaConsumer, str]:
    topic = f"raw{next(_rounds)}.{TOPIC}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}.bench",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=1000,
        heartbeat_interval_ms=333,
        rebalance_timeout_ms=1000,
        fetch_max_wait_ms=20,
    )
    await producer.send_and_wait(topic, b"{}")  # creates the topic
    await consumer.start()
    await consumer.getone()
    await consumer.commit()
    return producer, consumer, topic


async def _raw_group(bootstrap: str, events: list[EventBase]) -> float:
    producer, consumer, topic = await _raw_ready(bootstrap)

    async def drain() -> None:
        left = len(events)
        while left:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    json.loads(record.value)
                    left -= 1
            if batch:
                await consumer.commit()

    started = time.perf_counter()
    reader = asyncio.ensure_future(drain())
    for i in range(0, len(events), BATCH):
        batch = events[i : i + BATCH]
        futures = [await producer.send(topic, e.to_json().encode()) for e in batch]
        await asyncio.gather(*futures)
    await reader
    elapsed = time.perf_counter() - started
    await consumer.stop()
    await producer.stop()
    return elapsed


async def _raw_latency(
    bootstrap: str, events: list[EventBase], *, polling: bool = False
) -> list[float]:
    """With `polling`, a task keeps a fetch in flight as every real consumer loop (and dp's
    reader) does; without, the fetch starts only once the record is there. On Tansu, which
    answers a waiting fetch only after `fetch.max.wait.ms`, that difference is most of the
    latency (see the README's Tansu notes)."""
    producer, consumer, topic = await _raw_ready(bootstrap)
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def poll() -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for record in records:
                    received.put_nowait(record.value or b"")

    poller = asyncio.ensure_future(poll()) if polling else None
    latencies = []
    for event in events:
        started = time.perf_counter()
        await producer.send_and_wait(topic, event.to_json().encode())
        if poller is None:
            value = (await consumer.getone()).value
        else:
            value = await received.get()
        json.loads(value or b"")
        latencies.append(time.perf_counter() - started)
    if poller is not None:
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
    await consumer.stop()
    await producer.stop()
    return latencies
