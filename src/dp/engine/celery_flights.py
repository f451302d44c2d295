"""What the Celery executor knows of each attempt it sent, and what it says of those it gives
up on: lost with a silent worker, waiting on a queue no worker takes from, or needing a file
the queue's only workers cannot import."""

from __future__ import annotations

import asyncio
import time

from dp.engine.celery_beat import BrokenReport
from dp.engine.executors import TaskSink
from dp.engine.model import ExecutableTask, TaskOutcome

__all__ = [
    "Flight",
    "LostMark",
    "QueueFacts",
    "import_error",
    "queued_error",
    "refused",
    "serves",
    "silence_error",
]

#: per queue: live workers, import-failure reports, messages still in the broker's list
QueueFacts = tuple[dict[str, int], dict[str, list[BrokenReport]], dict[str, int]]


class Flight:
    """One sent attempt, as the executor follows it."""

    __slots__ = (
        "delivery",
        "holder",
        "pushed_at",
        "queue",
        "seen",
        "sent_at",
        "sink",
        "started",
        "task",
        "timer",
    )

    def __init__(self, task: ExecutableTask, sink: TaskSink, queue: str) -> None:
        self.task = task
        self.sink = sink
        self.queue = queue
        self.started = False
        self.timer: asyncio.TimerHandle | None = None
        self.sent_at = time.monotonic()
        #: `time.monotonic()` by which the broker had it (None: not sent yet, as far as known)
        self.pushed_at: float | None = None
        #: `time.monotonic()` when a worker last said it holds it (None: still in the broker)
        self.seen: float | None = None
        #: (host, pid) of the worker holding it: the pool process once it runs
        self.holder: tuple[str, int] | None = None
        #: (host, pid, started_at) of the delivery running it
        self.delivery: tuple[str, int, float] | None = None


class LostMark:
    """For the send thread: mark `handle` lost in Redis before sending what follows."""

    __slots__ = ("handle",)

    def __init__(self, handle: int) -> None:
        self.handle = handle


def serves(report: BrokenReport, flight: Flight) -> bool:
    """Whether the worker that reported `report` would have run `flight`'s task: its file is
    the task's module (or it did not say which module it imports)."""
    module = flight.task.metadata.import_path.partition(":")[0]
    return not report.module or report.module.rsplit(".", 1)[-1] == module.rsplit(".", 1)[-1]


def silence_error(flight: Flight, now: float) -> str:
    """Why an attempt nothing was heard of for the heartbeat bound is taken for lost."""
    if flight.seen is None:
        return (
            f"WorkerLost: a worker took it from queue {flight.queue!r} and said nothing "
            f"for {now - (flight.pushed_at or flight.sent_at):.0f}s, no heartbeat either"
        )
    host, pid = flight.holder or ("?", 0)
    what = "running it" if flight.started else "holding it, unstarted"
    return (
        f"WorkerLost: no heartbeat for {now - flight.seen:.0f}s from worker {host} pid {pid} "
        f"({what})"
    )


def import_error(flight: Flight, report: BrokenReport) -> str:
    queue = flight.queue
    return (
        f"WorkerImportError: task {flight.task.describe()!r} cannot run: {report.describe()}; "
        f"no other worker consumes queue {queue!r} (0 workers). Fix {report.target} or its "
        f"environment on {report.host} and start `dp worker` there again."
    )


def queued_error(flight: Flight, waited: float, workers: int, timeout: float) -> str:
    queue = flight.queue
    return (
        f"QueuedTimeoutError: task {flight.task.describe()!r} waited {waited:.0f}s in queue "
        f"{queue!r} and no worker took it, nor any other task from that queue meanwhile; "
        f"{workers} worker{'' if workers == 1 else 's'} consume {queue!r}. Start `dp worker "
        f"FILE --queues {queue}` where the task's file imports, or raise "
        f"DP_CELERY_QUEUED_TIMEOUT (now {timeout:g}s)."
    )


def refused(task: ExecutableTask, error: str) -> TaskOutcome:
    """The outcome of an attempt dp gives up on without a worker's answer: not retried."""
    return TaskOutcome(
        task.task_name, task.instance, False, [], time.time(), 0.0, error, retryable=False
    )
