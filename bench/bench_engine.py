"""Engine speed: per-task overhead and run start latency, each beside Dask or Hamilton.

Per-task overhead is the wall time of a whole run divided by its number of tasks, on the no-op
workloads of `bench.workloads`: W1 (1 root -> 1,000 tasks -> 1 sink), W2 (a chain of 200) and
W3 (10 levels x 100 tasks, each depending on 2 of the level before). Plans, Dask graph dicts
and Hamilton drivers are built once; executors and the Dask cluster are started and warmed up
once; only runs are timed.

- dp persists every result through `FilesystemIOManager` in a fresh temporary directory (on
  tmpfs, and for the in-process executor also on disk, whose speed on a shared VM varies) or,
  inline, through `InMemoryIOManager`. Dask keeps its results in memory and is asked for every
  key (dp keeps every result too); Hamilton is asked for the final nodes, as its users do.
- Each figure is the median of several rounds in which dp and its baseline alternate (and swap
  who goes first), so drift in a noisy machine's speed hits both alike.

Run start latency is the time from the `start_pipeline` call to the first line of the task's
function (the task returns `time.perf_counter()`, a clock shared by local processes), p50 over
many runs on warm executors, beside the time `loop.run_in_executor` takes to start a function
on a thread, and a `multiprocessing` Pipe round trip to a child process.

Dask and Hamilton are bench-only dependencies (`pip install -e '.[bench]'`); without them dp's
figures are still printed, with a row saying what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from rich.markup import escape

from bench._harness import Report
from bench.workloads import (
    WORKLOADS,
    dask_graph,
    final_tasks,
    hamilton_module,
    pipe_echo,
    stamp,
    stamp_registry,
)
from dp import DAGBuilder, Planner, TaskRegistry
from dp.engine import Orchestrator
from dp.io import FilesystemIOManager, InMemoryIOManager
from dp.planner import ExecutionPlan

OVERHEAD = "engine: per-task overhead (no-op tasks, wall time / tasks)"
LATENCY = "engine: run start latency (start_pipeline -> task function starts)"
MEMORY = "engine: peak RSS, W1 with 1 MB results, in-process executor, results on disk"
NOT_INSTALLED = "not installed: pip install -e '.[bench]'"

#: alternating rounds per figure (after one warm-up round each)
THREAD_ROUNDS = 9
DISK_ROUNDS = 9
PROCESS_ROUNDS = 7
INLINE_ROUNDS = 11
LATENCY_RUNS = 50
LATENCY_WARMUP = 5
#: a run that takes longer than this has hung (the bench reports it and goes on)
RUN_TIMEOUT = 120.0

#: runs once and returns the seconds it took (any setup and cleanup left out)
Timer = Callable[[], float]


@dataclass(frozen=True)
class _Workload:
    name: str
    registry: TaskRegistry
    plan: ExecutionPlan

    @property
    def tasks(self) -> int:
        return len(self.plan.execution_order)


def run(report: Report) -> None:
    _quiet_dask()
    workloads = [_workload(name, make()) for name, make in WORKLOADS.items()]
    places = _places()
    fast = next(iter(places.items()))  # tmpfs when there is one
    _guarded(report, OVERHEAD, "in-process vs Dask threaded", _threads_vs_dask, workloads, places)
    _guarded(report, OVERHEAD, "in-process in memory vs Dask", _memory_vs_dask, workloads)
    _guarded(
        report, OVERHEAD, "process vs Dask distributed", _processes_vs_distributed, workloads, fast
    )
    _guarded(report, OVERHEAD, "inline vs Hamilton", _inline_vs_hamilton, workloads)
    _guarded(report, LATENCY, "start latency", _start_latency, fast)
    _guarded(report, MEMORY, "peak RSS", _peak_rss)


# --- in-process executor vs Dask's threaded scheduler ----------------------------------------


def _threads_vs_dask(
    report: Report, workloads: list[_Workload], places: dict[str, tuple[str, str]]
) -> None:
    dask_get, dask_threads, missing = _dask_threaded()
    for where, (label, parent) in places.items():
        with (
            tempfile.TemporaryDirectory(prefix="dp-bench-engine-", dir=parent) as tmp,
            _event_loop() as loop,
        ):
            orchestrator = Orchestrator(io_manager=FilesystemIOManager(tmp), executor=_in_process())
            threads = getattr(orchestrator.executor, "max_threads", "?")
            try:
                for w in workloads:
                    variants = {"dp": _dp_timer(loop, orchestrator, w.plan)}
                    if dask_get is not None:
                        graph, keys = dask_graph(w.registry), [m.name for m in w.registry]
                        variants["base"] = _sync_timer(lambda g=graph, k=keys: dask_get(g, k))
                    times = _alternate(variants, THREAD_ROUNDS if where == "tmpfs" else DISK_ROUNDS)
                    _per_task_row(
                        report,
                        f"{w.name} in-process executor ({threads} threads), FilesystemIOManager "
                        f"on {where} {label}",
                        w,
                        times,
                        f"Dask threaded scheduler, {dask_threads} threads, all keys",
                        missing,
                        target="<= 0.7x Dask threaded",
                    )
            finally:
                loop.run_until_complete(orchestrator.shutdown())


def _memory_vs_dask(report: Report, workloads: list[_Workload]) -> None:
    dask_get, dask_threads, missing = _dask_threaded()
    with _event_loop() as loop:
        orchestrator = Orchestrator(io_manager=InMemoryIOManager(), executor="inprocess")
        threads = getattr(orchestrator.executor, "max_threads", "?")
        try:
            for w in workloads:
                variants = {"dp": _dp_timer(loop, orchestrator, w.plan)}
                if dask_get is not None:
                    graph, keys = dask_graph(w.registry), [m.name for m in w.registry]
                    variants["base"] = _sync_timer(lambda g=graph, k=keys: dask_get(g, k))
                times = _alternate(variants, THREAD_ROUNDS)
                _per_task_row(
                    report,
                    f"{w.name} in-process executor ({threads} threads), InMemoryIOManager",
                    w,
                    times,
                    f"Dask threaded scheduler, {dask_threads} threads, all keys",
                    missing,
                    target="<= 0.3x Dask threaded",
                )
        finally:
            loop.run_until_complete(orchestrator.shutdown())


def _in_process() -> Any:
    """The in-process executor with results written behind (dp 0.1 has no such option)."""
    from dp.engine import InProcessExecutor

    try:
        return InProcessExecutor(write_behind=True)
    except TypeError:
        return InProcessExecutor()


def _dask_threaded() -> tuple[Callable[..., Any] | None, int, str | None]:
    try:
        import dask.system
        import dask.threaded
    except ImportError:
        return None, 0, f"Dask {NOT_INSTALLED}"
    return dask.threaded.get, dask.system.CPU_COUNT, None


# --- process executor vs Dask distributed ----------------------------------------------------


def _processes_vs_distributed(
    report: Report, workloads: list[_Workload], place: tuple[str, str]
) -> None:
    where, (label, parent) = place
    with contextlib.ExitStack() as stack:
        client, missing = _dask_client(stack)
        loop = stack.enter_context(_event_loop())
        tmp = stack.enter_context(
            tempfile.TemporaryDirectory(prefix="dp-bench-engine-", dir=parent)
        )
        orchestrator: Orchestrator | None = None
        dp_error: str | None = None
        try:
            from dp.engine.process import ProcessExecutor

            orchestrator = Orchestrator(
                io_manager=FilesystemIOManager(tmp), executor=ProcessExecutor(workers=2)
            )
        except Exception as exc:  # the process executor may be half-built: report, go on
            dp_error = _describe(exc)
            _print_failure(report, "dp.engine.process.ProcessExecutor", exc)
        try:
            w1_times: dict[str, float | str] = {}
            for w in workloads:
                variants: dict[str, Timer] = {}
                if orchestrator is not None:
                    variants["dp"] = _dp_timer(loop, orchestrator, w.plan)
                if client is not None:
                    graph, keys = dask_graph(w.registry), [m.name for m in w.registry]
                    variants["base"] = _sync_timer(lambda g=graph, k=keys: client.get(g, k))
                times = _alternate(variants, PROCESS_ROUNDS)
                if dp_error is not None:
                    times["dp"] = dp_error
                if w.name == "W1":
                    w1_times = times
                _per_task_row(
                    report,
                    f"{w.name} process executor (2 workers), FilesystemIOManager on {where} "
                    f"{label}",
                    w,
                    times,
                    "Dask distributed LocalCluster, 2 worker processes x 1 thread",
                    missing,
                    target="<= 0.1x Dask distributed",
                )
            if w1_times:
                w1 = next(w for w in workloads if w.name == "W1")
                _row(
                    report,
                    OVERHEAD,
                    "W1 process executor (2 workers) throughput",
                    w1_times,
                    lambda seconds: w1.tasks / seconds,
                    "tasks/s",
                    "Dask distributed LocalCluster, 2 worker processes x 1 thread",
                    missing,
                    target=">= 5,000 tasks/s, > Dask distributed",
                    higher_is_better=True,
                )
        finally:
            if orchestrator is not None:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(asyncio.wait_for(orchestrator.shutdown(), 30))


def _dask_client(stack: contextlib.ExitStack) -> tuple[Any | None, str | None]:
    """A client of a 2-process local Dask cluster, closed with `stack`, and warmed up."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        return None, f"Dask distributed {NOT_INSTALLED}"
    try:
        cluster = stack.enter_context(
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        )
        client = stack.enter_context(Client(cluster))
        client.get(dask_graph(WORKLOADS["W2"](10)), ["step_9"])
    except Exception as exc:
        return None, f"Dask distributed could not start ({_describe(exc)})"
    return client, None


