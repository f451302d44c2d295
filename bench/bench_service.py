"""The service's speed, each figure beside a baseline measured in the same run.

1. Event to first task: an event is published on the service's bus and a pipeline's first
   task starts (event trigger, start topic, run recorded in SQLite, executor hand-off). The
   baseline hands an item to a task through a bare `asyncio.Queue`.
2. Starting runs in-process, beside the SQLite insert each start makes.
3. HTTP trigger throughput: `POST /triggers/{name}/fire`, each 202 a run recorded in SQLite,
   beside a plain FastAPI hello endpoint served by uvicorn the same way. The load comes from
   `wrk` when it is installed (one thread), else from httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from bench._harness import Report
from dp import TaskRegistry, pipeline, task
from dp.engine import Orchestrator, new_run_id
from dp.pipelines import PipelineRegistry
from dp.service import Service
from dp.service.api import create_app
from dp.store import RunRecord, SQLRunStore

SECTION = "service"
EVENTS = 300
ROUNDS = 5  # alternating rounds of the bus/store variants
REDIS_EVENTS = 1_000  # events per variant, over the rounds
TOKEN = "bench-token"
HTTP_SECONDS = 4
CONNECTIONS = 32

TASKS = TaskRegistry()
PIPELINES = PipelineRegistry()
#: event number -> perf_counter() when the task started
STARTED: dict[int, float] = {}


@task(registry=TASKS)
def first_sync(i: int) -> None:
    STARTED[i] = time.perf_counter()


@task(registry=TASKS)
async def first_async(j: int) -> None:
    STARTED[j] = time.perf_counter()


@task(registry=TASKS)
def noop() -> None:
    return None


pipeline("noop", tasks=["noop"], registry=TASKS, pipelines=PIPELINES)
for _kind in ("sync", "async"):
    pipeline(
        f"on_{_kind}",
        tasks=[f"first_{_kind}"],
        on=f"bench.{_kind}.arrived",
        registry=TASKS,
        pipelines=PIPELINES,
    )


def run(report: Report) -> None:
    asyncio.run(_event_latency(report))
    asyncio.run(_start_throughput(report))
    _http_throughput(report)


# --- 1. event published -> first task started ------------------------------------------------


async def _event_latency(report: Report) -> None:
    baseline = await _queue_handoff(EVENTS)
    with tempfile.TemporaryDirectory(prefix="dp-bench-") as root:
        service = Service(PIPELINES, orchestrator=Orchestrator.embedded(root), task_events=False)
        await service.start()
        try:
            for kind, param in (("sync", "i"), ("async", "j")):
                latencies = await _event_to_task(service, f"bench.{kind}.arrived", param)
                _report_latency(report, f"({kind} task)", latencies, baseline, "p99 < 5 ms")
        finally:
            await service.stop()
    await _event_latency_on_redis(report, baseline)


async def _event_latency_on_redis(report: Report, baseline: list[float]) -> None:
    """The same on the Redis Streams bus (published with XADD, consumed by the trigger's and
    the start events' groups, acknowledged once the run is recorded), with the runs in
    SQLite and in PostgreSQL, beside the in-memory bus on SQLite: the three services run
    side by side and take turns, ROUNDS rounds of EVENTS // ROUNDS events each, so a noisy
    moment of the machine hits them alike."""
    from tests.redis_server import RedisServer

    from bench.bench_store_pg import _postgres_server_module
    from dp.events.redis import RedisBroker

    postgres_server = _postgres_server_module()
    with (
        tempfile.TemporaryDirectory(prefix="dp-bench-") as root,
        postgres_server.PostgresServer() as postgres,
    ):
        server = RedisServer.start(Path(root) / "redis")
        stores = {
            "memory bus, SQLite": SQLRunStore(path=Path(root) / "memory.db"),
            "Redis, SQLite checkpointing in the commit (before)": _inline_checkpoints(
                SQLRunStore(path=Path(root) / "before.db")
            ),
            "Redis, SQLite": SQLRunStore(path=Path(root) / "redis.db"),
            "Redis, PostgreSQL": SQLRunStore(postgres.create_database()),
        }
        services = {
            name: Service(
                PIPELINES,
                orchestrator=Orchestrator.embedded(Path(root) / f"r{n}", store=store),
                broker=None if name.startswith("memory") else RedisBroker(server.url[:-1] + str(n)),
                task_events=False,
            )
            for n, (name, store) in enumerate(stores.items())
        }
        latencies: dict[str, list[float]] = {name: [] for name in services}
        raw: list[float] = []
        per_round = REDIS_EVENTS // ROUNDS
        try:
            for service in services.values():
                await service.start()
            for _ in range(ROUNDS):
                raw += await _raw_redis_chain(server.url[:-1] + "9", per_round)
                for name, service in services.items():
                    latencies[name] += await _event_to_task(
                        service, "bench.sync.arrived", "i", per_round
                    )
            for name, values in latencies.items():
                if name.startswith("memory"):
                    _report_latency(report, f"({name})", values, baseline, "")
                else:
                    _report_latency(report, f"({name})", values, raw, "p99 <= 10 ms", _RAW_CHAIN)
        finally:
            for service in services.values():
                await service.stop()
            server.stop()


def _inline_checkpoints(store: SQLRunStore) -> SQLRunStore:
    """`store` as dp had it before WalCheckpointer: SQLite's automatic checkpoint (every
    1000 WAL pages) inside the commit that crosses it, no checkpoint thread."""
    import sqlalchemy as sa

    assert store._checkpointer is not None
    store._checkpointer.close()
    store._checkpointer = None

    def inline(dbapi_connection: Any, _: object) -> None:
        dbapi_connection.execute("PRAGMA wal_autocheckpoint = 1000")

    sa.event.listen(store._engine, "connect", inline)
    store._engine.dispose()  # connect again, through the listener
    return store


_RAW_CHAIN = "raw redis-py XADD -> XREADGROUP -> XADD -> XREADGROUP"


async def _raw_redis_chain(url: str, count: int) -> list[float]:
    """The Redis hops dp's path has, with nothing else: an event appended to a stream, read
    by a consumer group that appends a start entry to a second stream, read by a second
    group (each read acknowledged); the time from the first XADD to the second read."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    for key in ("raw:event", "raw:start"):
        with contextlib.suppress(Exception):  # the group exists from an earlier round
            await client.xgroup_create(key, "g", "$", mkstream=True)
    arrived: asyncio.Queue[float] = asyncio.Queue()

    stop = asyncio.Event()  # not cancel(): redis-py can hang cancelling a blocked read

    async def hop(source: str, forward: str | None) -> None:
        while not stop.is_set():
            found = await client.xreadgroup("g", "c", {source: ">"}, count=64, block=100)
            for _, entries in found or ():
                for entry_id, fields in entries:
                    if forward is not None:
                        await client.xadd(forward, fields)
                    else:
                        arrived.put_nowait(time.perf_counter())
                    await client.xack(source, "g", entry_id)

    hops = [
        asyncio.ensure_future(hop("raw:event", "raw:start")),
        asyncio.ensure_future(hop("raw:start", None)),
    ]
    latencies = []
    for i in range(-20, count):
        started = time.perf_counter()
        await client.xadd("raw:event", {"event": f'{{"i": {i}}}'})
        done = await arrived.get()
        if i >= 0:
            latencies.append(done - started)
    stop.set()
    await asyncio.gather(*hops)
    await client.aclose()
    return latencies


