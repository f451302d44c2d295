"""SQLite WAL checkpoints off the writers' path.

SQLite's automatic checkpoint runs inside the commit that pushes the WAL past 1000 pages:
that one commit copies the WAL into the database and, with `synchronous=NORMAL`, syncs both
files, so every few hundred run starts one waited for the disk (tens of milliseconds under
I/O load, the p99 of event -> first task). dp's connections switch it off
(`wal_autocheckpoint = 0`) and this thread checkpoints instead: PASSIVE, on a connection of
its own, so it waits for no reader and no writer, and no writer waits for it.

It runs when the store wrote since its last checkpoint: at least every `every` seconds, and
at once after `batch` writes. A writer starts the WAL file over only once a checkpoint
copied all of it, which a checkpoint beside a never-pausing writer may never do; so when the
WAL holds more than `limit` frames (4,000: 16 MB) at one, the next is taken under the store's
write lock (this process's writers wait for it, as they did for SQLite's own, but only under
such a flood). A process that never writes starts no thread; SQLite still checkpoints and
removes the WAL when the last connection to the file closes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import AbstractContextManager
from urllib.parse import quote

import sqlalchemy as sa

from dp.logs import get_logger

__all__ = ["WalCheckpointer"]

_log = get_logger("dp.store")


class WalCheckpointer:
    """Checkpoints one SQLite file's WAL from a daemon thread, started on the first write
    (again in a forked child, which inherits no threads)."""

    def __init__(
        self,
        database: str,
        *,
        lock: AbstractContextManager[object],
        uri: bool = False,
        every: float = 1.0,
        batch: int = 200,
        limit: int = 4_000,
    ) -> None:
        self.database = database
        self.uri = uri
        self.every = every
        self.batch = batch
        self.limit = limit
        self._write_lock = lock
        self._flooded = False  # the last checkpoint left more than `limit` frames
        self._writes = 0
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self.checkpoints = 0  # how many ran (for tests and the curious)

    @classmethod
    def of(cls, url: sa.URL, lock: AbstractContextManager[object]) -> WalCheckpointer | None:
        """The checkpointer of a SQLite URL's file, whose writers take `lock`; None for
        other databases."""
        if url.get_backend_name() != "sqlite":
            return None
        return cls(url.database or "", lock=lock, uri=bool(url.query.get("uri")))

    def wrote(self) -> None:
        """Count a committed write; cheap (no I/O), called by every writer."""
        self._writes += 1
        if self._pid != os.getpid():
            self._start()
        if self._writes >= self.batch:
            self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid() or self._stopped:
                return
            self._wake = threading.Event()  # a forked child's copy may be set, or odd
            self._thread = threading.Thread(
                target=self._run, name="dp-sqlite-checkpoint", daemon=True
            )
            self._pid = os.getpid()
            self._thread.start()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.every)
            self._wake.clear()
            if self._writes and not self._stopped:
                self._writes = 0
                self.checkpoint()

    def checkpoint(self) -> None:
        """One PASSIVE checkpoint now (copies what no reader still needs; never blocks)."""
        # mode=rw: never create the file (a store whose directory was removed meanwhile)
        target = self.database if self.uri else f"file:{quote(self.database)}?mode=rw"
        try:
            connection = sqlite3.connect(target, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            _log.warning("store.checkpoint_failed", database=self.database, error=str(exc))
            return
        try:
            connection.execute("PRAGMA busy_timeout = 1000")
            if self._flooded:
                with self._write_lock:
                    self._flooded = self._passive(connection)
            else:
                self._flooded = self._passive(connection)
        except sqlite3.Error as exc:  # the next round tries again
            _log.warning("store.checkpoint_failed", database=self.database, error=str(exc))
        finally:
            connection.close()

    def _passive(self, connection: sqlite3.Connection) -> bool:
        """Checkpoint; whether the WAL holds over `limit` frames: written since it last
        started over, so the checkpoints beside the writers do not let it."""
        row = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1
        return bool(row and row[1] > self.limit)

    def close(self) -> None:
        """Stop the thread (the store's last connection closing checkpoints the rest)."""
        self._stopped = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            thread.join(timeout=5)
