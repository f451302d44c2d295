"""The Kafka bus with Kafka's own clients on the other side: plain aiokafka producers and
consumers standing in for the Kotlin core of the original design, on the session's Tansu
broker (tests/kafka_server.py). The Broker contract itself is in tests/test_bus_contract.py."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from dp import InMemoryIOManager, MemoryRunStore, Orchestrator, TaskRegistry, task
from dp.config import open_broker, resolve
from dp.errors import BusRefusedError, BusUnavailableError, ConfigError, InvalidBusURLError
from dp.events import EventBase
from dp.events import kafka as kafka_module
from dp.events.kafka import KafkaBroker, bootstrap_servers, partition_of
from dp.events.kafka_options import kafka_url
from dp.pipelines import PipelineRegistry, pipeline
from dp.service import Service
from dp.store import RunStatus
from kafka_server import KafkaServer, kafka_broker, tansu_url
from ports import free_port

GUARD = 15.0  # seconds before a wait fails instead of hanging

WIRE = {
    "eventId": "7d2f0c0e9b1a4c55a1d3f00000000001",
    "eventType": "OrderCreated",
    "topic": "sales.orders.created",
    "timestamp": "2025-01-31T09:00:00.123Z",
    "source": "kotlin-shop",
    "payload": {"order": "A-1"},
}


@pytest.fixture
async def raw(kafka_server: KafkaServer) -> AsyncIterator[AIOKafkaProducer]:
    """A plain aiokafka producer, standing in for a producer written in another language."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap, acks="all")
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
async def bus(kafka_server: KafkaServer) -> AsyncIterator[KafkaBroker]:
    broker = kafka_broker(kafka_server.url)
    yield broker
    await broker.close()


def test_keys_land_where_kafkas_default_partitioner_puts_them() -> None:
    """dp places a keyed record as Java's and aiokafka's default partitioner do, so a run's
    events share a partition with the Kotlin side's events of the same key."""
    kafka = DefaultPartitioner()
    partitions = list(range(6))
    for n in range(200):
        key = f"run-{n}".encode()
        assert partition_of(key, partitions, partitions) == kafka(key, partitions, partitions)
        assert partition_of(key, partitions, partitions) == kafka(key, partitions, partitions)
    assert partition_of(b"run-1", [3], [3]) == 3
    assert partition_of(None, [0, 1], [1]) == 1


async def test_a_record_from_a_plain_producer_is_an_event(
    bus: KafkaBroker, raw: AIOKafkaProducer
) -> None:
    """A JSON wire-format value on the topic of the same name reaches plain and durable
    subscribers whole."""
    plain = bus.subscribe("sales.**")
    group = bus.durable("sales.*.created", group="billing")
    readers = [asyncio.ensure_future(anext(s)) for s in (plain, group)]
    await asyncio.sleep(0.3)
    await raw.send_and_wait(bus.kafka_topic("sales.orders.created"), json.dumps(WIRE).encode())
    seen, handled = await asyncio.wait_for(asyncio.gather(*readers), GUARD)
    for got in (seen, handled):
        assert (got.event_id, got.event_type, got.source, got.payload) == (
            WIRE["eventId"],
            "OrderCreated",
            "kotlin-shop",
            {"order": "A-1"},
        )
    await group.ack(handled)


async def test_a_malformed_record_becomes_a_dead_letter(
    bus: KafkaBroker, raw: AIOKafkaProducer
) -> None:
    """A durable group dead-letters a record that is not a dp event, saying what is wrong,
    and goes on with the next one."""
    group = bus.durable("sales.orders.created", group="billing")
    reader = asyncio.ensure_future(anext(group))
    topic = bus.kafka_topic("sales.orders.created")
    await bus.ensure_topics(topic)
    await raw.send_and_wait(topic, json.dumps({**WIRE, "payload": [1]}).encode())
    await raw.send_and_wait(topic, json.dumps(WIRE).encode())
    good = await asyncio.wait_for(reader, GUARD)
    assert good.event_id == WIRE["eventId"]
    (letter,) = await bus.dead_letters("billing")
    assert letter.event is None
    assert "'payload' must be an object, got an array" in letter.error
    assert (letter.topic, letter.deliveries) == ("sales.orders.created", 1)


