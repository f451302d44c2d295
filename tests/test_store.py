"""The run store: one contract for every adapter, then what only the SQL store does.

The contract runs against `MemoryRunStore`, and `SQLRunStore` on a SQLite file and on a
private PostgreSQL server (`tests/postgres_server.py`), each test in a new database.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import dp.store.sql
from dp.errors import (
    DuplicateRunError,
    FencedError,
    InvalidIdError,
    RunNotFoundError,
    StoreError,
)
from dp.store import (
    MemoryRunStore,
    RunRecord,
    RunStatus,
    RunStore,
    SourceRecord,
    SQLRunStore,
    TaskRunRecord,
    TaskStatus,
)
from dp.store.records import HOST, is_stale

ADAPTERS = ["memory", "sqlite", "postgresql"]
T0 = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
CEST = timezone(timedelta(hours=2))


@pytest.fixture(params=ADAPTERS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunStore]:
    if request.param == "memory":
        opened: RunStore = MemoryRunStore()
    elif request.param == "sqlite":
        opened = SQLRunStore(path=tmp_path / "runs.db")
    else:
        opened = SQLRunStore(request.getfixturevalue("postgres").create_database())
    yield opened
    opened.close()


def run(run_id: str, *, minutes: int = 0, **fields: Any) -> RunRecord:
    """A run created `minutes` after T0."""
    return RunRecord(run_id, dag_id="sales", created_at=T0 + timedelta(minutes=minutes), **fields)


# --- contract: runs -----------------------------------------------------------------------


def test_every_adapter_satisfies_the_port(store: RunStore) -> None:
    """Each adapter is a `RunStore`."""
    assert isinstance(store, RunStore)


def test_a_created_run_reads_back_with_every_field(store: RunStore) -> None:
    """Every field round-trips; datetimes come back UTC-aware, dicts as JSON."""
    record = RunRecord(
        run_id="20250301-093000.sales-1",
        dag_id="sales:4f2a",
        pipeline="daily_sales",
        target="pipelines/sales.py",
        selection={"tags": ["daily"], "task_names": ["load"]},
        params={"day": "2025-03-01", "limit": 10, "ratio": 0.5, "dry": False, "none": None},
        status=RunStatus.RUNNING,
        trigger="event:sales.orders.created",
        event_id="evt-81",
        created_at=datetime(2025, 3, 1, 11, 30, tzinfo=CEST),
        started_at=datetime(2025, 3, 1, 11, 30, 1, 250_000, tzinfo=CEST),
        finished_at=datetime(2025, 3, 1, 9, 31, tzinfo=UTC),
        error="ValueError: bad row 3",
        metadata={"host": "worker-1", "retries": {"load": 2}},
        plan={"dag_id": "sales:4f2a", "nodes": [{"name": "load", "upstream": []}]},
    )
    store.create_run(record)

    got = store.get_run(record.run_id)

    assert got == record
    assert got.created_at == T0
    for moment in (got.created_at, got.started_at, got.finished_at):
        assert moment is not None
        assert moment.utcoffset() == timedelta(0)
    assert isinstance(got.status, RunStatus)


def test_naive_datetimes_are_taken_as_utc(store: RunStore) -> None:
    """A naive datetime is stored as the same wall time in UTC."""
    store.create_run(run("naive", started_at=datetime(2025, 3, 1, 9, 30)))
    assert store.get_run("naive").started_at == T0


def test_json_fields_come_back_as_json(store: RunStore) -> None:
    """Tuples come back as lists and keys as strings, in every adapter alike."""
    store.create_run(run("json", params={"pair": (1, 2), 3: "three"}))
    assert store.get_run("json").params == {"pair": [1, 2], "3": "three"}


def test_params_that_are_not_json_are_refused(store: RunStore) -> None:
    """A run whose params cannot be stored as JSON raises StoreError and is not recorded."""
    with pytest.raises(StoreError, match="JSON-serialisable"):
        store.create_run(run("sets", params={"days": {1, 2}}))
    assert store.count_runs() == 0


def test_a_duplicate_run_id_is_refused(store: RunStore) -> None:
    """Creating a run under a taken id raises DuplicateRunError naming it."""
    store.create_run(run("r1"))
    with pytest.raises(DuplicateRunError) as caught:
        store.create_run(run("r1", pipeline="other"))
    assert caught.value.run_id == "r1"
    assert store.get_run("r1").pipeline == ""


def test_a_duplicate_event_id_names_the_first_run_and_leaves_it_intact(store: RunStore) -> None:
    """An event that already started a run cannot start another; the first run is unchanged."""
    store.create_run(run("first", event_id="evt-1", params={"n": 1}))

    with pytest.raises(DuplicateRunError) as caught:
        store.create_run(run("second", event_id="evt-1", params={"n": 2}))

    assert (caught.value.run_id, caught.value.event_id) == ("first", "evt-1")
    assert store.get_run("first").params == {"n": 1}
    assert store.count_runs() == 1


def test_concurrent_creates_for_one_event_let_exactly_one_win(store: RunStore) -> None:
    """Eight threads racing to start a run for the same event: one succeeds, seven are told who."""
    barrier = threading.Barrier(8)
    winners: list[str] = []
    losers: list[DuplicateRunError] = []

    def start(n: int) -> None:
        barrier.wait()
        try:
            store.create_run(run(f"racer-{n}", event_id="evt-race"))
        except DuplicateRunError as exc:
            losers.append(exc)
        else:
            winners.append(f"racer-{n}")

    threads = [threading.Thread(target=start, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(winners) == 1
    assert [exc.run_id for exc in losers] == winners * 7
    assert store.count_runs() == 1


def test_runs_without_an_event_may_share_the_missing_event_id(store: RunStore) -> None:
    """Only set event ids must be unique; any number of runs have none."""
    store.create_run(run("a"))
    store.create_run(run("b"))
    assert store.count_runs() == 2


def test_find_run_by_event_returns_the_run_it_started(store: RunStore) -> None:
    """Looking up an event id returns its run, or None for an unknown event."""
    store.create_run(run("r1", event_id="evt-7"))
    found = store.find_run_by_event("evt-7")
    assert found is not None
    assert found.run_id == "r1"
    assert store.find_run_by_event("evt-8") is None


def test_update_run_changes_only_the_given_fields(store: RunStore) -> None:
    """Fields left out (or None) keep their stored values; metadata is replaced whole."""
    store.create_run(run("r1", error="old", metadata={"a": 1, "b": 2}))

    store.update_run("r1", status=RunStatus.RUNNING, started_at=T0)
    store.update_run("r1", metadata={"a": 3})

    got = store.get_run("r1")
    assert (got.status, got.started_at, got.finished_at) == (RunStatus.RUNNING, T0, None)
    assert (got.error, got.metadata) == ("old", {"a": 3})


def test_update_run_of_an_unknown_run_raises(store: RunStore) -> None:
    """Updating a run that was never created raises RunNotFoundError, with or without fields."""
    with pytest.raises(RunNotFoundError) as caught:
        store.update_run("ghost", status=RunStatus.FAILED)
    assert caught.value.run_id == "ghost"
    with pytest.raises(RunNotFoundError):
        store.update_run("ghost")


def test_get_run_of_an_unknown_run_raises(store: RunStore) -> None:
    """Reading a run that was never created raises RunNotFoundError."""
    with pytest.raises(RunNotFoundError):
        store.get_run("ghost")


def test_delete_run_forgets_the_run_and_its_task_runs(store: RunStore) -> None:
    """A deleted run, its task runs and its event id are gone; the event may start a new run."""
    store.create_run(run("r1", event_id="evt-1"))
    store.save_task_runs([TaskRunRecord("r1", "load")])

    store.delete_run("r1")

    with pytest.raises(RunNotFoundError):
        store.get_task_runs("r1")
    store.create_run(run("r1", event_id="evt-1"))
    assert store.get_task_runs("r1") == []
    with pytest.raises(RunNotFoundError):
        store.delete_run("ghost")


@pytest.mark.parametrize(
    "bad_id", ["", "x" * 201, ".hidden", "-flag", "a/b", "a b", "run\n", "ünïcode"]
)
def test_invalid_run_ids_are_refused(store: RunStore, bad_id: str) -> None:
    """Malformed run ids raise InvalidIdError before anything is stored or read."""
    with pytest.raises(InvalidIdError) as caught:
        store.create_run(run(bad_id))
    assert caught.value.kind == "run id"
    with pytest.raises(InvalidIdError):
        store.get_run(bad_id)
    with pytest.raises(InvalidIdError):
        store.save_task_runs([TaskRunRecord(bad_id, "load")])


def test_run_ids_may_use_dots_and_dashes(store: RunStore) -> None:
    """Ids such as timestamps with a suffix are valid (no ':', run ids are also folder names)."""
    store.create_run(run("_20250301-093000.123_sales"))
    assert store.count_runs() == 1


def test_records_are_copied_in_and_out(store: RunStore) -> None:
    """Changing a record after saving it, or one read back, never changes what is stored."""
    record = run("r1", params={"days": [1]})
    store.create_run(record)
    record.params["days"].append(2)
    record.pipeline = "changed"

    got = store.get_run("r1")
    got.params["days"].append(3)
    got.status = RunStatus.FAILED

    task = TaskRunRecord("r1", "load", result_ids=["a"])
    store.save_task_runs([task])
    task.result_ids.append("b")
    store.get_task_runs("r1")[0].result_ids.append("c")

    assert store.get_run("r1") == run("r1", params={"days": [1]})
    assert store.get_task_runs("r1")[0].result_ids == ["a"]


# --- contract: listing --------------------------------------------------------------------


def test_list_runs_is_newest_first(store: RunStore) -> None:
    """Runs come back by created_at descending, ties broken by run id descending."""
    for run_id, minutes in [("a", 0), ("b", 2), ("c", 1), ("d", 2)]:
        store.create_run(run(run_id, minutes=minutes))
    assert [r.run_id for r in store.list_runs()] == ["d", "b", "c", "a"]


def test_list_runs_filters_by_status_and_pipeline(store: RunStore) -> None:
    """`status` takes one status or several; `pipeline` narrows further."""
    store.create_run(run("a", pipeline="sales", status=RunStatus.FAILED))
    store.create_run(run("b", pipeline="sales", status=RunStatus.SUCCEEDED, minutes=1))
    store.create_run(run("c", pipeline="stock", status=RunStatus.FAILED, minutes=2))

    def ids(**filters: Any) -> list[str]:
        return [r.run_id for r in store.list_runs(**filters)]

    assert ids(status=RunStatus.FAILED) == ["c", "a"]
    assert ids(status=[RunStatus.FAILED, RunStatus.SUCCEEDED], pipeline="sales") == ["b", "a"]
    assert ids(pipeline="stock") == ["c"]
    assert ids(status=[]) == []


def test_list_runs_pages_with_limit_and_offset(store: RunStore) -> None:
    """Pages follow the newest-first order without gaps or repeats."""
    for n in range(7):
        store.create_run(run(f"r{n}", minutes=n))

    pages = [[r.run_id for r in store.list_runs(limit=3, offset=o)] for o in (0, 3, 6, 9)]

    assert pages == [["r6", "r5", "r4"], ["r3", "r2", "r1"], ["r0"], []]
    with pytest.raises(ValueError, match="limit and offset"):
        store.list_runs(offset=-1)


def test_count_runs_takes_the_same_filters(store: RunStore) -> None:
    """Counts match what list_runs would return without a limit."""
    store.create_run(run("a", pipeline="sales", status=RunStatus.FAILED))
    store.create_run(run("b", pipeline="sales"))
    store.create_run(run("c", pipeline="stock", status=RunStatus.FAILED))

    assert store.count_runs() == 3
    assert store.count_runs(status=RunStatus.FAILED) == 2
    assert store.count_runs(status=[RunStatus.QUEUED, RunStatus.FAILED], pipeline="sales") == 2
    assert store.count_runs(pipeline="nothing") == 0


# --- contract: task runs ------------------------------------------------------------------


def test_save_task_runs_updates_existing_rows_instead_of_adding(store: RunStore) -> None:
    """Saving the same (run, task, instance) again replaces its status, attempt and results."""
    store.create_run(run("r1"))
    store.save_task_runs([TaskRunRecord("r1", "load", status=TaskStatus.RUNNING, attempt=1)])

    done = TaskRunRecord(
        "r1",
        "load",
        status=TaskStatus.SUCCEEDED,
        attempt=2,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=1.5),
        duration=1.5,
        error="TimeoutError: first attempt",
        traceback="Traceback (most recent call last): ...",
        result_ids=["chunk_0", "chunk_1"],
        output="loaded 2 chunks\n",
    )
    store.save_task_runs([done])

    assert store.get_task_runs("r1") == [done]


def test_mapped_instances_are_stored_separately(store: RunStore) -> None:
    """A task mapped over a stream keeps one task run per input chunk."""
    store.create_run(run("r1"))
    store.save_task_runs(
        [TaskRunRecord("r1", "clean", instance=f"chunk_{n}", attempt=1) for n in range(3)]
        + [TaskRunRecord("r1", "clean", instance="chunk_1", status=TaskStatus.FAILED)]
    )

    tasks = store.get_task_runs("r1")

    assert [(t.instance, t.status) for t in tasks] == [
        ("chunk_0", TaskStatus.PENDING),
        ("chunk_1", TaskStatus.FAILED),
        ("chunk_2", TaskStatus.PENDING),
    ]


def test_task_runs_come_back_by_start_time_then_name(store: RunStore) -> None:
    """Started tasks first by start time, then unstarted ones, each by task name and instance."""
    store.create_run(run("r1"))
    store.save_task_runs(
        [
            TaskRunRecord("r1", "report"),
            TaskRunRecord("r1", "load", started_at=T0 + timedelta(seconds=5)),
            TaskRunRecord("r1", "clean", instance="b"),
            TaskRunRecord("r1", "extract", started_at=T0),
            TaskRunRecord("r1", "clean", instance="a"),
        ]
    )

    order = [(t.task_name, t.instance) for t in store.get_task_runs("r1")]

    assert order == [("extract", ""), ("load", ""), ("clean", "a"), ("clean", "b"), ("report", "")]


def test_task_runs_of_an_unknown_run_are_refused_whole(store: RunStore) -> None:
    """A batch naming a run that does not exist raises RunNotFoundError and saves nothing."""
    store.create_run(run("r1"))
    with pytest.raises(RunNotFoundError) as caught:
        store.save_task_runs([TaskRunRecord("r1", "load"), TaskRunRecord("ghost", "load")])
    assert caught.value.run_id == "ghost"
    assert store.get_task_runs("r1") == []
    with pytest.raises(RunNotFoundError):
        store.get_task_runs("ghost")


def test_saving_no_task_runs_does_nothing(store: RunStore) -> None:
    """An empty batch is accepted."""
    store.save_task_runs([])


# --- statuses -----------------------------------------------------------------------------


def test_finished_statuses_exclude_the_resumable_ones() -> None:
    """Interrupted runs are not finished: they can be resumed, like queued and running ones."""
    finished = {s for s in RunStatus if s.finished}
    assert finished == {
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.PARTIAL,
        RunStatus.CANCELLED,
    }


# --- contract: ownership, fencing, attempts ----------------------------------------------


def _claim(store: RunStore, run_id: str, **options: Any) -> int:
    return store.claim_run(run_id, host="box", pid=1234, lease_until=T0, **options)


def test_each_claim_raises_the_epoch_and_records_the_owner(store: RunStore) -> None:
    """A claim takes the next epoch and makes its process the owner, with its lease."""
    store.create_run(run("r1"))
    assert _claim(store, "r1") == 1
    assert store.claim_run("r1", host="other", pid=9, lease_until=T0 + timedelta(minutes=1)) == 2
    got = store.get_run("r1")
    assert (got.epoch, got.owner_host, got.owner_pid, got.status) == (
        2,
        "other",
        9,
        RunStatus.RUNNING,
    )
    assert got.lease_until == T0 + timedelta(minutes=1)


def test_writes_of_an_older_owner_are_refused_and_change_nothing(store: RunStore) -> None:
    """After a take-over, the old epoch's task states and run updates raise FencedError."""
    store.create_run(run("r1"))
    old = _claim(store, "r1")
    store.save_task_runs([TaskRunRecord("r1", "load", status=TaskStatus.RUNNING)], epoch=old)
    new = _claim(store, "r1")
    late = TaskRunRecord("r1", "load", status=TaskStatus.SUCCEEDED, result_ids=["x"])
    with pytest.raises(FencedError) as refused:
        store.save_task_runs([late], epoch=old)
    assert (refused.value.run_id, refused.value.epoch, refused.value.current) == ("r1", old, new)
    with pytest.raises(FencedError):
        store.update_run("r1", status=RunStatus.SUCCEEDED, task_runs=[late], epoch=old)
    with pytest.raises(FencedError):
        store.renew_lease("r1", epoch=old, lease_until=T0)
    assert store.get_run("r1").status == RunStatus.RUNNING
    assert [t.status for t in store.get_task_runs("r1")] == [TaskStatus.RUNNING]
    store.update_run("r1", status=RunStatus.SUCCEEDED, task_runs=[late], epoch=new)
    assert store.get_run("r1").status == RunStatus.SUCCEEDED


