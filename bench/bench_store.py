"""Run store write throughput on SQLite, each figure beside raw `sqlite3` in the same run.

The baseline writes the same rows into an equivalent schema (same tables, keys, foreign key,
upsert, JSON text, pragmas) with `executemany`, so the ratio is what SQLAlchemy and dp's
record handling cost. dp and its baseline run alternately, round after round, so drift in
the machine's speed hits both alike; every round records a fresh run.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta

from bench._harness import Report, alternate
from dp.store import RunRecord, TaskRunRecord, TaskStatus
from dp.store.sql import SQLRunStore

SECTION = "run store"
TASKS = 1000
BATCH = 100
ROUNDS = 5

_RAW_SCHEMA = """
PRAGMA busy_timeout = 30000;
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = ON;
CREATE TABLE runs (
    run_id VARCHAR(200) PRIMARY KEY, dag_id VARCHAR NOT NULL, pipeline VARCHAR NOT NULL,
    target TEXT NOT NULL, selection JSON NOT NULL, params JSON NOT NULL,
    status VARCHAR(20) NOT NULL, "trigger" VARCHAR NOT NULL, event_id VARCHAR,
    created_at DATETIME NOT NULL, started_at DATETIME, finished_at DATETIME, error TEXT,
    metadata JSON NOT NULL, "plan" JSON NOT NULL
);
CREATE UNIQUE INDEX runs_event_id ON runs (event_id);
CREATE TABLE task_runs (
    run_id VARCHAR(200) NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    task_name VARCHAR NOT NULL, instance VARCHAR NOT NULL, status VARCHAR(20) NOT NULL,
    attempt INTEGER NOT NULL, started_at DATETIME, finished_at DATETIME, duration FLOAT,
    error TEXT, traceback TEXT, result_ids JSON NOT NULL, output TEXT NOT NULL,
    PRIMARY KEY (run_id, task_name, instance)
);
"""
_RAW_INSERT_RUN = """
INSERT INTO runs VALUES
    (?, ?, '', '', '{}', '{}', 'queued', 'manual', NULL, ?, NULL, NULL, NULL, '{}', '{}')
"""
_RAW_UPSERT = """
INSERT INTO task_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id, task_name, instance) DO UPDATE SET
    status = excluded.status, attempt = excluded.attempt, started_at = excluded.started_at,
    finished_at = excluded.finished_at, duration = excluded.duration, error = excluded.error,
    traceback = excluded.traceback, result_ids = excluded.result_ids, output = excluded.output
"""


def run(report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix="dp-bench-store-") as tmp:
        t = _compare(tmp, "batched", batch=BATCH)
        report.add(
            SECTION,
            f"SQLRunStore.save_task_runs, {TASKS:,} task runs in batches of {BATCH}",
            TASKS / t["dp"],
            "task runs/s",
            baseline_name=f"sqlite3 executemany, batches of {BATCH}",
            baseline=TASKS / t["raw"],
            target=">= 20,000 task runs/s",
        )
        t = _compare(tmp, "single", batch=1)
        report.add(
            SECTION,
            f"SQLRunStore.save_task_runs, {TASKS:,} task runs one per commit",
            TASKS / t["dp"],
            "task runs/s",
            baseline_name="sqlite3, one row per commit",
            baseline=TASKS / t["raw"],
            target="contrast: why the engine batches",
        )


def _compare(tmp: str, name: str, batch: int) -> dict[str, float]:
    """Median seconds to record one run and its task runs, `batch` per commit, dp and raw."""
    dp_work = _workload(f"dp_{name}")
    raw_work = _workload(f"raw_{name}")
    with (
        closing(SQLRunStore(path=os.path.join(tmp, f"dp_{name}.db"))) as store,
        closing(sqlite3.connect(os.path.join(tmp, f"raw_{name}.db"), isolation_level=None)) as conn,
    ):
        conn.executescript(_RAW_SCHEMA)

        def dp() -> None:
            run_id, records = next(dp_work)
            store.create_run(RunRecord(run_id, dag_id="bench"))
            for start in range(0, TASKS, batch):
                store.save_task_runs(records[start : start + batch])

        def raw() -> None:
            run_id, records = next(raw_work)
            _raw_write(conn, _RAW_INSERT_RUN, [(run_id, "bench", _utc_text(datetime.now(UTC)))])
            for start in range(0, TASKS, batch):
                _raw_write(conn, _RAW_UPSERT, [_raw_row(r) for r in records[start : start + batch]])

        return alternate({"dp": dp, "raw": raw}, rounds=ROUNDS)


def _workload(prefix: str) -> Iterator[tuple[str, list[TaskRunRecord]]]:
    # Records are built ahead of the clock: building them is the engine's cost, not the store's.
    sets = []
    for n in range(ROUNDS + 1):
        run_id = f"{prefix}_{n}"
        sets.append((run_id, _task_runs(run_id)))
    return iter(sets)


def _task_runs(run_id: str) -> list[TaskRunRecord]:
    start = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    return [
        TaskRunRecord(
            run_id,
            f"task_{n}",
            status=TaskStatus.SUCCEEDED,
            attempt=1,
            started_at=start + timedelta(milliseconds=n),
            finished_at=start + timedelta(milliseconds=n + 3),
            duration=0.003,
            result_ids=[f"result_{n}"],
        )
        for n in range(TASKS)
    ]


def _raw_write(conn: sqlite3.Connection, statement: str, rows: list[tuple[object, ...]]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(statement, rows)
    conn.execute("COMMIT")


def _raw_row(r: TaskRunRecord) -> tuple[object, ...]:
    return (
        r.run_id,
        r.task_name,
        r.instance,
        r.status.value,
        r.attempt,
        _utc_text(r.started_at),
        _utc_text(r.finished_at),
        r.duration,
        r.error,
        r.traceback,
        json.dumps(r.result_ids),
        r.output,
    )


def _utc_text(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
