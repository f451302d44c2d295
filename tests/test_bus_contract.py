"""One contract for every event bus: the in-memory, Redis Streams and Kafka brokers.

Each test runs on all three; the Redis ones share a private redis-server
(tests/redis_server.py), each under its own key prefix, the Kafka ones a private Tansu broker
(tests/kafka_server.py), each under its own namespace. Tests that need Redis itself (raw
XADD, outages, trimming) are at the end; Kafka's own are in tests/test_kafka.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from dp.errors import (
    BrokerClosedError,
    BusUnavailableError,
    GroupError,
    InvalidBusURLError,
    InvalidTopicError,
    NotPendingError,
)
from dp.events import Broker, DurableSubscription, EventBase, InMemoryBroker, Subscription
from dp.events.kafka import KafkaBroker
from dp.events.redis import RedisBroker
from kafka_server import kafka_broker
from redis_server import RedisServer

_prefixes = itertools.count(1)
T = TypeVar("T")
GUARD = 10.0  # seconds before a test that waits for an event fails instead of hanging


def event(topic: str = "sales.orders.created", **payload: object) -> EventBase:
    return EventBase(topic=topic, payload=dict(payload))


async def receive(subscription: Subscription, count: int = 1) -> list[EventBase]:
    """The next `count` events, failing the test if they do not arrive."""

    async def take() -> list[EventBase]:
        return [await anext(subscription) for _ in range(count)]

    return await asyncio.wait_for(take(), GUARD)


async def eventually(check: Callable[[], Awaitable[list[T]]]) -> list[T]:
    """The first non-empty result of `check`, polled until GUARD seconds have passed."""
    for _ in range(int(GUARD / 0.02)):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"nothing found within {GUARD}s")


async def start(subscription: Subscription) -> None:
    """Make sure a subscription is reading (Redis subscriptions connect on the first read)."""
    reader = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0.05)
    assert not reader.done()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)


def redis_broker(url: str, **options: object) -> RedisBroker:
    return RedisBroker(url, prefix=f"t{next(_prefixes)}", topic_refresh=0.05, **options)  # type: ignore[arg-type]


# Kafka keeps committed offsets per partition, not a delivery count per record: a consumer
# that takes over a dead one's partition delivers its records again counting from 1.
PER_CONSUMER_COUNTS = {
    "test_a_dead_consumers_pending_events_go_to_another",
    "test_events_never_settled_within_max_deliveries_become_dead_letters",
}


@pytest.fixture(params=["memory", "redis", "kafka"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """Each broker under the contract, closed afterwards."""
    bus: Broker
    if request.param == "memory":
        bus = InMemoryBroker()
    elif request.param == "redis":
        bus = redis_broker(request.getfixturevalue("redis_server").url)
    else:
        if request.node.originalname in PER_CONSUMER_COUNTS:
            pytest.skip("Kafka counts deliveries per consumer (offsets, no per-record state)")
        bus = kafka_broker(request.getfixturevalue("kafka_server").url)
    yield bus
    await bus.close()


# --- publish / subscribe ----------------------------------------------------------------------


def test_brokers_satisfy_the_ports(broker: Broker) -> None:
    """Each broker is a Broker, its subscriptions Subscriptions, its groups durable ones."""
    assert isinstance(broker, Broker)
    assert isinstance(broker.subscribe("a.*"), Subscription)
    assert isinstance(broker.durable("a.*", group="g"), DurableSubscription)


async def test_subscribers_receive_matching_events_in_order(broker: Broker) -> None:
    """A pattern subscription receives the matching events, in publish order, and no others."""
    subscription = broker.subscribe("sales.*.created")
    await start(subscription)
    for n in range(3):
        await broker.publish("sales.orders.created", event(n=n))
    await broker.publish("sales.orders.deleted", event("sales.orders.deleted"))
    await broker.publish("sales.refunds.created", event("sales.refunds.created", n=3))
    received = await receive(subscription, 4)
    if isinstance(broker, KafkaBroker):  # Kafka orders per partition: here, per topic
        received.sort(key=lambda e: e.topic)
    assert [e.payload["n"] for e in received] == [0, 1, 2, 3]


async def test_publish_nowait_delivers_in_order_and_is_counted(broker: Broker) -> None:
    """Events published without waiting arrive in order; stats() counts them."""
    subscription = broker.subscribe("runs.*")
    await start(subscription)
    before = broker.stats().published
    for n in range(5):
        broker.publish_nowait("runs.done", event("runs.done", n=n))
    received = await receive(subscription, 5)
    assert [e.payload["n"] for e in received] == [0, 1, 2, 3, 4]
    assert broker.stats().published == before + 5
    assert broker.stats().subscriptions >= 1
    with pytest.raises(InvalidTopicError, match="own topic"):
        broker.publish_nowait("runs.other", event("runs.done"))


async def test_a_batch_across_topics_arrives_whole(broker: Broker) -> None:
    """Events queued together for several topics arrive whole, newlines and all."""
    subscription = broker.subscribe("batch.*")
    await start(subscription)
    texts = ["two\nlines", "end\n", "\u2028 and \r\n", "plain"]
    for n, text in enumerate(texts):
        topic = f"batch.t{n % 2}"
        broker.publish_nowait(topic, event(topic, n=n, text=text))
    received = await receive(subscription, len(texts))
    assert sorted((e.payload["n"], e.topic, e.payload["text"]) for e in received) == [
        (n, f"batch.t{n % 2}", text) for n, text in enumerate(texts)
    ]


async def test_patterns_see_topics_created_after_subscribing(broker: Broker) -> None:
    """`**` subscriptions receive events on topics nobody had published to before."""
    subscription = broker.subscribe("shop.**")
    await start(subscription)
    await broker.publish("shop", event("shop", n=0))
    await broker.publish("shop.eu.orders.created", event("shop.eu.orders.created", n=1))
    received = await receive(subscription, 2)
    assert sorted((e.topic, e.payload["n"]) for e in received) == [
        ("shop", 0),
        ("shop.eu.orders.created", 1),
    ]


async def test_the_event_arrives_whole(broker: Broker) -> None:
    """Every field survives the bus: id, type, source, payload, correlation id, timestamp."""
    subscription = broker.subscribe("sales.orders.created")
    await start(subscription)
    sent = EventBase(
        topic="sales.orders.created",
        payload={"order": "A-1", "lines": [1, 2]},
        event_type="OrderCreated",
        source="shop",
        correlation_id="run-7",
    )
    await broker.publish(sent.topic, sent)
    (got,) = await receive(subscription)
    assert got.to_dict() == sent.to_dict()


async def test_replay_retained_starts_with_the_last_event_per_topic(broker: Broker) -> None:
    """`replay_retained` yields each matching topic's last event, oldest first, then new ones."""
    await broker.publish("prices.eur", event("prices.eur", v=1))
    await broker.publish("prices.usd", event("prices.usd", v=2))
    await broker.publish("prices.eur", event("prices.eur", v=3))
    await broker.publish("stock.eur", event("stock.eur", v=4))
    subscription = broker.subscribe("prices.*", replay_retained=True)
    first = await receive(subscription, 2)
    await broker.publish("prices.gbp", event("prices.gbp", v=5))
    (later,) = await receive(subscription)
    assert [e.payload["v"] for e in [*first, later]] == [2, 3, 5]


