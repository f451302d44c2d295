"""The in-memory broker, publisher and consumer."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re

import pytest

from dp.errors import BrokerClosedError, InvalidTopicError, QueueFullError
from dp.events import (
    Broker,
    Consumer,
    EventBase,
    InMemoryBroker,
    InMemoryConsumer,
    InMemoryPublisher,
    Publisher,
    Subscription,
)


def event(topic: str = "sales.orders.created", **payload: object) -> EventBase:
    return EventBase(topic=topic, payload=dict(payload))


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_adapters_satisfy_the_ports() -> None:
    """The in-memory adapters are a Broker, a Publisher, a Consumer and Subscriptions."""
    broker: Broker = InMemoryBroker()  # the annotations let mypy check the signatures too
    publisher: Publisher = InMemoryPublisher(InMemoryBroker())
    consumer: Consumer = InMemoryConsumer(InMemoryBroker())
    subscription: Subscription = broker.subscribe("**")
    assert isinstance(broker, Broker)
    assert isinstance(publisher, Publisher)
    assert isinstance(consumer, Consumer)
    assert isinstance(subscription, Subscription)


async def test_publish_and_consume() -> None:
    """A consumer iterating a pattern receives the events published on matching topics."""
    broker = InMemoryBroker()
    publisher, consumer = InMemoryPublisher(broker), InMemoryConsumer(broker)
    sent = event(order_id="A-1")
    async with consumer.consume("sales.*.created") as events:
        await publisher.publish("sales.orders.created", sent)
        assert await anext(events) is sent


async def test_only_matching_subscriptions_receive_an_event() -> None:
    """Each event goes to every subscription whose pattern matches, and to no other."""
    broker = InMemoryBroker()
    orders = broker.subscribe("sales.orders.*")
    everything = broker.subscribe("**")
    refunds = broker.subscribe("sales.refunds.*")
    await broker.publish("sales.orders.created", event())
    assert (orders.qsize(), everything.qsize(), refunds.qsize()) == (1, 1, 0)


async def test_events_arrive_in_publish_order() -> None:
    """A subscription yields events in the order they were published."""
    broker = InMemoryBroker()
    subscription = broker.subscribe("sales.**")
    sent = [event(n=n) for n in range(5)]
    for e in sent:
        broker.publish_nowait(e.topic, e)
    assert [await anext(subscription) for _ in sent] == sent


async def test_a_waiting_consumer_is_woken_by_a_publish() -> None:
    """A consumer blocked on an empty subscription resumes when an event arrives."""
    broker = InMemoryBroker()
    subscription = broker.subscribe("sales.*.created")
    receiving = asyncio.create_task(anext(subscription))
    await settle()
    assert not receiving.done()
    sent = event()
    await broker.publish(sent.topic, sent)
    assert await receiving is sent


async def test_events_before_subscribing_are_not_delivered() -> None:
    """A subscription sees only events published after it was made."""
    broker = InMemoryBroker()
    await broker.publish("sales.orders.created", event())
    assert broker.subscribe("**").qsize() == 0


async def test_a_new_subscription_sees_topics_already_routed() -> None:
    """Subscribing invalidates the topic routing cache."""
    broker = InMemoryBroker()
    first = broker.subscribe("sales.**")
    await broker.publish("sales.orders.created", event())
    second = broker.subscribe("sales.**")
    await broker.publish("sales.orders.created", event())
    assert (first.qsize(), second.qsize()) == (2, 1)


async def test_publishing_an_invalid_topic_fails() -> None:
    """Publish validates the topic."""
    broker = InMemoryBroker()
    with pytest.raises(InvalidTopicError, match=re.escape("'sales..created'")):
        await broker.publish("sales..created", event("sales..created"))


async def test_publishing_on_a_topic_other_than_the_events_fails() -> None:
    """The topic argument must be the event's own topic."""
    broker = InMemoryBroker()
    with pytest.raises(
        InvalidTopicError, match=re.escape("the event's own topic is 'sales.orders.created'")
    ):
        await broker.publish("sales.refunds.created", event())


