"""`WriteBehind`: results handed on from memory while one thread persists them in order.

An executor that runs tasks in this process gives its `Worker` a `WriteBehind` in place of
the IO manager. A `save` keeps the value in memory and queues it for a writer thread, which
saves it through the real IO manager, in the order the saves came (completion order); a
`load` of a result still in memory returns the very object saved. So downstream tasks start
at once, and the disk is off the critical path.

What stays true:

- A result is stored only after every result saved before it, so a stored result implies
  its inputs are stored (a task saves after it loaded them) and resume stays exact.
- The run records a task succeeded only once its results are stored (`durable` tells it).
- Memory is bounded: past `max_pending` results waiting for the writer, `save` blocks until
  the writer catches up; a stored result stays in memory until each of its consumers loaded
  it, but at most `max_held_bytes` of them (by the size of their pickles, which `save_sized`
  tells) and `max_held` of those whose size is not known are kept (the oldest then load
  from the IO manager).
- A save that fails is reported to its run (`WriteSink.on_write_failed`), and nothing the
  run saves afterwards is stored: the run fails.
- Nothing of a run that ended or was taken over (`WriteSink.closed`) is stored any more.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

from dp.io import IOManager
from dp.safetext import describe_exception

__all__ = ["WriteBehind", "WriteSink"]

Key = tuple[str, str, str]  # (run_id, task_name, task_result_id)


class WriteSink(Protocol):
    """The run whose results are written, as the writer sees it (called on its loop)."""

    @property
    def closed(self) -> bool: ...

    def on_durable(self, saved: int) -> None:
        """Every save numbered `saved` or lower is stored (or dropped, for another run)."""
        ...

    def on_write_failed(self, number: int, task_name: str, result_id: str, error: str) -> None:
        """Save number `number` failed; no later save of this run will be stored."""
        ...


class _Run:
    __slots__ = ("consumers", "failed", "loop", "numbers", "sink")

    def __init__(self, sink: WriteSink, consumers: Mapping[str, int], loop: Any) -> None:
        self.sink = sink
        self.consumers = consumers
        self.loop = loop
        self.failed = False
        #: (task name, result id) -> the number of its latest save
        self.numbers: dict[tuple[str, str], int] = {}


#: the value of an entry that left memory
_GONE: Any = object()


class _Entry:
    __slots__ = ("consumers", "counted", "done", "key", "number", "run", "size", "value")

    def __init__(self, key: Key, value: Any, number: int, run: _Run, consumers: int) -> None:
        self.key = key
        self.value = value
        self.number = number
        self.run = run
        self.consumers = consumers
        self.done = False
        #: bytes it took, when the IO manager said (`save_sized`); None: not known
        self.size: int | None = None
        #: it counts against what `_kept` may hold
        self.counted = False


#: after this many bytes of results left memory, ask the allocator to return free memory
_TRIM_EVERY = 32 << 20


def _trim() -> None:
    """Give memory freed by results back to the system, where glibc keeps it otherwise.

    glibc serves a large allocation from a thread's arena once a freed one raised its mmap
    threshold, and keeps what is freed there: with results of a megabyte made on many
    threads, a process's footprint then grows with the number of results rather than with
    what it holds at once. `malloc_trim` returns those free pages. Elsewhere: nothing."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = _find_malloc_trim()
    _malloc_trim()


def _find_malloc_trim() -> Any:
    import ctypes
    import ctypes.util
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError, TypeError):
            trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            trim.argtypes = [ctypes.c_size_t]
            return lambda: trim(0)
    return lambda: None


_malloc_trim: Any = None