def test_a_claim_at_an_expected_epoch_is_a_compare_and_set(store: RunStore) -> None:
    """Two resumers that read epoch 1: the first claim wins, the second is fenced."""
    store.create_run(run("r1"))
    _claim(store, "r1")
    assert _claim(store, "r1", expected_epoch=1) == 2
    with pytest.raises(FencedError):
        _claim(store, "r1", expected_epoch=1)
    assert store.get_run("r1").epoch == 2


def test_concurrent_claims_at_one_epoch_have_exactly_one_winner(store: RunStore) -> None:
    """Eight threads claim the same run at the same epoch: one wins, seven are fenced."""
    store.create_run(run("r1"))
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        try:
            _claim(store, "r1", expected_epoch=0)
            outcomes.append("won")
        except FencedError:
            outcomes.append("fenced")

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["fenced"] * 7 + ["won"]
    assert store.get_run("r1").epoch == 1


def test_claiming_or_renewing_an_unknown_run_raises_run_not_found(store: RunStore) -> None:
    """Ownership calls on a run that is not recorded name it."""
    with pytest.raises(RunNotFoundError):
        _claim(store, "nope")
    with pytest.raises(RunNotFoundError):
        store.renew_lease("nope", epoch=1, lease_until=T0)


def test_every_attempt_is_kept_beside_the_latest(store: RunStore) -> None:
    """Earlier attempts saved as `attempts` come back with the latest, in attempt order."""
    store.create_run(run("r1"))
    first = TaskRunRecord(
        "r1", "load", status=TaskStatus.FAILED, attempt=1, error="E: one", host="a", pid=1
    )
    second = TaskRunRecord("r1", "load", status=TaskStatus.FAILED, attempt=2, error="E: two")
    third = TaskRunRecord("r1", "load", status=TaskStatus.SUCCEEDED, attempt=3, host="b", pid=2)
    store.save_task_runs([second], attempts=[first])
    store.update_run("r1", status=RunStatus.SUCCEEDED, task_runs=[third], attempts=[second])
    attempts = store.get_attempts("r1")
    assert [(a.attempt, a.status, a.error, a.host) for a in attempts] == [
        (1, TaskStatus.FAILED, "E: one", "a"),
        (2, TaskStatus.FAILED, "E: two", None),
        (3, TaskStatus.SUCCEEDED, None, "b"),
    ]
    assert [t.attempt for t in store.get_task_runs("r1")] == [3]
    store.delete_run("r1")
    with pytest.raises(RunNotFoundError):
        store.get_attempts("r1")


