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
waiting there, not lost; once a worker's heartbeat lists it, the run records that worker as
holding it (`sink.on_reserved`).

Lost workers are found by their heartbeats (`dp.engine.celery_beat`), not by the broker's
visibility timeout: an attempt nothing was heard of for `heartbeat` seconds is recorded lost
with its worker's host and pid (`sink.on_lost`), marked lost in Redis (so the late worker, if
it wakes, runs and saves nothing) and sent again under a new handle; answers to the old handle
are counted (`late_answers`) and ignored. The broker delivering an attempt again (its pool
process died) is recorded the same way. A task waiting in a queue from which no worker took
anything for `queued_timeout` seconds fails, saying how many workers consume that queue, and
one waiting on a queue whose only workers could not import their task file fails at once,
with their report.

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

from dp.engine.celery_beat import beat_period, broken_reports, live_workers, mark_lost
from dp.engine.celery_flights import (
    Flight,
    LostMark,
    QueueFacts,
    import_error,
    queued_error,
    refused,
    serves,
    silence_error,
)
from dp.engine.celery_worker import (
    DEFAULT_QUEUE,
    TASK_NAME,
    check_timeouts,
    heartbeat_timeout,
    make_app,
    queued_timeout,
    visibility_timeout,
)
from dp.engine.executors import TaskSink, timeout_outcome
from dp.engine.messages import (
    ChunkMessage,
    CompletionMessage,
    HeartbeatMessage,
    StartedMessage,
    TaskMessage,
    decode,
)
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
#: seconds without a round trip of the reading thread (normally one every half second) after
#: which the broker counts as unreachable, and nobody's silence as evidence of a lost worker
_DEAF: Final = 3.0
#: attempts of one task lost in a row before dp stops sending it (a task that kills or
#: freezes every worker it runs on must not go round the fleet forever)
_MAX_LOSSES: Final = 3