async def test_what_was_delivered_but_not_acked_is_delivered_after_a_restart(
    kafka_server: KafkaServer,
) -> None:
    """Offsets are committed after acks only: the next consumer of the group gets the
    unacked event and not the acked one."""
    first_bus = kafka_broker(kafka_server.url)
    namespace = first_bus.namespace
    first = first_bus.durable("jobs.*", group="workers")
    reader = asyncio.ensure_future(anext(first))
    done, failed = EventBase(topic="jobs.a", payload={"n": 1}), EventBase(topic="jobs.a")
    await first_bus.publish(done.topic, done)
    await first_bus.publish(failed.topic, failed)
    got = await asyncio.wait_for(reader, GUARD)
    await first.ack(got)
    await asyncio.wait_for(anext(first), GUARD)  # delivered, never settled: the "crash"
    await first_bus.close()
    second_bus = kafka_broker(kafka_server.url, namespace=namespace)
    try:
        second = second_bus.durable("jobs.*", group="workers")
        again = await asyncio.wait_for(anext(second), GUARD)
        assert again.event_id == failed.event_id
        await second.ack(again)
    finally:
        await second_bus.close()


async def test_events_are_keyed_by_correlation_id_else_event_id(
    bus: KafkaBroker, kafka_server: KafkaServer
) -> None:
    """A run's events share their correlation id as the key (one partition, in order)."""
    correlated = EventBase(topic="runs.done", correlation_id="run-7")
    alone = EventBase(topic="runs.done")
    await bus.publish(correlated.topic, correlated)
    await bus.publish(alone.topic, alone)
    consumer = AIOKafkaConsumer(
        bus.kafka_topic("runs.done"),
        bootstrap_servers=kafka_server.bootstrap,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        records = []
        while len(records) < 2:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), GUARD)
            records += [r for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    assert [r.key for r in records] == [b"run-7", alone.event_id.encode()]
    assert json.loads(records[0].value)["eventId"] == correlated.event_id
    assert dict(records[0].headers) == {"content-type": b"application/json"}


async def test_the_original_designs_flow(kafka_server: KafkaServer, raw: AIOKafkaProducer) -> None:
    """A plain producer's `quantiq.analysis.technical.request` starts the pipeline bound to
    `quantiq.analysis.*.request` with its payload as parameters; `dp.run.succeeded` arrives
    on the Kafka topic of that name for a plain consumer."""
    tasks, pipelines = TaskRegistry(), PipelineRegistry()

    @task(registry=tasks)
    def analyze(symbol: str, window: int) -> dict[str, object]:
        return {"symbol": symbol, "sma": window * 1.5}

    pipeline(
        "analysis",
        tasks=["analyze"],
        on="quantiq.analysis.*.request",
        registry=tasks,
        pipelines=pipelines,
    )
    broker = KafkaBroker(tansu_url(kafka_server.url))
    store = MemoryRunStore()
    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), store=store, executor="inline")
    service = Service(pipelines, orchestrator=orchestrator, broker=broker)
    completions = AIOKafkaConsumer(
        "dp.run.succeeded", bootstrap_servers=kafka_server.bootstrap, auto_offset_reset="earliest"
    )
    await broker.ensure_topics("quantiq.analysis.technical.request", "dp.run.succeeded")
    await completions.start()
    await service.start()
    try:
        request = {
            "eventId": "quantiq-req-1",
            "eventType": "TechnicalAnalysisRequested",
            "topic": "quantiq.analysis.technical.request",
            "timestamp": "2026-01-01T00:00:00Z",
            "source": "quantiq-core",
            "correlationId": "analysis-1",
            "payload": {"symbol": "ACME", "window": 20},
        }
        await raw.send_and_wait(
            "quantiq.analysis.technical.request", json.dumps(request).encode(), key=b"analysis-1"
        )
        succeeded = None
        while succeeded is None:
            record = await asyncio.wait_for(completions.getone(), GUARD)
            event = json.loads(record.value)
            if event["payload"]["pipeline"] == "analysis":
                succeeded = event
        assert succeeded["topic"] == "dp.run.succeeded"
        assert succeeded["payload"]["status"] == RunStatus.SUCCEEDED.value
        (run,) = [r for r in store.list_runs() if r.pipeline == "analysis"]
        assert run.params == {"symbol": "ACME", "window": 20}
    finally:
        await service.stop(grace=5)
        await completions.stop()
        await broker.close()


