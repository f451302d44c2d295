"""The Celery executor's per-task cost on W1, W2 and W3 (bench.workloads), with two
`dp worker` processes (one pool process each), beside raw Celery canvas on the same Redis with
two plain Celery workers for the same DAGs (a chord for W1, a chain for W2, one group per level
for W3), and beside dp's process executor with 2 workers.

Every variant runs the same no-op task; dp's variants also save every result and load every
input through a FilesystemIOManager in a temporary folder (on tmpfs when /dev/shm exists), as
a real run does, where raw Celery passes nothing (`.si()` signatures) and keeps only its own
result backend. Variants run in turn every round (alternating), figures are medians.

Needs redis-server on the PATH (Debian: apt-get install redis-server).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench._harness import Report, alternate
from bench.workloads import WORKLOADS
from dp import DAGBuilder, Planner, TaskRegistry
from dp.engine import Orchestrator
from dp.io import FilesystemIOManager
from dp.planner import ExecutionPlan

SECTION = "celery: per-task cost, 2 workers x 1 process"
ROUNDS = 5
RUN_TIMEOUT = 300.0
ROOT = Path(__file__).resolve().parent.parent
DP = str(Path(sys.executable).with_name("dp"))


def run(report: Report) -> None:
    if shutil.which("redis-server") is None:
        report.console.print("[red]bench_celery: redis-server is not installed[/]")
        return
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dp-bench-celery-")))
        fast = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp
        results = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=fast)))
        port = stack.enter_context(_redis(tmp))
        dp_broker, raw_broker = f"redis://127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/1"
        env = {
            "DP_CELERY_BROKER_URL": dp_broker,
            "DP_RESULTS_URL": f"file://{results / 'celery'}",
            "DP_STORE_URL": "memory://",
            "DP_BENCH_RAW_BROKER": raw_broker,
        }
        stack.enter_context(_workers([DP, "worker", "bench/workloads.py", "-c", "1"], env, tmp))
        stack.enter_context(
            _workers(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "bench.celery_raw",
                    "worker",
                    "-c",
                    "1",
                    "-l",
                    "info",
                ],
                env,
                tmp,
            )
        )
        os.environ["DP_BENCH_RAW_BROKER"] = raw_broker
        from bench import celery_raw
        from dp.engine.celery_executor import CeleryExecutor
        from dp.engine.process import ProcessExecutor

        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        celery = Orchestrator(
            io_manager=FilesystemIOManager(results / "celery"),
            executor=CeleryExecutor(dp_broker),
        )
        process = Orchestrator(
            io_manager=FilesystemIOManager(results / "process"),
            executor=ProcessExecutor(workers=2),
        )
        for orchestrator in (celery, process):
            stack.callback(
                lambda o=orchestrator: loop.run_until_complete(asyncio.wait_for(o.shutdown(), 30))
            )
        w1_seconds: dict[str, float] = {}
        for name, make in WORKLOADS.items():
            registry = make()
            plan = Planner(DAGBuilder(registry)).create_execution_plan()
            tasks = len(plan.execution_order)
            times = alternate(
                {
                    "dp celery": _dp_timer(loop, celery, plan),
                    "raw celery": _raw(celery_raw.noop, name, registry),
                    "dp process": _dp_timer(loop, process, plan),
                },
                ROUNDS,
            )
            if name == "W1":
                w1_seconds = times
            per_task = {k: v / tasks * 1e6 for k, v in times.items()}
            report.add(
                SECTION,
                f"{name} ({tasks:,} tasks) dp celery executor",
                per_task["dp celery"],
                "µs/task",
                baseline_name=f"raw Celery {_CANVAS[name]}",
                baseline=per_task["raw celery"],
                higher_is_better=False,
            )
            report.add(
                SECTION,
                f"{name} ({tasks:,} tasks) dp celery executor",
                per_task["dp celery"],
                "µs/task",
                baseline_name="dp process executor, 2 workers",
                baseline=per_task["dp process"],
                higher_is_better=False,
            )
        tasks = len(WORKLOADS["W1"]().as_dict())
        report.add(
            SECTION,
            "W1 dp celery executor throughput",
            tasks / w1_seconds["dp celery"],
            "tasks/s",
            baseline_name="raw Celery chord",
            baseline=tasks / w1_seconds["raw celery"],
        )
        report.add(
            SECTION,
            "W1 dp celery executor throughput",
            tasks / w1_seconds["dp celery"],
            "tasks/s",
            baseline_name="dp process executor, 2 workers",
            baseline=tasks / w1_seconds["dp process"],
        )


_CANVAS = {"W1": "chord", "W2": "chain", "W3": "group per level"}


def _dp_timer(
    loop: asyncio.AbstractEventLoop, orchestrator: Orchestrator, plan: ExecutionPlan
) -> Callable[[], None]:
    """One `start_pipeline` run (its results cleared afterwards, in the timed part: small)."""

    def once() -> None:
        result = loop.run_until_complete(
            asyncio.wait_for(orchestrator.start_pipeline(plan), RUN_TIMEOUT)
        )
        if not result.ok:
            raise RuntimeError(f"dp run failed: {result.error or result.statuses()}")
        orchestrator.io_manager.clear_run(result.run_id)

    return once


def _raw(noop: Any, name: str, registry: TaskRegistry) -> Callable[[], None]:
    """The same DAG as raw Celery canvas of no-op signatures, waited for to the end."""
    from celery import chain, chord, group

    metas = list(registry)
    if name == "W1":
        fan = [noop.si() for meta in metas if meta.name.startswith("fan_")]

        def w1() -> None:
            (noop.si() | chord(fan, noop.si())).apply_async().get(timeout=RUN_TIMEOUT)

        return w1
    if name == "W2":

        def w2() -> None:
            chain(noop.si() for _ in metas).apply_async().get(timeout=RUN_TIMEOUT)

        return w2
    levels: dict[str, list[str]] = {}
    for meta in metas:
        levels.setdefault(meta.name.partition("_")[0], []).append(meta.name)

    def w3() -> None:
        for names in levels.values():
            group(noop.si() for _ in names).apply_async().get(timeout=RUN_TIMEOUT)

    return w3


@contextlib.contextmanager
def _redis(directory: Path) -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""],
        cwd=directory,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        yield port
    finally:
        server.terminate()
        server.wait(10)


@contextlib.contextmanager
def _workers(command: list[str], env: dict[str, str], directory: Path) -> Iterator[None]:
    """Two worker processes running `command`, each in its own session; ready when both log
    `ready.`."""
    processes, logs = [], []

    def node(index: int) -> list[str]:  # raw Celery workers on one host need distinct names
        return ["-n", f"raw{index}-{os.getpid()}@%h"] if "celery" in command[:3] else []

    for index in range(2):
        log = directory / f"{Path(command[0]).name}-{len(command)}-{index}.log"
        with log.open("wb") as out:
            processes.append(
                subprocess.Popen(
                    [*command, *node(index)],
                    cwd=ROOT,
                    env={**os.environ, **env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        logs.append(log)
    try:
        deadline = time.monotonic() + 120
        for process, log in zip(processes, logs, strict=True):
            while "ready." not in log.read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