async def test_publish_refuses_malformed_and_mismatched_topics(broker: Broker) -> None:
    """A bad topic, or a topic that is not the event's, is refused naming the topic."""
    with pytest.raises(InvalidTopicError, match=r"'sales\.\.x'"):
        await broker.publish("sales..x", event("sales.x"))
    with pytest.raises(InvalidTopicError, match=r"the event's own topic is 'a\.b'"):
        await broker.publish("a.c", event("a.b"))


async def test_a_closed_broker_refuses_publish_and_subscribe(broker: Broker) -> None:
    """After close, publish and subscribe raise BrokerClosedError naming the topic."""
    await broker.close()
    with pytest.raises(BrokerClosedError, match=r"'a\.b'"):
        await broker.publish("a.b", event("a.b"))
    with pytest.raises(BrokerClosedError):
        broker.subscribe("a.*")
    with pytest.raises(BrokerClosedError):
        broker.durable("a.*", group="g")


async def test_closing_the_broker_ends_iteration(broker: Broker) -> None:
    """A subscriber's `async for` ends when the broker closes."""
    subscription = broker.subscribe("a.*")
    await start(subscription)

    async def drain() -> list[EventBase]:
        return [e async for e in subscription]

    reader = asyncio.ensure_future(drain())
    await asyncio.sleep(0.05)
    await broker.close()
    assert await asyncio.wait_for(reader, GUARD) == []