class CeleryExecutor:
    """Runs tasks on Celery workers (`dp worker FILE`) through a broker, Redis by default.

    Args:
        broker_url: the Celery broker (`redis://HOST:PORT/DB`); answers come back through it.
        capacity: tasks of one run in flight at once (the broker queues them for the workers).
        visibility: the broker's visibility timeout (default: `DP_CELERY_VISIBILITY_TIMEOUT`
            or one hour); a task whose timeout is not below it is refused.
        heartbeat: seconds without a heartbeat before an attempt is taken for lost and sent
            again (default: `DP_CELERY_HEARTBEAT_TIMEOUT` or 30).
        queued: seconds a task may wait in a queue nothing is taken from before it fails
            (default: `DP_CELERY_QUEUED_TIMEOUT` or 600).
    """

    name = "celery"

    def __init__(
        self,
        broker_url: str,
        *,
        capacity: int = 1024,
        visibility: float | None = None,
        heartbeat: float | None = None,
        queued: float | None = None,
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
        self.heartbeat = heartbeat if heartbeat is not None else heartbeat_timeout()
        self.queued_timeout = queued if queued is not None else queued_timeout()
        self.reply_to = f"dp:celery:replies:{uuid.uuid4().hex}"
        #: attempts taken for lost (no heartbeat, or delivered again by the broker)
        self.lost = 0
        #: answers (started, chunk, done) of attempts taken for lost, ignored
        self.late_answers = 0
        #: the reply list cannot be read (set and cleared by the reading thread)
        self.broker_down = False
        #: `time.monotonic()` of the reading thread's last round trip to the broker
        self._read_at = time.monotonic()
        self._app: Any = None
        self._redis: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: queue.SimpleQueue[TaskMessage | LostMark | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._flights: dict[int, Flight] = {}
        self._next_handle = 0
        self._watcher: asyncio.Task[None] | None = None
        #: handles taken for lost: their late answers are counted, not just dropped
        self._lost_handles: set[int] = set()
        #: (run id, task, instance) -> its attempts lost in a row
        self._losses: dict[tuple[str, str, str], int] = {}
        #: queue -> `time.monotonic()` when a worker last took one of our tasks from it
        self._taken: dict[str, float] = {}
        #: the highest handle the send thread has handed to the broker (handles are sent in
        #: the order they are made; written by that thread, read on the loop)
        self._sent_upto = -1

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
        self._read_at = time.monotonic()
        loops = ((self._send_loop, "dp-celery-send"), (self._read_loop, "dp-celery-read"))
        for target, name in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._watcher = self._loop.create_task(self._watch())

    def submit(self, task: ExecutableTask, sink: TaskSink) -> None:
        loop = self._loop
        assert loop is not None, "start() was not awaited"
        try:
            check_timeouts([task.metadata], self.visibility)
        except DPError as exc:
            loop.call_soon(sink.on_done, task, refused(task, f"{type(exc).__name__}: {exc}"))
            return
        self._send(task, sink)

    def _send(self, task: ExecutableTask, sink: TaskSink) -> None:
        handle = self._next_handle
        self._next_handle += 1
        self._flights[handle] = Flight(task, sink, self.queue_of(task))
        self._outbox.put(TaskMessage.of(task, handle, self.reply_to, self.heartbeat))

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
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        self._stopping.set()
        self._outbox.put(None)
        threads, self._threads = self._threads, []
        for thread in threads:
            await asyncio.to_thread(thread.join, 5)
        for flight in self._flights.values():
            if flight.timer is not None:
                flight.timer.cancel()
        # nobody waits for these any more: a worker that gets one later runs nothing
        abandoned = list(self._flights)
        self._flights.clear()
        if self.lost or self.late_answers:
            _log.warning("celery.lost_attempts", lost=self.lost, late_answers=self.late_answers)
        if self._redis is not None:
            with contextlib.suppress(Exception):
                if abandoned:
                    await asyncio.to_thread(
                        mark_lost, self._redis, self.reply_to, abandoned, 2 * self.visibility
                    )
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
            batch: list[TaskMessage] = []
            marks: list[int] = []
            item: TaskMessage | LostMark | None = first
            with contextlib.suppress(queue.Empty):
                while item is not None:
                    if isinstance(item, LostMark):
                        marks.append(item.handle)
                    else:
                        batch.append(item)
                    if len(batch) >= _BATCH:
                        break
                    item = self._outbox.get_nowait()
                if item is None:
                    self._stopping.set()
            if marks:  # before the attempts sent in their place, so a late delivery sees them
                try:
                    mark_lost(self._redis, self.reply_to, marks, 2 * self.visibility)
                except Exception as exc:
                    _log.error("celery.lost_mark_failed", handles=marks, error=str(exc))
            if not batch:
                continue
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
                self._hand_back([_unsent(message, exc) for message in batch])
            self._sent_upto = batch[-1].handle

    def _read_loop(self) -> None:
        """Pop the workers' answers and hand them to the loop in batches."""
        client = self._redis
        key = self.reply_to
        while not self._stopping.is_set():
            try:
                first = client.blpop([key], timeout=0.5)
                self._read_at = time.monotonic()
                self.broker_down = False
                if first is None:
                    continue
                rest = client.lpop(key, _BATCH) or []
            except Exception as exc:
                if self._stopping.is_set():
                    return
                if not self.broker_down:
                    self.broker_down = True
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
        now = time.monotonic()
        for answer in answers:
            kind = type(answer)
            if kind is HeartbeatMessage:
                self._on_beat(answer, now)
                continue
            flight = self._flights.get(answer.handle)
            if flight is None:
                if answer.handle in self._lost_handles:
                    self.late_answers += 1
                    _log.warning(
                        "celery.late_answer_ignored", handle=answer.handle, kind=answer.kind
                    )
                continue  # a late answer to an attempt that timed out, or of another run
            flight.seen = now
            if kind is CompletionMessage:
                self._finished(answer.handle, flight)
                flight.sink.on_done(flight.task, answer.outcome())
            elif kind is ChunkMessage:
                if not flight.started:  # from a worker older than this dp: no start said
                    flight.started = True
                    flight.sink.on_started(flight.task)
                flight.sink.on_chunk(flight.task, answer.result_id)
            elif kind is StartedMessage:
                self._on_started(answer, flight, now)

    def _on_started(self, answer: StartedMessage, flight: Flight, now: float) -> None:
        delivery = (answer.host, answer.pid, answer.started_at)
        if flight.started:
            if flight.delivery is None or delivery == flight.delivery:
                return
            # started again elsewhere: the broker delivered it again, its worker was lost
            if not self._redelivered(answer, flight):
                return
        flight.started = True
        flight.delivery = delivery
        flight.holder = (answer.host, answer.pid)
        self._taken[flight.queue] = now
        flight.sink.on_started(flight.task, host=answer.host or None, pid=answer.pid or None)
        timeout = flight.task.metadata.timeout
        if timeout is not None and self._loop is not None:
            if flight.timer is not None:
                flight.timer.cancel()
            flight.timer = self._loop.call_later(
                timeout + _TIMEOUT_GRACE, self._timed_out, answer.handle, timeout
            )

    def _on_beat(self, beat: HeartbeatMessage, now: float) -> None:
        """A worker says which of our attempts it holds: they are alive."""
        flights = self._flights
        for handle, pid in zip(beat.handles, beat.pids, strict=False):
            flight = flights.get(handle)
            if flight is None:
                continue
            flight.seen = now
            if flight.holder is None:
                self._taken[flight.queue] = now
                if not flight.started:
                    flight.sink.on_reserved(flight.task, host=beat.host, pid=beat.pid)
            if pid or flight.holder is None:
                flight.holder = (beat.host, pid or beat.pid)

    def _finished(self, handle: int, flight: Flight) -> None:
        del self._flights[handle]
        if flight.timer is not None:
            flight.timer.cancel()
        task = flight.task
        self._losses.pop((task.run_id, task.task_name, task.instance), None)

    def _timed_out(self, handle: int, seconds: float) -> None:
        flight = self._flights.get(handle)
        if flight is None:
            return
        self._finished(handle, flight)
        note = "; the worker's hard time limit killed it and replaced its pool process"
        flight.sink.on_done(flight.task, timeout_outcome(flight.task, seconds, note))

    # --- lost workers, empty queues --------------------------------------------------------

    def _restart_clocks(self, now: float) -> None:
        """This process heard nothing for a while through no worker's fault (the broker was
        unreachable, or this process was frozen or starved): every attempt gets a whole
        heartbeat bound again, and every queue a whole queued timeout."""
        for flight in self._flights.values():
            if flight.seen is not None:
                flight.seen = max(flight.seen, now)
            if flight.pushed_at is not None:
                flight.pushed_at = max(flight.pushed_at, now)
            self._taken[flight.queue] = now

    async def _watch(self) -> None:
        """Every few seconds: take silent attempts for lost; fail tasks no worker can take."""
        period = min(beat_period(self.heartbeat), self.queued_timeout / 4)
        last = time.monotonic()
        deaf = False
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            stalled = now - last > period + min(self.heartbeat, self.queued_timeout) / 2
            last = now
            if now - self._read_at > _DEAF:  # the broker does not answer: silence proves nothing
                deaf = True
                continue
            if stalled or deaf:  # back from a frozen loop or a silent broker: judge later
                deaf = False
                self._restart_clocks(now)
                continue
            for handle, flight in list(self._flights.items()):
                if flight.seen is not None and now - flight.seen > self.heartbeat:
                    self._lose(handle, flight, now)
            queues = sorted({f.queue for f in self._flights.values() if f.seen is None})
            if not queues:
                continue
            try:
                facts = await asyncio.to_thread(self._queue_facts, queues)
            except Exception as exc:  # the broker is away: the tasks wait, as they would
                _log.warning("celery.registry_unreadable", error=str(exc))
                continue
            self._check_waiting(facts, time.monotonic())

    def _queue_facts(self, queues: list[str]) -> QueueFacts:
        client = self._redis
        pipe = client.pipeline(transaction=False)
        for name in queues:
            pipe.llen(name)  # kombu's Redis transport: a queue is a list named after it
        waiting = dict(zip(queues, (int(n) for n in pipe.execute()), strict=True))
        return live_workers(client, queues), broken_reports(client, queues), waiting

    def _check_waiting(self, facts: QueueFacts, now: float) -> None:
        """Tasks no worker said it holds: lost with a worker that died before saying so,
        hopeless (the only workers of their queue cannot import their file), or waiting."""
        live, broken, in_broker = facts
        for handle, flight in list(self._flights.items()):
            if flight.seen is not None:
                continue
            queue_name = flight.queue
            if flight.pushed_at is None and handle <= self._sent_upto:
                flight.pushed_at = now  # in the broker since the last look, at the latest
            pushed = flight.pushed_at
            if (
                pushed is not None
                and now - pushed > self.heartbeat
                and not in_broker.get(queue_name, 1)
            ):
                # not in the broker's queue any more, and no worker has said it holds it for
                # a whole heartbeat bound: taken by a worker that died before its first beat
                self._lose(handle, flight, now)
                continue
            workers = live.get(queue_name, 0)
            if not workers:
                report = next((r for r in broken.get(queue_name, ()) if serves(r, flight)), None)
                if report is not None:
                    self._give_up(handle, flight, import_error(flight, report))
                    continue
            waited = now - max(flight.sent_at, self._taken.get(queue_name, 0.0))
            if waited > self.queued_timeout:
                error = queued_error(flight, waited, workers, self.queued_timeout)
                self._give_up(handle, flight, error)

    def _give_up(self, handle: int, flight: Flight, error: str) -> None:
        """Fail an attempt nobody runs; a worker that gets its message later runs nothing."""
        self._finished(handle, flight)
        self._lost_handles.add(handle)
        self._outbox.put(LostMark(handle))
        flight.sink.on_done(flight.task, refused(flight.task, error))

    def _lose(self, handle: int, flight: Flight, now: float) -> None:
        """Nothing was heard of this attempt for the heartbeat bound: record it lost, mark it
        so its worker commits nothing if it wakes up, and send the task again."""
        self._finished(handle, flight)
        self._lost_handles.add(handle)
        self._outbox.put(LostMark(handle))
        host, pid = flight.holder or ("?", 0)
        if self._lost(flight, silence_error(flight, now), host, pid):
            self._send(flight.task, flight.sink)

    def _redelivered(self, answer: StartedMessage, flight: Flight) -> bool:
        """The broker delivered a started attempt again: its first delivery's worker was
        lost. Whether the new delivery goes on (as the next attempt)."""
        host, pid, _ = flight.delivery or ("?", 0, 0.0)
        error = (
            f"WorkerLost: worker {host} pid {pid} was lost while running it; the broker "
            f"delivered it again, to {answer.host} pid {answer.pid}"
        )
        if self._lost(flight, error, host, pid):
            return True
        handle = answer.handle
        self._finished(handle, flight)
        self._lost_handles.add(handle)
        self._outbox.put(LostMark(handle))
        return False

    def _lost(self, flight: Flight, error: str, host: str, pid: int) -> bool:
        """Record a lost attempt; False (and the task failed) once too many were lost."""
        task = flight.task
        self.lost += 1
        key = (task.run_id, task.task_name, task.instance)
        losses = self._losses[key] = self._losses.get(key, 0) + 1
        started_at = flight.delivery[2] if flight.delivery else time.time()
        outcome = TaskOutcome(
            task.task_name,
            task.instance,
            False,
            [],
            started_at,
            max(0.0, time.time() - started_at),
            error,
            host=host,
            pid=pid or None,
        )
        if losses >= _MAX_LOSSES:
            outcome.error = (
                f"{error}; {losses} attempts were lost in a row, so dp stopped sending it: "
                "does the task kill or freeze the worker that runs it?"
            )
            outcome.retryable = False
            flight.sink.on_done(task, outcome)
            return False
        flight.sink.on_lost(task, outcome)
        return not flight.sink.closed


def _unsent(message: TaskMessage, exc: Exception) -> CompletionMessage:
    error = f"BrokerError: task {message.task_name!r} could not be sent to the broker: {exc}"
    return CompletionMessage.refused(message, error, retryable=True)