class CountingAdmin(AIOKafkaAdminClient):
    """aiokafka's admin client, counting how many were made and closed."""

    made = 0
    closed = 0

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        CountingAdmin.made += 1

    async def close(self) -> None:
        CountingAdmin.closed += 1
        await super().close()


@pytest.fixture
def admins(monkeypatch: pytest.MonkeyPatch) -> type[CountingAdmin]:
    monkeypatch.setattr(kafka_module, "AIOKafkaAdminClient", CountingAdmin)
    monkeypatch.setattr(CountingAdmin, "made", 0)
    monkeypatch.setattr(CountingAdmin, "closed", 0)
    return CountingAdmin


async def test_concurrent_first_publishes_start_one_admin_client(
    kafka_server: KafkaServer, admins: type[CountingAdmin]
) -> None:
    """Twenty first publishes at once (to a topic not created yet) share one admin client,
    and close() closes it (before, each started its own and all but one leaked a socket)."""
    broker = kafka_broker(kafka_server.url)
    try:
        events = [EventBase(topic="first.publish", payload={"n": n}) for n in range(20)]
        await asyncio.gather(*(broker.publish(e.topic, e) for e in events))
        assert broker.stats().published == 20
    finally:
        await broker.close()
    assert (admins.made, admins.closed) == (1, 1)


async def test_an_admin_client_that_cannot_start_is_closed(admins: type[CountingAdmin]) -> None:
    """With no broker listening, publish fails as unreachable and the admin client it tried
    to start is closed (no connection left behind); the failure is what health reports."""
    broker = KafkaBroker(f"kafka://127.0.0.1:{free_port()}?request_timeout=0.5")
    try:
        with pytest.raises(BusUnavailableError, match="unreachable") as caught:
            await broker.publish("a.b", EventBase(topic="a.b"))
        assert not isinstance(caught.value, BusRefusedError)
        assert broker.stats().error == str(caught.value)
        assert await broker.health(wait=5.0) == broker.stats().error != ""
    finally:
        await broker.close()
    assert admins.made >= 1
    assert admins.closed == admins.made