# --- durable groups ---------------------------------------------------------------------------


async def test_a_group_keeps_events_published_while_no_consumer_runs(broker: Broker) -> None:
    """Events published between two consumers of a group wait for the second one."""
    first = broker.durable("jobs.*", group="workers")
    await broker.publish("jobs.a", event("jobs.a", n=0))
    (got,) = await receive(first)
    await first.ack(got)
    await first.aclose()
    await broker.publish("jobs.b", event("jobs.b", n=1))
    second = broker.durable("jobs.*", group="workers")
    (later,) = await receive(second)
    assert (later.topic, later.payload) == ("jobs.b", {"n": 1})


async def test_consumers_of_one_group_share_its_events(broker: Broker) -> None:
    """Each event goes to one consumer of a group; together they receive every event once."""
    one = broker.durable("jobs.*", group="workers", consumer="one")
    two = broker.durable("jobs.*", group="workers", consumer="two")
    await start(one)
    await start(two)
    sent = [event("jobs.run", n=n) for n in range(20)]
    for e in sent:
        await broker.publish(e.topic, e)
    got: list[EventBase] = []

    async def work(subscription: DurableSubscription) -> None:
        async for e in subscription:
            got.append(e)
            await subscription.ack(e)
            if len(got) == len(sent):
                break

    workers = [asyncio.ensure_future(work(s)) for s in (one, two)]
    done, _ = await asyncio.wait(workers, timeout=GUARD, return_when=asyncio.FIRST_COMPLETED)
    assert done
    for worker in workers:
        worker.cancel()
    assert sorted(e.event_id for e in got) == sorted(e.event_id for e in sent)


async def test_every_group_receives_every_event(broker: Broker) -> None:
    """Two groups on one pattern each receive all of its events."""
    billing = broker.durable("sales.*", group="billing")
    audit = broker.durable("sales.*", group="audit")
    await start(billing)
    await start(audit)
    await broker.publish("sales.x", event("sales.x"))
    (a,) = await receive(billing)
    (b,) = await receive(audit)
    assert a.event_id == b.event_id


async def test_nack_delivers_again_and_counts_deliveries(broker: Broker) -> None:
    """A nacked event comes back at once, its delivery count one higher."""
    subscription = broker.durable("jobs.*", group="workers")
    await start(subscription)
    await broker.publish("jobs.a", event("jobs.a"))
    (got,) = await receive(subscription)
    assert subscription.deliveries(got) == 1
    await subscription.nack(got, "ValueError: boom")
    (again,) = await receive(subscription)
    assert again.event_id == got.event_id
    assert subscription.deliveries(again) == 2
    await subscription.ack(again)