def _report_latency(
    report: Report,
    what: str,
    latencies: list[float],
    baseline: list[float],
    target: str,
    baseline_name: str = "asyncio.Queue hand-off",
) -> None:
    for label, q in (("p50", 49), ("p99", 98)):
        report.add(
            SECTION,
            f"event -> first task started {what}, {label}",
            _quantile(latencies, q) * 1000,
            "ms",
            baseline_name=f"{baseline_name} {label}",
            baseline=_quantile(baseline, q) * 1000,
            target=target if label == "p99" else "",
            higher_is_better=False,
        )


async def _event_to_task(
    service: Service, topic: str, param: str, events: int = EVENTS
) -> list[float]:
    """Publish one event at a time; the time until its run's task starts, for each."""
    latencies = []
    for i in range(-20, events):  # the first 20 warm up
        started = time.perf_counter()
        await service.publish(topic, {param: i})
        while i not in STARTED or service.orchestrator.active_runs():
            await asyncio.sleep(0.0005)
        if i >= 0:
            latencies.append(STARTED[i] - started)
    STARTED.clear()
    return latencies


async def _queue_handoff(count: int) -> list[float]:
    queue: asyncio.Queue[float] = asyncio.Queue()
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def consumer() -> None:
        while True:
            sent = await queue.get()
            arrived.put_nowait(time.perf_counter() - sent)

    worker = asyncio.get_running_loop().create_task(consumer())
    latencies = []
    for _ in range(count):
        queue.put_nowait(time.perf_counter())
        latencies.append(await arrived.get())
    worker.cancel()
    return latencies


