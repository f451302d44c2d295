"""The source poller on a `ManualClock`: cursors, re-polls, ids, circuits, timeouts, leases.

Time moves only when a test says so. Store calls and sync sources run on threads, so before
each step a test waits (`idle`) until every sleeper is back on the clock; the waits have
generous deadlines and are never reached when the poller works.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dp.events import EventBase, InMemoryBroker
from dp.scheduler import ManualClock, Scheduler, create_cron_trigger
from dp.scheduler.poller import SourcePoller
from dp.sources import Poll, SourceRegistry, source, source_event_id
from dp.store import MemoryRunStore, SourceRecord

START = datetime(2025, 6, 2, tzinfo=UTC)
PATIENCE = 30.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def registry() -> SourceRegistry:
    return SourceRegistry()


@pytest.fixture
def store() -> MemoryRunStore:
    return MemoryRunStore()


class Heard:
    """Everything published on a broker, in order."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self.events: list[EventBase] = []
        self._subscription = broker.subscribe("**")
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for event in self._subscription:
            self.events.append(event)

    def on(self, topic: str) -> list[EventBase]:
        return [e for e in self.events if e.topic == topic]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def until(check: Callable[[], object], what: str) -> None:
    """Wait (in real time, generously) until `check()` holds."""
    deadline = time.monotonic() + PATIENCE
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.002)


async def idle(
    poller: SourcePoller | Sequence[SourcePoller],
    clock: ManualClock,
    sleepers: int = 1,
    *,
    busy: Collection[str] = (),
) -> None:
    """Wait until every source (but those in `busy`) waits for its next poll and `sleepers`
    tasks sleep on the clock (the sources', a poll's timeout, a cron timer)."""
    pollers = [poller] if isinstance(poller, SourcePoller) else poller
    await until(
        lambda: all(set(p.busy) <= set(busy) for p in pollers) and clock.sleepers >= sleepers,
        f"{sleepers} sleepers on the clock",
    )


async def step(
    poller: SourcePoller | Sequence[SourcePoller],
    clock: ManualClock,
    seconds: float,
    sleepers: int = 1,
    *,
    busy: Collection[str] = (),
) -> None:
    """Move the clock by `seconds` once the poller is idle, and wait until it is idle again."""
    await idle(poller, clock, sleepers, busy=busy)
    await clock.advance(timedelta(seconds=seconds))
    await idle(poller, clock, sleepers, busy=busy)


async def test_the_cursor_advances_and_is_committed_after_each_poll(
    clock: ManualClock, registry: SourceRegistry, store: MemoryRunStore
) -> None:
    """Each poll gets the previous cursor; its events go out and the new cursor is stored."""
    seen: list[int | None] = []

    @source(every="1s", topic="counter.ticks", registry=registry)
    def counter(cursor: int | None) -> Poll:
        seen.append(cursor)
        n = (cursor or 0) + 1
        return Poll(events=[{"n": n}], cursor=n)

    broker = InMemoryBroker()
    heard = Heard(broker)
    poller = SourcePoller(registry, broker, state=store, clock=clock, holder="me")
    await poller.start()
    for _ in range(3):
        await step(poller, clock, 1)
    await until(lambda: len(heard.events) == 4, "four events")
    await poller.stop()
    await heard.close()

    assert seen == [None, 1, 2, 3]
    assert [e.payload["n"] for e in heard.on("counter.ticks")] == [1, 2, 3, 4]
    record = store.get_source("counter")
    assert record is not None
    assert (record.cursor, record.every, record.topic, record.failures) == (
        4,
        1.0,
        "counter.ticks",
        0,
    )
    assert record.polled_at == START + timedelta(seconds=3)
    assert record.holder is None  # released on stop