# --- inline executor vs Hamilton --------------------------------------------------------------


def _inline_vs_hamilton(report: Report, workloads: list[_Workload]) -> None:
    try:
        from hamilton import driver
    except ImportError:
        driver, missing = None, f"Hamilton (apache-hamilton) {NOT_INSTALLED}"
    else:
        missing = None
    with _event_loop() as loop:
        orchestrator = Orchestrator(io_manager=InMemoryIOManager(), executor="inline")
        try:
            for w in workloads:
                variants = {"dp": _dp_timer(loop, orchestrator, w.plan)}
                if driver is not None:
                    module = hamilton_module(w.registry, f"_dp_bench_hamilton_{w.name}")
                    dr = driver.Builder().with_modules(module).build()
                    finals = final_tasks(w.registry)
                    variants["base"] = _sync_timer(lambda dr=dr, f=finals: dr.execute(f))
                times = _alternate(variants, INLINE_ROUNDS)
                _per_task_row(
                    report,
                    f"{w.name} inline executor, InMemoryIOManager",
                    w,
                    times,
                    "Hamilton driver.execute(final nodes)",
                    missing,
                    target="<= 1.0x Hamilton",
                )
        finally:
            loop.run_until_complete(orchestrator.shutdown())


# --- run start latency -----------------------------------------------------------------------