async def test_events_failing_max_deliveries_times_become_dead_letters(broker: Broker) -> None:
    """After max_deliveries nacks the event is a dead letter with its last error, replayable."""
    subscription = broker.durable("jobs.*", group="workers", max_deliveries=2)
    await start(subscription)
    sent = event("jobs.a", n=1)
    await broker.publish(sent.topic, sent)
    for attempt in (1, 2):
        (got,) = await receive(subscription)
        await subscription.nack(got, f"ValueError: attempt {attempt}")
    (letter,) = await broker.dead_letters("workers")
    assert letter.event is not None
    assert (letter.event.event_id, letter.topic, letter.group) == (
        sent.event_id,
        "jobs.a",
        "workers",
    )
    assert (letter.error, letter.deliveries) == ("ValueError: attempt 2", 2)
    assert json.loads(letter.raw)["eventId"] == sent.event_id

    assert await broker.replay_dead_letters("workers", [letter.id]) == 1
    (replayed,) = await receive(subscription)
    assert replayed.event_id == sent.event_id
    assert subscription.deliveries(replayed) == 1
    await subscription.ack(replayed)
    assert await broker.dead_letters("workers") == []


async def test_a_dead_consumers_pending_events_go_to_another(broker: Broker) -> None:
    """An event a consumer took and never settled is claimed by another after claim_idle."""
    dying = broker.durable("jobs.*", group="workers", consumer="dying", claim_idle=0.2)
    await start(dying)
    await broker.publish("jobs.a", event("jobs.a"))
    (taken,) = await receive(dying)
    await dying.aclose()  # it "dies" holding the event: no ack, no nack
    survivor = broker.durable("jobs.*", group="workers", consumer="survivor", claim_idle=0.2)
    (claimed,) = await receive(survivor)
    assert claimed.event_id == taken.event_id
    assert survivor.deliveries(claimed) == 2
    await survivor.ack(claimed)


async def test_acknowledged_events_are_not_claimed(broker: Broker) -> None:
    """After ack, nobody receives the event again: the next consumer sees only new events."""
    first = broker.durable("jobs.*", group="workers", consumer="first", claim_idle=0.1)
    await start(first)
    await broker.publish("jobs.a", event("jobs.a", n=0))
    (got,) = await receive(first)
    await first.ack(got)
    await first.aclose()
    await asyncio.sleep(0.3)  # well past claim_idle: an unsettled event would be claimable
    second = broker.durable("jobs.*", group="workers", consumer="second", claim_idle=0.1)
    await start(second)
    await asyncio.sleep(0.15)
    await broker.publish("jobs.a", event("jobs.a", n=1))
    (later,) = await receive(second)
    assert later.payload == {"n": 1}


async def test_events_never_settled_within_max_deliveries_become_dead_letters(
    broker: Broker,
) -> None:
    """An event whose consumers keep dying is dead-lettered, saying it was not acknowledged."""
    dying = broker.durable("jobs.*", group="workers", claim_idle=0.1, max_deliveries=1)
    await start(dying)
    await broker.publish("jobs.a", event("jobs.a"))
    await receive(dying)
    await dying.aclose()
    survivor = broker.durable("jobs.*", group="workers", claim_idle=0.1, max_deliveries=1)
    reader = asyncio.ensure_future(anext(survivor))  # it reads, and claims what is due
    (letter,) = await eventually(lambda: broker.dead_letters("workers"))
    assert not reader.done()  # the event was not delivered a second time
    reader.cancel()
    assert "not acknowledged within 0.1s" in letter.error
    assert letter.deliveries == 1


async def test_settling_an_event_twice_is_an_error(broker: Broker) -> None:
    """ack of an event the subscription did not deliver, or already acked, names the event."""
    subscription = broker.durable("jobs.*", group="workers")
    await start(subscription)
    await broker.publish("jobs.a", event("jobs.a"))
    (got,) = await receive(subscription)
    await subscription.ack(got)
    with pytest.raises(NotPendingError, match=got.event_id):
        await subscription.ack(got)
    with pytest.raises(NotPendingError):
        await subscription.nack(event("jobs.a"), "never delivered")


