"""The run store's tables, their versions and the migrations between them.

`SCHEMA_VERSION` is what this code reads and writes; the version of a database is kept in
`dp_meta`. Opening a store created by an older dp runs `MIGRATIONS` up to the current
version, inside the transaction that opens it.

Version 2 added ownership (`epoch`, `owner_host`, `owner_pid`, `lease_until` on runs), where
each attempt ran (`host`, `pid` on task runs) and `dp_task_attempts`, the earlier attempts a
retry or a resume superseded, and `dp_schedule`, the scheduler's last fire times.

Version 3 added `dp_sources`: each polling source's cursor, last poll, circuit and lease; and
`queue` on task runs and attempts: the broker queue an attempt was sent to (Celery executor).

Version 4 added `results` on runs: where a run's results are.

Version 5 added `scheduled_for` and `schedule_tz` (the tick a cron run is for, and its zone)
and `parent_run_id` (the run a retry re-runs) on runs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dp.limits import storable_text
from dp.store.records import (
    RunRecord,
    RunStatus,
    SourceRecord,
    TaskRunRecord,
    TaskStatus,
    _as_utc,
    _check_run_id,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration"]

#: The schema version this code reads and writes.
SCHEMA_VERSION = 5
Migration = Callable[[sa.Connection], None]


# On SQLite a datetime is text in SQLAlchemy's own DATETIME format, `2025-03-01 09:30:00.000000`,
# in UTC, so it sorts chronologically. `_UTCDateTime` formats it with `isoformat`, which costs
# less than SQLAlchemy's formatter on the path that writes every task run, and this type only
# names the column.
class _SQLiteDateTimeText(sa.types.UserDefinedType[str]):
    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "DATETIME"


# Stored in UTC and returned UTC-aware on every database, also on SQLite, which keeps no zone.
class _UTCDateTime(sa.types.TypeDecorator[datetime]):
    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return _SQLiteDateTimeText()
        return self.impl_instance

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        value = _as_utc(value)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None).isoformat(" ", "microseconds")
        return value

    def process_result_value(
        self, value: datetime | str | None, dialect: sa.Dialect
    ) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        return _as_utc(value)


# Text a task produced (printed output, error, traceback) cannot be refused: every store keeps
# it in the escaped form of `dp.limits.storable_text` (NUL and lone surrogates as U+FFFD, cut
# at DP_MAX_BYTES), so PostgreSQL's text type, which holds no NUL, never fails a write mid-run.
class _StorableText(sa.types.TypeDecorator[str]):
    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> str | None:
        return storable_text(value)


_metadata = sa.MetaData()
_ONE_PER_TICK = "scheduled_for IS NOT NULL AND parent_run_id IS NULL"

_runs = sa.Table(
    "dp_runs",
    _metadata,
    sa.Column("run_id", sa.String(200), primary_key=True),
    sa.Column("dag_id", sa.String, nullable=False),
    sa.Column("pipeline", sa.String, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("selection", sa.JSON, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("trigger", sa.String, nullable=False),
    sa.Column("event_id", sa.String, nullable=True),
    sa.Column("created_at", _UTCDateTime, nullable=False),
    sa.Column("started_at", _UTCDateTime),
    sa.Column("finished_at", _UTCDateTime),
    sa.Column("error", _StorableText),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("plan", sa.JSON, nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
    sa.Column("owner_host", sa.String),
    sa.Column("owner_pid", sa.Integer),
    sa.Column("lease_until", _UTCDateTime),
    sa.Column("results", sa.Text, nullable=False, server_default=""),
    # A cron run's tick; its key is `event_id` (`{pipeline}/cron-{trigger}-{tick in UTC}`),
    # made from the same value, so one tick of one pipeline is one run.
    sa.Column("scheduled_for", _UTCDateTime),
    sa.Column("schedule_tz", sa.String(100)),
    sa.Column("parent_run_id", sa.String(200)),
    sa.Index("ix_dp_runs_status", "status"),
    sa.Index("ix_dp_runs_pipeline", "pipeline"),
    sa.Index("ix_dp_runs_created_at", "created_at"),
    sa.Index("ix_dp_runs_parent_run_id", "parent_run_id"),
    # NULLs never collide, so only runs started by an event are held to one per event.
    sa.Index("ux_dp_runs_event_id", "event_id", unique=True),
    # One run per tick of a pipeline (a retry shares its parent's tick): `tick_key`.
    sa.Index(
        "ux_dp_runs_schedule",
        "pipeline",
        "scheduled_for",
        unique=True,
        sqlite_where=sa.text(_ONE_PER_TICK),
        postgresql_where=sa.text(_ONE_PER_TICK),
    ),
)


def _task_columns(*, attempt_in_key: bool) -> list[sa.Column[Any]]:
    """The columns of one attempt; `dp_task_attempts` keys them by attempt number too."""
    return [
        sa.Column("task_name", sa.String, primary_key=True),
        sa.Column("instance", sa.String, primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False, primary_key=attempt_in_key),
        sa.Column("started_at", _UTCDateTime),
        sa.Column("finished_at", _UTCDateTime),
        sa.Column("duration", sa.Float),
        sa.Column("error", _StorableText),
        sa.Column("traceback", _StorableText),
        sa.Column("result_ids", sa.JSON, nullable=False),
        sa.Column("output", _StorableText, nullable=False),
        sa.Column("host", sa.String),
        sa.Column("pid", sa.Integer),
        sa.Column("queue", sa.String),
    ]


_task_runs = sa.Table(
    "dp_task_runs",
    _metadata,
    sa.Column(
        "run_id",
        sa.String(200),
        sa.ForeignKey("dp_runs.run_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    *_task_columns(attempt_in_key=False),
)

_attempts = sa.Table(
    "dp_task_attempts",
    _metadata,
    sa.Column(
        "run_id",
        sa.String(200),
        sa.ForeignKey("dp_runs.run_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    *_task_columns(attempt_in_key=True),
)

#: The scheduler's state: when each cron trigger last fired, shared by every instance.
_schedule = sa.Table(
    "dp_schedule",
    _metadata,
    sa.Column("trigger", sa.String(200), primary_key=True),
    sa.Column("last_fire", _UTCDateTime, nullable=False),
)

#: Polling sources: the cursor committed after each poll's events, and who polls (a lease).
_sources = sa.Table(
    "dp_sources",
    _metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("topic", sa.String, nullable=False, server_default=""),
    sa.Column("every", sa.Float, nullable=False, server_default="0"),
    sa.Column("cursor", sa.JSON, nullable=True),
    sa.Column("polled_at", _UTCDateTime),
    sa.Column("last_error", _StorableText),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("circuit", sa.String(20), nullable=False, server_default="closed"),
    sa.Column("holder", sa.String),
    sa.Column("lease_until", _UTCDateTime),
)

_meta = sa.Table(
    "dp_meta",
    _metadata,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.String, nullable=False),
)

_TASK_KEY = ("run_id", "task_name", "instance")
_ATTEMPT_KEY = (*_TASK_KEY, "attempt")


def _add_ownership_and_attempts(conn: sa.Connection) -> None:
    """Version 1 -> 2: run ownership and leases, where attempts ran, every attempt kept."""
    dialect = conn.dialect
    for table, column in (
        (_runs, _runs.c.epoch),
        (_runs, _runs.c.owner_host),
        (_runs, _runs.c.owner_pid),
        (_runs, _runs.c.lease_until),
        (_task_runs, _task_runs.c.host),
        (_task_runs, _task_runs.c.pid),
    ):
        spec = column.type.compile(dialect=dialect)
        default = " NOT NULL DEFAULT 0" if column.name == "epoch" else ""
        conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {spec}{default}"))
    _attempts.create(conn)
    _schedule.create(conn)
    # The owner used to live in the run's metadata; move it where resume and `is_stale` look.
    query = sa.select(_runs.c.run_id, _runs.c.metadata)
    for run_id, metadata in conn.execute(query).all():
        owner = (metadata or {}).get("owner") or {}
        host, pid = owner.get("host"), owner.get("pid")
        if isinstance(host, str):
            conn.execute(
                _runs.update()
                .where(_runs.c.run_id == run_id)
                .values(owner_host=host, owner_pid=pid if isinstance(pid, int) else None)
            )


def _add_sources(conn: sa.Connection) -> None:
    """Version 2 -> 3: the polling sources' cursors and leases; each attempt's queue."""
    _sources.create(conn)
    _add_attempt_queues(conn)


def _add_attempt_queues(conn: sa.Connection) -> None:
    """The broker queue of each attempt (version 3), on task runs and on earlier attempts
    (where a migration from version 1 created `dp_task_attempts` with it already)."""
    spec = _task_runs.c.queue.type.compile(dialect=conn.dialect)
    inspector = sa.inspect(conn)
    for table in (_task_runs, _attempts):
        if "queue" not in {column["name"] for column in inspector.get_columns(table.name)}:
            conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN queue {spec}"))


def _add_results_url(conn: sa.Connection) -> None:
    """Version 3 -> 4: where each run's results are (runs recorded before: "", not known)."""
    conn.execute(sa.text("ALTER TABLE dp_runs ADD COLUMN results TEXT NOT NULL DEFAULT ''"))


