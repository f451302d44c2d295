"""The service runtime without HTTP: cron- and event-started runs, rejections, limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from dp import InMemoryIOManager, MemoryRunStore, Orchestrator, TaskRegistry, task
from dp.errors import ExecutorSetupError, StoreUnavailableError
from dp.events import EventBase
from dp.events.redis import RedisBroker
from dp.pipelines import PipelineRegistry, pipeline
from dp.scheduler import ManualClock, Scheduler
from dp.service import PipelineBusyError, Service
from dp.service.starts import StartEvents
from dp.store import RunStatus
from redis_server import RedisServer

PATIENCE = 10.0


async def until(condition: Any, what: str) -> None:
    """Yield to the loop until `condition()` holds (a deadline turns a hang into a failure)."""
    deadline = asyncio.get_running_loop().time() + PATIENCE
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    """A service over its own registries, with a manual clock starting 2026-03-28 12:00 UTC."""
    tasks, pipelines = TaskRegistry(), PipelineRegistry()
    gate = asyncio.Event()

    @task(registry=tasks)
    def nightly() -> str:
        return "done"

    @task(registry=tasks)
    def score(order_id: str, amount: float) -> float:
        return amount * 2

    @task(registry=tasks)
    async def slow() -> None:
        await gate.wait()

    @task(registry=tasks)
    def daily(scheduled_for: datetime) -> str:
        return scheduled_for.isoformat()

    pipeline("nightly", tasks=["nightly"], cron="30 2 * * *", timezone="Europe/Berlin",
             registry=tasks, pipelines=pipelines)  # fmt: skip
    pipeline("score", tasks=["score"], on="sales.orders.created", registry=tasks,
             pipelines=pipelines)  # fmt: skip
    pipeline("slow", tasks=["slow"], max_concurrent_runs=1, registry=tasks, pipelines=pipelines)
    pipeline("daily", tasks=["daily"], cron="0 0 * * *", timezone="Europe/Berlin",
             registry=tasks, pipelines=pipelines)  # fmt: skip

    broker_clock = ManualClock(datetime(2026, 3, 28, 12, tzinfo=UTC))
    store = MemoryRunStore()
    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), store=store, executor="inline")
    service = Service(pipelines, orchestrator=orchestrator)
    service.scheduler = Scheduler(service.publisher, clock=broker_clock)
    service.gate = gate  # type: ignore[attr-defined]
    service.clock = broker_clock  # type: ignore[attr-defined]
    await service.start()
    yield service
    gate.set()
    await service.stop(grace=5)


def runs_of(service: Service, pipeline_name: str) -> list[Any]:
    store = service.orchestrator.store
    assert store is not None
    return list(store.list_runs(pipeline=pipeline_name))


async def test_cron_starts_the_pipeline_once_a_day_across_dst(service: Service) -> None:
    """A 02:30 Berlin schedule starts one run per day, on the spring-forward day too."""
    clock: ManualClock = service.clock  # type: ignore[attr-defined]
    await clock.advance(timedelta(days=3))  # 28 Mar -> 31 Mar 12:00 UTC: DST began on 29 Mar
    await until(lambda: len(runs_of(service, "nightly")) == 3, "three nightly runs")
    await until(
        lambda: all(r.status == RunStatus.SUCCEEDED for r in runs_of(service, "nightly")),
        "the runs to succeed",
    )
    assert {r.trigger for r in runs_of(service, "nightly")} == {"cron:nightly.cron"}


async def test_a_cron_run_records_its_tick_and_the_task_sees_its_wall_clock_day(
    service: Service,
) -> None:
    """A midnight Berlin schedule across the spring-forward night: each run records the tick
    (UTC) and the zone, and the task's scheduled_for is that midnight in Berlin, so its
    date is the day the run is for (in UTC it is the day before)."""
    clock: ManualClock = service.clock  # type: ignore[attr-defined]
    await clock.advance(timedelta(days=3))  # 28 Mar 12:00 -> 31 Mar 12:00 UTC
    await until(
        lambda: [r.status for r in runs_of(service, "daily")] == [RunStatus.SUCCEEDED] * 3,
        "three daily runs to succeed",
    )
    runs = sorted(runs_of(service, "daily"), key=lambda r: r.scheduled_for)
    assert [r.scheduled_for for r in runs] == [
        datetime(2026, 3, 28, 23, tzinfo=UTC),  # CET, +01:00
        datetime(2026, 3, 29, 22, tzinfo=UTC),  # CEST, +02:00
        datetime(2026, 3, 30, 22, tzinfo=UTC),
    ]
    assert {r.schedule_tz for r in runs} == {"Europe/Berlin"}
    io = service.orchestrator.io_manager
    seen = [io.load(r.run_id, "daily", "output") for r in runs]
    assert seen == [
        "2026-03-29T00:00:00+01:00",
        "2026-03-30T00:00:00+02:00",
        "2026-03-31T00:00:00+02:00",
    ]
    # the key agrees with the field: the event id names the same tick, in UTC
    assert [r.event_id for r in runs] == [
        f"daily/cron-daily.cron-{r.scheduled_for:%Y%m%dT%H%M%SZ}" for r in runs
    ]


async def test_event_payload_becomes_run_parameters(service: Service) -> None:
    """An order event starts the scoring pipeline with the payload's matching keys as params."""
    await service.publish("sales.orders.created", {"order_id": "A-1", "amount": 5, "x": 1})
    await until(lambda: runs_of(service, "score"), "a scoring run")
    (run,) = runs_of(service, "score")
    assert run.params == {"order_id": "A-1", "amount": 5.0}
    assert run.trigger == "event:sales.orders.created"