async def test_dead_letter_buries_one_event_at_once_with_its_reason(broker: Broker) -> None:
    """`dead_letter` moves that one event to the dead letters on its first delivery, with
    the reason; the events around it are delivered and settled as usual, and it never
    comes back."""
    subscription = broker.durable("jobs.*", group="workers", claim_idle=0.2)
    await start(subscription)
    sent = [event("jobs.a", n=n) for n in range(3)]
    for e in sent:
        await broker.publish(e.topic, e)
    got = await receive(subscription, 3)
    assert [e.payload["n"] for e in got] == [0, 1, 2]
    await subscription.ack(got[0])
    await subscription.dead_letter(got[1], "InvalidRunParameterError: n must be even")
    await subscription.ack(got[2])
    (letter,) = await broker.dead_letters("workers")
    assert letter.event is not None
    assert letter.event.event_id == sent[1].event_id
    assert (letter.error, letter.deliveries, letter.topic) == (
        "InvalidRunParameterError: n must be even",
        1,
        "jobs.a",
    )
    later = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0.6)  # well past claim_idle: a pending event would come back
    assert not later.done()
    later.cancel()
    await asyncio.gather(later, return_exceptions=True)


async def test_keep_holds_events_past_claim_idle(broker: Broker) -> None:
    """While its consumer calls `keep`, a held event is neither claimed by another consumer
    nor delivered again, however long past `claim_idle`; it is settled once, by its holder.
    (On Kafka a second consumer takes partitions, not events: only the holder reads here.)"""
    holder = broker.durable("jobs.*", group="workers", consumer="holder", claim_idle=0.3)
    await start(holder)
    await broker.publish("jobs.a", event("jobs.a"))
    (held,) = await receive(holder)
    readers = [asyncio.ensure_future(anext(holder))]
    if not isinstance(broker, KafkaBroker):
        other = broker.durable("jobs.*", group="workers", consumer="other", claim_idle=0.3)
        readers.append(asyncio.ensure_future(anext(other)))
    for _ in range(12):  # 1.2 s, four times claim_idle
        await holder.keep()
        await asyncio.sleep(0.1)
    assert not any(reader.done() for reader in readers)
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    assert holder.deliveries(held) == 1
    await holder.ack(held)
    assert await broker.dead_letters("workers") == []


async def test_a_new_group_starts_now_or_at_the_earliest_event(broker: Broker) -> None:
    """A group created with start="earliest" also gets what the bus held before it; one
    created with the default start="now" only what is published afterwards."""
    if isinstance(broker, InMemoryBroker):
        pytest.skip("the in-memory bus holds no past events for a new group")
    old = event("jobs.a", n=0)
    await broker.publish(old.topic, old)
    await asyncio.sleep(0.1)  # "now" errs early by the clock-skew estimate: be past it
    late = broker.durable("jobs.*", group="late")
    early = broker.durable("jobs.*", group="early", start="earliest")
    await start(late)
    await asyncio.sleep(0.2)  # the group exists on the stream (Redis) or partition (Kafka)
    new = event("jobs.a", n=1)
    await broker.publish(new.topic, new)
    assert [e.payload["n"] for e in await receive(early, 2)] == [0, 1]
    assert [e.payload["n"] for e in await receive(late)] == [1]


async def test_a_group_keeps_its_pattern(broker: Broker) -> None:
    """Joining a group with another pattern is refused, naming both patterns."""
    first = broker.durable("jobs.*", group="workers")
    await start(first)
    with pytest.raises(GroupError, match=r"'jobs\.\*', not 'other\.\*'"):
        await receive(broker.durable("other.*", group="workers"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"group": "bad group"}, "dot-separated segments"),
        ({"group": ""}, "dot-separated segments"),
        ({"group": "g", "max_deliveries": 0}, "max_deliveries must be an int >= 1"),
        ({"group": "g", "claim_idle": 0}, "claim_idle must be > 0"),
        ({"group": "g", "start": "latest"}, "start must be 'now' or 'earliest'"),
    ],
)
async def test_bad_group_options_are_refused(
    broker: Broker, options: dict[str, object], message: str
) -> None:
    """A malformed group name or option is refused when subscribing, saying what is wrong."""
    with pytest.raises(GroupError, match=message):
        broker.durable("jobs.*", **options)  # type: ignore[arg-type]