def _start_latency(report: Report, place: tuple[str, str]) -> None:
    where, (_, parent) = place
    plan = _workload("stamp", stamp_registry()).plan
    with (
        tempfile.TemporaryDirectory(prefix="dp-bench-engine-", dir=parent) as tmp,
        _event_loop() as loop,
    ):
        io = FilesystemIOManager(tmp)
        for name, executor in (("inline", "inline"), ("in-process", "inprocess")):
            orchestrator = Orchestrator(io_manager=io, executor=executor)
            try:
                dp, threads = loop.run_until_complete(
                    _interleaved(_dp_start(orchestrator, plan), _thread_start)
                )
            finally:
                loop.run_until_complete(orchestrator.shutdown())
            _latency_row(
                report,
                f"{name} executor, FilesystemIOManager on {where}",
                dp,
                threads,
                "loop.run_in_executor(None, f) starts f",
            )
        _process_start_latency(report, loop, plan, io, where)


def _process_start_latency(
    report: Report, loop: asyncio.AbstractEventLoop, plan: ExecutionPlan, io: Any, where: str
) -> None:
    name = f"process executor (2 warm workers), FilesystemIOManager on {where}"
    baseline_name = "multiprocessing Pipe send+recv round trip"
    with _pipe_child() as round_trip:
        try:
            from dp.engine.process import ProcessExecutor

            orchestrator = Orchestrator(io_manager=io, executor=ProcessExecutor(workers=2))
        except Exception as exc:
            _print_failure(report, "dp.engine.process.ProcessExecutor", exc)
            pipe = [round_trip() for _ in range(LATENCY_RUNS)]
            _latency_row(report, name, _describe(exc), pipe, baseline_name)
            return
        try:
            dp, pipe = loop.run_until_complete(
                asyncio.wait_for(
                    _interleaved(_dp_start(orchestrator, plan), _as_async(round_trip)),
                    RUN_TIMEOUT,
                )
            )
        except Exception as exc:
            _print_failure(report, name, exc)
            pipe = [round_trip() for _ in range(LATENCY_RUNS)]
            _latency_row(report, name, _describe(exc), pipe, baseline_name)
        else:
            _latency_row(report, name, dp, pipe, baseline_name)
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.wait_for(orchestrator.shutdown(), 30))