async def test_duplicate_event_starts_one_run(service: Service) -> None:
    """The same event delivered twice (same event id) starts a single run."""
    for _ in range(2):
        await service.publish(
            "sales.orders.created", {"order_id": "B", "amount": 1}, event_id="e-1"
        )
    await until(lambda: runs_of(service, "score"), "a scoring run")
    await asyncio.sleep(0.05)
    assert len(runs_of(service, "score")) == 1


async def test_start_events_sharing_a_correlation_id_start_a_run_each(service: Service) -> None:
    """Two start events with different ids and one correlation id are two runs (issue 8)."""
    for event_id in ("s-1", "s-2"):
        await service.publish(
            "dp.pipelines.score.start",
            {"order_id": event_id, "amount": 1},
            event_id=event_id,
            correlation_id="batch-7",
        )
    await until(lambda: len(runs_of(service, "score")) == 2, "two scoring runs")
    assert sorted(r.params["order_id"] for r in runs_of(service, "score")) == ["s-1", "s-2"]


async def test_a_start_event_is_unacknowledged_until_its_run_is_recorded(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a run is not yet recorded its start event stays pending: another instance of the
    `dp.service` group claims it; once recorded, the re-delivery starts no second run."""
    received, recording = asyncio.Event(), asyncio.Event()
    submit = service.orchestrator.submit_pipeline

    async def slow_submit(*args: Any, **kwargs: Any) -> Any:
        received.set()
        await recording.wait()
        return await submit(*args, **kwargs)

    monkeypatch.setattr(service.orchestrator, "submit_pipeline", slow_submit)
    await service.publish("dp.pipelines.score.start", {"order_id": "P", "amount": 1})
    await asyncio.wait_for(received.wait(), PATIENCE)
    peer = service.broker.durable("dp.pipelines.*.start", group="dp.service", claim_idle=0.05)
    claimed = await asyncio.wait_for(anext(peer), PATIENCE)
    assert peer.deliveries(claimed) == 2
    recording.set()
    await until(lambda: runs_of(service, "score"), "the scoring run")
    peer_starts = StartEvents(service, service.broker, claim_idle=0.05)
    assert await peer_starts.start_from_event("score", claimed) is None  # a no-op, by event id
    await peer.ack(claimed)
    assert len(runs_of(service, "score")) == 1


async def test_a_start_event_failing_for_its_own_sake_is_dead_lettered_at_once(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error that is not an outage dead-letters the start event on its first delivery,
    with the error as the reason; the next event starts its run as usual."""

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("cannot store this value")

    start_run = service.start_run
    monkeypatch.setattr(service, "start_run", broken)
    sent = await service.publish("dp.pipelines.score.start", {"order_id": "X", "amount": 1})

    async def buried() -> bool:
        return bool(await service.broker.dead_letters("dp.service"))

    deadline = asyncio.get_running_loop().time() + PATIENCE
    while not await buried():
        assert asyncio.get_running_loop().time() < deadline, "no dead letter"
        await asyncio.sleep(0.01)
    (letter,) = await service.broker.dead_letters("dp.service")
    assert letter.event is not None
    assert letter.event.event_id == sent.event_id
    assert (letter.error, letter.deliveries) == ("RuntimeError: cannot store this value", 1)
    monkeypatch.setattr(service, "start_run", start_run)
    await service.publish("dp.pipelines.score.start", {"order_id": "Y", "amount": 1})
    await until(lambda: runs_of(service, "score"), "the next run")


async def test_a_store_outage_holds_the_start_event_until_the_store_returns(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`StoreUnavailableError` is an outage: the event is retried, never dead-lettered, and
    starts its run once the store answers again."""
    failures = 4
    start_run = service.start_run

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise StoreUnavailableError("postgresql://db", "record a run", "Connection refused")
        return await start_run(*args, **kwargs)

    monkeypatch.setattr(service, "start_run", flaky)
    await service.publish("dp.pipelines.score.start", {"order_id": "Z", "amount": 1})
    await until(lambda: runs_of(service, "score"), "the run after the outage")
    assert failures == 0
    assert await service.broker.dead_letters("dp.service") == []


async def test_an_executor_that_cannot_start_holds_the_start_event(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ExecutorSetupError` (e.g. the Celery broker unreachable) is not the event's fault:
    the event waits and starts its run once the executor starts; nothing is dead-lettered."""
    failures = 2
    start_run = service.start_run

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise ExecutorSetupError("celery", "the Celery executor cannot reach its broker")
        return await start_run(*args, **kwargs)

    monkeypatch.setattr(service, "start_run", flaky)
    await service.publish("dp.pipelines.score.start", {"order_id": "E", "amount": 1})
    await until(lambda: runs_of(service, "score"), "the run once the executor starts")
    assert await service.broker.dead_letters("dp.service") == []


async def test_bad_payload_is_rejected_with_an_event_and_no_run(service: Service) -> None:
    """A payload missing a run parameter publishes dp.run.rejected naming it; nothing runs."""
    async with service.consumer.consume("dp.run.rejected") as rejections:
        await service.publish("sales.orders.created", {"amount": 3})
        rejection: EventBase = await asyncio.wait_for(anext(rejections), PATIENCE)
    assert rejection.payload["pipeline"] == "score"
    assert "'order_id'" in rejection.payload["error"]
    assert runs_of(service, "score") == []


async def test_a_rejection_names_the_event_the_publisher_sent(service: Service) -> None:
    """dp.run.rejected carries the id of the event that was published, not an internal one."""
    async with service.consumer.consume("dp.run.rejected") as rejections:
        sent = await service.publish("sales.orders.created", {"amount": 3}, event_id="order-7")
        rejection: EventBase = await asyncio.wait_for(anext(rejections), PATIENCE)
    assert sent.event_id == "order-7"
    assert rejection.payload["event_id"] == "order-7"


async def test_lifecycle_events_announce_each_run(service: Service) -> None:
    """Runs publish dp.run.started and dp.run.succeeded with the pipeline and run id."""
    async with service.consumer.consume("dp.run.*") as events:
        handle = await service.start_run("score", {"order_id": "C", "amount": 2})
        await handle.result()
        seen = [await asyncio.wait_for(anext(events), PATIENCE) for _ in range(2)]
    assert [e.topic for e in seen] == ["dp.run.started", "dp.run.succeeded"]
    assert {e.payload["run_id"] for e in seen} == {handle.run_id}
    assert seen[1].payload["pipeline"] == "score"


async def test_pipeline_limit_holds_under_concurrent_starts(service: Service) -> None:
    """With max_concurrent_runs=1, only one of many simultaneous starts is accepted."""
    outcomes = await asyncio.gather(
        *(service.start_run("slow") for _ in range(20)), return_exceptions=True
    )
    accepted = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, PipelineBusyError)]
    assert len(accepted) == 1
    assert len(refused) == 19
    service.gate.set()  # type: ignore[attr-defined]
    assert (await accepted[0].result()).ok


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"params": {"dya": "x"}}, r"default params \['dya'\] are not run parameters"),
        ({"cron": "61 * * * *"}, "has a bad trigger: invalid cron expression '61 \\* \\* \\* \\*'"),
        ({"cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "invalid time zone 'Mars/Olympus'"),
    ],
)
async def test_broken_pipeline_definitions_fail_at_start(
    options: dict[str, Any], message: str
) -> None:
    """Bad defaults, cron expressions or zones stop start(), naming the pipeline."""
    from dp.pipelines import PipelineError

    tasks, pipelines = TaskRegistry(), PipelineRegistry()

    @task(registry=tasks)
    def report(day: str) -> str:
        return day

    pipeline("daily", registry=tasks, pipelines=pipelines, **options)
    service = Service(pipelines, orchestrator=Orchestrator(io_manager=InMemoryIOManager()))
    with pytest.raises(PipelineError, match=f"pipeline 'daily'.*{message}"):
        await service.start()
    assert service.scheduler.triggers() == []
    assert service._starter is None
    await service.stop(grace=0)


