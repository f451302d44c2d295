"""IO manager throughput, each figure beside raw pickle files or a plain dict in the same run.

The variants are measured alternately, round after round, so that drift in the machine's disk
and CPU speed hits dp and its baseline alike; every round writes fresh files unless the figure
says "overwrite".
"""

from __future__ import annotations

import itertools
import os
import pickle
import tempfile
from typing import Any

from bench._harness import Report, alternate
from dp.io import FilesystemIOManager, InMemoryIOManager

SECTION = "io manager"
SMALL = {"orders": 12, "customers": 7, "refunds": 1, "region": 3}
PROTOCOL = pickle.HIGHEST_PROTOCOL


def run(report: Report) -> None:
    # tmpfs shows dp's own overhead; the disk figure depends on the machine's disk and its load.
    places = {"disk": tempfile.gettempdir()}
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        places["tmpfs"] = "/dev/shm"
    for where, parent in places.items():
        with tempfile.TemporaryDirectory(prefix="dp-bench-io-", dir=parent) as tmp:
            _filesystem_small(report, tmp, pairs=1000, where=f"{where} {parent}")
    with tempfile.TemporaryDirectory(prefix="dp-bench-io-") as tmp:
        _filesystem_overwrite(report, tmp, pairs=1000)
        _filesystem_durable(report, tmp, pairs=100)
        _filesystem_large(report, tmp)
    _memory(report, pairs=50_000)


def _raw_save_load(path: str, value: Any) -> None:
    with open(path, "wb") as file:
        pickle.dump(value, file, PROTOCOL)
    with open(path, "rb") as file:
        pickle.load(file)


def _filesystem_small(report: Report, tmp: str, pairs: int, where: str) -> None:
    base = os.path.join(tmp, "small")
    io = FilesystemIOManager(base)
    ids = [f"chunk_{i}" for i in range(pairs)]
    runs = itertools.count()

    def dp() -> None:
        run_id = f"run_{next(runs)}"
        for result_id in ids:
            io.save(run_id, "extract", result_id, SMALL)
            io.load(run_id, "extract", result_id)

    def raw() -> None:
        task_dir = f"{base}/raw_{next(runs)}/extract"
        os.makedirs(task_dir)
        for result_id in ids:
            _raw_save_load(f"{task_dir}/{result_id}.pkl", SMALL)

    t = alternate({"dp": dp, "raw": raw}, rounds=5)
    report.add(
        SECTION,
        f"FilesystemIOManager save+load, small dict, {where}",
        pairs / t["dp"],
        "pairs/s",
        baseline_name="pickle.dump/load with open()",
        baseline=pairs / t["raw"],
        target=">= 5,000 pairs/s",
    )


def _filesystem_overwrite(report: Report, tmp: str, pairs: int) -> None:
    base = os.path.join(tmp, "overwrite")
    io = FilesystemIOManager(base)
    ids = [f"chunk_{i}" for i in range(pairs)]
    raw_dir = f"{base}/raw/extract"
    os.makedirs(raw_dir)

    def dp() -> None:
        for result_id in ids:
            io.save("run", "extract", result_id, SMALL)
            io.load("run", "extract", result_id)

    def raw() -> None:
        for result_id in ids:
            _raw_save_load(f"{raw_dir}/{result_id}.pkl", SMALL)

    t = alternate({"dp": dp, "raw": raw}, rounds=5)
    report.add(
        SECTION,
        "FilesystemIOManager save+load, overwriting",
        pairs / t["dp"],
        "pairs/s",
        baseline_name="pickle.dump/load over the same files",
        baseline=pairs / t["raw"],
    )


def _filesystem_durable(report: Report, tmp: str, pairs: int) -> None:
    base = os.path.join(tmp, "durable")
    io = FilesystemIOManager(base, durable=True)
    ids = [f"chunk_{i}" for i in range(pairs)]
    runs = itertools.count()

    def dp() -> None:
        run_id = f"run_{next(runs)}"
        for result_id in ids:
            io.save(run_id, "extract", result_id, SMALL)
            io.load(run_id, "extract", result_id)

    def raw() -> None:
        task_dir = f"{base}/raw_{next(runs)}/extract"
        os.makedirs(task_dir)
        for result_id in ids:
            path = f"{task_dir}/{result_id}.pkl"
            with open(path, "wb") as file:
                pickle.dump(SMALL, file, PROTOCOL)
                file.flush()
                os.fsync(file.fileno())
            with open(path, "rb") as file:
                pickle.load(file)

    t = alternate({"dp": dp, "raw": raw}, rounds=3)
    report.add(
        SECTION,
        "FilesystemIOManager(durable=True) save+load",
        pairs / t["dp"],
        "pairs/s",
        baseline_name="pickle.dump + fsync(file) / load",
        baseline=pairs / t["raw"],
    )


def _filesystem_large(report: Report, tmp: str) -> None:
    try:
        import numpy as np
        import pandas as pd
    except ImportError:  # pandas is a dev/examples extra; the other figures still stand
        return
    rows = 1_000_000
    frame = pd.DataFrame({"amount": np.arange(rows, dtype="float64"), "store": np.arange(rows)})
    megabytes = frame.memory_usage(index=False).sum() / 1e6
    base = os.path.join(tmp, "large")
    io = FilesystemIOManager(base)
    raw_path = f"{base}/raw.pkl"
    os.makedirs(base)
    runs = itertools.count()

    def dp() -> None:
        run_id = f"run_{next(runs)}"
        io.save(run_id, "extract", "frame", frame)
        io.load(run_id, "extract", "frame")
        io.clear_run(run_id)

    def raw() -> None:
        _raw_save_load(raw_path, frame)
        os.unlink(raw_path)

    t = alternate({"dp": dp, "raw": raw}, rounds=5)
    report.add(
        SECTION,
        f"FilesystemIOManager save+load, {megabytes:.0f} MB DataFrame",
        megabytes / t["dp"],
        "MB/s",
        baseline_name="pickle.dump/load with open()",
        baseline=megabytes / t["raw"],
    )


def _memory(report: Report, pairs: int) -> None:
    ids = [f"chunk_{i}" for i in range(pairs)]
    plain = InMemoryIOManager()
    copying = InMemoryIOManager(copy=True)
    store: dict[tuple[str, str, str], Any] = {}

    def dp_plain() -> None:
        for result_id in ids:
            plain.save("run", "extract", result_id, SMALL)
            plain.load("run", "extract", result_id)

    def dp_copy() -> None:
        for result_id in ids:
            copying.save("run", "extract", result_id, SMALL)
            copying.load("run", "extract", result_id)

    def dict_plain() -> None:
        for result_id in ids:
            store["run", "extract", result_id] = SMALL
            store["run", "extract", result_id]  # the lookup is what is measured

    def dict_copy() -> None:
        for result_id in ids:
            store["run", "extract", result_id] = pickle.dumps(SMALL, PROTOCOL)
            pickle.loads(store["run", "extract", result_id])

    t = alternate(
        {"plain": dp_plain, "dict": dict_plain, "copy": dp_copy, "dict_copy": dict_copy},
        rounds=5,
    )
    report.add(
        SECTION,
        "InMemoryIOManager save+load",
        pairs / t["plain"],
        "pairs/s",
        baseline_name="dict set/get",
        baseline=pairs / t["dict"],
    )
    report.add(
        SECTION,
        "InMemoryIOManager(copy=True) save+load",
        pairs / t["copy"],
        "pairs/s",
        baseline_name="pickle.dumps/loads + dict",
        baseline=pairs / t["dict_copy"],
    )
