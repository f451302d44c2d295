"""The Queue port: InMemoryQueue and MultiprocessQueue, one contract for both."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import pickle
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dp.errors import QueueClosedError, QueueFullError
from dp.events import InMemoryQueue, MultiprocessQueue, Queue, QueueEmptyError

MakeQueue = Callable[..., Any]


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


def multiprocess_queue_waiting_in_a_thread(maxsize: int = 0) -> MultiprocessQueue[Any]:
    """A MultiprocessQueue whose async gets wait in its reader thread, as on Windows."""
    queue: MultiprocessQueue[Any] = MultiprocessQueue(maxsize)
    queue._fd = None  # the event loop may not watch the pipe, so a thread must
    return queue


@pytest.fixture(params=["memory", "multiprocess", "multiprocess-thread"])
def make_queue(request: pytest.FixtureRequest) -> MakeQueue:
    """Builds the queue under test; every contract test runs against each adapter."""
    makers: dict[str, MakeQueue] = {
        "memory": InMemoryQueue,
        "multiprocess": MultiprocessQueue,
        "multiprocess-thread": multiprocess_queue_waiting_in_a_thread,
    }
    return makers[request.param]


# --- the contract -------------------------------------------------------------------------


def test_satisfies_the_queue_port(make_queue: MakeQueue) -> None:
    """Every adapter is a Queue."""
    in_memory: Queue[int] = InMemoryQueue()  # the annotations let mypy check the signatures
    across_processes: Queue[int] = MultiprocessQueue()
    assert isinstance(in_memory, Queue)
    assert isinstance(across_processes, Queue)
    assert isinstance(make_queue(), Queue)


async def test_items_come_out_in_order(make_queue: MakeQueue) -> None:
    """get returns items in the order they were put."""
    queue = make_queue()
    for n in range(5):
        await queue.put(n)
    assert [await queue.get() for _ in range(5)] == [0, 1, 2, 3, 4]


async def test_get_waits_for_a_put(make_queue: MakeQueue) -> None:
    """An async get on an empty queue waits, without blocking the loop, for the next put."""
    queue = make_queue()
    getting = asyncio.create_task(queue.get())
    await settle()
    assert not getting.done()
    queue.put_nowait("done")
    assert await getting == "done"


def test_get_nowait_on_an_empty_queue_raises(make_queue: MakeQueue) -> None:
    """get_nowait never waits: an empty queue raises QueueEmptyError."""
    with pytest.raises(QueueEmptyError, match="empty"):
        make_queue().get_nowait()


def test_put_nowait_on_a_full_queue_raises(make_queue: MakeQueue) -> None:
    """put_nowait never waits: a full bounded queue raises QueueFullError with its size."""
    queue = make_queue(1)
    queue.put_nowait("a")
    with pytest.raises(QueueFullError, match="is full \\(1 items\\)"):
        queue.put_nowait("b")


async def test_put_waits_for_room(make_queue: MakeQueue) -> None:
    """An async put on a full bounded queue completes once a get makes room."""
    queue = make_queue(1)
    await queue.put("a")
    putting = asyncio.create_task(queue.put("b"))
    await settle()
    assert not putting.done()
    assert await queue.get() == "a"
    await putting
    assert await queue.get() == "b"


async def test_close_refuses_puts(make_queue: MakeQueue) -> None:
    """After close, put and put_nowait raise QueueClosedError."""
    queue = make_queue()
    queue.close()
    with pytest.raises(QueueClosedError):
        queue.put_nowait(1)
    with pytest.raises(QueueClosedError):
        await queue.put(1)
    assert queue.closed


async def test_close_lets_consumers_drain_then_stop(make_queue: MakeQueue) -> None:
    """Items put before close are still delivered; then `async for` ends."""
    queue = make_queue()
    for n in range(3):
        await queue.put(n)
    queue.close()
    assert [item async for item in queue] == [0, 1, 2]
    with pytest.raises(QueueClosedError):
        await queue.get()


async def test_close_wakes_a_waiting_consumer(make_queue: MakeQueue) -> None:
    """A consumer waiting on an empty queue gets QueueClosedError when it is closed."""
    queue = make_queue()
    getting = asyncio.create_task(queue.get())
    await settle()
    queue.close()
    with pytest.raises(QueueClosedError):
        await getting


async def test_a_cancelled_get_loses_no_item(make_queue: MakeQueue) -> None:
    """Cancelling a waiting get leaves the next item for the next get."""
    queue = make_queue()
    getting = asyncio.create_task(queue.get())
    await settle()
    getting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getting
    await queue.put("kept")
    assert await queue.get() == "kept"


def test_qsize_and_empty(make_queue: MakeQueue) -> None:
    """qsize counts waiting items; empty says whether there are none."""
    queue = make_queue()
    assert (queue.qsize(), queue.empty()) == (0, True)


# --- InMemoryQueue --------------------------------------------------------------------------


async def test_a_woken_getter_that_is_cancelled_passes_the_item_on() -> None:
    """If the getter an item was meant for is cancelled, the next waiting getter takes it."""
    queue: InMemoryQueue[str] = InMemoryQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await settle()
    queue.put_nowait("item")
    first.cancel()
    assert await second == "item"


async def test_close_wakes_a_waiting_producer() -> None:
    """A producer waiting for room gets QueueClosedError when the queue is closed."""
    queue: InMemoryQueue[int] = InMemoryQueue(1)
    queue.put_nowait(1)
    putting = asyncio.create_task(queue.put(2))
    await settle()
    queue.close()
    with pytest.raises(QueueClosedError):
        await putting
    assert queue.full()


# --- MultiprocessQueue ----------------------------------------------------------------------


def refuse_to_load() -> None:
    raise ValueError("cannot be rebuilt here")


class BreaksOnArrival:
    """Pickles fine, fails to unpickle: like a class the receiving process cannot import."""

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return (refuse_to_load, ())


@pytest.mark.skipif(sys.platform == "win32", reason="Windows event loops cannot watch pipes")
async def test_fileno_lets_an_event_loop_watch_many_queues() -> None:
    """A loop can watch fileno() and drain the queue with get_nowait whenever it is readable."""
    queue: MultiprocessQueue[int] = MultiprocessQueue()
    received: list[int] = []
    all_in = asyncio.Event()

    def drain() -> None:
        with contextlib.suppress(QueueEmptyError):
            while True:
                received.append(queue.get_nowait())
        if len(received) == 3:
            all_in.set()

    loop = asyncio.get_running_loop()
    loop.add_reader(queue.fileno(), drain)
    try:
        for number in range(3):
            queue.put_nowait(number)
        await all_in.wait()
    finally:
        loop.remove_reader(queue.fileno())
    assert received == [0, 1, 2]


def test_an_unpicklable_item_is_refused_at_put() -> None:
    """put fails at once with TypeError instead of the item vanishing in a feeder thread."""
    queue: MultiprocessQueue[Any] = MultiprocessQueue()
    with pytest.raises(TypeError, match="cannot send function through a MultiprocessQueue"):
        queue.put_nowait(lambda: None)


@pytest.mark.parametrize("make", [MultiprocessQueue, multiprocess_queue_waiting_in_a_thread])
async def test_an_item_that_fails_to_unpickle_fails_only_its_own_get(make: MakeQueue) -> None:
    """The get that receives a broken item raises; the items after it still arrive."""
    queue = make()
    getting = asyncio.create_task(queue.get())
    await settle()
    queue.put_nowait(BreaksOnArrival())
    queue.put_nowait("next")
    with pytest.raises(ValueError, match="cannot be rebuilt here"):
        await getting
    assert await queue.get() == "next"


def double_until_closed(tasks: MultiprocessQueue[int], results: MultiprocessQueue[int]) -> None:
    """A worker process using the sync API: answer each task, close results when done."""
    while True:
        try:
            number = tasks.get_sync(timeout=30)
        except QueueClosedError:
            break
        results.put_sync(number * 2)
    results.close()


async def async_double_until_closed(
    tasks: MultiprocessQueue[int], results: MultiprocessQueue[int]
) -> None:
    async for number in tasks:
        await results.put(number * 2)
    results.close()


def run_async_worker(tasks: MultiprocessQueue[int], results: MultiprocessQueue[int]) -> None:
    """A worker process using the async API."""
    asyncio.run(async_double_until_closed(tasks, results))


unix_only = pytest.mark.skipif(sys.platform == "win32", reason="no forkserver on Windows")


@pytest.mark.parametrize(
    ("start_method", "worker"),
    [
        ("spawn", double_until_closed),
        ("spawn", run_async_worker),
        pytest.param("forkserver", run_async_worker, marks=unix_only),
    ],
)
async def test_round_trip_through_a_child_process(
    start_method: str, worker: Callable[..., None]
) -> None:
    """An async parent and a child process (sync or async) exchange items and close cleanly."""
    ctx: Any = multiprocessing.get_context(start_method)  # typeshed: BaseContext has no Process
    tasks: MultiprocessQueue[int] = MultiprocessQueue(context=ctx)
    results: MultiprocessQueue[int] = MultiprocessQueue(context=ctx)
    child = ctx.Process(target=worker, args=(tasks, results))
    child.start()
    try:
        for number in range(100):
            await tasks.put(number)
        tasks.close()
        answers = [answer async for answer in results]
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert answers == [number * 2 for number in range(100)]
    assert child.exitcode == 0


def test_get_sync_times_out() -> None:
    """get_sync with a timeout raises QueueEmptyError saying how long it waited."""
    queue: MultiprocessQueue[int] = MultiprocessQueue()
    with pytest.raises(QueueEmptyError, match=re.escape("no item within 0.01 s")):
        queue.get_sync(timeout=0.01)


def test_put_sync_and_get_sync() -> None:
    """Plain sync code uses put_sync and get_sync."""
    queue: MultiprocessQueue[str] = MultiprocessQueue()
    queue.put_sync("hello")
    assert queue.get_sync(timeout=10) == "hello"


def test_it_only_pickles_for_a_new_process() -> None:
    """Like multiprocessing.Queue, it travels as a Process argument, not through pickle.dumps."""
    with pytest.raises(RuntimeError, match="inheritance"):
        pickle.dumps(MultiprocessQueue())


def test_discard_lets_a_process_exit_when_a_dead_peer_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    """A peer killed while holding the queue's write lock cannot hang our exit after discard()."""
    script = tmp_path / "held_lock.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing, os, signal

            from dp.events import MultiprocessQueue


            def grab_and_die(queue):
                queue._queue._wlock.acquire()  # as if killed in the middle of a write
                os.kill(os.getpid(), signal.SIGKILL)


            if __name__ == "__main__":
                ctx = multiprocessing.get_context("spawn")
                queue = MultiprocessQueue(context=ctx)
                child = ctx.Process(target=grab_and_die, args=(queue,))
                child.start()
                child.join()
                queue.put_nowait("stuck behind the dead peer's lock")
                queue.discard()
                print("exiting")
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "exiting" in done.stdout
