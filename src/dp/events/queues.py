"""Adapters of the `Queue` port: `InMemoryQueue` between asyncio tasks, `MultiprocessQueue`
between processes. Both close the same way, so code written against the port runs on either.

`MultiprocessQueue` carries task-completion messages between the orchestrator and its worker
processes, so an async `get()` must neither block the event loop nor add much latency. It
takes an item at once when one is ready. Otherwise, on Unix, the event loop watches the
queue's pipe and reads when it becomes readable, which costs no thread hop; elsewhere one
reader thread per queue waits and wakes the loop. Closing is signalled in-band, by a marker
after the items already put, so consumers in every process drain what was sent before
`close()` and then stop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import functools
import math
import multiprocessing
import multiprocessing.queues
import os
import pickle
import queue
import select
import sys
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any, Generic, Self, TypeVar

from dp.backoff import Backoff
from dp.errors import QueueClosedError, QueueFullError, UnpicklableItemError
from dp.events.ports import QueueEmptyError

__all__ = ["InMemoryQueue", "MultiprocessQueue"]

T = TypeVar("T")

#: the pauses of `put` while the queue is full: 0.5 ms, doubling up to 50 ms
_FULL_BACKOFF = Backoff(first=0.0005, cap=0.05)


class InMemoryQueue(Generic[T]):
    """An asyncio FIFO with an optional bound and a final `close()`.

    Unlike `asyncio.Queue` (before Python 3.13) it can be closed: waiting producers and
    consumers wake up, `put` raises `QueueClosedError`, `get` drains what is left and then
    raises `QueueClosedError`. `async for item in queue` stops there.

    Args:
        maxsize: items held before `put` waits (0 for unbounded).
    """

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    def put_nowait(self, item: T) -> None:
        """Add `item` at once.

        Raises:
            QueueFullError: if the queue is bounded and full.
            QueueClosedError: if the queue is closed.
        """
        if self._closed:
            raise QueueClosedError("the queue is closed; nothing more can be put")
        if 0 < self.maxsize <= len(self._items):
            raise QueueFullError("InMemoryQueue", self.maxsize)
        self._items.append(item)
        _wake_next(self._getters)

    async def put(self, item: T) -> None:
        """Add `item`, waiting while the queue is full.

        Raises:
            QueueClosedError: if the queue is closed, also while waiting.
        """
        while 0 < self.maxsize <= len(self._items) and not self._closed:
            await _wait(self._putters, lambda: len(self._items) < self.maxsize)
        self.put_nowait(item)

    def get_nowait(self) -> T:
        """Remove and return the oldest item at once.

        Raises:
            QueueEmptyError: if no item is waiting.
            QueueClosedError: if no item is waiting and the queue is closed.
        """
        if not self._items:
            if self._closed:
                raise QueueClosedError("the queue is closed and empty")
            raise QueueEmptyError("the queue is empty")
        item = self._items.popleft()
        _wake_next(self._putters)
        return item

    async def get(self) -> T:
        """Remove and return the oldest item, waiting while the queue is empty.

        Raises:
            QueueClosedError: once the queue is closed and empty.
        """
        while not self._items and not self._closed:
            await _wait(self._getters, lambda: bool(self._items))
        return self.get_nowait()

    def qsize(self) -> int:
        """Number of items waiting."""
        return len(self._items)

    def empty(self) -> bool:
        """Whether no item is waiting."""
        return not self._items

    def full(self) -> bool:
        """Whether a bounded queue has no room."""
        return 0 < self.maxsize <= len(self._items)

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed

    def close(self) -> None:
        """Refuse new items; consumers get what is left, then `QueueClosedError`."""
        self._closed = True
        for waiters in (self._getters, self._putters):
            while waiters:
                _wake_next(waiters)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.get()
        except QueueClosedError:
            raise StopAsyncIteration from None


def _wake_next(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


async def _wait(waiters: deque[asyncio.Future[None]], ready: Callable[[], bool]) -> None:
    """Wait to be woken; if cancelled after being woken, pass the wake-up on."""
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    except asyncio.CancelledError:
        if waiter in waiters:
            waiters.remove(waiter)
        elif ready():
            _wake_next(waiters)
        raise


# --- across processes ---------------------------------------------------------------------

_POLL = 0.05  # seconds a reader thread waits before checking that its request still stands
_CLOSED = b""  # the in-band marker close() sends after the items; pickle never makes b""


def _readable(fd: int, timeout: float | None = 0.0) -> bool:
    """Whether `fd` is readable within `timeout` seconds (None: wait), like Connection.poll."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if timeout is None:
        return bool(poller.poll())
    return bool(poller.poll(max(0, math.ceil(timeout * 1000))))  # a late caller passes < 0


class _Request:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False


