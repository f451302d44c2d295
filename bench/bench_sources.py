"""Polling source figures, each beside what the same run measures for cron or plain asyncio.

* Poll-to-run latency at a 100 ms interval: from the moment an item becomes visible to the
  source to the first task of its run starting (includes waiting for the next poll, so about
  half an interval on average), and from the poll that saw it to that task; beside the cron
  fire-to-run lateness of a `* * * * * *` pipeline in the same service (scheduled second to
  its task starting).
* Jitter of the poll interval: how far apart consecutive polls are beside 100 ms, beside a
  plain fixed-rate asyncio loop (`loop.call_at`) ticking every 100 ms on the same loop.

The service runs on the embedded defaults (SQLite store in a temporary folder, in-memory bus,
in-process executor); each poll commits its cursor to SQLite.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics
import tempfile
import time

from bench._harness import Report
from dp import TaskRegistry, pipeline, task
from dp.engine import Orchestrator
from dp.events import InMemoryBroker
from dp.pipelines import PipelineRegistry
from dp.scheduler.poller import SourcePoller
from dp.service import Service
from dp.sources import Poll, SourceRegistry, source

SECTION = "sources"
SECONDS = 8.0
ITEM_EVERY = 0.037  # items appear at this pace, out of phase with the polls
INTERVAL = 0.1

TASKS = TaskRegistry()
PIPELINES = PipelineRegistry()
SOURCES = SourceRegistry()
VISIBLE: dict[int, float] = {}  # item -> time.time() it became visible
POLLED: dict[int, float] = {}  # item -> time.time() the poll that saw it returned
STARTED: dict[int, float] = {}  # item -> time.time() its run's task started
POLL_TIMES: list[float] = []  # time.monotonic() of each poll
CRON_LATE: list[float] = []  # seconds from each cron second to its task starting


@task(registry=TASKS)
def handle(n: int) -> None:
    STARTED[n] = time.time()


@task(registry=TASKS)
def tick() -> None:
    now = time.time()
    CRON_LATE.append(now - math.floor(now))


@source(every=INTERVAL, topic="bench.items", registry=SOURCES)
async def items(cursor: int | None) -> Poll:
    POLL_TIMES.append(time.monotonic())
    last = cursor if cursor is not None else -1
    new = [n for n in sorted(VISIBLE) if n > last]
    now = time.time()
    for n in new:
        POLLED[n] = now
    return Poll(events=[{"n": n} for n in new], cursor=new[-1] if new else cursor)


pipeline("on_item", tasks=["handle"], on="bench.items", registry=TASKS, pipelines=PIPELINES)
pipeline("every_second", tasks=["tick"], cron="* * * * * *", registry=TASKS, pipelines=PIPELINES)


def run(report: Report) -> None:
    asyncio.run(_latency(report))


async def _latency(report: Report) -> None:
    loop = asyncio.get_running_loop()
    baseline_ticks: list[float] = []

    def baseline_tick(due: float) -> None:
        baseline_ticks.append(loop.time())
        if due + INTERVAL < stop_at:
            loop.call_at(due + INTERVAL, baseline_tick, due + INTERVAL)

    with tempfile.TemporaryDirectory(prefix="dp-bench-") as root:
        orchestrator = Orchestrator.embedded(root, max_queued_pipelines=100_000)
        broker = InMemoryBroker()
        assert orchestrator.store is not None
        poller = SourcePoller(SOURCES, broker, state=orchestrator.store)
        service = Service(
            PIPELINES, orchestrator=orchestrator, broker=broker, sources=poller, task_events=False
        )
        await service.start()
        try:
            stop_at = loop.time() + SECONDS
            loop.call_at(loop.time() + INTERVAL / 2, baseline_tick, loop.time() + INTERVAL / 2)
            n = 0
            while loop.time() < stop_at:
                VISIBLE[n] = time.time()
                n += 1
                await asyncio.sleep(ITEM_EVERY)
            deadline = time.monotonic() + 10
            while len(STARTED) < n and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            await service.stop()
    ms = 1_000
    seen = sorted(STARTED)
    visible_to_run = sorted((STARTED[i] - VISIBLE[i]) * ms for i in seen)
    poll_to_run = sorted((STARTED[i] - POLLED[i]) * ms for i in seen)
    cron = sorted(x * ms for x in CRON_LATE)
    label = f"{len(seen)} items, {INTERVAL * ms:g} ms interval"
    for percent in (50, 99):
        report.add(
            SECTION,
            f"item visible -> run started p{percent} ({label})",
            _pct(visible_to_run, percent),
            "ms",
            baseline_name="cron second -> run started",
            baseline=_pct(cron, percent),
            higher_is_better=False,
        )
    for percent in (50, 99):
        report.add(
            SECTION,
            f"poll saw it -> run started p{percent}",
            _pct(poll_to_run, percent),
            "ms",
            baseline_name="cron second -> run started",
            baseline=_pct(cron, percent),
            higher_is_better=False,
        )
    jitter = _jitter(POLL_TIMES)
    base_jitter = _jitter(baseline_ticks)
    for percent in (50, 99):
        report.add(
            SECTION,
            f"poll interval jitter p{percent} ({len(POLL_TIMES)} polls)",
            _pct(jitter, percent),
            "ms",
            baseline_name="loop.call_at 100 ms jitter",
            baseline=_pct(base_jitter, percent),
            higher_is_better=False,
        )


def _jitter(times: list[float]) -> list[float]:
    """|gap - interval| between consecutive ticks, in ms."""
    return sorted(abs((b - a) - INTERVAL) * 1_000 for a, b in itertools.pairwise(times))


def _pct(sorted_values: list[float], percent: int) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[percent - 1]