def test_subscribing_with_an_invalid_pattern_fails() -> None:
    """Subscribe validates the pattern."""
    with pytest.raises(InvalidTopicError, match=re.escape("invalid topic pattern 'sales.*x'")):
        InMemoryBroker().subscribe("sales.*x")


def test_an_unknown_overflow_policy_is_rejected() -> None:
    """Overflow must be 'block', 'drop_oldest' or 'raise'."""
    with pytest.raises(ValueError, match="overflow must be one of"):
        InMemoryBroker(overflow="ignore")  # type: ignore[arg-type]


async def test_publishing_to_a_closed_broker_fails() -> None:
    """After close, publish and publish_nowait raise BrokerClosedError naming the topic."""
    broker = InMemoryBroker()
    await broker.close()
    with pytest.raises(BrokerClosedError, match=re.escape("'sales.orders.created'")):
        await broker.publish("sales.orders.created", event())
    with pytest.raises(BrokerClosedError):
        broker.publish_nowait("sales.orders.created", event())


async def test_subscribing_to_a_closed_broker_fails() -> None:
    """After close, subscribe raises BrokerClosedError naming the pattern."""
    broker = InMemoryBroker()
    await broker.close()
    with pytest.raises(BrokerClosedError, match=re.escape("'sales.**'")):
        broker.subscribe("sales.**")


async def test_close_lets_consumers_drain_then_stop() -> None:
    """Closing ends iteration after the events already buffered."""
    broker = InMemoryBroker()
    subscription = broker.subscribe("**")
    sent = [event(n=n) for n in range(3)]
    for e in sent:
        await broker.publish(e.topic, e)
    await broker.close()
    assert [e async for e in subscription] == sent


async def test_close_ends_a_waiting_consumer() -> None:
    """A consumer waiting for events finishes its loop when the broker closes."""
    broker = InMemoryBroker()
    consumer = InMemoryConsumer(broker)

    async def collect() -> list[EventBase]:
        return [e async for e in consumer.consume("**")]

    task = asyncio.create_task(collect())
    await settle()
    await broker.close()
    assert await task == []


async def test_block_makes_the_publisher_wait_until_the_consumer_reads() -> None:
    """With overflow='block' a full subscription holds the publisher back (backpressure)."""
    broker = InMemoryBroker(maxsize=1, overflow="block")
    subscription = broker.subscribe("**")
    first, second = event(n=1), event(n=2)
    await broker.publish(first.topic, first)
    publishing = asyncio.create_task(broker.publish(second.topic, second))
    await settle()
    assert not publishing.done()
    assert await anext(subscription) is first
    await settle()
    assert publishing.done()
    assert await anext(subscription) is second


async def test_publish_nowait_raises_instead_of_blocking() -> None:
    """publish_nowait cannot wait, so a full 'block' subscription raises QueueFullError."""
    broker = InMemoryBroker(maxsize=1, overflow="block")
    _never_read = broker.subscribe("sales.**")
    broker.publish_nowait("sales.orders.created", event())
    with pytest.raises(QueueFullError, match=re.escape("subscriber 'sales.**' is full (1 items)")):
        broker.publish_nowait("sales.orders.created", event())


async def test_a_blocked_publisher_fails_when_the_broker_closes() -> None:
    """Closing the broker releases a blocked publisher with BrokerClosedError."""
    broker = InMemoryBroker(maxsize=1)
    _never_read = broker.subscribe("**")
    await broker.publish("sales.orders.created", event())
    publishing = asyncio.create_task(broker.publish("sales.orders.created", event()))
    await settle()
    await broker.close()
    with pytest.raises(BrokerClosedError):
        await publishing