async def test_a_service_on_redis_acknowledges_a_raw_start_event_once_its_run_is_recorded(
    redis_server: RedisServer,
) -> None:
    """A start event XADD-ed by another program starts one run; then it is no longer pending."""
    tasks, pipelines = TaskRegistry(), PipelineRegistry()

    @task(registry=tasks)
    def score(order_id: str, amount: float) -> float:
        return amount * 2

    pipeline("score", tasks=["score"], registry=tasks, pipelines=pipelines)
    broker = RedisBroker(redis_server.url, prefix="service-test", topic_refresh=0.05)
    orchestrator = Orchestrator(
        io_manager=InMemoryIOManager(), store=MemoryRunStore(), executor="inline"
    )
    service = Service(pipelines, orchestrator=orchestrator, broker=broker)
    raw = aioredis.Redis.from_url(redis_server.url)
    await service.start()
    try:
        key = broker.stream_key("dp.pipelines.score.start")
        wire = {
            "eventId": "kotlin-42",
            "eventType": "StartScore",
            "topic": "dp.pipelines.score.start",
            "timestamp": "2026-01-01T00:00:00Z",
            "source": "kotlin",
            "payload": {"order_id": "K-1", "amount": 2},
        }
        await raw.xadd(key, {"event": json.dumps(wire)})
        await raw.sadd("service-test:topics", "dp.pipelines.score.start")
        await until(lambda: runs_of(service, "score"), "the scoring run")
        (run,) = runs_of(service, "score")
        assert run.params == {"order_id": "K-1", "amount": 2}
        for _ in range(int(PATIENCE / 0.02)):
            if (await raw.xpending(key, "dp.service"))["pending"] == 0:
                break
            await asyncio.sleep(0.02)
        assert (await raw.xpending(key, "dp.service"))["pending"] == 0
    finally:
        await service.stop(grace=5)
        await raw.aclose()