async def test_dead_letters_of_an_unknown_group(broker: Broker) -> None:
    """Listing or replaying the dead letters of a group that does not exist names it."""
    with pytest.raises(GroupError, match="'nobody': no such group"):
        await broker.dead_letters("nobody")
    with pytest.raises(GroupError, match="no such group"):
        await broker.replay_dead_letters("nobody")


# --- Redis only -------------------------------------------------------------------------------


@pytest.fixture
async def redis_bus(redis_server: RedisServer) -> AsyncIterator[RedisBroker]:
    bus = redis_broker(redis_server.url)
    yield bus
    await bus.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client, standing in for a producer written in another language."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


WIRE = {
    "eventId": "7d2f0c0e9b1a4c55a1d3f00000000001",
    "eventType": "OrderCreated",
    "topic": "sales.orders.created",
    "timestamp": "2025-01-31T09:00:00.123Z",
    "source": "kotlin-shop",
    "payload": {"order": "A-1"},
}


async def test_entries_read_ahead_are_not_claimed_from_a_live_consumer(
    redis_bus: RedisBroker,
) -> None:
    """What a Redis consumer has read ahead but not handed out yet stays its own past
    `claim_idle` (it is alive, it just has not got there): another consumer gets none of it,
    and each is delivered once."""
    ahead = redis_bus.durable("jobs.*", group="workers", consumer="ahead", claim_idle=0.3)
    await start(ahead)
    for n in range(3):
        await redis_bus.publish("jobs.a", event("jobs.a", n=n))
    (first,) = await receive(ahead)  # the reader fetched all three at once
    await ahead.ack(first)
    other = redis_bus.durable("jobs.*", group="workers", consumer="other", claim_idle=0.3)
    stolen = asyncio.ensure_future(anext(other))
    await asyncio.sleep(1.2)  # four times claim_idle
    assert not stolen.done()
    stolen.cancel()
    await asyncio.gather(stolen, return_exceptions=True)
    rest = await receive(ahead, 2)
    assert [e.payload["n"] for e in (first, *rest)] == [0, 1, 2]
    assert [ahead.deliveries(e) for e in rest] == [1, 1]
    await ahead.ack(*rest)


async def test_a_raw_xadd_from_another_producer_is_consumed(
    redis_bus: RedisBroker, raw: aioredis.Redis
) -> None:
    """`XADD <prefix>:stream:<topic> * event <json>` plus `SADD <prefix>:topics` is an event."""
    plain = redis_bus.subscribe("sales.**")
    group = redis_bus.durable("sales.*.created", group="billing")
    await start(plain)
    await start(group)
    prefix = redis_bus.prefix
    await raw.xadd(f"{prefix}:stream:sales.orders.created", {"event": json.dumps(WIRE)})
    await raw.sadd(f"{prefix}:topics", "sales.orders.created")
    (seen,) = await receive(plain)
    (handled,) = await receive(group)
    for got in (seen, handled):
        assert (got.event_id, got.event_type, got.source) == (
            WIRE["eventId"],
            "OrderCreated",
            "kotlin-shop",
        )
        assert (got.payload, got.correlation_id) == ({"order": "A-1"}, None)
    await group.ack(handled)


async def test_a_malformed_raw_entry_becomes_a_dead_letter(
    redis_bus: RedisBroker, raw: aioredis.Redis
) -> None:
    """A durable group dead-letters an entry that is not a dp event, saying which field."""
    group = redis_bus.durable("sales.orders.created", group="billing")
    await start(group)
    key = redis_bus.stream_key("sales.orders.created")
    await raw.xadd(key, {"event": json.dumps({**WIRE, "payload": [1]})})
    await raw.xadd(key, {"body": "hello"})
    await raw.xadd(key, {"event": json.dumps(WIRE)})
    (good,) = await receive(group)
    assert good.event_id == WIRE["eventId"]
    letters = await redis_bus.dead_letters("billing")
    assert [letter.event for letter in letters] == [None, None]
    assert "'payload' must be an object, got an array" in letters[0].error
    assert "no 'event' field (fields: body)" in letters[1].error