async def _interleaved(
    dp: Callable[[], Coroutine[Any, Any, float]],
    baseline: Callable[[], Coroutine[Any, Any, float]],
) -> tuple[list[float], list[float]]:
    """Latency samples of dp and its baseline, taken alternately after a few warm-ups (no
    `gc.collect()` in between: it would leave both to start on cold caches)."""
    dp_samples: list[float] = []
    base_samples: list[float] = []
    for i in range(LATENCY_WARMUP + LATENCY_RUNS):
        first, second = (dp, baseline) if i % 2 == 0 else (baseline, dp)
        a = await first()
        b = await second()
        d, s = (a, b) if i % 2 == 0 else (b, a)
        if i >= LATENCY_WARMUP:
            dp_samples.append(d)
            base_samples.append(s)
    return dp_samples, base_samples


def _dp_start(
    orchestrator: Orchestrator, plan: ExecutionPlan
) -> Callable[[], Coroutine[Any, Any, float]]:
    io = orchestrator.io_manager

    async def sample() -> float:
        start = time.perf_counter()
        result = await orchestrator.start_pipeline(plan)
        if not result.ok:
            raise RuntimeError(_run_failure(result))
        task = result.task("stamp")
        started = io.load(result.run_id, "stamp", task.result_ids[0])
        io.clear_run(result.run_id)
        return started - start

    return sample


async def _thread_start() -> float:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    started = await loop.run_in_executor(None, stamp)
    return started - start


@contextlib.contextmanager
def _pipe_child() -> Iterator[Callable[[], float]]:
    """A child process echoing over a Pipe; yields a function timing one round trip."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    mine, theirs = context.Pipe()
    child = context.Process(target=pipe_echo, args=(theirs,), name="dp-bench-echo", daemon=True)
    child.start()

    def round_trip() -> float:
        start = time.perf_counter()
        mine.send(b"x")
        if not mine.poll(RUN_TIMEOUT):
            raise TimeoutError(f"the echo child process {child.pid} did not answer")
        mine.recv()
        return time.perf_counter() - start

    try:
        for _ in range(LATENCY_WARMUP):
            round_trip()
        yield round_trip
    finally:
        with contextlib.suppress(OSError):
            mine.send(None)
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join(1)
        mine.close()
        theirs.close()


def _as_async(fn: Callable[[], float]) -> Callable[[], Coroutine[Any, Any, float]]:
    async def call() -> float:
        return fn()

    return call


# --- peak memory ----------------------------------------------------------------------------

#: the child of `_peak_rss`: runs W1 with 1 MB results at a width, prints its peak RSS in KiB
#: (VmHWM: `ru_maxrss` would start from the forking parent's, which is preserved across exec)
_RSS_CHILD = """
import sys, tempfile
from bench.workloads import w1_megabytes
from dp import DAGBuilder, Orchestrator, Planner
from dp.io import FilesystemIOManager