async def test_a_crash_before_the_commit_re_polls_with_the_same_event_ids(
    clock: ManualClock, registry: SourceRegistry, store: MemoryRunStore
) -> None:
    """Published but not committed: the next poller starts from the old cursor and publishes
    the same ids, so the service starts no second run."""

    @source(every="1s", topic="files.arrived", registry=registry)
    def inbox(cursor: int | None) -> Poll:
        start = cursor or 0
        return Poll(events=[{"file": f"f{start + 1}.csv"}], cursor=start + 1)

    class CrashOnCommit(MemoryRunStore):
        def save_source(self, record: SourceRecord) -> bool:
            raise ConnectionError("the process died here")

    crashing = CrashOnCommit()
    broker = InMemoryBroker()
    heard = Heard(broker)
    first = SourcePoller(registry, broker, state=crashing, clock=clock, holder="a")
    await first.start()
    await until(lambda: len(heard.events) == 1, "the first poll's event")
    await first.stop()
    assert crashing.get_source("inbox") is not None
    again = SourcePoller(registry, broker, state=store, clock=clock, holder="b")
    await again.start()
    await until(lambda: len(heard.events) == 2, "the re-poll's event")
    await again.stop()
    await heard.close()

    before, after = heard.on("files.arrived")
    assert before.payload == after.payload == {"file": "f1.csv"}
    assert before.event_id == after.event_id == source_event_id("inbox", {"file": "f1.csv"})


async def test_two_sightings_of_one_payload_share_an_id_and_others_do_not(
    clock: ManualClock, registry: SourceRegistry, store: MemoryRunStore
) -> None:
    """A source without a cursor reports the same file on every poll: one id for it."""
    files = ["a.csv"]

    @source(every="1s", topic="files.arrived", registry=registry)
    def listing() -> list[dict[str, str]]:
        return [{"file": name} for name in files]

    broker = InMemoryBroker()
    heard = Heard(broker)
    poller = SourcePoller(registry, broker, state=store, clock=clock)
    await poller.start()
    await step(poller, clock, 1)
    files.append("b.csv")
    await step(poller, clock, 1)
    await until(lambda: len(heard.events) == 4, "four events")
    await poller.stop()
    await heard.close()

    ids = [e.event_id for e in heard.events]
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert {e.source for e in heard.events} == {"source:listing"}


async def test_async_and_generator_sources_are_polled_alike(
    clock: ManualClock, registry: SourceRegistry, store: MemoryRunStore
) -> None:
    """Coroutines, async generators and sync generators all publish, the last Poll's cursor
    winning."""

    @source(every="1s", topic="x.coroutine", registry=registry)
    async def coroutine(cursor: int | None) -> Poll:
        return Poll(events=[{"kind": "coroutine"}], cursor=1)

    @source(every="1s", topic="x.agen", registry=registry)
    async def agen(cursor: int | None) -> AsyncIterator[Any]:
        yield {"kind": "agen"}
        yield Poll(cursor=2)

    @source(every="1s", topic="x.gen", registry=registry)
    def gen(cursor: int | None) -> Any:
        yield {"kind": "gen"}
        yield Poll(cursor=3)

    broker = InMemoryBroker()
    heard = Heard(broker)
    poller = SourcePoller(registry, broker, state=store, clock=clock)
    await poller.start()
    await until(lambda: len(heard.events) == 3, "an event of each source")
    await idle(poller, clock, 3)
    await poller.stop()
    await heard.close()

    assert sorted(e.payload["kind"] for e in heard.events) == ["agen", "coroutine", "gen"]
    cursors = {r.name: r.cursor for r in store.list_sources()}
    assert cursors == {"coroutine": 1, "agen": 2, "gen": 3}


