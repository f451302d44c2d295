"""A networked bus reports why publishing fails, recovers on its own, and keeps what
`publish_nowait` queued through the outage (Redis here; Kafka in test_chaos_kafka.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from dp.errors import BusUnavailableError
from dp.events import EventBase
from dp.events.redis import RedisBroker
from redis_server import RedisServer

GUARD = 20.0


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path / "redis")
    yield server
    server.stop()


async def test_health_fails_with_publishing_and_recovers_without_a_publish(
    own_server: RedisServer,
) -> None:
    """Redis stops: a publish raises, `stats().error` and `health()` say why. Redis comes
    back: `health()`'s probe (a PING) clears it though nothing was published."""
    bus = RedisBroker(own_server.url, prefix="health", publish_timeout=0.5)
    try:
        await bus.publish("a.b", EventBase(topic="a.b"))
        assert (await bus.health(), bus.stats().error) == ("", "")
        own_server.stop()
        with pytest.raises(BusUnavailableError) as caught:
            await bus.publish("a.b", EventBase(topic="a.b"))
        assert bus.stats().error == str(caught.value)
        assert "unreachable" in await bus.health()
        own_server.restart()
        deadline = asyncio.get_running_loop().time() + GUARD
        while await bus.health(wait=1.0):
            assert asyncio.get_running_loop().time() < deadline, bus.stats().error
        assert bus.stats().error == ""
    finally:
        await bus.close()


async def test_publish_nowait_keeps_its_events_through_an_outage(
    own_server: RedisServer,
) -> None:
    """Events queued with publish_nowait while Redis is down (longer than publish_timeout)
    are kept, in order, and published once it is back: none dropped."""
    bus = RedisBroker(own_server.url, prefix="outbox", publish_timeout=0.3)
    try:
        group = bus.durable("jobs.*", group="g")
        reader = asyncio.ensure_future(anext(group))
        await asyncio.sleep(0.2)
        await bus.publish("jobs.warm", EventBase(topic="jobs.warm"))
        await group.ack(await asyncio.wait_for(reader, GUARD))
        own_server.stop()
        sent = [EventBase(topic="jobs.done", payload={"n": n}) for n in range(20)]
        for event in sent:
            bus.publish_nowait(event.topic, event)
        await asyncio.sleep(1.5)  # several failed sends, each past publish_timeout
        assert bus.stats().error
        own_server.restart()
        got = []
        while len(got) < len(sent):
            event = await asyncio.wait_for(anext(group), GUARD)
            got.append(event.payload["n"])
            await group.ack(event)
        assert got == list(range(20))
        assert bus.stats().dropped == 0
    finally:
        await bus.close()
