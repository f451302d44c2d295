"""SQLite's WAL is checkpointed by a thread of the store, not inside a writer's commit."""

from __future__ import annotations

import time
from pathlib import Path

from dp.store import RunRecord, SQLRunStore


def test_the_wal_is_checkpointed_off_the_commits_and_stays_small(tmp_path: Path) -> None:
    """The store's connections never checkpoint in a commit (wal_autocheckpoint 0); its
    thread does, after every batch of writes, so 3,000 run starts leave a WAL of some ten
    megabytes (checkpoints beside a never-pausing writer alone let it reach 82 MB here)."""
    store = SQLRunStore(path=tmp_path / "runs.db")
    try:
        with store._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        checkpointer = store._checkpointer
        assert checkpointer is not None
        for n in range(3_000):
            store.create_run(RunRecord(f"run_{n}", dag_id="d", pipeline="p", event_id=f"e{n}"))
        deadline = time.monotonic() + 30
        while checkpointer.checkpoints < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        wal = (tmp_path / "runs.db-wal").stat().st_size
        print(f"checkpoints {checkpointer.checkpoints}, WAL {wal / 1e6:.1f} MB")
        assert checkpointer.checkpoints >= 3
        assert wal < 32_000_000
        assert len(store.list_runs(limit=5_000)) == 3_000
    finally:
        store.close()
    assert not (checkpointer._thread and checkpointer._thread.is_alive())


def test_a_store_that_only_reads_starts_no_checkpoint_thread(tmp_path: Path) -> None:
    SQLRunStore(path=tmp_path / "runs.db").close()
    reader = SQLRunStore(path=tmp_path / "runs.db")
    try:
        reader.list_runs()
        assert reader._checkpointer is not None
        assert reader._checkpointer._thread is None
    finally:
        reader.close()