def test_an_attempt_keeps_the_queue_it_was_sent_to(store: RunStore) -> None:
    """A queued attempt's broker queue reads back, on the latest attempt and earlier ones."""
    store.create_run(run("r1"))
    lost = TaskRunRecord("r1", "train", status=TaskStatus.FAILED, attempt=1, queue="gpu")
    waiting = TaskRunRecord("r1", "train", status=TaskStatus.QUEUED, attempt=2, queue="gpu")
    store.save_task_runs([waiting], attempts=[lost])
    assert [(a.status, a.queue) for a in store.get_attempts("r1")] == [
        (TaskStatus.FAILED, "gpu"),
        (TaskStatus.QUEUED, "gpu"),
    ]


def test_a_run_is_stale_when_its_owner_is_gone_or_its_lease_ran_out(store: RunStore) -> None:
    """`is_stale`: a dead owner process on this host, or an expired lease; never a finished run."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    now = datetime.now(UTC)
    store.create_run(run("gone", status=RunStatus.RUNNING))
    store.claim_run("gone", host=HOST, pid=dead_pid, lease_until=now + timedelta(hours=1))
    store.create_run(run("expired", status=RunStatus.RUNNING))
    store.claim_run("expired", host="elsewhere", pid=1, lease_until=now - timedelta(seconds=1))
    store.create_run(run("alive", status=RunStatus.RUNNING))
    store.claim_run("alive", host=HOST, pid=os.getppid(), lease_until=now + timedelta(hours=1))
    store.create_run(run("done", status=RunStatus.RUNNING))
    store.claim_run("done", host=HOST, pid=dead_pid, lease_until=now - timedelta(hours=1))
    store.update_run("done", status=RunStatus.SUCCEEDED)
    stale = {r.run_id: is_stale(r) for r in store.list_runs()}
    assert stale == {"gone": True, "expired": True, "alive": False, "done": False}


def test_a_run_keeps_its_tick_its_zone_and_its_parent(store: RunStore) -> None:
    """scheduled_for comes back in UTC (the zone beside it), parent_run_id as given; a run
    without them reads None for each (schema 5)."""
    tick = datetime(2026, 3, 29, 0, 0, tzinfo=timezone(timedelta(hours=1)))  # Berlin, CET
    store.create_run(run("cron-1", scheduled_for=tick, schedule_tz="Europe/Berlin"))
    store.create_run(run("retry-1", minutes=1, parent_run_id="cron-1", scheduled_for=tick))
    store.create_run(run("manual-1", minutes=2))

    first, retry, manual = (store.get_run(r) for r in ("cron-1", "retry-1", "manual-1"))
    assert first.scheduled_for == datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    assert first.scheduled_for.tzinfo == UTC
    assert (first.schedule_tz, first.parent_run_id) == ("Europe/Berlin", None)
    assert (retry.parent_run_id, retry.scheduled_for) == ("cron-1", tick)
    assert (manual.scheduled_for, manual.schedule_tz, manual.parent_run_id) == (None, None, None)
    assert [r.run_id for r in store.list_runs()] == ["manual-1", "retry-1", "cron-1"]


def test_one_run_per_tick_of_a_pipeline(store: RunStore) -> None:
    """A second run of a pipeline for the same scheduled_for (another trigger's event, say)
    is a DuplicateRunError naming the first; a retry of it, another pipeline's run for the
    same tick, and runs without a tick are not held to it; deleting frees the tick."""
    tick = T0 + timedelta(hours=1)
    store.create_run(run("daily-1", pipeline="daily", scheduled_for=tick, event_id="daily/e1"))
    with pytest.raises(DuplicateRunError, match="already started run 'daily-1'"):
        store.create_run(run("daily-2", pipeline="daily", scheduled_for=tick, event_id="daily/e2"))
    store.create_run(run("daily-1r", pipeline="daily", scheduled_for=tick, parent_run_id="daily-1"))
    store.create_run(run("hourly-1", pipeline="hourly", scheduled_for=tick))
    store.create_run(run("daily-m1", pipeline="daily"))
    store.create_run(run("daily-m2", pipeline="daily"))
    with pytest.raises(RunNotFoundError):
        store.get_run("daily-2")
    store.delete_run("daily-1")
    store.create_run(run("daily-3", pipeline="daily", scheduled_for=tick))


# --- SQL only -----------------------------------------------------------------------------


def _schema_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (value,) = conn.execute("SELECT value FROM dp_meta WHERE key = 'schema_version'").fetchone()
    conn.close()
    return int(value)


def _set_schema_version(path: Path, version: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE dp_meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    conn.close()


def test_sqlite_file_and_its_directories_are_created(tmp_path: Path) -> None:
    """A path in directories that do not exist yet is created."""
    path = tmp_path / "state" / "dp" / "runs.db"
    SQLRunStore(path=path).close()
    assert path.is_file()
    assert _schema_version(path) == dp.store.sql.SCHEMA_VERSION


def test_default_store_is_dp_runs_db_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a URL or path, the store is `.dp/runs.db` under the working directory."""
    monkeypatch.chdir(tmp_path)
    store = SQLRunStore()
    store.close()
    assert (tmp_path / ".dp" / "runs.db").is_file()
    assert store.url.endswith("/.dp/runs.db")


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    """The file is switched to write-ahead logging, so readers never block the writer."""
    path = tmp_path / "runs.db"
    SQLRunStore(path=path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_a_reopened_store_sees_earlier_runs(tmp_path: Path) -> None:
    """Runs and task runs outlive the store instance that wrote them."""
    first = SQLRunStore(path=tmp_path / "runs.db")
    first.create_run(run("r1", event_id="evt-1"))
    first.save_task_runs([TaskRunRecord("r1", "load", result_ids=["a"])])
    first.close()

    second = SQLRunStore(path=tmp_path / "runs.db")
    assert second.get_run("r1") == run("r1", event_id="evt-1")
    assert [t.result_ids for t in second.get_task_runs("r1")] == [["a"]]
    with pytest.raises(DuplicateRunError):
        second.create_run(run("r2", event_id="evt-1"))
    second.close()


def test_a_store_written_by_a_newer_dp_is_refused(tmp_path: Path) -> None:
    """Opening a newer schema raises StoreError naming both versions, and changes nothing."""
    path = tmp_path / "runs.db"
    SQLRunStore(path=path).close()
    _set_schema_version(path, 7)

    with pytest.raises(StoreError, match=r"schema version 7.*up to 5; upgrade dp"):
        SQLRunStore(path=path)
    assert _schema_version(path) == 7


def test_a_store_written_by_an_older_dp_is_migrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening an older schema runs each migration from its version up, then records the new one."""
    path = tmp_path / "runs.db"
    SQLRunStore(path=path).close()
    applied: list[int] = []

    def add_notes_column(conn: Any) -> None:
        applied.append(5)
        conn.exec_driver_sql("ALTER TABLE dp_runs ADD COLUMN notes TEXT")

    # Pretend this dp is one release ahead of the file: version 6, with a migration from 5.
    monkeypatch.setattr(dp.store.sql, "SCHEMA_VERSION", 6)
    monkeypatch.setitem(dp.store.sql.MIGRATIONS, 5, add_notes_column)
    SQLRunStore(path=path).close()
    SQLRunStore(path=path).close()  # already current: nothing runs twice

    assert applied == [5]
    assert _schema_version(path) == 6
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(dp_runs)")]
    conn.close()
    assert "notes" in columns


def test_a_store_written_by_the_schema_1_release_opens_with_its_runs(tmp_path: Path) -> None:
    """tests/data/runs-v1.db, written by dp with schema 1, migrates and keeps every run."""
    path = tmp_path / "runs.db"
    path.write_bytes((Path(__file__).parent / "data" / "runs-v1.db").read_bytes())
    store = SQLRunStore(path=path)
    assert _schema_version(path) == 5
    done, killed = store.get_run("run-v1-done"), store.get_run("run-v1-killed")
    assert (done.status, done.params, done.epoch) == (RunStatus.SUCCEEDED, {"currency": "EUR"}, 0)
    # the owner moved from the metadata to its own fields
    assert (killed.status, killed.owner_host, killed.owner_pid) == (
        RunStatus.RUNNING,
        "old-host",
        4243,
    )
    (task,) = store.get_task_runs("run-v1-done")
    assert (task.attempt, task.output, task.host, task.queue) == (2, "hello\n", None, None)
    assert [a.attempt for a in store.get_attempts("run-v1-done")] == [2]
    # and the migrated store takes new runs, fenced like any other
    epoch = store.claim_run("run-v1-killed", host="here", pid=1, lease_until=T0, expected_epoch=0)
    assert epoch == 1
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_schema_4_store_gains_ticks_and_lineage(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Version 4 -> 5 on SQLite and PostgreSQL: a store as the schema-4 release left it (no
    scheduled_for, schedule_tz, parent_run_id) keeps its runs and records the new fields."""
    import sqlalchemy as sa

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'runs.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database()
    old = SQLRunStore(url)
    old.create_run(run("run-v4", params={"currency": "EUR"}))
    old.close()
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:  # back to schema 4
        conn.exec_driver_sql("DROP INDEX ix_dp_runs_parent_run_id")
        conn.exec_driver_sql("DROP INDEX ux_dp_runs_schedule")
        for column in ("scheduled_for", "schedule_tz", "parent_run_id"):
            conn.exec_driver_sql(f"ALTER TABLE dp_runs DROP COLUMN {column}")
        conn.exec_driver_sql("UPDATE dp_meta SET value = '4' WHERE key = 'schema_version'")

    store = SQLRunStore(url)
    kept = store.get_run("run-v4")
    assert (kept.params, kept.scheduled_for, kept.parent_run_id) == (
        {"currency": "EUR"},
        None,
        None,
    )
    store.create_run(
        run("run-v5", minutes=1, scheduled_for=T0, schedule_tz="UTC", parent_run_id="run-v4")
    )
    assert store.get_run("run-v5").scheduled_for == T0
    store.create_run(run("tick-a", scheduled_for=T0))
    with pytest.raises(DuplicateRunError, match="'tick-a'"):  # the migration made the key
        store.create_run(run("tick-b", scheduled_for=T0))
    assert sorted(r.run_id for r in store.list_runs()) == ["run-v4", "run-v5", "tick-a"]
    store.close()
    with engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT value FROM dp_meta").scalar_one()
    engine.dispose()
    assert version == "5"


def test_an_older_store_without_a_migration_path_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing migration raises StoreError instead of opening a schema dp would misread."""
    path = tmp_path / "runs.db"
    SQLRunStore(path=path).close()
    monkeypatch.setattr(dp.store.sql, "SCHEMA_VERSION", 6)

    with pytest.raises(StoreError, match="no migration from version 5"):
        SQLRunStore(path=path)
    assert _schema_version(path) == 5


def test_importing_dp_store_leaves_sqlalchemy_unloaded() -> None:
    """`import dp.store` stays light: SQLAlchemy loads when SQLRunStore is first used."""
    code = (
        "import sys, dp.store\n"
        "assert 'sqlalchemy' not in sys.modules\n"
        "dp.store.SQLRunStore\n"
        "assert 'sqlalchemy' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unsupported_databases_are_refused() -> None:
    """Only SQLite and PostgreSQL are supported; an in-memory SQLite database is refused too."""
    with pytest.raises(StoreError, match="not 'mysql'"):
        SQLRunStore("mysql://dp@localhost/dp")
    with pytest.raises(StoreError, match="MemoryRunStore"):
        SQLRunStore("sqlite://")


def _write_task_runs(path: str, worker: int, barrier: Any) -> None:
    store = SQLRunStore(path=path)
    barrier.wait()
    for batch in range(10):
        store.save_task_runs(
            [TaskRunRecord("shared", f"w{worker}_task_{batch}_{n}", attempt=1) for n in range(20)]
        )
    store.close()


def test_two_processes_writing_to_one_sqlite_file_lose_nothing(tmp_path: Path) -> None:
    """Two worker processes flushing batches into the same file concurrently keep every row."""
    path = str(tmp_path / "runs.db")
    store = SQLRunStore(path=path)
    store.create_run(run("shared"))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_write_task_runs, args=(path, n, barrier)) for n in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert [w.exitcode for w in workers] == [0, 0]
    names = {t.task_name for t in store.get_task_runs("shared")}
    assert len(names) == 2 * 10 * 20
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_store_inherited_by_a_forked_process_keeps_working(tmp_path: Path) -> None:
    """A process forked while a store is open writes through its own connections."""
    store = SQLRunStore(path=tmp_path / "runs.db")
    store.create_run(run("shared"))  # leaves a pooled connection for the child to inherit

    def child() -> None:
        store.save_task_runs([TaskRunRecord("shared", f"child_{n}") for n in range(50)])

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    store.save_task_runs([TaskRunRecord("shared", f"parent_{n}") for n in range(50)])
    process.join(timeout=60)

    assert process.exitcode == 0
    assert len(store.get_task_runs("shared")) == 100
    store.close()


def test_a_run_end_and_its_task_runs_are_written_together(store: RunStore) -> None:
    """update_run(..., task_runs=...) records the run's end and its last task states."""
    store.create_run(run("r1"))
    store.update_run(
        "r1",
        status=RunStatus.SUCCEEDED,
        task_runs=[TaskRunRecord("r1", "extract", status=TaskStatus.SUCCEEDED, attempt=1)],
    )
    assert store.get_run("r1").status == RunStatus.SUCCEEDED
    assert [t.status for t in store.get_task_runs("r1")] == [TaskStatus.SUCCEEDED]


def test_task_runs_of_another_run_are_refused_in_update_run(store: RunStore) -> None:
    """Task runs handed to update_run must belong to that run; nothing is written otherwise."""
    store.create_run(run("r1"))
    store.create_run(run("r2"))
    with pytest.raises(StoreError, match="task runs of another run"):
        store.update_run("r1", status=RunStatus.FAILED, task_runs=[TaskRunRecord("r2", "extract")])
    assert store.get_run("r1").status == RunStatus.QUEUED
    assert store.get_task_runs("r2") == []


def test_update_run_with_task_runs_of_an_unknown_run_is_refused(store: RunStore) -> None:
    """An unknown run id in update_run raises RunNotFoundError and saves no task run."""
    with pytest.raises(RunNotFoundError):
        store.update_run("ghost", status=RunStatus.FAILED, task_runs=[TaskRunRecord("ghost", "t")])


# --- contract: the scheduler's state ------------------------------------------------------


def test_the_store_keeps_the_schedule_state_and_never_moves_it_back(store: RunStore) -> None:
    """Every store is a `ScheduleState`: fire times per trigger, the later of two kept."""
    from dp.scheduler import ScheduleState

    assert isinstance(store, ScheduleState)
    assert store.last_fire("nightly") is None
    store.record_fires({"nightly": T0, "hourly": T0})
    store.record_fires({"nightly": T0 + timedelta(days=1), "hourly": T0 - timedelta(hours=1)})
    assert store.last_fire("nightly") == T0 + timedelta(days=1)
    assert store.last_fire("hourly") == T0  # an instance that fired earlier changes nothing
    with pytest.raises(ValueError, match="fire time of trigger 'naive' has no time zone"):
        store.record_fires({"naive": datetime(2025, 3, 1, 9, 30)})
    assert store.last_fire("naive") is None


def test_a_store_written_by_the_schema_2_release_opens_with_its_runs(tmp_path: Path) -> None:
    """tests/data/runs-v2.db, written by dp with schema 2, gains dp_sources and keeps its runs."""
    path = tmp_path / "runs.db"
    path.write_bytes((Path(__file__).parent / "data" / "runs-v2.db").read_bytes())
    store = SQLRunStore(path=path)
    assert _schema_version(path) == 5
    done = store.get_run("run-v2-done")
    assert done.results == ""  # recorded before runs knew where their results went
    # recorded before runs knew their tick and lineage (schema 5)
    assert (done.scheduled_for, done.schedule_tz, done.parent_run_id) == (None, None, None)
    assert (done.status, done.params, done.pipeline) == (
        RunStatus.SUCCEEDED,
        {"currency": "EUR"},
        "daily",
    )
    assert store.last_fire("daily.cron") == datetime(2025, 3, 1, 3, tzinfo=UTC)
    assert store.list_sources() == []
    assert store.claim_source("inbox", holder="a", now=T0, lease_until=T0 + timedelta(seconds=9))
    store.close()


# --- contract: polling sources ------------------------------------------------------------


def test_a_source_claim_creates_its_row_and_one_holder_has_it(store: RunStore) -> None:
    """The first claim takes the lease; another holder is refused until it runs out."""
    lease = T0 + timedelta(seconds=10)
    assert store.claim_source("inbox", holder="a", now=T0, lease_until=lease)
    assert not store.claim_source("inbox", holder="b", now=T0, lease_until=lease)
    assert store.claim_source("inbox", holder="a", now=T0, lease_until=lease)  # a renewal
    record = store.get_source("inbox")
    assert record is not None
    assert (record.holder, record.lease_until, record.cursor) == ("a", lease, None)


def test_a_lapsed_source_lease_is_taken_over(store: RunStore) -> None:
    """Once the holder's lease ran out, another instance takes the source and its cursor."""
    store.claim_source("inbox", holder="a", now=T0, lease_until=T0 + timedelta(seconds=10))
    store.save_source(SourceRecord("inbox", cursor={"seen": 3}, holder="a"))
    later = T0 + timedelta(seconds=11)
    assert store.claim_source("inbox", holder="b", now=later, lease_until=later)
    record = store.get_source("inbox")
    assert record is not None
    assert (record.holder, record.cursor) == ("b", {"seen": 3})


def test_saving_a_source_is_fenced_by_its_holder(store: RunStore) -> None:
    """A holder that lost the lease cannot commit a cursor; the new holder's stays."""
    store.claim_source("inbox", holder="a", now=T0, lease_until=T0)
    store.claim_source("inbox", holder="b", now=T0, lease_until=T0 + timedelta(seconds=5))
    assert not store.save_source(SourceRecord("inbox", cursor=1, holder="a"))
    assert store.save_source(
        SourceRecord(
            "inbox",
            topic="files.arrived",
            every=0.5,
            cursor=[2, "x"],
            polled_at=T0,
            last_error="OSError: gone",
            failures=2,
            circuit="open",
            holder="b",
        )
    )
    record = store.get_source("inbox")
    assert record == SourceRecord(
        "inbox",
        topic="files.arrived",
        every=0.5,
        cursor=[2, "x"],
        polled_at=T0,
        last_error="OSError: gone",
        failures=2,
        circuit="open",
        holder="b",
        lease_until=T0 + timedelta(seconds=5),
    )
    assert not store.save_source(SourceRecord("never-claimed", holder="b"))
    assert store.get_source("never-claimed") is None


def test_a_released_source_is_free_at_once(store: RunStore) -> None:
    """release_source lets another instance claim before the lease would have run out."""
    lease = T0 + timedelta(hours=1)
    store.claim_source("inbox", holder="a", now=T0, lease_until=lease)
    store.release_source("inbox", holder="b")  # not its holder: nothing happens
    assert not store.claim_source("inbox", holder="b", now=T0, lease_until=lease)
    store.release_source("inbox", holder="a")
    assert store.claim_source("inbox", holder="b", now=T0, lease_until=lease)


def test_list_sources_is_by_name(store: RunStore) -> None:
    """Every claimed source is listed, sorted by name."""
    for name in ("zeta", "alpha", "mid"):
        store.claim_source(name, holder="a", now=T0, lease_until=T0)
    assert [r.name for r in store.list_sources()] == ["alpha", "mid", "zeta"]


def test_concurrent_source_claims_have_exactly_one_winner(store: RunStore) -> None:
    """Eight threads claim one free source at once: exactly one holds it."""
    barrier = threading.Barrier(8)
    wins: list[str] = []

    def claim(holder: str) -> None:
        barrier.wait()
        lease = T0 + timedelta(seconds=30)
        if store.claim_source("inbox", holder=holder, now=T0, lease_until=lease):
            wins.append(holder)

    threads = [threading.Thread(target=claim, args=(f"h{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = store.get_source("inbox")
    assert record is not None
    assert wins == [record.holder]


def test_a_bad_source_name_is_refused(store: RunStore) -> None:
    """A source name that is not an id raises InvalidIdError naming it."""
    with pytest.raises(InvalidIdError, match="source name"):
        store.claim_source("../x", holder="a", now=T0, lease_until=T0)