def _quantile(values: list[float], index: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[index]


# --- 2. starting runs, in-process and over HTTP --------------------------------------------


async def _start_throughput(report: Report, count: int = 2000) -> None:
    """`Service.start_run` without HTTP, beside the store insert every start must make."""
    with tempfile.TemporaryDirectory(prefix="dp-bench-") as root:
        orchestrator = Orchestrator.embedded(root, max_queued_pipelines=1_000_000)
        service = Service(PIPELINES, orchestrator=orchestrator, task_events=False)
        await service.start()
        started = time.perf_counter()
        for _ in range(count):
            await service.start_run("noop")
        seconds = time.perf_counter() - started
        await service.stop()
        store = SQLRunStore(path=Path(root) / "inserts.db")
        plan = service.plan("noop")
        started = time.perf_counter()
        for _ in range(count):
            record = RunRecord(new_run_id(), plan.dag_id, "noop", plan=plan.to_dict())
            await asyncio.to_thread(store.create_run, record)
        insert_seconds = time.perf_counter() - started
        store.close()
    report.add(
        SECTION,
        "Service.start_run one at a time (no HTTP), runs executing alongside",
        count / seconds,
        "runs/s",
        baseline_name="SQLRunStore.create_run via to_thread",
        baseline=count / insert_seconds,
    )


# --- 3. HTTP trigger throughput -----------------------------------------------------------


def _http_throughput(report: Report) -> None:
    hello = FastAPI()

    @hello.post("/hello")
    async def say_hello() -> dict[str, str]:
        return {"hello": "world"}

    tool = "wrk" if shutil.which("wrk") else "httpx"
    with tempfile.TemporaryDirectory(prefix="dp-bench-") as root:
        orchestrator = Orchestrator.embedded(root, max_queued_pipelines=1_000_000)
        service = Service(PIPELINES, orchestrator=orchestrator, task_events=False)
        with _serving(create_app(service, token=TOKEN)) as url:
            statuses, seconds = _load(url + "/triggers/noop/fire", '{"payload": {}}')
            _wait_idle(service)
            recorded = orchestrator.store.count_runs(pipeline="noop")
        with _serving(hello) as url:
            hello_statuses, hello_seconds = _load(url + "/hello", "{}")
    accepted = statuses[202]
    report.add(
        SECTION,
        f"POST /triggers/noop/fire -> 202, run recorded ({tool}, {CONNECTIONS} connections)",
        accepted / seconds,
        "req/s",
        baseline_name="FastAPI hello via uvicorn",
        baseline=hello_statuses[200] / hello_seconds,
    )
    report.console.print(
        f"  {accepted} accepted, {sum(statuses.values()) - accepted} other; "
        f"{recorded} runs recorded"
    )


@contextmanager
def _serving(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port, in a thread of this process."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, access_log=False, ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


def _load(url: str, body: str) -> tuple[Counter[int], float]:
    """Status counts of POSTs to `url` for HTTP_SECONDS, and the seconds they took."""
    if shutil.which("wrk"):
        return _wrk(url, body)
    return asyncio.run(_httpx_load(url, body))


def _wrk(url: str, body: str) -> tuple[Counter[int], float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = '{body}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {TOKEN}"\n'
        )
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{HTTP_SECONDS}s", "-s", script.name, url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    Path(script.name).unlink()
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    seconds = float(re.search(r"requests in ([\d.]+)s", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    failed = int(errors.group(1)) if errors else 0
    ok = 202 if "fire" in url else 200
    return Counter({ok: total - failed, 0: failed}), seconds


async def _httpx_load(url: str, body: str) -> tuple[Counter[int], float]:
    pools = [httpx.AsyncClient(limits=httpx.Limits(max_connections=4)) for _ in range(8)]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    statuses: Counter[int] = Counter()
    deadline = time.perf_counter() + HTTP_SECONDS
    started = time.perf_counter()

    async def client(pool: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            statuses[(await pool.post(url, content=body, headers=headers)).status_code] += 1

    await asyncio.gather(*(client(pools[i % len(pools)]) for i in range(CONNECTIONS)))
    seconds = time.perf_counter() - started
    for pool in pools:
        await pool.aclose()
    return statuses, seconds


def _wait_idle(service: Service) -> None:
    while service.orchestrator.active_runs():
        time.sleep(0.05)