async def test_a_blocked_publisher_continues_when_the_subscriber_leaves() -> None:
    """Unsubscribing a full subscription releases the publisher it was holding back."""
    broker = InMemoryBroker(maxsize=1)
    subscription = broker.subscribe("**")
    await broker.publish("sales.orders.created", event())
    publishing = asyncio.create_task(broker.publish("sales.orders.created", event()))
    await settle()
    await subscription.aclose()
    await publishing
    assert broker.stats().published == 2


async def test_drop_oldest_discards_the_oldest_and_counts_it() -> None:
    """With overflow='drop_oldest' a full subscription loses its oldest event, not the new one."""
    broker = InMemoryBroker(maxsize=2, overflow="drop_oldest")
    subscription = broker.subscribe("**")
    sent = [event(n=n) for n in range(3)]
    for e in sent:
        await broker.publish(e.topic, e)
    assert [await anext(subscription) for _ in range(2)] == sent[1:]
    assert subscription.dropped == 1
    assert broker.stats().dropped == 1


async def test_raise_fails_the_publish_naming_the_subscriber() -> None:
    """With overflow='raise' publishing to a full subscription raises QueueFullError."""
    broker = InMemoryBroker()
    _never_read = broker.subscribe("sales.*.created", maxsize=1, overflow="raise")
    await broker.publish("sales.orders.created", event())
    with pytest.raises(QueueFullError, match=re.escape("subscriber 'sales.*.created'")) as caught:
        await broker.publish("sales.orders.created", event())
    assert caught.value.maxsize == 1


@pytest.mark.parametrize("overflow", ["drop_oldest", "raise"])
async def test_a_slow_subscriber_does_not_stall_the_others(overflow: str) -> None:
    """Under drop_oldest and raise, a full subscription does not keep events from the rest."""
    broker = InMemoryBroker()
    slow = broker.subscribe("**", maxsize=1, overflow=overflow)  # type: ignore[arg-type]
    fast = broker.subscribe("**", maxsize=100)
    for n in range(10):
        with contextlib.suppress(QueueFullError):
            await broker.publish("sales.orders.created", event(n=n))
    assert [(await anext(fast)).payload["n"] for _ in range(10)] == list(range(10))
    assert slow.qsize() == 1


async def test_unbounded_subscriptions_never_overflow() -> None:
    """maxsize=0 means no limit."""
    broker = InMemoryBroker(maxsize=0, overflow="raise")
    subscription = broker.subscribe("**")
    for _ in range(5_000):
        broker.publish_nowait("sales.orders.created", event())
    assert subscription.qsize() == 5_000


async def test_the_last_event_of_each_topic_is_retained() -> None:
    """last_event returns the newest event of a topic, None for a topic never published."""
    broker = InMemoryBroker()
    first, second = event(n=1), event(n=2)
    await broker.publish(first.topic, first)
    await broker.publish(second.topic, second)
    assert broker.last_event("sales.orders.created") is second
    assert broker.last_event("sales.refunds.created") is None


async def test_a_new_subscriber_can_replay_retained_events() -> None:
    """replay_retained starts a subscription with the retained matching events, oldest first."""
    broker = InMemoryBroker()
    orders, refunds, stock = (
        event("sales.orders.created"),
        event("sales.refunds.created"),
        event("stock.level.changed"),
    )
    for e in (orders, refunds, stock):
        await broker.publish(e.topic, e)
    subscription = broker.subscribe("sales.**", replay_retained=True)
    live = event("sales.orders.created")
    await broker.publish(live.topic, live)
    assert [await anext(subscription) for _ in range(3)] == [orders, refunds, live]


async def test_retained_events_expire_after_the_ttl() -> None:
    """A retained event is forgotten once it is retain_ttl seconds old."""
    clock = Clock()
    broker = InMemoryBroker(retain_ttl=60, clock=clock)
    await broker.publish("sales.orders.created", event())
    clock.now = 59.9
    assert broker.last_event("sales.orders.created") is not None
    clock.now = 60.0
    assert broker.last_event("sales.orders.created") is None
    assert broker.retained() == []
    assert broker.subscribe("**", replay_retained=True).qsize() == 0


