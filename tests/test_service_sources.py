"""Polling sources as the service reports them: `/metrics`, `/health` and `GET /sources`."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx

from dp.engine import Orchestrator
from dp.events import InMemoryBroker
from dp.io import InMemoryIOManager
from dp.scheduler.poller import SourcePoller
from dp.service import Service
from dp.service.api import create_app
from dp.sources import SourceRegistry, source
from service_pipelines import PIPELINES

#: how long a test waits for something that must happen (never reached when dp works)
PATIENCE = 30.0


@asynccontextmanager
async def serving(registry: SourceRegistry) -> AsyncIterator[httpx.AsyncClient]:
    """A started service polling `registry`'s sources, and a client of its API."""
    broker = InMemoryBroker()
    poller = SourcePoller(registry, broker, holder="here")
    service = Service(
        PIPELINES,
        orchestrator=Orchestrator(io_manager=InMemoryIOManager()),
        broker=broker,
        sources=poller,
    )
    await service.start()
    try:
        transport = httpx.ASGITransport(create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://dp") as client:
            yield client
    finally:
        await service.stop()


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait (generously) until `check()` holds."""
    deadline = time.monotonic() + PATIENCE
    while not await check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.01)


def sample(text: str, name: str, source_name: str) -> float:
    """The value of metric `name` for source `source_name` in Prometheus text."""
    found = re.search(rf'^{name}\{{source="{source_name}"\}} (\S+)$', text, re.M)
    assert found is not None, f"no {name} for {source_name} in /metrics"
    return float(found.group(1))


async def test_metrics_count_each_sources_polls_failures_and_events() -> None:
    """/metrics serves polls, failures and events per source and a gauge of open circuits."""
    registry = SourceRegistry()

    @source(every="10ms", topic="files.arrived", registry=registry)
    def inbox() -> list[dict[str, str]]:
        return [{"path": "a.csv"}]

    @source(every="10ms", topic="files.broken", max_failures=1000, registry=registry)
    def broken() -> None:
        raise OSError("the share is gone")

    async with serving(registry) as client:

        async def counted() -> bool:
            text = (await client.get("/metrics")).text
            return (
                sample(text, "source_events_total", "inbox") >= 3
                and sample(text, "source_poll_failures_total", "broken") >= 3
            )

        await until(counted, "three events of inbox and three failures of broken")
        text = (await client.get("/metrics")).text
    assert "# TYPE source_polls_total counter" in text
    assert "# TYPE source_circuit_open gauge" in text
    assert sample(text, "source_poll_failures_total", "inbox") == 0
    assert sample(text, "source_events_total", "broken") == 0
    assert sample(text, "source_polls_total", "broken") >= 3
    assert sample(text, "source_circuit_open", "inbox") == 0
    assert sample(text, "source_circuit_open", "broken") == 0  # 1000 failures to open


async def test_an_open_circuit_is_degraded_in_health_and_open_in_sources() -> None:
    """A source whose circuit opened makes /health `degraded` (runs still start) and shows
    as open, with its last error, in GET /sources and /metrics; its first success heals it."""
    registry = SourceRegistry()
    failing = True

    @source(
        every="10ms", topic="files.arrived", max_failures=2, max_backoff="20ms", registry=registry
    )
    def inbox() -> None:
        if failing:
            raise OSError("the share is gone")

    async with serving(registry) as client:

        async def degraded() -> bool:
            return bool((await client.get("/health")).json()["status"] == "degraded")

        await until(degraded, "/health to say degraded")
        health = (await client.get("/health")).json()
        (listed,) = (await client.get("/sources")).json()["items"]
        gauge = sample((await client.get("/metrics")).text, "source_circuit_open", "inbox")
        failing = False

        async def healed() -> bool:
            return bool((await client.get("/health")).json()["status"] == "ok")

        await until(healed, "/health to say ok again")
        (after,) = (await client.get("/sources")).json()["items"]
    assert health["ready"] is True
    assert health["sources"]["inbox"]["healthy"] is False
    assert health["sources"]["inbox"]["circuit"] == "open"
    assert listed["circuit"] == "open"
    assert listed["last_error"] == "OSError: the share is gone"
    assert listed["consecutive_failures"] >= 2
    assert gauge == 1
    assert (after["circuit"], after["last_error"]) == ("closed", None)
