"""`SQLRunStore`: the run store on SQLAlchemy Core, in SQLite by default or PostgreSQL by URL.

SQLite runs in WAL mode so readers (the UI, `dp runs list`) never block the engine's writer,
and with `synchronous=NORMAL`, so a commit costs no fsync; a machine crash can lose the last
few commits but never corrupts the file. Writers take the lock up front (`BEGIN IMMEDIATE`)
and wait up to `busy_timeout` for it, so several threads and processes can share one file.

The schema is versioned in `dp_meta`. Opening a store created by an older dp runs
`MIGRATIONS` up to `SCHEMA_VERSION`; opening one created by a newer dp fails with advice to
upgrade, rather than writing rows that dp would misread.

An unreachable database (refused, lost or timed-out connections) is an outage, not a data
error: every method raises `StoreUnavailableError` then, and works again once the database
is back, without a restart (see `dp.store.outage`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dp.errors import (
    DuplicateRunError,
    FencedError,
    InvalidArgumentError,
    RunNotFoundError,
    StoreError,
)
from dp.store.checkpoint import WalCheckpointer
from dp.store.outage import (
    Watchdog,
    engine_options,
    public_url,
    report_outages,
    store_timeout,
)
from dp.store.records import (
    RunRecord,
    RunStatus,
    SourceRecord,
    TaskRunRecord,
    _as_utc,
    _check_page,
    _check_run_id,
    _check_source,
    _fire_time,
    _not_json_error,
    _status_filter,
    tick_key,
)
from dp.store.schema import (
    _ATTEMPT_KEY,
    _TASK_KEY,
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    _attempts,
    _meta,
    _metadata,
    _run_record,
    _run_row,
    _runs,
    _schedule,
    _source_record,
    _source_row,
    _sources,
    _stored_version,
    _task_row,
    _task_run_record,
    _task_runs,
    _upsert_statement,
)

__all__ = ["DEFAULT_PATH", "MIGRATIONS", "SCHEMA_VERSION", "Migration", "SQLRunStore"]

#: Where the run store lives when neither a URL nor a path is given, relative to the cwd.
DEFAULT_PATH = Path(".dp") / "runs.db"

_SUPPORTED = ("postgresql", "sqlite")
_BUSY_TIMEOUT_MS = 30_000
_PG_SCHEMA_LOCK = 0x64705F72756E73  # any constant; serialises concurrent first opens
_WRITE = "dp_write"  # execution option: this transaction writes, so BEGIN IMMEDIATE on SQLite


@report_outages
class SQLRunStore:
    """A `RunStore` in a SQL database: SQLite by default, PostgreSQL by URL.

    Args:
        url: A SQLAlchemy URL, e.g. `postgresql+psycopg://dp@localhost/dp`; SQLite and
            PostgreSQL are supported.
        path: A SQLite file to use instead of a URL; its directory is created. With neither,
            the store is `.dp/runs.db` under the current directory.
        echo: Log every SQL statement (SQLAlchemy's `echo`).

    Raises:
        StoreError: The database is not SQLite or PostgreSQL, is an in-memory SQLite database,
            or holds a schema written by a newer dp.
        StoreUnavailableError: The database cannot be reached (any method raises it then).

    Example:
        ```python
        store = SQLRunStore(path="state/runs.db")
        store.create_run(RunRecord("run_1", dag_id="sales"))
        store.update_run("run_1", status=RunStatus.RUNNING)
        ```
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        echo: bool = False,
    ) -> None:
        if url is not None and path is not None:
            raise InvalidArgumentError(
                "path", path, "left unset when a url is given", hint="pass a url or a path"
            )
        if url is None:
            file = Path(DEFAULT_PATH if path is None else path).absolute()
            parsed = sa.URL.create("sqlite", database=str(file))
        else:
            parsed = sa.make_url(url)
        if parsed.drivername == "postgresql":  # SQLAlchemy's default driver is psycopg2
            parsed = parsed.set(drivername="postgresql+psycopg")
        backend = parsed.get_backend_name()
        if backend not in _SUPPORTED:
            raise StoreError(
                f"the run store supports SQLite and PostgreSQL, not {backend!r} "
                f"({parsed.render_as_string()}); use a sqlite:// or postgresql:// URL."
            )
        if backend == "sqlite":
            _prepare_sqlite_file(parsed)
        #: the URL without credentials, as outage errors name it
        self.public_url = public_url(parsed)
        timeout = store_timeout()
        try:
            self._engine = sa.create_engine(
                parsed, echo=echo, json_serializer=_json_dumps, **engine_options(parsed, timeout)
            )
        except ModuleNotFoundError as exc:
            raise StoreError(
                f"the run store {parsed.render_as_string()} needs the {exc.name!r} driver, "
                "which is not installed; for PostgreSQL: pip install 'dp[postgres]'."
            ) from None
        if backend == "sqlite":
            sa.event.listen(self._engine, "connect", _on_sqlite_connect)
            sa.event.listen(self._engine, "begin", _on_sqlite_begin)
        #: bounds every PostgreSQL call, and pings pooled connections (SQLite needs neither)
        self.watchdog = Watchdog(self._engine, timeout) if backend == "postgresql" else None
        # Shares the pool; marks the transactions that write.
        self._writer = self._engine.execution_options(**{_WRITE: True})
        # SQLite has one writer at a time; its busy handler makes a blocked writer sleep in
        # steps of milliseconds. Threads of this process queue on a lock instead, which hands
        # over in microseconds (other processes still meet busy_timeout).
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if backend == "sqlite" else contextlib.nullcontext()
        )
        self._checkpointer = WalCheckpointer.of(parsed, self._write_lock)  # off the commits
        self._upsert_task_runs = _upsert_statement(backend, _task_runs, _TASK_KEY)
        self._upsert_attempts = _upsert_statement(backend, _attempts, _ATTEMPT_KEY)
        self._upsert_fires = _upsert_statement(
            backend, _schedule, ("trigger",), forward_only="last_fire"
        )
        insert = sqlite.insert if backend == "sqlite" else postgresql.insert
        self._add_source = insert(_sources).on_conflict_do_nothing(index_elements=["name"])
        _open_stores.add(self)
        try:
            with self.watchdog.unbounded() if self.watchdog else contextlib.nullcontext():
                self._open_schema()
        except BaseException:
            self._engine.dispose()
            raise

    @property
    def url(self) -> str:
        """The database URL, with any password masked."""
        return self._engine.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"SQLRunStore({self.url!r})"

    def ping(self) -> None:
        """Check that the database answers; see `RunStore.ping`."""
        with self._engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def create_run(self, record: RunRecord) -> None:
        """Record a new run; see `RunStore.create_run`."""
        _check_run_id(record.run_id)
        row = _run_row(record)
        try:
            with self._writing() as conn:
                conn.execute(_runs.insert(), row)
        except sa.exc.IntegrityError as exc:
            # The UNIQUE constraints decided, atomically across threads and processes; now
            # find out which one, to name the run that holds it.
            if record.event_id is not None:
                owner = self.find_run_by_event(record.event_id)
                if owner is not None:
                    raise DuplicateRunError(owner.run_id, record.event_id) from None
            tick = tick_key(record)
            if tick is not None:
                holder = self._run_of_tick(*tick)
                if holder is not None:
                    raise DuplicateRunError(holder, record.event_id) from None
            if self._exists(record.run_id):
                raise DuplicateRunError(record.run_id) from None
            raise StoreError(f"could not record run {record.run_id!r}: {exc.orig}") from exc

    def update_run(
        self,
        run_id: str,
        *,
        status: RunStatus | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        error: str | None = None,
        metadata: dict[str, Any] | None = None,
        task_runs: Sequence[TaskRunRecord] = (),
        attempts: Sequence[TaskRunRecord] = (),
        epoch: int | None = None,
    ) -> None:
        """Change the given fields of a run, and save `task_runs`, in one transaction; see
        `RunStore.update_run`."""
        _check_run_id(run_id)
        given = {
            "status": None if status is None else RunStatus(status).value,
            "started_at": started_at,
            "finished_at": finished_at,
            "error": error,
            "metadata": metadata,
        }
        values = {name: value for name, value in given.items() if value is not None}
        latest = _latest(task_runs)
        if any(r.run_id != run_id for r in (*latest, *attempts)):
            raise StoreError(f"update_run({run_id!r}) got task runs of another run")
        with self._writing() as conn:
            self._hold(conn, run_id, epoch, values)  # rolls everything back if refused
            self._put_task_runs(conn, latest, attempts)

    def save_task_runs(
        self,
        records: Sequence[TaskRunRecord],
        *,
        attempts: Sequence[TaskRunRecord] = (),
        epoch: int | None = None,
    ) -> None:
        """Insert or replace task runs in one transaction; see `RunStore.save_task_runs`."""
        latest = _latest(records)
        if not latest and not attempts:
            return
        run_ids = list(dict.fromkeys(r.run_id for r in (*latest, *attempts)))
        for run_id in run_ids:
            _check_run_id(run_id)
        try:
            with self._writing() as conn:
                if epoch is not None:
                    for run_id in run_ids:
                        self._hold(conn, run_id, epoch, {})
                self._put_task_runs(conn, latest, attempts)
        except sa.exc.IntegrityError as exc:
            for run_id in run_ids:
                if not self._exists(run_id):
                    raise RunNotFoundError(run_id) from None
            raise StoreError(f"could not save task runs: {exc.orig}") from exc

    def claim_run(
        self,
        run_id: str,
        *,
        host: str,
        pid: int,
        lease_until: datetime,
        expected_epoch: int | None = None,
        status: RunStatus = RunStatus.RUNNING,
        started_at: datetime | None = None,
    ) -> int:
        """Become the run's owner at a new epoch; see `RunStore.claim_run`."""
        _check_run_id(run_id)
        values: dict[str, Any] = {
            "epoch": _runs.c.epoch + 1,
            "owner_host": host,
            "owner_pid": pid,
            "lease_until": lease_until,
            "status": RunStatus(status).value,
        }
        if started_at is not None:
            values["started_at"] = started_at
        with self._writing() as conn:
            self._hold(conn, run_id, expected_epoch, values)
            query = sa.select(_runs.c.epoch).where(_runs.c.run_id == run_id)
            return int(conn.execute(query).scalar_one())

    def renew_lease(self, run_id: str, *, epoch: int, lease_until: datetime) -> None:
        """Extend the owner's lease; see `RunStore.renew_lease`."""
        _check_run_id(run_id)
        with self._writing() as conn:
            self._hold(conn, run_id, epoch, {"lease_until": lease_until})

    def get_attempts(self, run_id: str) -> list[TaskRunRecord]:
        """Return every attempt of a run, the latest ones included; see
        `RunStore.get_attempts`."""
        _check_run_id(run_id)
        earlier = sa.select(_attempts).where(_attempts.c.run_id == run_id)
        latest = sa.select(_task_runs).where(_task_runs.c.run_id == run_id)
        with self._engine.connect() as conn:
            rows = [*conn.execute(earlier).all(), *conn.execute(latest).all()]
        if not rows and not self._exists(run_id):
            raise RunNotFoundError(run_id)
        records = [_task_run_record(row) for row in rows]
        records.sort(key=lambda t: (t.task_name, t.instance, t.attempt))
        return records

    def get_run(self, run_id: str) -> RunRecord:
        """Return a run; see `RunStore.get_run`."""
        _check_run_id(run_id)
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(_runs).where(_runs.c.run_id == run_id)).one_or_none()
        if row is None:
            raise RunNotFoundError(run_id)
        return _run_record(row)

    def list_runs(
        self,
        *,
        status: RunStatus | Sequence[RunStatus] | None = None,
        pipeline: str | None = None,
        trigger: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Return runs newest first; see `RunStore.list_runs`."""
        _check_page(limit, offset)
        query = (
            _filtered(sa.select(_runs), status, pipeline, trigger)
            .order_by(_runs.c.created_at.desc(), _runs.c.run_id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self._engine.connect() as conn:
            return [_run_record(row) for row in conn.execute(query)]

    def count_runs(
        self,
        *,
        status: RunStatus | Sequence[RunStatus] | None = None,
        pipeline: str | None = None,
        trigger: str | None = None,
    ) -> int:
        """Return how many runs match; see `RunStore.count_runs`."""
        query = _filtered(sa.select(sa.func.count()).select_from(_runs), status, pipeline, trigger)
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def find_run_by_event(self, event_id: str) -> RunRecord | None:
        """Return the run the event started, or `None`."""
        query = sa.select(_runs).where(_runs.c.event_id == event_id)
        with self._engine.connect() as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else _run_record(row)

    def get_task_runs(self, run_id: str) -> list[TaskRunRecord]:
        """Return a run's task runs in order; see `RunStore.get_task_runs`."""
        _check_run_id(run_id)
        c = _task_runs.c
        query = (
            sa.select(_task_runs)
            .where(c.run_id == run_id)
            .order_by(c.started_at.asc().nulls_last(), c.task_name, c.instance)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows and not self._exists(run_id):
            raise RunNotFoundError(run_id)
        return [_task_run_record(row) for row in rows]

    def delete_run(self, run_id: str) -> None:
        """Forget a run and, by cascade, its task runs; see `RunStore.delete_run`."""
        _check_run_id(run_id)
        with self._writing() as conn:
            deleted = conn.execute(_runs.delete().where(_runs.c.run_id == run_id)).rowcount
        if deleted == 0:
            raise RunNotFoundError(run_id)

    def last_fire(self, name: str) -> datetime | None:
        """When the cron trigger `name` last fired; see `RunStore.last_fire`."""
        query = sa.select(_schedule.c.last_fire).where(_schedule.c.trigger == name)
        with self._engine.connect() as conn:
            value: datetime | None = conn.execute(query).scalar_one_or_none()
        return value

    def record_fires(self, fires: Mapping[str, datetime]) -> None:
        """Remember fire times, keeping the later; see `RunStore.record_fires`."""
        rows = [
            {"trigger": name, "last_fire": _fire_time(name, when)} for name, when in fires.items()
        ]
        if not rows:
            return
        # insert, or move forward only: of two instances recording one tick, the later wins
        with self._writing() as conn:
            conn.execute(self._upsert_fires, rows)

    def claim_source(self, name: str, *, holder: str, now: datetime, lease_until: datetime) -> bool:
        """Take or renew a source's lease; see `RunStore.claim_source`."""
        _check_source(name)
        c = _sources.c
        free = (
            c.holder.is_(None)
            | (c.holder == holder)
            | c.lease_until.is_(None)
            | (c.lease_until <= _as_utc(now))
        )
        # On PostgreSQL a concurrent claimer's UPDATE waits for this one's row lock, then
        # re-checks the WHERE against the committed row: it sees the new holder and fails.
        with self._writing() as conn:
            conn.execute(self._add_source, {"name": name})
            statement = (
                _sources.update()
                .where(c.name == name, free)
                .values(holder=holder, lease_until=_as_utc(lease_until))
            )
            return bool(conn.execute(statement).rowcount)

    def save_source(self, record: SourceRecord) -> bool:
        """Store a source's state if its holder still holds it; see `RunStore.save_source`."""
        _check_source(record.name)
        if record.holder is None:
            return False
        c = _sources.c
        statement = (
            _sources.update()
            .where(c.name == record.name, c.holder == record.holder)
            .values(_source_row(record))
        )
        with self._writing() as conn:
            return bool(conn.execute(statement).rowcount)

    def release_source(self, name: str, *, holder: str) -> None:
        """Give up a source's lease; see `RunStore.release_source`."""
        c = _sources.c
        statement = (
            _sources.update()
            .where(c.name == name, c.holder == holder)
            .values(holder=None, lease_until=None)
        )
        with self._writing() as conn:
            conn.execute(statement)

    def get_source(self, name: str) -> SourceRecord | None:
        """A source's stored state; see `RunStore.get_source`."""
        query = sa.select(_sources).where(_sources.c.name == name)
        with self._engine.connect() as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else _source_record(row)

    def list_sources(self) -> list[SourceRecord]:
        """Every source's stored state; see `RunStore.list_sources`."""
        query = sa.select(_sources).order_by(_sources.c.name)
        with self._engine.connect() as conn:
            return [_source_record(row) for row in conn.execute(query)]

    def close(self) -> None:
        """Close the pooled connections (the last one closing checkpoints the WAL)."""
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._engine.dispose()

    @contextmanager
    def _writing(self) -> Iterator[sa.Connection]:
        try:
            with self._write_lock, self._writer.begin() as conn:
                yield conn
            if self._checkpointer is not None:
                self._checkpointer.wrote()
        except sa.exc.StatementError as exc:
            # SQLite's JSON columns encode while SQLAlchemy binds parameters, which wraps the
            # error; psycopg encodes later and lets it through as it is.
            if isinstance(exc.orig, StoreError):
                raise exc.orig from None
            raise

    def _hold(
        self, conn: sa.Connection, run_id: str, epoch: int | None, values: dict[str, Any]
    ) -> None:
        """Update the run's row (or just lock it) if it is still at `epoch`; or refuse.

        On PostgreSQL the UPDATE keeps the row locked until the transaction ends, so a
        concurrent claim waits for this write instead of slipping in between the check and
        the write; on SQLite the whole transaction already holds the database's write lock.
        """
        statement = _runs.update().where(_runs.c.run_id == run_id)
        if epoch is not None:
            statement = statement.where(_runs.c.epoch == epoch)
        # no values: a no-op update that takes the row lock and tells whether the run matches
        statement = statement.values(values or {"epoch": _runs.c.epoch})
        if conn.execute(statement).rowcount > 0:
            return
        current = conn.execute(
            sa.select(_runs.c.epoch).where(_runs.c.run_id == run_id)
        ).scalar_one_or_none()
        if current is None:
            raise RunNotFoundError(run_id)
        assert epoch is not None
        raise FencedError(run_id, epoch, int(current))

    def _put_task_runs(
        self,
        conn: sa.Connection,
        latest: Sequence[TaskRunRecord],
        attempts: Sequence[TaskRunRecord],
    ) -> None:
        if latest:
            conn.execute(self._upsert_task_runs, [_task_row(r) for r in latest])
        if attempts:
            # PostgreSQL refuses to upsert one key twice in a statement; the later one wins.
            earlier = {(r.run_id, r.task_name, r.instance, r.attempt): r for r in attempts}
            conn.execute(self._upsert_attempts, [_task_row(r) for r in earlier.values()])

    def _run_of_tick(self, pipeline: str, scheduled_for: datetime) -> str | None:
        c = _runs.c
        query = sa.select(c.run_id).where(
            c.pipeline == pipeline, c.scheduled_for == scheduled_for, c.parent_run_id.is_(None)
        )
        with self._engine.connect() as conn:
            found: str | None = conn.execute(query).scalar_one_or_none()
        return found

    def _exists(self, run_id: str) -> bool:
        query = sa.select(_runs.c.run_id).where(_runs.c.run_id == run_id)
        with self._engine.connect() as conn:
            return conn.execute(query).first() is not None

    def _open_schema(self) -> None:
        with self._writer.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_SCHEMA_LOCK)))
            stored = _stored_version(conn)
            if stored is None:
                _metadata.create_all(conn)
            elif stored > SCHEMA_VERSION:
                raise StoreError(
                    f"the run store {self.url} has schema version {stored}, but this dp knows "
                    f"only versions up to {SCHEMA_VERSION}; upgrade dp to open it."
                )
            elif stored < SCHEMA_VERSION:
                for version in range(stored, SCHEMA_VERSION):
                    if version not in MIGRATIONS:
                        raise StoreError(
                            f"the run store {self.url} has schema version {stored}, and this "
                            f"dp has no migration from version {version}; open it with the "
                            "dp release that wrote it and export the runs you need."
                        )
                    MIGRATIONS[version](conn)
            if stored != SCHEMA_VERSION:
                conn.execute(_meta.delete().where(_meta.c.key == "schema_version"))
                conn.execute(_meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))