async def test_republishing_renews_the_ttl() -> None:
    """Publishing again on a topic restarts its retained event's time to live."""
    clock = Clock()
    broker = InMemoryBroker(retain_ttl=60, clock=clock)
    await broker.publish("sales.orders.created", event())
    clock.now = 50
    latest = event()
    await broker.publish(latest.topic, latest)
    clock.now = 100
    assert broker.last_event("sales.orders.created") is latest


async def test_retention_evicts_the_least_recently_published_topic() -> None:
    """Past `retain` topics, the one published longest ago is dropped first."""
    broker = InMemoryBroker(retain=2)
    for topic in ("a", "b", "a", "c"):
        await broker.publish(topic, event(topic))
    assert [e.topic for e in broker.retained()] == ["a", "c"]
    assert broker.last_event("b") is None


async def test_retention_can_be_turned_off() -> None:
    """retain=0 keeps nothing."""
    broker = InMemoryBroker(retain=0)
    await broker.publish("sales.orders.created", event())
    assert broker.last_event("sales.orders.created") is None


async def test_a_subscription_nobody_holds_is_removed() -> None:
    """A subscription object that is dropped unsubscribes, so it cannot fill up forever."""
    broker = InMemoryBroker()
    broker.subscribe("**")
    gc.collect()  # only needed on interpreters without reference counting
    assert broker.stats().subscriptions == 0


async def test_breaking_out_of_consume_unsubscribes() -> None:
    """Leaving an `async for` over consume() removes the subscription."""
    broker = InMemoryBroker()
    consumer = InMemoryConsumer(broker)
    await broker.publish("sales.orders.created", event())
    async for _ in consumer.consume("**", replay_retained=True):
        break
    gc.collect()  # only needed on interpreters without reference counting
    assert broker.stats().subscriptions == 0


@pytest.mark.parametrize("how", ["aclose", "close", "async with", "broker.unsubscribe"])
async def test_every_way_of_closing_a_subscription_unsubscribes(how: str) -> None:
    """aclose, close, leaving `async with` and broker.unsubscribe all remove the subscription."""
    broker = InMemoryBroker()
    subscription = broker.subscribe("**")
    if how == "aclose":
        await subscription.aclose()
    elif how == "close":
        subscription.close()
    elif how == "async with":
        async with subscription:
            pass
    else:
        broker.unsubscribe(subscription)
    assert broker.stats().subscriptions == 0
    assert subscription.closed
    await broker.publish("sales.orders.created", event())
    assert subscription.qsize() == 0


async def test_unsubscribing_ends_a_waiting_consumer() -> None:
    """A consumer waiting on a subscription stops when it is unsubscribed."""
    broker = InMemoryBroker()
    subscription = broker.subscribe("**")

    async def collect() -> list[EventBase]:
        return [e async for e in subscription]

    task = asyncio.create_task(collect())
    await settle()
    subscription.close()
    assert await task == []


async def test_a_cancelled_consumer_does_not_lose_the_next_event() -> None:
    """Cancelling a consumer's wait leaves the subscription able to deliver."""
    broker = InMemoryBroker()
    subscription = broker.subscribe("**")
    waiting = asyncio.create_task(anext(subscription))
    await settle()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    sent = event()
    await broker.publish(sent.topic, sent)
    assert await anext(subscription) is sent


async def test_stats_count_published_events_and_subscriptions() -> None:
    """stats() reports what a metrics endpoint needs."""
    broker = InMemoryBroker()
    kept = broker.subscribe("**")
    await broker.publish("a", event("a"))
    await broker.publish("b", event("b"))
    stats = broker.stats()
    assert (stats.published, stats.subscriptions, stats.retained) == (2, 1, 2)
    assert kept.qsize() == 2