async def test_the_circuit_opens_backs_off_and_closes_on_the_first_success(
    clock: ManualClock, registry: SourceRegistry, store: MemoryRunStore
) -> None:
    """After max_failures the source is unhealthy (event and health), polls back off
    exponentially up to max_backoff, and the first success makes it healthy again."""
    polled_at: list[datetime] = []
    broken = [True]

    @source(every="1s", topic="dev.reading", max_failures=3, max_backoff="4s", registry=registry)
    def device() -> list[dict[str, int]]:
        polled_at.append(clock.now())
        if broken[0]:
            raise OSError("device offline")
        return [{"value": 1}]

    broker = InMemoryBroker()
    heard = Heard(broker)
    poller = SourcePoller(registry, broker, state=store, clock=clock)
    await poller.start()
    for _ in range(9):
        await step(poller, clock, 1)
    health = poller.health()["device"]
    assert (health.healthy, health.circuit, health.consecutive_failures) == (False, "open", 5)
    assert health.last_error == "OSError: device offline"
    broken[0] = False
    for _ in range(4):
        await step(poller, clock, 1)
    await until(lambda: heard.on("dp.sources.device.healthy"), "the healthy event")
    await poller.stop()
    await heard.close()

    offsets = [int((t - START).total_seconds()) for t in polled_at]
    # 3 failures 1 s apart open it; then waits of 2 s, 4 s, 4 s (8 s capped): success at 12
    assert offsets == [0, 1, 2, 4, 8, 12, 13]
    (unhealthy,) = heard.on("dp.sources.device.unhealthy")
    assert unhealthy.payload == {
        "source": "device",
        "consecutive_failures": 3,
        "error": "OSError: device offline",
    }
    assert poller.health()["device"].healthy
    first, second = heard.on("dev.reading")  # polled at 12 and 13: one payload, one id
    assert first.payload == second.payload == {"value": 1}
    assert first.event_id == second.event_id
    record = store.get_source("device")
    assert record is not None
    assert (record.circuit, record.failures, record.last_error) == ("closed", 0, None)


