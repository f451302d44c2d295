"""`CeleryExecutor`: each ready task becomes one Celery message, run by `dp worker`s anywhere.

The orchestrator side of `dp.engine.celery_worker`. A task is sent as the `TaskMessage` of its
attempt, in JSON, to its queue (`@task(queue=...)`, else `dp`); results never travel, only
the workers' small answers do, and those come back on one Redis list per executor
(`dp:celery:replies:<id>`) rather than through a Celery result backend: one blocking pop
drains every answer of every task in a batch, where a result backend would need a key, a
subscription or a poll per task. Answers are pushed by the workers once the attempt's results
are saved, so an answer never arrives before what it announces.

A sent task is queued until its worker's `StartedMessage` arrives (`sink.on_started`): the run
records it `queued`, with its queue, so a task routed to a queue no worker serves is visible as
waiting there, not lost.

Two threads keep the event loop free of network round trips: one sends the messages (kombu's
producer is not thread-safe, so only that thread uses it), one reads the answers and hands
them to the loop in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Final

from dp.engine.celery_worker import (
    DEFAULT_QUEUE,
    TASK_NAME,
    check_timeouts,
    make_app,
    visibility_timeout,
)
from dp.engine.executors import TaskSink, timeout_outcome
from dp.engine.messages import ChunkMessage, CompletionMessage, StartedMessage, TaskMessage, decode
from dp.engine.model import ExecutableTask, TaskOutcome
from dp.errors import DPError, ExecutorSetupError, InvalidArgumentError, MessageFormatError
from dp.logs import get_logger

if TYPE_CHECKING:
    from dp.io import IOManager

__all__ = ["CeleryExecutor"]

_log = get_logger("dp.engine")

#: seconds past a task's timeout before the orchestrator reports it (the worker's hard time
#: limit kills the attempt at the timeout itself; this only covers the answer being lost)
_TIMEOUT_GRACE: Final = 2.0
#: answers read from the reply list at once
_BATCH: Final = 1000


class CeleryExecutor:
    """Runs tasks on Celery workers (`dp worker FILE`) through a broker, Redis by default.

    Args:
        broker_url: the Celery broker (`redis://HOST:PORT/DB`); answers come back through it.
        capacity: tasks of one run in flight at once (the broker queues them for the workers).
        visibility: the broker's visibility timeout (default: `DP_CELERY_VISIBILITY_TIMEOUT`
            or one hour); a task whose timeout is not below it is refused.
    """

    name = "celery"

    def __init__(
        self, broker_url: str, *, capacity: int = 1024, visibility: float | None = None
    ) -> None:
        if not broker_url.startswith(("redis://", "rediss://")):
            raise InvalidArgumentError(
                "broker_url",
                broker_url,
                "a Redis URL (redis://HOST:PORT/DB) for the Celery executor",
                hint="its workers answer on a Redis list. Set DP_CELERY_BROKER_URL",
            )
        self.broker_url = broker_url
        self.capacity = capacity
        self.visibility = visibility if visibility is not None else visibility_timeout()
        self.reply_to = f"dp:celery:replies:{uuid.uuid4().hex}"
        self._app: Any = None
        self._redis: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: queue.SimpleQueue[TaskMessage | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._flights: dict[int, _Flight] = {}
        self._next_handle = 0

    async def start(self, io_manager: IOManager) -> None:
        if self._threads:
            return
        import redis

        self._loop = asyncio.get_running_loop()
        self._app = make_app(self.broker_url, visibility=self.visibility)
        self._redis = redis.Redis.from_url(self.broker_url)
        try:
            await asyncio.to_thread(self._redis.ping)
        except redis.RedisError as exc:
            raise ExecutorSetupError(
                "celery",
                f"the Celery executor cannot reach its broker at {self.broker_url}: {exc}; "
                "start Redis there or point DP_CELERY_BROKER_URL at it.",
            ) from None
        self._stopping.clear()
        loops = ((self._send_loop, "dp-celery-send"), (self._read_loop, "dp-celery-read"))
        for target, name in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, task: ExecutableTask, sink: TaskSink) -> None:
        loop = self._loop
        assert loop is not None, "start() was not awaited"
        try:
            check_timeouts([task.metadata], self.visibility)
        except DPError as exc:
            loop.call_soon(sink.on_done, task, _refused(task, f"{type(exc).__name__}: {exc}"))
            return
        handle = self._next_handle
        self._next_handle += 1
        self._flights[handle] = _Flight(task, sink)
        self._outbox.put(TaskMessage.of(task, handle, self.reply_to))

    def queue_of(self, task: ExecutableTask) -> str:
        """The Celery queue `task` is sent to: `@task(queue=...)`, else `dp`."""
        return task.metadata.queue or DEFAULT_QUEUE

    def waiting(self) -> list[tuple[str, str]]:
        """Tasks sent and not started or finished yet, as (task, queue): those whose queue no
        worker serves wait here (in the broker) until one does."""
        return [
            (flight.task.describe(), self.queue_of(flight.task))
            for flight in self._flights.values()
            if not flight.started
        ]

    async def shutdown(self) -> None:
        self._stopping.set()
        self._outbox.put(None)
        threads, self._threads = self._threads, []
        for thread in threads:
            await asyncio.to_thread(thread.join, 5)
        for flight in self._flights.values():
            if flight.timer is not None:
                flight.timer.cancel()
        self._flights.clear()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._redis.delete, self.reply_to)
                self._redis.close()
            self._redis = None
        if self._app is not None:
            with contextlib.suppress(Exception):
                self._app.close()
            self._app = None

    # --- threads --------------------------------------------------------------------------

    def _send_loop(self) -> None:
        """Send queued task messages, many per producer checkout."""
        app = self._app
        while not self._stopping.is_set():
            first = self._outbox.get()
            if first is None:
                return
            batch = [first]
            with contextlib.suppress(queue.Empty):
                while len(batch) < _BATCH:
                    message = self._outbox.get_nowait()
                    if message is None:
                        self._stopping.set()
                        break
                    batch.append(message)
            try:
                with app.producer_or_acquire() as producer:
                    for message in batch:
                        app.send_task(
                            TASK_NAME,
                            args=[message.to_dict()],
                            queue=message.queue or DEFAULT_QUEUE,
                            time_limit=message.timeout,
                            serializer="json",
                            producer=producer,
                        )
            except Exception as exc:  # the broker is gone: these attempts fail, retryable
                self._hand_back([_lost(message, exc) for message in batch])

    def _read_loop(self) -> None:
        """Pop the workers' answers and hand them to the loop in batches."""
        client = self._redis
        key = self.reply_to
        while not self._stopping.is_set():
            try:
                first = client.blpop([key], timeout=0.5)
                if first is None:
                    continue
                rest = client.lpop(key, _BATCH) or []
            except Exception as exc:
                if self._stopping.is_set():
                    return
                _log.warning("celery.replies_unreadable", error=str(exc))
                time.sleep(0.5)
                continue
            answers: list[Any] = []
            for raw in (first[1], *rest):
                try:
                    answers.append(decode(raw))
                except MessageFormatError as exc:
                    _log.error("celery.bad_reply", error=str(exc))
            self._hand_back(answers)

    def _hand_back(self, answers: list[Any]) -> None:
        loop = self._loop
        if loop is not None and answers:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(self._on_answers, answers)

    # --- on the loop ----------------------------------------------------------------------

    def _on_answers(self, answers: list[Any]) -> None:
        for answer in answers:
            flight = self._flights.get(answer.handle)
            if flight is None:
                continue  # a late answer to an attempt that timed out, or of another run
            kind = type(answer)
            if kind is CompletionMessage:
                del self._flights[answer.handle]
                if flight.timer is not None:
                    flight.timer.cancel()
                flight.sink.on_done(flight.task, answer.outcome())
            elif kind is ChunkMessage:
                if not flight.started:  # a redelivery's precheck reports chunks unannounced
                    flight.started = True
                    flight.sink.on_started(flight.task)
                flight.sink.on_chunk(flight.task, answer.result_id)
            elif kind is StartedMessage:
                if not flight.started:
                    flight.started = True
                    flight.sink.on_started(flight.task)
                timeout = flight.task.metadata.timeout
                if timeout is not None and flight.timer is None and self._loop is not None:
                    flight.timer = self._loop.call_later(
                        timeout + _TIMEOUT_GRACE, self._timed_out, answer.handle, timeout
                    )

    def _timed_out(self, handle: int, seconds: float) -> None:
        flight = self._flights.pop(handle, None)
        if flight is None:
            return
        note = "; the worker's hard time limit killed it and replaced its pool process"
        flight.sink.on_done(flight.task, timeout_outcome(flight.task, seconds, note))


class _Flight:
    __slots__ = ("sink", "started", "task", "timer")

    def __init__(self, task: ExecutableTask, sink: TaskSink) -> None:
        self.task = task
        self.sink = sink
        self.started = False
        self.timer: asyncio.TimerHandle | None = None


def _refused(task: ExecutableTask, error: str) -> TaskOutcome:
    return TaskOutcome(
        task.task_name, task.instance, False, [], time.time(), 0.0, error, retryable=False
    )


def _lost(message: TaskMessage, exc: Exception) -> CompletionMessage:
    error = f"BrokerError: task {message.task_name!r} could not be sent to the broker: {exc}"
    return CompletionMessage.refused(message, error, retryable=True)