async def test_a_broker_that_refuses_idempotence_is_named_with_the_option(
    kafka_server: KafkaServer,
) -> None:
    """Tansu refuses the idempotent producer (on by default, as in the original design):
    the probe dp serve runs at start, and every publish, raise BusRefusedError naming
    `?idempotence=false`; health says so until publishing works; the option fixes it."""
    url = kafka_url(kafka_server.url, namespace="refused.")
    broker = KafkaBroker(url)
    try:
        with pytest.raises(BusRefusedError, match=re.escape("add ?idempotence=false to the bus")):
            await broker.probe()
        with pytest.raises(BusRefusedError, match="refused idempotent producers"):
            await broker.publish("a.b", EventBase(topic="a.b"))
        assert "?idempotence=false" in await broker.health()
        assert "?idempotence=false" in broker.stats().error
    finally:
        await broker.close()
    fixed = KafkaBroker(kafka_url(url, idempotence=False))
    try:
        await fixed.probe()
        await fixed.publish("a.b", EventBase(topic="a.b"))
        assert (await fixed.health(), fixed.stats().error) == ("", "")
    finally:
        await fixed.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://localhost:6379", "scheme 'redis' is not kafka"),
        ("kafka://:9092", "names server ':9092'"),
        ("kafka://k1:9092,k2:port", "'k2:port'"),
    ],
)
def test_bad_kafka_urls_are_refused(url: str, message: str) -> None:
    """A URL dp cannot use is refused when the broker is made, naming the URL."""
    with pytest.raises(InvalidBusURLError, match=message):
        KafkaBroker(url)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("compression=brotli", "option compression='brotli': must be none, gzip"),
        ("acks=1", "option acks=1 needs idempotence=false"),
        ("acks=2&idempotence=false", "option acks='2': must be one of all, 1, 0"),
        ("idempotence=maybe", "option idempotence='maybe': must be true or false"),
        ("linger=-1", "option linger='-1': must be a number of seconds >= 0"),
        ("request_timeout=0", "option request_timeout='0': must be a number of seconds > 0"),
        ("partitions=0", "option partitions='0': must be a whole number >= 1"),
        ("namespace=a..b", "option namespace='a..b': must be a topic prefix"),
        ("idempotency=false", "unknown option 'idempotency'; did you mean 'idempotence'"),
        ("acks=all&acks=1", "option 'acks' is given twice"),
    ],
)
def test_bad_producer_settings_are_refused(query: str, message: str, tmp_path: Path) -> None:
    """A bad URL option is refused, naming the option and what it takes: by the broker and,
    before anything connects, by the configuration (--bus, DP_BUS_URL, dp.toml)."""
    url = f"kafka://k1:9092?{query}"
    with pytest.raises(InvalidBusURLError, match=re.escape(message)):
        KafkaBroker(url)
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve({"bus": url}, env={}, cwd=tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve(env={"DP_BUS_URL": url}, cwd=tmp_path)


def test_producer_settings_come_from_the_url_env_and_dp_toml(tmp_path: Path) -> None:
    """`?idempotence=false&acks=1&compression=gzip` reaches the producer the same way from
    --bus, DP_BUS_URL and dp.toml; without options the original design's defaults hold."""
    defaults = KafkaBroker("kafka://k1:9092")
    assert (defaults.acks, defaults.idempotence, defaults.compression) == ("all", True, None)
    url = "kafka://k1:9092?idempotence=false&acks=1&compression=gzip&linger=0.005"
    (tmp_path / "dp.toml").write_text(f'bus = "{url}"\n')
    for settings in (
        resolve({"bus": url}, env={}, cwd=tmp_path / ".."),
        resolve(env={"DP_BUS_URL": url}, cwd=tmp_path / ".."),
        resolve(env={}, cwd=tmp_path),
    ):
        broker = open_broker(settings)
        assert isinstance(broker, KafkaBroker)
        assert (broker.acks, broker.idempotence, broker.compression) == (1, False, "gzip")
        assert broker.linger == 0.005
        assert broker.bootstrap == "k1:9092"


def test_several_bootstrap_servers_and_the_default_port() -> None:
    """`kafka://a,b:9093` lists both servers, port 9092 where none is given."""
    assert bootstrap_servers("kafka://a,b:9093") == "a:9092,b:9093"


def test_a_kafka_bus_url_opens_a_kafka_broker(tmp_path: Path) -> None:
    """`--bus kafka://...` (or DP_BUS_URL) gives a KafkaBroker on those servers."""
    settings = resolve({"bus": "kafka://k1:9092,k2:9092"}, env={}, cwd=tmp_path)
    broker = open_broker(settings)
    assert isinstance(broker, KafkaBroker)
    assert broker.bootstrap == "k1:9092,k2:9092"
    with pytest.raises(ConfigError, match="names server"):
        resolve({"bus": "kafka://k1:x"}, env={}, cwd=tmp_path)


def test_dp_events_dlq_lists_and_replays_kafka_dead_letters(kafka_server: KafkaServer) -> None:
    """`dp events dlq list/replay --bus kafka://...` reads and replays `_dp.dlq.<group>`."""
    from typer.testing import CliRunner

    from dp.cli import app

    async def bury_one() -> str:
        async with KafkaBroker(tansu_url(kafka_server.url)) as broker:
            group = broker.durable("cli.jobs", group="cli.kafka", max_deliveries=1)
            reader = asyncio.ensure_future(anext(group))
            sent = EventBase(topic="cli.jobs")
            await broker.publish(sent.topic, sent)
            await group.nack(await asyncio.wait_for(reader, GUARD), "ValueError: boom")
            return sent.event_id

    event_id = asyncio.run(bury_one())
    common = ["--bus", kafka_server.url, "--group", "cli.kafka"]
    listed = CliRunner().invoke(app, ["events", "dlq", "list", "--json", *common])
    assert listed.exit_code == 0, listed.output
    (letter,) = [json.loads(line) for line in listed.output.splitlines()]
    assert (letter["event_id"], letter["error"]) == (event_id, "ValueError: boom")
    replayed = CliRunner().invoke(app, ["events", "dlq", "replay", "--all", *common])
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 dead letter(s)" in replayed.output