class MultiprocessQueue(Generic[T]):
    """A `multiprocessing` queue behind the `Queue` port, for async and for plain sync code.

    Pass it to child processes as a `Process` argument (it pickles only when spawning, like
    `multiprocessing.Queue`). `put` pickles the item at once, so an unpicklable one fails
    there rather than vanish in a background thread. `close()` closes it for every process:
    `put` raises `QueueClosedError` at once, and each consumer receives the items sent before
    the close, then `QueueClosedError` (`async for item in queue` simply stops). Within one
    process, await it from one event loop at a time.

    Args:
        maxsize: items held before `put` waits (0 for unbounded).
        context: the multiprocessing context whose processes will use the queue (default:
            "spawn", safe with threads and on every platform). Start the processes from the
            same context.
    """

    __slots__ = (
        "_closed_flag",
        "_fd",
        "_leftover",
        "_lock",
        "_pid",
        "_queue",
        "_reader",
        "_requests",
        "_saw_close",
        "_waiters",
        "_watching",
        "maxsize",
    )

    def __init__(self, maxsize: int = 0, *, context: BaseContext | None = None) -> None:
        ctx = context if context is not None else multiprocessing.get_context("spawn")
        self.maxsize = maxsize
        self._queue: multiprocessing.queues.Queue[Any] = ctx.Queue(maxsize)
        self._closed_flag = ctx.RawValue(ctypes.c_bool, False)  # shared, read on every put
        self._init_local()

    def _init_local(self) -> None:
        """Set up the per-process state; runs again after unpickling in a child."""
        self._pid = os.getpid()  # a forked child inherits this state and must rebuild it
        self._leftover: deque[T] = deque()  # taken for a get() that was cancelled meanwhile
        self._saw_close = False
        # Waiting on the pipe: its descriptor, None where event loops cannot watch pipes
        # (Windows), and the async gets waiting for it to become readable.
        self._fd = None if sys.platform == "win32" else self.fileno()
        if self._fd is not None:
            # multiprocessing's Connection.poll builds a selectors object per call (~10 us)
            # and every non-blocking get polls: one poll() system call does the same. This
            # replaces a private attribute of multiprocessing's Queue, kept for `make bench`'s
            # "completion messages from a child, async get": 67,000/s against 48,000/s with
            # the stock poll (alternating rounds); the round trip gains 6%.
            self._queue._poll = functools.partial(_readable, self._fd)  # type: ignore[attr-defined]
        self._waiters: deque[asyncio.Future[T]] = deque()
        self._watching: asyncio.AbstractEventLoop | None = None  # the loop watching the pipe
        # Waiting in a thread: requests for the reader thread, which runs while there are any.
        self._requests: queue.SimpleQueue[tuple[concurrent.futures.Future[T], _Request]]
        self._requests = queue.SimpleQueue()
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> tuple[Any, Any, int]:
        return (self._queue, self._closed_flag, self.maxsize)

    def __setstate__(self, state: tuple[Any, Any, int]) -> None:
        self._queue, self._closed_flag, self.maxsize = state
        self._init_local()

    # --- putting ----------------------------------------------------------------------------

    def put_nowait(self, item: T) -> None:
        """Add `item` without waiting (a background thread sends it).

        Raises:
            QueueFullError: if the queue is bounded and full.
            QueueClosedError: if the queue is closed.
        """
        self.put_sync(item, timeout=0)

    def put_sync(self, item: T, timeout: float | None = None) -> None:
        """Add `item`, blocking up to `timeout` seconds (None: forever) while the queue is full.

        Raises:
            QueueFullError: if the queue stayed full for `timeout` seconds.
            QueueClosedError: if the queue is closed.
        """
        if self._closed_flag.value:
            raise QueueClosedError("the queue is closed; nothing more can be put")
        # Pickle here, not in multiprocessing's feeder thread, which would print the error
        # and drop the item, leaving its consumer waiting forever.
        try:
            data = pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise UnpicklableItemError(type(item).__name__, str(exc)) from exc
        try:
            self._queue.put(data, timeout != 0, timeout or None)
        except queue.Full:
            raise QueueFullError("MultiprocessQueue", self.maxsize) from None

    async def put(self, item: T) -> None:
        """Add `item`; while the queue is full, retry after a growing pause (up to 50 ms).

        Raises:
            QueueClosedError: if the queue is closed.
        """
        tries = 0
        while True:
            try:
                return self.put_nowait(item)
            except QueueFullError:
                tries += 1
                await asyncio.sleep(_FULL_BACKOFF.delay(tries))

    # --- getting ----------------------------------------------------------------------------

    def get_nowait(self) -> T:
        """Remove and return the oldest item at once.

        Raises:
            QueueEmptyError: if no item is ready (or another process is reading).
            QueueClosedError: if the queue was closed and everything sent before was taken.
        """
        return self.get_sync(timeout=0)

    def get_sync(self, timeout: float | None = None) -> T:
        """Remove and return the oldest item, blocking up to `timeout` seconds (None: forever).

        Raises:
            QueueEmptyError: if no item came within `timeout` seconds.
            QueueClosedError: if the queue was closed and everything sent before was taken.
        """
        if self._leftover:
            return self._leftover.popleft()
        if self._saw_close:
            raise QueueClosedError("the queue is closed and empty")
        try:
            data = self._queue.get(timeout != 0, timeout or None)
        except queue.Empty:
            raise QueueEmptyError(
                "the queue is empty" if timeout == 0 else f"no item within {timeout} s"
            ) from None
        if data == _CLOSED:
            self._saw_close = True
            with contextlib.suppress(queue.Full, ValueError):  # pass the marker on, so
                self._queue.put_nowait(_CLOSED)  # consumers in other processes stop too
            raise QueueClosedError("the queue is closed and empty")
        return pickle.loads(data)  # type: ignore[no-any-return]  # items are what was put

    async def get(self) -> T:
        """Remove and return the oldest item, waiting without blocking the event loop.

        Raises:
            QueueClosedError: if the queue was closed and everything sent before was taken.
        """
        try:
            return self.get_nowait()
        except QueueEmptyError:
            pass
        if self._pid != os.getpid():  # forked, not spawned: the waiting state is the parent's
            self._init_local()
        if self._fd is not None:
            return await self._get_when_readable(self._fd)
        return await self._get_in_thread()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.get()
        except QueueClosedError:
            raise StopAsyncIteration from None

    async def _get_when_readable(self, fd: int) -> T:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        self._waiters.append(waiter)
        if self._watching is not loop:
            loop.add_reader(fd, self._on_readable)
            self._watching = loop
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # an item came just as we were
                self._leftover.appendleft(waiter.result())  # cancelled: keep it
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _on_readable(self) -> None:
        """Hand ready items to waiting gets; the loop calls this while the pipe is readable."""
        if not self._waiters:
            # Watching outlives each get() so back-to-back gets need no system calls to
            # (un)register; it ends here, when the pipe is readable and nobody waits.
            loop, self._watching = self._watching, None
            if loop is not None and self._fd is not None:
                loop.remove_reader(self._fd)
            return
        while self._waiters:
            try:
                item = self.get_nowait()
            except QueueEmptyError:  # another process took it, or holds the read lock
                return
            except QueueClosedError:
                for waiter in self._waiters:
                    if not waiter.done():
                        waiter.set_exception(QueueClosedError("the queue is closed and empty"))
                return
            except Exception as exc:  # e.g. an item that cannot be unpickled here
                if target := self._next_waiter():
                    target.set_exception(exc)
                continue
            if target := self._next_waiter():
                target.set_result(item)
            else:
                self._leftover.appendleft(item)
                return

    def _next_waiter(self) -> asyncio.Future[T] | None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # done ones were cancelled and are not yet removed
                return waiter
        return None

    async def _get_in_thread(self) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        request = _Request()
        with self._lock:
            self._requests.put((future, request))
            if self._reader is None:
                # A daemon thread: a blocked read must never keep the process from exiting.
                self._reader = threading.Thread(target=self._read, name="dp-queue", daemon=True)
                self._reader.start()
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            request.cancelled = True
            future.add_done_callback(self._keep_late_item)
            raise

    def _keep_late_item(self, future: concurrent.futures.Future[T]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._leftover.append(future.result())

    def _read(self) -> None:
        """The reader thread: serve requests; stop once the queue is seen closed."""
        while True:
            self._serve(*self._requests.get())
            if self._saw_close:  # every later get fails at once: answer the queued ones, stop
                with self._lock:
                    while not self._requests.empty():
                        self._serve(*self._requests.get())
                    self._reader = None
                return

    def _serve(self, future: concurrent.futures.Future[T], request: _Request) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            while not request.cancelled:
                try:
                    future.set_result(self.get_sync(timeout=_POLL))
                    return
                except QueueEmptyError:
                    continue
            future.set_exception(QueueEmptyError("the get() was cancelled"))
        except BaseException as exc:  # hand every failure to the awaiting task
            future.set_exception(exc)

    # --- state ------------------------------------------------------------------------------

    def fileno(self) -> int:
        """A descriptor that is readable while items wait, for `loop.add_reader`.

        It lets one event loop watch many queues (and process sentinels) and drain each with
        `get_nowait()` when it turns readable. It stays readable once the queue is closed.
        Watch it or await `get()`, not both.
        """
        reader: Any = self._queue._reader  # type: ignore[attr-defined]  # the pipe's read end
        return int(reader.fileno())

    def qsize(self) -> int:
        """Approximate number of items waiting (not available on macOS)."""
        return self._queue.qsize() + len(self._leftover)

    def empty(self) -> bool:
        """Whether no item is waiting, as far as this process can tell."""
        return not self._leftover and self._queue.empty()

    @property
    def closed(self) -> bool:
        """Whether any process closed the queue."""
        return bool(self._closed_flag.value)

    def discard(self) -> None:
        """Stop using the queue in this process without sending anything more.

        For a queue whose peer process is gone (killed, crashed): `close()` would send a
        marker, which needs the queue's cross-process write lock, and a process killed while
        writing never releases it. Items not yet sent are dropped, and the interpreter's exit
        does not wait for them.
        """
        self._queue.cancel_join_thread()
        self._queue.close()

    def close(self) -> None:
        """Close the queue for every process; consumers drain what was sent before."""
        if self._closed_flag.value:
            return
        self._closed_flag.value = True
        try:
            self._queue.put_nowait(_CLOSED)
        except queue.Full:  # the marker waits for room without blocking the caller
            threading.Thread(target=self._queue.put, args=(_CLOSED,), daemon=True).start()
