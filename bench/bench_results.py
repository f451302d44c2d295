"""Persisted results: what dp costs per task beside the filesystem's own limit, and the
Parquet codec beside pandas.

- **Per no-op task, results on disk** (`bench.workloads` W1 / W2 / W3, in-process executor,
  `FilesystemIOManager`, results written behind): beside the physical limit, a baseline that
  writes the same results with plain `pickle.dump` into a temporary file and `os.replace`
  into the same layout (`{base}/{run}/{task}/output.pkl`), one after another, and nothing
  else (target <= 1.3x). Beside it, for scale: Dagster's in-process executor with its
  filesystem IO manager (target dp <= 0.05x; only when `dagster` is installed) and Dask's
  threaded scheduler, which persists nothing.
- **Parquet codec**: a 1,000,000-row DataFrame saved and loaded through
  `FilesystemIOManager(frames="parquet")` beside `df.to_parquet` / `pd.read_parquet` on the
  same disk (target <= 1.1x).

Each figure is the median of rounds in which dp and its baseline alternate.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench._harness import Report
from bench.bench_engine import (
    Timer,
    _alternate,
    _dask_threaded,
    _dp_timer,
    _event_loop,
    _guarded,
    _in_process,
    _per_task_row,
    _places,
    _row,
    _sync_timer,
    _Workload,
    _workload,
)
from bench.workloads import WORKLOADS, dask_graph
from dp.engine import Orchestrator
from dp.io import FilesystemIOManager

PERSISTED = "results: per no-op task, results persisted (wall time / tasks)"
PARQUET = "results: Parquet codec, 1,000,000-row DataFrame save + load"
ROUNDS = 7
DAGSTER_ROUNDS = 2
PARQUET_ROUNDS = 5
PARQUET_ROWS = 1_000_000


def run(report: Report) -> None:
    workloads = [_workload(name, make()) for name, make in WORKLOADS.items()]
    _guarded(report, PERSISTED, "dp vs pickle.dump + os.replace", _vs_raw, workloads)
    _guarded(report, PERSISTED, "dp vs Dagster", _vs_dagster, workloads)
    _guarded(report, PARQUET, "Parquet codec", _parquet)


# --- dp vs the filesystem's limit -------------------------------------------------------------


def _vs_raw(report: Report, workloads: list[_Workload]) -> None:
    dask_get, dask_threads, missing = _dask_threaded()
    for where, (label, parent) in _places().items():
        with (
            tempfile.TemporaryDirectory(prefix="dp-bench-results-", dir=parent) as tmp,
            _event_loop() as loop,
        ):
            orchestrator = Orchestrator(
                io_manager=FilesystemIOManager(os.path.join(tmp, "dp")), executor=_in_process()
            )
            try:
                for w in workloads:
                    raw = os.path.join(tmp, "raw")
                    times = _alternate(
                        {"dp": _dp_timer(loop, orchestrator, w.plan), "base": _raw_timer(raw, w)},
                        ROUNDS,
                    )
                    _per_task_row(
                        report,
                        f"{w.name} in-process, FilesystemIOManager on {where} {label}",
                        w,
                        times,
                        "pickle.dump to a temporary file + os.replace, same layout",
                        None,
                        target="<= 1.3x",
                        section=PERSISTED,
                    )
                    if dask_get is not None and where == "disk":
                        graph, keys = dask_graph(w.registry), [m.name for m in w.registry]
                        dask = _alternate(
                            {
                                "dp": _dp_timer(loop, orchestrator, w.plan),
                                "base": _sync_timer(lambda g=graph, k=keys: dask_get(g, k)),
                            },
                            ROUNDS,
                        )
                        _per_task_row(
                            report,
                            f"{w.name} in-process, FilesystemIOManager on {where} {label}",
                            w,
                            dask,
                            f"Dask threaded scheduler ({dask_threads} threads), persists nothing",
                            missing,
                            target="for scale",
                            section=PERSISTED,
                        )
            finally:
                loop.run_until_complete(orchestrator.shutdown())


def _raw_timer(base: str, workload: _Workload) -> Timer:
    """Writes every task's result (what a no-op task returns) as dp's layout would hold it,
    with nothing but `pickle.dump` into a temporary file and `os.replace`, in plan order."""
    order = list(workload.plan.execution_order)
    runs = iter(range(1 << 30))

    def timer() -> float:
        run_dir = os.path.join(base, f"run_{next(runs)}")
        start = time.perf_counter()
        os.makedirs(run_dir)
        for name in order:
            folder = os.path.join(run_dir, name)
            os.mkdir(folder)
            tmp = os.path.join(folder, ".output.tmp")
            with open(tmp, "wb") as file:
                pickle.dump(1, file, pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, os.path.join(folder, "output.pkl"))
        seconds = time.perf_counter() - start
        shutil.rmtree(run_dir)
        return seconds

    return timer


# --- dp vs Dagster ----------------------------------------------------------------------------


def _vs_dagster(report: Report, workloads: list[_Workload]) -> None:
    try:
        import dagster
    except ImportError:
        for w in workloads:
            _per_task_row(
                report,
                f"{w.name} in-process, FilesystemIOManager on disk",
                w,
                {},
                "Dagster in-process executor + fs_io_manager",
                "Dagster not installed: pip install dagster",
                target="<= 0.05x",
                section=PERSISTED,
            )
        return
    logging.getLogger("dagster").setLevel(logging.ERROR)
    with (
        tempfile.TemporaryDirectory(prefix="dp-bench-results-") as tmp,
        _event_loop() as loop,
    ):
        orchestrator = Orchestrator(
            io_manager=FilesystemIOManager(os.path.join(tmp, "dp")), executor=_in_process()
        )
        instance = dagster.DagsterInstance.ephemeral()
        try:
            for w in workloads:
                job = _dagster_job(w, os.path.join(tmp, "dagster"))
                config = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

                def dagster_run(job: Any = job, config: Any = config) -> None:
                    result = job.execute_in_process(instance=instance, run_config=config)
                    if not result.success:
                        raise RuntimeError("the Dagster run failed")

                times = _alternate(
                    {"dp": _dp_timer(loop, orchestrator, w.plan), "base": _sync_timer(dagster_run)},
                    DAGSTER_ROUNDS,
                )
                _per_task_row(
                    report,
                    f"{w.name} in-process, FilesystemIOManager on disk",
                    w,
                    times,
                    f"Dagster {dagster.__version__} in-process executor + fs_io_manager",
                    None,
                    target="<= 0.05x",
                    section=PERSISTED,
                )
        finally:
            loop.run_until_complete(orchestrator.shutdown())
            instance.dispose()


def _dagster_job(workload: _Workload, base: str) -> Any:
    """The workload as a Dagster job of no-op ops, results through `fs_io_manager`."""
    from dagster import (
        DependencyDefinition,
        GraphDefinition,
        In,
        OpDefinition,
        Out,
        Output,
        fs_io_manager,
        in_process_executor,
    )

    def compute(context, inputs):
        # Dagster refuses a `context` annotated otherwise than with its own context types
        yield Output(1, "result")

    ops, dependencies = [], {}
    for meta in workload.registry:
        deps = list(meta.dependencies)
        ops.append(
            OpDefinition(
                name=meta.name,
                ins={d: In() for d in deps},
                outs={"result": Out()},
                compute_fn=compute,
            )
        )
        dependencies[meta.name] = {d: DependencyDefinition(d, "result") for d in deps}
    graph = GraphDefinition(
        name=f"dp_bench_{workload.name}", node_defs=ops, dependencies=dependencies
    )
    return graph.to_job(
        resource_defs={"io_manager": fs_io_manager.configured({"base_dir": base})},
        executor_def=in_process_executor,
    )


# --- the Parquet codec ------------------------------------------------------------------------


def _parquet(report: Report) -> None:
    try:
        import numpy as np
        import pandas as pd
        import pyarrow  # noqa: F401
    except ImportError as exc:
        report.add(
            PARQUET,
            f"1M-row DataFrame [{exc.name} not installed: pip install 'dp[parquet]']",
            float("nan"),
            "ms",
        )
        return
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "id": np.arange(PARQUET_ROWS, dtype="int64"),
            "amount": rng.random(PARQUET_ROWS),
            "region": rng.choice(["eu", "us", "apac", "latam"], PARQUET_ROWS),
            "day": pd.date_range("2025-01-01", periods=PARQUET_ROWS, freq="s"),
        }
    )
    with tempfile.TemporaryDirectory(prefix="dp-bench-parquet-") as tmp:
        io = FilesystemIOManager(os.path.join(tmp, "dp"), frames="parquet")
        counter = iter(range(1 << 30))

        def dp_pair() -> None:
            rid = f"r{next(counter)}"
            io.save("run", "frame", rid, frame)
            pd.testing.assert_frame_equal(io.load("run", "frame", rid), frame, check_exact=False)
            io.store.delete(f"run/frame/{rid}.parquet")

        def raw_pair() -> None:
            path = os.path.join(tmp, f"raw{next(counter)}.parquet")
            frame.to_parquet(path)
            pd.testing.assert_frame_equal(pd.read_parquet(path), frame, check_exact=False)
            os.unlink(path)

        times = _alternate({"dp": _timed(dp_pair), "base": _timed(raw_pair)}, PARQUET_ROUNDS)
        _row(
            report,
            PARQUET,
            "FilesystemIOManager(frames='parquet') save + load (+ equality check in both)",
            times,
            lambda seconds: seconds * 1e3,
            "ms",
            "df.to_parquet + pd.read_parquet, same disk",
            None,
            target="<= 1.1x",
            higher_is_better=False,
        )


def _timed(fn: Callable[[], None]) -> Timer:
    return _sync_timer(fn)