class WriteBehind:
    """An `IOManager` that keeps results in memory and stores them from one writer thread.

    Args:
        io_manager: where results are stored.
        max_pending: results waiting for the writer before `save` blocks.
        max_held: stored results of unknown size kept in memory for consumers that have not
            loaded them.
        max_held_bytes: stored results of known size kept so, by the size of their pickles.
    """

    def __init__(
        self,
        io_manager: IOManager,
        *,
        max_pending: int = 64,
        max_held: int = 256,
        max_held_bytes: int = 64 << 20,
    ):
        self.io_manager = io_manager
        self.max_pending = max_pending
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self._held_unsized = 0  # entries of unknown size in `_kept`
        self._held_bytes = 0  # bytes of the entries of known size in `_kept`
        #: saves accepted so far: the number of the latest one
        self.accepted = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer: work arrived
        self._room = threading.Condition(self._lock)  # producers: the writer caught up
        self._queue: deque[_Entry] = deque()
        self._pending = 0  # accepted, not yet stored or dropped
        self._held: dict[Key, _Entry] = {}
        self._kept: deque[_Entry] = deque()  # stored, some consumer still to load it
        self._runs: dict[str, _Run] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        #: bytes of results that left memory since the allocator was last asked to give
        #: freed memory back to the system (`_TRIM_EVERY`)
        self._freed = 0

    def __repr__(self) -> str:
        return f"WriteBehind({self.io_manager!r})"

    @property
    def saturated(self) -> bool:
        """Whether saves wait for the writer now (more threads would only wait too)."""
        return self._pending >= self.max_pending

    # --- runs (on the event loop) ---------------------------------------------------------

    def open_run(self, run_id: str, sink: WriteSink, consumers: Mapping[str, int]) -> None:
        """Write `run_id`'s saves behind, telling `sink`; `consumers` counts the loads each
        task's results will get (a result leaves memory after that many)."""
        import asyncio

        with self._lock:
            self._runs[run_id] = _Run(sink, consumers, asyncio.get_running_loop())
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._write_forever, name="dp-result-writer", daemon=True
                )
                self._thread.start()

    def close_run(self, run_id: str) -> None:
        """Forget a run: its results leave memory; what it still had queued is dropped."""
        with self._lock:
            self._runs.pop(run_id, None)
            for entry in [e for k, e in self._held.items() if k[0] == run_id]:
                if entry.done:
                    self._forget(entry)
                else:  # the writer drops it (its run is closed)
                    del self._held[entry.key]

    def stop(self) -> None:
        """Stop the writer thread once the queue is empty (what is queued is still written
        or dropped, as its run says)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._wake.notify()
        if thread is not None:
            thread.join()

    # --- the IOManager port (any thread) --------------------------------------------------

    def save(self, run_id: str, task_name: str, task_result_id: str, value: Any) -> str:
        run = self._runs.get(run_id)
        if run is None:  # not a run written behind (a direct caller): store it now
            return self.io_manager.save(run_id, task_name, task_result_id, value)
        key = (run_id, task_name, task_result_id)
        with self._lock:
            while self._pending >= self.max_pending and self._thread is not None:
                self._room.wait()
            self.accepted += 1
            run.numbers[task_name, task_result_id] = self.accepted
            entry = _Entry(key, value, self.accepted, run, run.consumers.get(task_name, 0))
            self._held[key] = entry
            self._queue.append(entry)
            self._pending += 1
            self._wake.notify()
        return f"{run_id}/{task_name}/{task_result_id} (being written)"

    def save_number(self, run_id: str, task_name: str, result_ids: list[str]) -> int:
        """The number of the latest save of these results of a task in a run written behind
        (0: none was saved behind). They are stored once `on_durable` reached it."""
        run = self._runs.get(run_id)
        if run is None:
            return 0
        numbers = run.numbers
        if len(result_ids) == 1:  # the usual case, once per task on the loop: no generator
            return numbers.get((task_name, result_ids[0]), 0)
        return max((numbers.get((task_name, r), 0) for r in result_ids), default=0)

    def load(self, run_id: str, task_name: str, task_result_id: str) -> Any:
        entry = self._held.get((run_id, task_name, task_result_id))
        if entry is None:
            return self.io_manager.load(run_id, task_name, task_result_id)
        with self._lock:
            value = entry.value
            if value is _GONE:  # left memory just now: it is stored
                return self.io_manager.load(run_id, task_name, task_result_id)
            entry.consumers -= 1
            if entry.done and entry.consumers <= 0:
                self._forget(entry)
        return value

    def exists(self, run_id: str, task_name: str, task_result_id: str) -> bool:
        if (run_id, task_name, task_result_id) in self._held:
            return True
        return self.io_manager.exists(run_id, task_name, task_result_id)

    def list_results(self, run_id: str, task_name: str) -> list[str]:
        return self.io_manager.list_results(run_id, task_name)

    def list_runs(self) -> list[str]:
        return self.io_manager.list_runs()

    def clear_run(self, run_id: str) -> int:
        self.close_run(run_id)
        return self.io_manager.clear_run(run_id)

    # --- the writer thread ----------------------------------------------------------------

    def _write_forever(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    if self._stopping:
                        return
                    self._wake.wait()
                batch = list(self._queue)
                self._queue.clear()
            failures = self._write_batch(batch)
            with self._lock:
                for entry in batch:
                    entry.done = True
                    # a run whose save failed keeps its values for consumers already
                    # running (they fail on the save error, not on a missing input)
                    if entry.consumers <= 0 or entry.run.sink.closed:
                        self._forget(entry)
                    else:
                        self._keep(entry)
                kept = self._kept
                while kept and (
                    not kept[0].counted  # loaded by all its consumers already
                    or self._held_unsized > self.max_held
                    or self._held_bytes > self.max_held_bytes
                ):
                    self._release(kept.popleft())
                self._pending -= len(batch)
                self._room.notify_all()
                loops = {run.loop for run in self._runs.values()}
            last = batch[-1].number
            del batch  # the values it holds count against the next batch's memory otherwise
            with self._lock:
                trim, self._freed = self._freed >= _TRIM_EVERY, self._freed % _TRIM_EVERY
            if trim:
                _trim()
            for loop in loops:
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(self._report, loop, failures, last)
            del failures

    def _write_batch(self, batch: list[_Entry]) -> list[tuple[_Entry, str]]:
        """Store a batch, in order, one result after another (each its own file or object,
        in the design's layout), never over a result already stored (`ResultStore.keeping`):
        a run's results are written once, so one there was committed by a newer owner of the
        run, which took it over while this process was frozen, and may have been read."""
        keeping = getattr(self.io_manager, "keeping", None)
        with keeping() if keeping is not None else contextlib.nullcontext():
            return [failure for entry in batch if (failure := self._write(entry))]

    def _write(self, entry: _Entry) -> tuple[_Entry, str] | None:
        run = entry.run
        if run.failed or run.sink.closed:
            return None  # after a failed save, or for a run that ended: store nothing more
        try:
            save_sized = getattr(self.io_manager, "save_sized", None)
            if save_sized is not None:
                entry.size = save_sized(*entry.key, entry.value)
            else:
                self.io_manager.save(*entry.key, entry.value)
        except BaseException as exc:  # whatever a result's pickling raises: the writer lives on
            run.failed = True
            return entry, describe_exception(exc)
        return None

    def _report(self, loop: Any, failures: list[tuple[_Entry, str]], last: int) -> None:
        """On a run's loop: failures first, then how far the writer got."""
        for entry, error in failures:
            if entry.run.loop is loop and not entry.run.sink.closed:
                _, task_name, result_id = entry.key
                entry.run.sink.on_write_failed(entry.number, task_name, result_id, error)
        for run in list(self._runs.values()):
            if run.loop is loop and not run.sink.closed:
                run.sink.on_durable(last)

    def _keep(self, entry: _Entry) -> None:
        """Keep a stored result in memory for its consumers (under the lock)."""
        self._kept.append(entry)
        entry.counted = True
        if entry.size is None:
            self._held_unsized += 1
        else:
            self._held_bytes += entry.size

    def _release(self, entry: _Entry) -> None:
        """`entry` leaves `_kept` (under the lock)."""
        self._forget(entry)

    def _forget(self, entry: _Entry) -> None:
        """`entry` leaves memory (under the lock): later loads read it from the IO manager."""
        entry.value = _GONE
        self._freed += entry.size or 0
        if entry.counted:  # it stays in `_kept` until it comes first, but holds nothing now
            entry.counted = False
            if entry.size is None:
                self._held_unsized -= 1
            else:
                self._held_bytes -= entry.size
        if self._held.get(entry.key) is entry:
            del self._held[entry.key]