# A child forked from a process with an open store (a worker process, say) would otherwise
# share the parent's pooled connections, which SQLite and PostgreSQL connections cannot
# survive. The child drops them without closing them and connects afresh.
_open_stores: weakref.WeakSet[SQLRunStore] = weakref.WeakSet()


def _forget_inherited_connections() -> None:
    for store in list(_open_stores):
        if store.watchdog is not None:
            store.watchdog.after_fork()
        store._engine.dispose(close=False)


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_forget_inherited_connections)


def _prepare_sqlite_file(url: sa.URL) -> None:
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        raise StoreError(
            f"an in-memory SQLite run store ({url.render_as_string()}) would be empty in every "
            "thread; use MemoryRunStore, or a SQLite file."
        )
    if not url.query.get("uri"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _on_sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (see `_on_sqlite_begin`); sqlite3's own transaction
    # handling would begin late and could not take the write lock up front.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # busy_timeout first: switching to WAL needs a lock another process may hold.
    cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA wal_autocheckpoint = 0")  # WalCheckpointer's thread does it
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _on_sqlite_begin(conn: sa.Connection) -> None:
    # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY if
    # another connection wrote in between, without waiting on busy_timeout. Writers therefore
    # take the lock when they begin; readers stay deferred and never block anyone in WAL mode.
    immediate = conn.get_execution_options().get(_WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _latest(records: Sequence[TaskRunRecord]) -> list[TaskRunRecord]:
    """The last record of each task in a batch: PostgreSQL refuses to upsert one key twice in
    a statement, and the later record wins anyway."""
    return list({(r.run_id, r.task_name, r.instance): r for r in records}.values())


def _filtered(
    query: sa.Select[Any],
    status: RunStatus | Sequence[RunStatus] | None,
    pipeline: str | None,
    trigger: str | None = None,
) -> sa.Select[Any]:
    statuses = _status_filter(status)
    if statuses is not None:
        query = query.where(_runs.c.status.in_(sorted(s.value for s in statuses)))
    if pipeline is not None:
        query = query.where(_runs.c.pipeline == pipeline)
    if trigger is not None:
        query = query.where(
            (_runs.c.trigger == trigger)
            | _runs.c.trigger.startswith(trigger + ":", autoescape=True)
        )
    return query


def _json_dumps(value: Any) -> str:
    try:  # no NaN or infinity: PostgreSQL refuses them, so every store does (dp.limits)
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _not_json_error(value, exc) from None
