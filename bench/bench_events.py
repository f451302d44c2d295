"""Event system speed, each figure beside the stdlib tool a user would otherwise reach for.

dp and its baseline are measured alternately, round after round, so drift in the machine's
speed hits both alike. Bus figures use pre-built events and the same loop structure on both
sides: one publisher task and one consumer task per subscriber.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import multiprocessing
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.context import SpawnContext
from typing import Any

from bench._harness import Report, alternate
from dp.errors import QueueClosedError
from dp.events import (
    EventBase,
    InMemoryBroker,
    InMemoryConsumer,
    InMemoryPublisher,
    MultiprocessQueue,
    TopicMatcher,
    compile_pattern,
    matches,
)

SECTION = "events"
TOPIC = "sales.orders.created"


def run(report: Report) -> None:
    _event_creation(report)
    _codec(report)
    _matching(report)
    asyncio.run(_bus(report))
    _multiprocess(report)


async def _alternate_async(
    variants: dict[str, Callable[[], Awaitable[object]]], rounds: int
) -> dict[str, float]:
    for fn in variants.values():
        await fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            await fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _NaiveEvent:
    """What an event class usually looks like: frozen, uuid4, datetime.now per event."""

    topic: str
    payload: dict[str, Any] = field(default_factory=dict)
    event_type: str = ""
    source: str = "dp"
    correlation_id: str | None = None
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))


def _event_creation(report: Report, n: int = 100_000) -> None:
    payload = {"order_id": "A-1"}

    def dp() -> None:
        for _ in range(n):
            EventBase(topic=TOPIC, payload=payload)

    def naive() -> None:
        for _ in range(n):
            _NaiveEvent(topic=TOPIC, payload=payload)

    t = alternate({"dp": dp, "naive": naive}, rounds=5)
    report.add(
        SECTION,
        "create EventBase (id, UTC time, type)",
        n / t["dp"],
        "/s",
        baseline_name="frozen dataclass + uuid4",
        baseline=n / t["naive"],
    )


def _codec(report: Report, n: int = 20_000) -> None:
    event = EventBase(
        topic=TOPIC,
        payload={"order_id": "A-1", "amount": 9.5, "items": [1, 2]},
        correlation_id="run-1",
    )
    plain = event.to_dict()
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    wire = event.to_json().encode()  # what the Redis and Kafka brokers hand to from_json

    def dp() -> None:
        for _ in range(n):
            EventBase.from_json(event.to_json())

    def raw() -> None:
        for _ in range(n):
            json.loads(encode(plain))

    t = alternate({"dp": dp, "raw": raw}, rounds=5)
    report.add(
        SECTION,
        "JSON round trip (to_json + from_json, validated)",
        n / t["dp"],
        "/s",
        baseline_name="json.dumps + json.loads of the dict",
        baseline=n / t["raw"],
    )

    def dp_decode() -> None:
        for _ in range(n):
            EventBase.from_json(wire)

    def raw_decode() -> None:
        for _ in range(n):
            json.loads(wire)

    t = alternate({"dp": dp_decode, "raw": raw_decode}, rounds=5)
    report.add(
        SECTION,
        "decode UTF-8 bytes (from_json, validated EventBase)",
        n / t["dp"],
        "/s",
        baseline_name="json.loads of the same bytes (a dict)",
        baseline=n / t["raw"],
    )

    def dp_encode() -> None:
        for _ in range(n):
            event.to_json().encode()

    def raw_encode() -> None:
        for _ in range(n):
            encode(plain).encode()

    t = alternate({"dp": dp_encode, "raw": raw_encode}, rounds=5)
    report.add(
        SECTION,
        "encode to UTF-8 bytes (to_json().encode())",
        n / t["dp"],
        "/s",
        baseline_name="json.dumps of the ready wire dict",
        baseline=n / t["raw"],
    )


# --- topic matching -----------------------------------------------------------------------


def _matching(report: Report) -> None:
    pattern = "sales.*.created"
    repeated = [f"sales.region{i % 50}.{'created' if i % 2 else 'updated'}" for i in range(100)]
    repeated *= 2_000
    unseen = [f"sales.r{i}.{'created' if i % 2 else 'updated'}" for i in range(200_000)]
    fnmatchcase = fnmatch.fnmatchcase

    def fnmatch_all(topics: list[str]) -> Callable[[], None]:
        def run() -> None:
            for topic in topics:
                fnmatchcase(topic, pattern)

        return run

    def matcher_all(topics: list[str]) -> Callable[[], None]:
        def run() -> None:
            test = TopicMatcher(pattern).matches  # a fresh matcher, so its cache starts empty
            for topic in topics:
                test(topic)

        return run

    def function_all(topics: list[str]) -> Callable[[], None]:
        def run() -> None:
            for topic in topics:
                matches(pattern, topic)

        return run

    def predicate_all(topics: list[str]) -> Callable[[], None]:
        def run() -> None:
            test = compile_pattern(pattern)
            for topic in topics:
                test(topic)

        return run

    figures = [
        ("TopicMatcher.matches, 100 topics repeated", repeated, matcher_all, ">= 10,000,000 /s"),
        ("matches(pattern, topic), 100 topics repeated", repeated, function_all, ""),
        ("TopicMatcher.matches, every topic new", unseen, matcher_all, "> fnmatch"),
        ("compile_pattern predicate, every topic new", unseen, predicate_all, "> fnmatch"),
    ]
    for name, topics, variant, target in figures:
        t = alternate({"dp": variant(topics), "fnmatch": fnmatch_all(topics)}, rounds=5)
        report.add(
            SECTION,
            name,
            len(topics) / t["dp"],
            "/s",
            baseline_name="fnmatch.fnmatchcase",
            baseline=len(topics) / t["fnmatch"],
            target=target,
        )


# --- the in-memory bus --------------------------------------------------------------------


async def _bus(report: Report, n: int = 200_000) -> None:
    events = [EventBase(topic=TOPIC, payload={"n": i}) for i in range(1_000)]
    maxsize = 1_000

    async def dp(subscribers: int, pattern: str) -> None:
        broker = InMemoryBroker(maxsize=maxsize)
        publisher, consumer = InMemoryPublisher(broker), InMemoryConsumer(broker)
        streams = [consumer.consume(pattern) for _ in range(subscribers)]

        async def publish() -> None:
            send = publisher.publish
            for i in range(n):
                await send(TOPIC, events[i % 1_000])
            await broker.close()

        async def consume(stream: Any) -> None:
            async for _ in stream:
                pass

        await asyncio.gather(publish(), *(consume(s) for s in streams))

    async def raw(subscribers: int) -> None:
        queues: list[asyncio.Queue[EventBase | None]] = [
            asyncio.Queue(maxsize) for _ in range(subscribers)
        ]

        async def publish() -> None:
            for i in range(n):
                event = events[i % 1_000]
                for queue in queues:
                    await queue.put(event)
            for queue in queues:
                await queue.put(None)

        async def consume(queue: asyncio.Queue[EventBase | None]) -> None:
            while await queue.get() is not None:
                pass

        await asyncio.gather(publish(), *(consume(q) for q in queues))

    t = await _alternate_async({"dp": lambda: dp(1, TOPIC), "raw": lambda: raw(1)}, rounds=5)
    report.add(
        SECTION,
        f"bus, 1 subscriber, block policy, maxsize {maxsize}",
        n / t["dp"],
        "deliveries/s",
        baseline_name="asyncio.Queue put/get",
        baseline=n / t["raw"],
        target=">= 1,000,000 /s",
    )

    subs = 10
    t = await _alternate_async(
        {"dp": lambda: dp(subs, "sales.*.created"), "raw": lambda: raw(subs)}, rounds=5
    )
    report.add(
        SECTION,
        f"bus, {subs} subscribers on 'sales.*.created'",
        n * subs / t["dp"],
        "deliveries/s",
        baseline_name=f"{subs} asyncio.Queues, put to each",
        baseline=n * subs / t["raw"],
        target=">= 2,000,000 /s",
    )

    async def dp_nowait() -> None:
        broker = InMemoryBroker(maxsize=0)
        stream = InMemoryConsumer(broker).consume(TOPIC)
        send = broker.publish_nowait
        for i in range(n):
            send(TOPIC, events[i % 1_000])
        await broker.close()
        async for _ in stream:
            pass

    async def raw_nowait() -> None:
        queue: asyncio.Queue[EventBase] = asyncio.Queue()
        put = queue.put_nowait
        for i in range(n):
            put(events[i % 1_000])
        for _ in range(n):
            await queue.get()

    t = await _alternate_async({"dp": dp_nowait, "raw": raw_nowait}, rounds=5)
    report.add(
        SECTION,
        "bus, 1 subscriber, publish_nowait, unbounded",
        n / t["dp"],
        "deliveries/s",
        baseline_name="asyncio.Queue put_nowait/get",
        baseline=n / t["raw"],
    )


# --- MultiprocessQueue --------------------------------------------------------------------

_COMPLETION = ("run-2025-01-31", "transform", "chunk-0001", "succeeded", 0.0123)


def _dp_echo(inbox: MultiprocessQueue[Any], outbox: MultiprocessQueue[Any]) -> None:
    """Child: echo each message; on an int n, send n completion messages instead."""
    try:
        while True:
            message = inbox.get_sync()
            if isinstance(message, int):
                for _ in range(message):
                    outbox.put_sync(_COMPLETION)
            else:
                outbox.put_sync(message)
    except QueueClosedError:
        pass


def _raw_echo(inbox: Any, outbox: Any) -> None:
    """The same child on bare multiprocessing queues; None stops it."""
    while (message := inbox.get()) is not None:
        if isinstance(message, int):
            for _ in range(message):
                outbox.put(_COMPLETION)
        else:
            outbox.put(message)


def _multiprocess(report: Report, pings: int = 2_000, burst: int = 20_000) -> None:
    ctx: SpawnContext = multiprocessing.get_context("spawn")
    dp_in, dp_out = MultiprocessQueue[Any](context=ctx), MultiprocessQueue[Any](context=ctx)
    raw_in, raw_out = ctx.Queue(), ctx.Queue()
    children = [
        ctx.Process(target=_dp_echo, args=(dp_in, dp_out), daemon=True),
        ctx.Process(target=_raw_echo, args=(raw_in, raw_out), daemon=True),
    ]
    for child in children:
        child.start()

    async def dp_pings() -> None:
        for _ in range(pings):
            await dp_in.put("ping")
            await dp_out.get()

    async def dp_burst() -> None:
        await dp_in.put(burst)
        for _ in range(burst):
            await dp_out.get()

    def raw_pings() -> None:
        for _ in range(pings):
            raw_in.put("ping")
            raw_out.get()

    def raw_burst() -> None:
        raw_in.put(burst)
        for _ in range(burst):
            raw_out.get()

    try:
        t = alternate({"dp": lambda: asyncio.run(dp_pings()), "raw": raw_pings}, rounds=5)
        report.add(
            SECTION,
            "MultiprocessQueue round trip to a child, async parent",
            t["dp"] / pings * 1e6,
            "us",
            baseline_name="multiprocessing.Queue, blocking parent",
            baseline=t["raw"] / pings * 1e6,
            higher_is_better=False,
        )
        t = alternate({"dp": lambda: asyncio.run(dp_burst()), "raw": raw_burst}, rounds=5)
        report.add(
            SECTION,
            "MultiprocessQueue completion messages from a child, async get",
            burst / t["dp"],
            "/s",
            baseline_name="multiprocessing.Queue, blocking get",
            baseline=burst / t["raw"],
        )
    finally:
        dp_in.close()
        raw_in.put(None)
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