def _add_schedule_and_lineage(conn: sa.Connection) -> None:
    """Version 4 -> 5: a cron run's tick and zone, a retry's parent (earlier runs: None)."""
    for column in (_runs.c.scheduled_for, _runs.c.schedule_tz, _runs.c.parent_run_id):
        spec = column.type.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE dp_runs ADD COLUMN {column.name} {spec}"))
    conn.execute(sa.text("CREATE INDEX ix_dp_runs_parent_run_id ON dp_runs (parent_run_id)"))
    conn.execute(
        sa.text(
            "CREATE UNIQUE INDEX ux_dp_runs_schedule ON dp_runs (pipeline, scheduled_for) "
            f"WHERE {_ONE_PER_TICK}"
        )
    )


#: `MIGRATIONS[n]` upgrades a version-`n` schema to `n + 1`, inside the transaction that
#: opens the store. A new store gets the current tables directly.
MIGRATIONS: dict[int, Migration] = {
    1: _add_ownership_and_attempts,
    2: _add_sources,
    3: _add_results_url,
    4: _add_schedule_and_lineage,
}


def _upsert_statement(
    backend: str, table: sa.Table, key: tuple[str, ...], *, forward_only: str | None = None
) -> sa.Insert:
    """INSERT ... ON CONFLICT DO UPDATE; with `forward_only`, an existing row is updated only
    when that column moves forward (a later fire time)."""
    insert = sqlite.insert(table) if backend == "sqlite" else postgresql.insert(table)
    return insert.on_conflict_do_update(
        index_elements=list(key),
        set_={c.name: insert.excluded[c.name] for c in table.c if c.name not in key},
        where=None
        if forward_only is None
        else table.c[forward_only] < insert.excluded[forward_only],
    )


