"""The Redis Streams bus beside raw redis-py on the same private redis-server.

Every figure is publish-to-delivery: the clock runs from the first publish until the last
event was received (and, for groups, acknowledged). dp and raw redis-py run the same loop
structure (one publisher task, one reader task per subscriber) and alternate, round after
round, on a database flushed before each run. The raw side encodes with `to_json` and decodes
with `json.loads`; dp decodes into validated `EventBase`s.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
from tests.redis_server import RedisServer

from bench._harness import Report
from dp.events import EventBase
from dp.events.redis import RedisBroker

SECTION = "redis bus"
TOPIC = "sales.orders.created"
PATTERN = "sales.*.created"
BATCH = 100


def run(report: Report) -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer.start(Path(directory))
        try:
            asyncio.run(_all(report, server.url))
        finally:
            server.stop()


async def _all(report: Report, url: str) -> None:
    admin = aioredis.Redis.from_url(url)
    events = [EventBase(topic=TOPIC, payload={"n": i, "order": "A-1"}) for i in range(20_000)]

    async def rounds(
        variants: dict[str, Callable[[], Awaitable[None]]], n: int
    ) -> dict[str, float]:
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_number in range(4):
            for name, fn in variants.items():
                await admin.flushdb()
                started = time.perf_counter()
                await fn()
                if round_number:  # the first round warms up
                    times[name].append(time.perf_counter() - started)
        return {name: n / statistics.median(t) for name, t in times.items()}

    n = 20_000
    rate = await rounds(
        {
            "dp": lambda: _dp_group(url, events[:n], BATCH),
            "raw": lambda: _raw_group(url, events[:n], BATCH),
        },
        n,
    )
    report.add(SECTION, f"group, 1 consumer, batches of {BATCH} (publish_many, ack(*batch))",
               rate["dp"], "events/s", baseline_name="raw pipelined XADD/XREADGROUP/XACK",
               baseline=rate["raw"], target=">= 50% of raw, >= 100,000/s")  # fmt: skip

    n = 3_000
    rate = await rounds(
        {
            "dp": lambda: _dp_group(url, events[:n], 1),
            "raw": lambda: _raw_group(url, events[:n], 1),
        },
        n,
    )
    report.add(SECTION, "group, 1 consumer, one event per publish and per ack", rate["dp"],
               "events/s", baseline_name="raw XADD, XREADGROUP, XACK each",
               baseline=rate["raw"], target=">= 50% of raw")  # fmt: skip

    n = 3_000
    rate = await rounds(
        {
            "dp": lambda: _dp_fanout(url, events[:n], 10),
            "raw": lambda: _raw_fanout(url, events[:n], 10),
        },
        n,
    )
    report.add(SECTION, f"10 pattern subscribers ({PATTERN}), batches of {BATCH}", rate["dp"],
               "events/s", baseline_name="raw pipelined XADD, 10 XREAD loops",
               baseline=rate["raw"], target=">= 50% of raw")  # fmt: skip

    dp_lat = await _dp_latency(url, events[:1_000])
    await admin.flushdb()
    raw_lat = await _raw_latency(url, events[:1_000])
    for q, label in ((49, "p50"), (98, "p99")):
        report.add(SECTION, f"latency publish -> group delivery, {label}",
                   statistics.quantiles(dp_lat, n=100)[q] * 1e3, "ms",
                   baseline_name="raw XADD -> XREADGROUP BLOCK",
                   baseline=statistics.quantiles(raw_lat, n=100)[q] * 1e3,
                   higher_is_better=False)  # fmt: skip
    await admin.aclose()


# --- dp -------------------------------------------------------------------------------------


async def _dp_group(url: str, events: list[EventBase], batch: int) -> None:
    broker = RedisBroker(url, maxlen=None)
    group = broker.durable(TOPIC, group="bench")
    reader = asyncio.ensure_future(_dp_drain(group, len(events), batch))
    await asyncio.sleep(0.05)  # the group exists before the first event
    for i in range(0, len(events), batch):
        if batch == 1:
            await broker.publish(TOPIC, events[i])
        else:
            await broker.publish_many(events[i : i + batch])
    await reader
    await broker.close()


async def _dp_drain(group: object, n: int, batch: int) -> None:
    from dp.events.redis_reader import RedisDurableSubscription

    assert isinstance(group, RedisDurableSubscription)
    pending: list[EventBase] = []
    got = 0
    async for event in group:
        got += 1
        pending.append(event)
        if len(pending) >= batch or got == n:
            await group.ack(*pending)
            pending.clear()
        if got == n:
            return


async def _dp_fanout(url: str, events: list[EventBase], subscribers: int) -> None:
    broker = RedisBroker(url, maxlen=None)
    subscriptions = [broker.subscribe(PATTERN) for _ in range(subscribers)]
    await broker.publish(TOPIC, EventBase(topic=TOPIC))  # makes the topic known
    n = len(events) + 1

    async def drain(subscription: object) -> None:
        got = 0
        async for _ in subscription:  # type: ignore[attr-defined]
            got += 1
            if got == n:
                return

    readers = [asyncio.ensure_future(drain(s)) for s in subscriptions]
    for i in range(0, len(events), BATCH):
        await broker.publish_many(events[i : i + BATCH])
    await asyncio.gather(*readers)
    await broker.close()


async def _dp_latency(url: str, events: list[EventBase]) -> list[float]:
    broker = RedisBroker(url, maxlen=None)
    group = broker.durable(TOPIC, group="bench")
    latencies = []
    await broker.publish(TOPIC, events[0])
    await group.ack(await anext(group))
    for event in events:
        started = time.perf_counter()
        await broker.publish(TOPIC, event)
        got = await anext(group)
        latencies.append(time.perf_counter() - started)
        await group.ack(got)
    await broker.close()
    return latencies


# --- raw redis-py -----------------------------------------------------------------------------


async def _raw_group(url: str, events: list[EventBase], batch: int) -> None:
    client = aioredis.Redis.from_url(url)
    key = f"raw:{TOPIC}"
    await client.xgroup_create(key, "bench", "$", mkstream=True)
    reader = asyncio.ensure_future(_raw_drain(client, key, len(events), batch))
    for i in range(0, len(events), batch):
        if batch == 1:
            await client.xadd(key, {"event": events[i].to_json()})
        else:
            pipe = client.pipeline(transaction=False)
            for event in events[i : i + batch]:
                pipe.xadd(key, {"event": event.to_json()})
            await pipe.execute()
    await reader
    await client.aclose()


async def _raw_drain(client: aioredis.Redis, key: str, n: int, batch: int) -> None:
    got = 0
    pending: list[bytes] = []
    while got < n:
        found = await client.xreadgroup("bench", "c", {key: ">"}, count=256, block=100)
        for _, entries in found or ():
            for entry_id, fields in entries:
                json.loads(fields[b"event"])
                got += 1
                pending.append(entry_id)
                if len(pending) >= batch or got == n:
                    await client.xack(key, "bench", *pending)
                    pending.clear()


async def _raw_fanout(url: str, events: list[EventBase], subscribers: int) -> None:
    client = aioredis.Redis.from_url(url)
    key = f"raw:{TOPIC}"
    await client.xadd(key, {"event": EventBase(topic=TOPIC).to_json()})
    n = len(events)

    async def drain() -> None:
        got, last = 0, "0-0"
        while got < n + 1:
            found = await client.xread({key: last}, count=256, block=100)
            for _, entries in found or ():
                for entry_id, fields in entries:
                    json.loads(fields[b"event"])
                    got += 1
                    last = entry_id

    readers = [asyncio.ensure_future(drain()) for _ in range(subscribers)]
    for i in range(0, n, BATCH):
        pipe = client.pipeline(transaction=False)
        for event in events[i : i + BATCH]:
            pipe.xadd(key, {"event": event.to_json()})
        await pipe.execute()
    await asyncio.gather(*readers)
    await client.aclose()


async def _raw_latency(url: str, events: list[EventBase]) -> list[float]:
    client = aioredis.Redis.from_url(url)
    key = f"raw:{TOPIC}"
    await client.xgroup_create(key, "bench", "$", mkstream=True)
    arrived: asyncio.Queue[bytes] = asyncio.Queue()

    async def read() -> None:
        while True:
            found = await client.xreadgroup("bench", "c", {key: ">"}, count=256, block=100)
            for _, entries in found or ():
                for entry_id, fields in entries:
                    json.loads(fields[b"event"])
                    arrived.put_nowait(entry_id)

    reader = asyncio.ensure_future(read())
    latencies = []
    for event in events:
        started = time.perf_counter()
        await client.xadd(key, {"event": event.to_json()})
        entry_id = await arrived.get()
        latencies.append(time.perf_counter() - started)
        await client.xack(key, "bench", entry_id)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await client.aclose()
    return latencies