async def test_two_schedules_due_at_one_instant_start_one_run() -> None:
    """A pipeline with two cron schedules that coincide at midnight (one daily, one hourly)
    starts one run for that tick: (pipeline, scheduled_for) is one run."""
    tasks, pipelines = TaskRegistry(), PipelineRegistry()

    @task(registry=tasks)
    def job(scheduled_for: datetime) -> str:
        return scheduled_for.isoformat()

    pipeline("twice", tasks=["job"], cron=["0 0 * * *", "0 * * * *"], registry=tasks,
             pipelines=pipelines)  # fmt: skip
    clock = ManualClock(datetime(2026, 3, 28, 22, 30, tzinfo=UTC))
    store = MemoryRunStore()
    orchestrator = Orchestrator(io_manager=InMemoryIOManager(), store=store, executor="inline")
    service = Service(pipelines, orchestrator=orchestrator)
    service.scheduler = Scheduler(service.publisher, clock=clock)
    await service.start()
    try:
        await clock.advance(timedelta(hours=2))  # 23:00 (hourly), 00:00 (both)
        await until(lambda: len(runs_of(service, "twice")) >= 2, "the runs of both ticks")
        await asyncio.sleep(0.1)  # room for a duplicate to appear
        ticks = sorted(r.scheduled_for for r in runs_of(service, "twice"))
    finally:
        await service.stop(grace=5)
    print(f"ticks: 3 fires (23:00 hourly, 00:00 hourly + daily), runs: {len(ticks)}")
    assert ticks == [datetime(2026, 3, 28, 23, tzinfo=UTC), datetime(2026, 3, 29, tzinfo=UTC)]