async def test_trimming_keeps_what_a_group_has_not_acknowledged(
    redis_bus: RedisBroker, raw: aioredis.Redis
) -> None:
    """maxlen trims acknowledged entries only; a lagging group's backlog stays whole."""
    await raw.config_set("stream-node-max-entries", 5)  # so `~` trimming is fine-grained
    bus = redis_broker(redis_bus.url, maxlen=10, trim_every=10**9)
    try:
        group = bus.durable("logs.app", group="shipper")
        await start(group)
        for n in range(60):
            await bus.publish("logs.app", event("logs.app", n=n))
        key = bus.stream_key("logs.app")
        assert await bus.trim("logs.app") == 0
        assert await raw.xlen(key) == 60
        first_half = await receive(group, 30)
        await group.ack(*first_half)
        await bus.trim("logs.app")
        assert 30 <= await raw.xlen(key) <= 35  # the 30 unacknowledged, within one node
        await group.ack(*await receive(group, 30))
        await bus.trim("logs.app")
        assert 10 <= await raw.xlen(key) <= 15
    finally:
        await raw.config_set("stream-node-max-entries", 100)
        await bus.close()


async def test_replay_retained_respects_the_ttl(redis_bus: RedisBroker) -> None:
    """A topic's last event older than retain_ttl is not replayed."""
    bus = redis_broker(redis_bus.url, retain_ttl=0.05)
    try:
        await bus.publish("prices.eur", event("prices.eur"))
        await asyncio.sleep(0.1)
        assert await bus.retained("prices.*") == []
        assert await bus.last_event("prices.eur") is None
    finally:
        await bus.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost:6379", "scheme 'http' is not redis, rediss or unix"),
        ("redis://:6379/0", "names no host"),
        ("redis://localhost:port/0", "Port could not be cast"),
        ("redis://localhost:6379/zero", "database 'zero' must be a number"),
    ],
)
def test_bad_redis_urls_are_refused(url: str, message: str) -> None:
    """A URL dp cannot use is refused when the broker is made, naming the URL."""
    with pytest.raises(InvalidBusURLError, match=message):
        RedisBroker(url)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, which it may stop and restart."""
    server = RedisServer.start(tmp_path / "redis")
    yield server
    server.stop()


async def test_publish_waits_out_a_restart_and_nothing_is_lost(own_server: RedisServer) -> None:
    """Events published while Redis restarts are delayed, not dropped; consumers reconnect."""
    bus = redis_broker(own_server.url, publish_timeout=15.0)
    try:
        group = bus.durable("orders.*", group="billing", claim_idle=5.0)
        await start(group)
        sent = [event("orders.created", n=n) for n in range(30)]
        restart = threading.Thread(target=own_server.restart, kwargs={"down_for": 0.3})
        for n, e in enumerate(sent):
            if n == 10:
                restart.start()
            await bus.publish(e.topic, e)
            await asyncio.sleep(0.02)
        restart.join()
        received: set[str] = set()
        while len(received) < len(sent):
            (got,) = await receive(group)
            received.add(got.event_id)  # a retried publish may store an event twice
            await group.ack(got)
        assert received == {e.event_id for e in sent}
    finally:
        await bus.close()


async def test_publish_during_a_long_outage_fails_loudly(own_server: RedisServer) -> None:
    """When Redis stays down longer than publish_timeout, publish raises BusUnavailableError."""
    bus = redis_broker(own_server.url, publish_timeout=0.3)
    try:
        await bus.publish("a.b", event("a.b"))
        own_server.stop()
        with pytest.raises(BusUnavailableError, match=r"unreachable .* gave up after 0\.\d+s"):
            await bus.publish("a.b", event("a.b"))
    finally:
        await bus.close()