async def test_failing_polls_are_logged_with_their_traceback_and_counted(
    clock: ManualClock, registry: SourceRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """A raising source is logged with the traceback and counted in metrics()."""

    @source(every="1s", topic="a.b", registry=registry)
    def flaky() -> None:
        raise ValueError("bad row 3")

    poller = SourcePoller(registry, InMemoryBroker(), clock=clock)
    with caplog.at_level("ERROR", logger="dp.sources"):
        await poller.start()
        await step(poller, clock, 1)
        await poller.stop()
    failed = [r for r in caplog.records if "source_poll_failed" in r.getMessage()]
    assert failed
    logged = failed[0].getMessage()
    assert "Traceback (most recent call last)" in logged
    assert "in flaky" in logged
    assert "ValueError: bad row 3" in logged
    samples = {s.name: s.value for s in poller.metrics()}
    assert samples["source_poll_failures_total"] == 2
    assert samples["source_polls_total"] == 2


async def test_a_poll_past_its_timeout_is_cancelled_and_counts_as_a_failure(
    clock: ManualClock, registry: SourceRegistry
) -> None:
    """An async poll that hangs is cancelled at its timeout (by the clock) and recorded."""
    cancelled = asyncio.Event()

    @source(every="5s", topic="a.b", timeout="2s", registry=registry)
    async def stuck(cursor: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    poller = SourcePoller(registry, InMemoryBroker(), clock=clock)
    await poller.start()
    await step(poller, clock, 2, busy={"stuck"})  # its timeout sleeps on the clock
    await until(cancelled.is_set, "the poll to be cancelled")
    await idle(poller, clock)
    info = (await poller.sources())[0]
    await poller.stop()
    assert info.last_error is not None
    assert info.last_error.startswith("PollTimeoutError: polling source 'stuck' took longer")
    assert (info.failures_total, info.consecutive_failures) == (1, 1)
    assert info.next_poll_at == START + timedelta(seconds=5)


async def test_a_hanging_source_delays_neither_other_sources_nor_cron(
    clock: ManualClock, registry: SourceRegistry
) -> None:
    """A sync source stuck forever times out poll after poll while a fast source and a cron
    trigger on the same clock keep their beat."""
    release = threading.Event()

    @source(every="1s", topic="slow.x", timeout="1s", registry=registry)
    def hangs() -> None:
        release.wait(PATIENCE)

    @source(every="1s", topic="fast.x", registry=registry)
    async def fast() -> list[dict[str, str]]:
        return [{"at": clock.now().isoformat()}]

    broker = InMemoryBroker()
    heard = Heard(broker)
    scheduler = Scheduler(broker, clock=clock)
    cron = create_cron_trigger(
        "* * * * * *", lambda: EventBase(topic="cron.tick", timestamp=clock.now())
    )
    await scheduler.register_trigger("every_second", cron, "cron.tick")
    poller = SourcePoller(registry, broker, clock=clock)
    await scheduler.start()
    await poller.start()
    try:
        for _ in range(4):
            await step(poller, clock, 1, sleepers=3, busy={"hangs"})
        await until(lambda: len(heard.on("fast.x")) == 5, "five fast polls")
        await until(lambda: len(heard.on("cron.tick")) == 4, "four cron ticks")
    finally:
        release.set()
        await poller.stop()
        await scheduler.stop()
        await heard.close()
    fast_times = [e.payload["at"] for e in heard.on("fast.x")]
    assert fast_times == [(START + timedelta(seconds=s)).isoformat() for s in range(5)]
    assert [e.timestamp for e in heard.on("cron.tick")] == [
        START + timedelta(seconds=s) for s in range(1, 5)
    ]
    stuck = poller.health()["hangs"]
    assert stuck.consecutive_failures >= 4
    assert stuck.last_error is not None
    assert "SourceBusyError" in stuck.last_error or "PollTimeoutError" in stuck.last_error


async def test_only_the_lease_holder_polls_and_a_dead_holder_is_taken_over(
    clock: ManualClock, registry: SourceRegistry, store: MemoryRunStore
) -> None:
    """Two pollers on one store: one polls; when it dies (no release), the other takes over
    once the lease ran out, from the committed cursor."""
    polled_by: list[tuple[str, int | None]] = []

    def make(holder: str) -> Callable[[int | None], Poll]:
        def poll(cursor: int | None) -> Poll:
            polled_by.append((holder, cursor))
            return Poll(cursor=(cursor or 0) + 1)

        return poll

    first_registry, second_registry = SourceRegistry(), SourceRegistry()
    source(every="1s", topic="a.b", name="inbox", registry=first_registry)(make("a"))
    source(every="1s", topic="a.b", name="inbox", registry=second_registry)(make("b"))
    broker = InMemoryBroker()
    a = SourcePoller(first_registry, broker, state=store, clock=clock, holder="a", lease=6)
    b = SourcePoller(second_registry, broker, state=store, clock=clock, holder="b", lease=6)
    await a.start()
    await idle(a, clock, 1)
    await b.start()
    for _ in range(2):
        await step([a, b], clock, 1, sleepers=2)
    assert {holder for holder, _ in polled_by} == {"a"}
    # "a" dies: its task ends without giving up the lease
    assert a._entries["inbox"].task is not None
    a._entries["inbox"].task.cancel()
    for _ in range(7):
        await step([a, b], clock, 1, sleepers=1)
    await b.stop()
    holders = [holder for holder, _ in polled_by]
    assert holders[:3] == ["a", "a", "a"]
    assert set(holders[3:]) == {"b"}
    assert polled_by[3] == ("b", 3)  # b went on from a's last committed cursor
    infos = await b.sources()
    assert infos[0].cursor == len(polled_by)


async def test_a_holder_that_lost_its_lease_stops_polling(
    clock: ManualClock, registry: SourceRegistry, store: MemoryRunStore
) -> None:
    """When another instance took the source over, the old holder's commit is refused and it
    polls no more."""
    calls: list[int | None] = []

    @source(every="1s", topic="a.b", registry=registry)
    def inbox(cursor: int | None) -> Poll:
        calls.append(cursor)
        return Poll(cursor=(cursor or 0) + 1)

    poller = SourcePoller(registry, InMemoryBroker(), state=store, clock=clock, holder="a")
    await poller.start()
    await idle(poller, clock)
    later = START + timedelta(days=1)  # "z" saw a's lease run out, by its own clock
    assert store.claim_source("inbox", holder="z", now=later, lease_until=later)
    await step(poller, clock, 1)
    await step(poller, clock, 1)
    await poller.stop()
    record = store.get_source("inbox")
    assert record is not None
    assert record.holder == "z"
    assert record.cursor == 1  # a's refused commit changed nothing
    assert calls == [None, 1]
    assert poller.health()["inbox"].polled_here is False