width = int(sys.argv[1])
plan = Planner(DAGBuilder(w1_megabytes(width))).create_execution_plan() if width else None
with tempfile.TemporaryDirectory(prefix="dp-bench-rss-", dir=sys.argv[2]) as tmp:
    if plan is not None:
        io = FilesystemIOManager(tmp)
        from bench.bench_engine import _in_process
        result = Orchestrator(io_manager=io, executor=_in_process()).run(plan)
        if not result.ok:
            raise SystemExit(f"run ended {result.status.value}: {result.error}")
with open("/proc/self/status") as status:
    print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
"""


#: widths of W1 the peak RSS is measured at, and fresh processes per width (median)
RSS_WIDTHS = (125, 250, 500, 1000, 2000)
RSS_REPEATS = 3


def _peak_rss(report: Report) -> None:
    """Peak RSS of a fresh process running W1 with 1 MB results, at several widths (the
    median of `RSS_REPEATS` fresh processes each), beside the same process that only imports
    dp: the run's share must not grow with the width. Once with glibc's defaults, once with
    its mmap threshold fixed at 128 KiB (`MALLOC_MMAP_THRESHOLD_`), which keeps freed 1 MB
    buffers out of per-thread arenas: what differs is the allocator's, not dp's."""
    import subprocess
    import sys

    def rss(width: int, env: dict[str, str] | None = None) -> float:
        done = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, str(width), tempfile.gettempdir()],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            env={**os.environ, **(env or {})},
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
        return int(done.stdout.split()[-1]) / 1024

    def median_rss(width: int, env: dict[str, str] | None = None) -> float:
        return statistics.median(rss(width, env) for _ in range(RSS_REPEATS))

    idle = median_rss(0)
    fixed = {"MALLOC_MMAP_THRESHOLD_": "131072"}
    for label, env in (("glibc defaults", None), ("MALLOC_MMAP_THRESHOLD_=131072", fixed)):
        for width in RSS_WIDTHS:
            report.add(
                MEMORY,
                f"W1 with 1 MB results, {width + 2:,} tasks ({width:,} MB written), {label}, "
                f"median of {RSS_REPEATS} fresh processes",
                median_rss(width, env),
                "MiB",
                baseline_name="the same process importing dp, no run",
                baseline=idle,
                target="flat in the number of tasks",
                higher_is_better=False,
            )


# --- measuring -------------------------------------------------------------------------------


def _alternate(variants: dict[str, Timer], rounds: int, warmup: int = 1) -> dict[str, float | str]:
    """Median seconds of each variant over `rounds` rounds, run alternately (the order flips
    every round) after `warmup` rounds. A variant that raises is dropped from later rounds
    and its entry is the error's description."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    failed: dict[str, str] = {}
    names = list(variants)
    for i in range(warmup + rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            if name in failed:
                continue
            gc.collect()
            try:
                seconds = variants[name]()
            except Exception as exc:
                failed[name] = _describe(exc)
                continue
            if i >= warmup:
                samples[name].append(seconds)
    return {name: failed.get(name) or statistics.median(samples[name]) for name in names}


def _dp_timer(
    loop: asyncio.AbstractEventLoop, orchestrator: Orchestrator, plan: ExecutionPlan
) -> Timer:
    """Times one `start_pipeline` run on `loop` (kept between runs, so executors stay warm);
    the run's results are cleared afterwards, untimed."""
    io = orchestrator.io_manager

    async def once() -> tuple[float, Any]:
        start = time.perf_counter()
        result = await orchestrator.start_pipeline(plan)
        return time.perf_counter() - start, result

    def timer() -> float:
        seconds, result = loop.run_until_complete(asyncio.wait_for(once(), RUN_TIMEOUT))
        if not result.ok:
            raise RuntimeError(_run_failure(result))
        io.clear_run(result.run_id)
        return seconds

    return timer


def _sync_timer(fn: Callable[[], object]) -> Timer:
    def timer() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return timer


# --- reporting -------------------------------------------------------------------------------


def _per_task_row(
    report: Report,
    name: str,
    workload: _Workload,
    times: dict[str, float | str],
    baseline_name: str,
    missing: str | None,
    *,
    target: str,
    section: str = OVERHEAD,
) -> None:
    _row(
        report,
        section,
        f"{name}, {workload.tasks:,} tasks",
        times,
        lambda seconds: seconds / workload.tasks * 1e6,
        "µs/task",
        baseline_name,
        missing,
        target=target,
        higher_is_better=False,
    )


def _row(
    report: Report,
    section: str,
    name: str,
    times: dict[str, float | str],
    convert: Callable[[float], float],
    unit: str,
    baseline_name: str,
    missing: str | None,
    *,
    target: str,
    higher_is_better: bool,
) -> None:
    """One report row from `_alternate`'s medians; failures and missing baselines are named."""
    dp, base = times.get("dp"), times.get("base")
    value = float("nan")
    if isinstance(dp, float):
        value = convert(dp)
    elif dp is not None:
        name = f"{name} [dp FAILED: {dp}]"
    baseline: float | None = None
    if isinstance(base, float):
        baseline = convert(base)
    elif missing is not None:
        name = f"{name} [baseline {missing}]"
    elif base is not None:
        name = f"{name} [baseline {baseline_name} FAILED: {base}]"
    report.add(
        section,
        escape(name),  # rich would take "[dp FAILED: ...]" or ".[bench]" for markup
        value,
        unit,
        baseline_name=baseline_name,
        baseline=baseline,
        target=target,
        higher_is_better=higher_is_better,
    )


def _latency_row(
    report: Report, name: str, dp: list[float] | str, baseline: list[float], baseline_name: str
) -> None:
    value = float("nan")
    if isinstance(dp, str):
        name = f"{name} [dp FAILED: {dp}]"
    else:
        value = statistics.median(dp) * 1e6
    report.add(
        LATENCY,
        escape(f"{name}, p50 of {len(baseline)}"),
        value,
        "µs",
        baseline_name=baseline_name,
        baseline=statistics.median(baseline) * 1e6,
        higher_is_better=False,
    )


def _guarded(report: Report, section: str, what: str, fn: Callable[..., None], *args: Any) -> None:
    """Run one part of the bench; if it fails, print an error row and go on with the rest."""
    start = time.perf_counter()
    try:
        fn(report, *args)
    except Exception as exc:
        _print_failure(report, what, exc)
        report.add(section, escape(f"{what} [FAILED: {_describe(exc)}]"), float("nan"), "")
    report.console.print(f"[dim]{what}: {time.perf_counter() - start:.1f} s[/]")


def _print_failure(report: Report, what: str, exc: BaseException) -> None:
    report.console.print(f"[bold red]{what} failed:[/]")
    report.console.print(
        "".join(traceback.format_exception(exc, limit=-4)), markup=False, highlight=False
    )


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."


def _run_failure(result: Any) -> str:
    errors = [f"{t.task_name}: {t.error}" for t in result.tasks.values() if t.error]
    return f"run ended {result.status.value}: {'; '.join(errors[:3]) or result.error}"


# --- setup -----------------------------------------------------------------------------------


def _workload(name: str, registry: TaskRegistry) -> _Workload:
    return _Workload(name, registry, Planner(DAGBuilder(registry)).create_execution_plan())


def _places() -> dict[str, tuple[str, str]]:
    """Where result directories go: tmpfs (dp's own overhead) first, then the disk."""
    places = {}
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        places["tmpfs"] = ("(/dev/shm)", "/dev/shm")
    places["disk"] = (f"({tempfile.gettempdir()})", tempfile.gettempdir())
    return places


@contextlib.contextmanager
def _event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for a series of runs, so executors started on it stay started."""
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def _quiet_dask() -> None:
    """Dask and distributed log cluster life-cycle chatter at INFO/WARNING: keep errors only."""
    for name in ("distributed", "dask", "tornado"):
        logging.getLogger(name).setLevel(logging.ERROR)