def _stored_version(conn: sa.Connection) -> int | None:
    if not sa.inspect(conn).has_table(_meta.name):
        return None
    query = sa.select(_meta.c.value).where(_meta.c.key == "schema_version")
    value = conn.execute(query).scalar_one_or_none()
    return None if value is None else int(value)


def _run_row(record: RunRecord) -> dict[str, Any]:
    return {
        "run_id": record.run_id,
        "dag_id": record.dag_id,
        "pipeline": record.pipeline,
        "target": record.target,
        "selection": record.selection,
        "params": record.params,
        "status": RunStatus(record.status).value,
        "trigger": record.trigger,
        "event_id": record.event_id,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "error": record.error,
        "metadata": record.metadata,
        "plan": record.plan,
        "epoch": record.epoch,
        "owner_host": record.owner_host,
        "owner_pid": record.owner_pid,
        "lease_until": record.lease_until,
        "results": record.results,
        "scheduled_for": record.scheduled_for,
        "schedule_tz": record.schedule_tz,
        "parent_run_id": record.parent_run_id,
    }


def _task_row(record: TaskRunRecord) -> dict[str, Any]:
    return {
        "run_id": _check_run_id(record.run_id),
        "task_name": record.task_name,
        "instance": record.instance,
        "status": TaskStatus(record.status).value,
        "attempt": record.attempt,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "duration": record.duration,
        "error": record.error,
        "traceback": record.traceback,
        "result_ids": record.result_ids,
        "output": record.output,
        "host": record.host,
        "pid": record.pid,
        "queue": record.queue,
    }


def _run_record(row: sa.Row[Any]) -> RunRecord:
    fields = row._asdict()
    fields["status"] = RunStatus(fields["status"])
    return RunRecord(**fields)


def _task_run_record(row: sa.Row[Any]) -> TaskRunRecord:
    fields = row._asdict()
    fields["status"] = TaskStatus(fields["status"])
    return TaskRunRecord(**fields)


def _source_row(record: SourceRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "topic": record.topic,
        "every": record.every,
        "cursor": record.cursor,
        "polled_at": record.polled_at,
        "last_error": record.last_error,
        "failures": record.failures,
        "circuit": record.circuit,
    }


def _source_record(row: sa.Row[Any]) -> SourceRecord:
    return SourceRecord(**row._asdict())
