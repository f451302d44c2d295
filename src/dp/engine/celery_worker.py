"""The Celery side of dp: the app both ends share, and the one task a `dp worker` runs.

Every dp task travels as the same Celery task, `dp.run`, whose only argument is a
`TaskMessage` as a JSON object (Celery's JSON serializer; pickle is refused on both ends): the
worker imports the task function by its import path, loads the inputs from the shared IO
manager, runs it, saves the results there, and pushes small `WorkerMessage`s (started, each
chunk, done) onto the Redis list the message names (`reply_to`), which the orchestrator reads.

Reliability comes from Celery's late acknowledgement: a message is acknowledged only when the
attempt ended, so a worker that dies mid-task (`reject_on_worker_lost` for a lost pool
process; the broker's visibility timeout for a lost machine) hands it to another worker. The
orchestrator does not wait for the visibility timeout: `dp worker`'s heartbeats
(`dp.engine.celery_beat`) let it take a silent worker's attempts for lost within seconds and
send them again. A delivered attempt first says it started and checks, in the same round
trip, that its orchestrator has not taken it for lost (then it runs nothing, and a long
attempt asks again before each save); then, in this order, that

- its run still has the ownership epoch it was handed out with (`RunStore.get_run`): a fenced
  attempt is answered as such and never runs;
- its result is not already committed (an earlier delivery saved it, then died before it was
  acknowledged): it is answered with the stored result ids and does not run again.

A task's `timeout` is Celery's hard time limit for its message: the pool process running it is
killed and replaced, and the orchestrator, which saw it start, reports the timeout. Retries are
dp's (the run record counts each attempt); Celery never retries on its own.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from dp.engine.celery_beat import REPLY_TTL, is_lost, lost_key
from dp.engine.executors import timeout_outcome
from dp.engine.fenced_results import fenced
from dp.engine.messages import (
    ChunkMessage,
    CompletionMessage,
    StartedMessage,
    TaskMessage,
    WorkerMessage,
)
from dp.engine.model import manifest_result_id
from dp.engine.worker import Worker, format_error, resolve_task
from dp.errors import ConfigError, DPError, ExecutorSetupError, FencedError
from dp.store.records import HOST
from dp.tasks import TaskMetadata

if TYPE_CHECKING:
    from celery import Celery

    from dp.io import IOManager
    from dp.store.records import RunStore

__all__ = [
    "DEFAULT_QUEUE",
    "TASK_NAME",
    "VISIBILITY_TIMEOUT",
    "WorkerConfig",
    "check_timeouts",
    "heartbeat_timeout",
    "make_app",
    "queued_timeout",
    "visibility_timeout",
]

#: the Celery task every dp task travels as
TASK_NAME: Final = "dp.run"
#: the queue of tasks without `@task(queue=...)`
DEFAULT_QUEUE: Final = "dp"
#: seconds a delivered, unacknowledged message waits before the broker gives it to another
#: worker (Redis transport); must exceed every task's timeout
VISIBILITY_TIMEOUT: Final = 3600.0
VISIBILITY_VARIABLE: Final = "DP_CELERY_VISIBILITY_TIMEOUT"
#: seconds without a heartbeat after which the orchestrator takes an attempt for lost
HEARTBEAT_TIMEOUT: Final = 30.0
HEARTBEAT_VARIABLE: Final = "DP_CELERY_HEARTBEAT_TIMEOUT"
#: seconds a task may wait in a queue no worker takes anything from, then it fails
QUEUED_TIMEOUT: Final = 600.0
QUEUED_VARIABLE: Final = "DP_CELERY_QUEUED_TIMEOUT"


def visibility_timeout(env: Mapping[str, str] | None = None) -> float:
    """The broker visibility timeout: `DP_CELERY_VISIBILITY_TIMEOUT` seconds, or one hour.

    Raises:
        ConfigError: the variable is not a number of seconds > 0.
    """
    return _seconds(VISIBILITY_VARIABLE, VISIBILITY_TIMEOUT, "celery visibility timeout", env)


def heartbeat_timeout(env: Mapping[str, str] | None = None) -> float:
    """Seconds without a heartbeat after which an attempt is taken for lost and sent again:
    `DP_CELERY_HEARTBEAT_TIMEOUT`, or 30.

    Raises:
        ConfigError: the variable is not a number of seconds > 0.
    """
    seconds = _seconds(HEARTBEAT_VARIABLE, HEARTBEAT_TIMEOUT, "celery heartbeat timeout", env)
    if seconds < 1:
        raise ConfigError(
            "celery heartbeat timeout",
            str(seconds),
            HEARTBEAT_VARIABLE,
            "must be at least 1 second: workers beat several times a second at most, so a "
            "shorter bound would take live workers for lost",
        )
    return seconds


def queued_timeout(env: Mapping[str, str] | None = None) -> float:
    """Seconds a task may wait in its queue while no worker takes anything from that queue,
    before it fails: `DP_CELERY_QUEUED_TIMEOUT`, or 600 (Airflow's `task_queued_timeout`).

    Raises:
        ConfigError: the variable is not a number of seconds > 0.
    """
    return _seconds(QUEUED_VARIABLE, QUEUED_TIMEOUT, "celery queued timeout", env)


def _seconds(variable: str, default: float, what: str, env: Mapping[str, str] | None) -> float:
    text = (os.environ if env is None else env).get(variable, "")
    if not text:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(what, text, variable, "must be seconds > 0")
    return seconds


def check_timeouts(tasks: Iterable[TaskMetadata], visibility: float) -> None:
    """Refuse tasks whose timeout the broker's visibility timeout does not cover: a message
    unacknowledged for that long is delivered again, so the task would run twice at once.

    Raises:
        DPError: naming the tasks, their timeouts and what to change.
    """
    too_long = sorted(
        (meta.name, meta.timeout)
        for meta in tasks
        if meta.timeout is not None and meta.timeout >= visibility
    )
    if too_long:
        listed = ", ".join(f"{name!r} (timeout {timeout:g}s)" for name, timeout in too_long)
        raise ExecutorSetupError(
            "celery",
            f"the Celery broker's visibility timeout is {visibility:g}s, and tasks {listed} may "
            "run at least that long: the broker would hand them to a second worker while the "
            f"first still runs them. Set {VISIBILITY_VARIABLE} above the longest task timeout "
            "(on the workers and the orchestrator), or lower those timeouts.",
        )


def make_app(broker_url: str, *, visibility: float | None = None) -> Celery:
    """A Celery app on `broker_url`, configured as dp needs it on both ends.

    Raises:
        ConfigError: Celery is not installed.
    """
    try:
        from celery import Celery
    except ModuleNotFoundError:
        raise ConfigError(
            "executor",
            "celery",
            "the configuration",
            "needs the 'celery' package, which is not installed; pip install 'dp[celery]'",
        ) from None
    app = Celery("dp", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],  # a pickled payload is refused, never loaded
        result_serializer="json",
        task_ignore_result=True,  # completions travel on dp's reply lists, not a result backend
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_default_queue=DEFAULT_QUEUE,
        task_create_missing_queues=True,
        worker_prefetch_multiplier=4,
        worker_send_task_events=True,  # Flower (and `celery events`) can follow the workers
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(visibility or visibility_timeout()),
    )
    app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)(_run)
    return app


def _transport_options(visibility: float) -> dict[str, float]:
    """Redis transport options: a lost worker's messages are handed out again soon after the
    visibility timeout (kombu sweeps every 10 s x 10 calls by default, 100 s in all)."""
    return {
        "visibility_timeout": visibility,
        "unacked_restore_interval": min(10.0, max(1.0, visibility / 3)),
        "unacked_restore_throttle": 1,
    }


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What a worker process needs besides the task messages: the same backends as the
    orchestrator (results, run store) and the broker the replies go to.

    The backends come as factories (ports), built by `dp worker` from the settings: each pool
    process calls them on its first task, so no connection crosses a fork, and the engine
    never imports the wiring (`dp.config`) that knows the URLs.

    Attributes:
        broker_url: the Redis broker the replies go to.
        open_results: opens the results, the same ones the orchestrator writes.
        open_store: opens the run store (epoch checks, attempts); None when the run store
            is in the orchestrator's memory, which no worker can reach.
    """

    broker_url: str
    open_results: Callable[[], IOManager]
    open_store: Callable[[], RunStore] | None
    capture_output: bool = True


#: set by `dp worker` before the pool starts, so every pool process inherits it
_config: WorkerConfig | None = None


def configure(config: WorkerConfig) -> None:
    global _config
    _config = config
    _Backends.current.cache_clear()


class _Backends:
    """The connections of one pool process, opened on its first task (never across a fork)."""

    def __init__(self, config: WorkerConfig) -> None:
        import redis

        self.redis = redis.Redis.from_url(config.broker_url)
        self.io: IOManager = config.open_results()
        self.store: RunStore | None = None if config.open_store is None else config.open_store()
        self.worker = Worker(self.io, capture_output=config.capture_output)
        self.tasks: dict[str, TaskMetadata | str] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    @functools.lru_cache(maxsize=1)
    def current(pid: int) -> _Backends:
        if _config is None:
            raise ExecutorSetupError(
                "celery", "this Celery worker was not started by `dp worker`; start it with that"
            )
        return _Backends(_config)

    def reply(self, key: str, message: WorkerMessage) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, message.to_json())
        pipe.expire(key, REPLY_TTL)  # an answer nobody reads any more does not stay forever
        pipe.execute()

    def begin(self, message: TaskMessage) -> bool:
        """Say the attempt started and learn, in the same round trip, whether its
        orchestrator took it for lost meanwhile (then it must not run)."""
        started = StartedMessage(message.handle, HOST, os.getpid(), time.time())
        pipe = self.redis.pipeline(transaction=False)
        pipe.sismember(lost_key(message.reply_to), str(message.handle))
        pipe.rpush(message.reply_to, started.to_json())
        pipe.expire(message.reply_to, REPLY_TTL)
        return bool(pipe.execute()[0])


class _LostGuard:
    """The `CommitGuard` of an attempt on a worker: closed once its orchestrator took it for
    lost (a worker that was frozen or cut off past the heartbeat bound), or once its run was
    taken over (a resume after its orchestrator died: a newer epoch). Asked before each save;
    only an attempt running for half that bound can be lost, and the start checked the epoch,
    so short attempts never pay the round trips."""

    __slots__ = ("backends", "message", "since")

    def __init__(self, backends: _Backends, message: TaskMessage, since: float) -> None:
        self.backends = backends
        self.message = message
        #: no need to ask before this `time.monotonic()` (a stream's many saves ask once a
        #: second at most, unless the process was frozen in between)
        self.since = since + message.heartbeat / 2

    @property
    def closed(self) -> bool:
        message = self.message
        now = time.monotonic()
        if not message.heartbeat or now < self.since:
            return False
        backends = self.backends
        try:
            if is_lost(backends.redis, message.reply_to, message.handle):
                return True
            store = backends.store
            if store is not None and message.epoch:  # noqa: SIM102 (one round trip each)
                if store.get_run(message.run_id).epoch != message.epoch:
                    return True
        except Exception:  # unreachable, or not recorded: saving (atomically) beats failing
            return False
        self.since = now + min(1.0, message.heartbeat / 8)
        return False


def _run(payload: dict[str, Any]) -> None:
    """The Celery task: one dp attempt, answered on its reply list."""
    message = TaskMessage.from_dict(payload)
    try:
        backends = _Backends.current(os.getpid())
    except Exception as exc:  # no answer would leave the run waiting forever: say why
        _Backends.current.cache_clear()
        import redis

        assert _config is not None
        error = f"WorkerSetupError: the worker could not open its backends: {format_error(exc)}"
        with redis.Redis.from_url(_config.broker_url) as client:
            client.rpush(message.reply_to, CompletionMessage.refused(message, error).to_json())
            client.expire(message.reply_to, REPLY_TTL)
        return
    started = time.monotonic()
    reply = functools.partial(backends.reply, message.reply_to)
    if backends.begin(message):  # queued -> running in the run record, unless it was lost
        error = (
            f"LostError: attempt {message.attempt} of task {message.task_name!r} was taken for "
            "lost (its worker was silent past the heartbeat timeout) and sent again; this "
            "late delivery runs nothing"
        )
        reply(CompletionMessage.refused(message, error))
        return
    answer = _precheck(backends, message)
    if answer is not None:
        reply(answer)
        return
    meta = backends.tasks.get(message.import_path)
    if meta is None:
        meta = backends.tasks[message.import_path] = resolve_task(message.import_path)
    if isinstance(meta, str):  # cannot import the task: say so, the run fails with it
        reply(CompletionMessage.refused(message, meta))
        return
    task = message.task(meta)
    guard = _LostGuard(backends, message, started)
    # results are staged per attempt and committed only while it may (dp.engine.fenced_results)
    results = fenced(
        backends.io,
        message.run_id,
        message.epoch,
        message.attempt,
        _may_commit(backends, message, guard),
    )
    worker = Worker(results, capture_output=backends.worker.capture_output)
    on_chunk = None
    if meta.stream_output:

        def on_chunk(result_id: str) -> None:
            reply(ChunkMessage(message.handle, result_id))

    if meta.is_async:
        if backends.loop is None:
            backends.loop = asyncio.new_event_loop()
        outcome = backends.loop.run_until_complete(worker.execute_async(task, on_chunk, guard))
    else:
        outcome = worker.execute(task, on_chunk, guard)
    timeout = message.timeout
    terminated = not outcome.ok and _terminated(outcome.error)
    if not outcome.ok and timeout is not None and _hard_time_limit(outcome.error, started, timeout):
        outcome = timeout_outcome(task, timeout, "; its pool process was stopped and replaced")
        outcome.host, outcome.pid = HOST, os.getpid()
    reply(CompletionMessage.of(message.handle, outcome))
    if terminated:
        # billiard told this pool process to exit (the hard time limit); surviving it, the
        # process would take the next message and be SIGKILLed in the middle of that one
        # (which Celery then redelivers as a lost worker's): exit now, as asked
        raise SystemExit(_TERMINATED_CODE)


# billiard's hard time limit terminates the pool process (SIGTERM), whose handler exits with
# sys.exit(-(256 - signum)); the worker catches that like a task's own sys.exit()
_TERMINATED_CODE: Final = -(256 - signal.SIGTERM)
_TERMINATED: Final = f"SystemExit: {_TERMINATED_CODE}"


def _terminated(error: str | None) -> bool:
    """Whether a failed attempt ended because billiard terminated its pool process."""
    return (error or "").rstrip().endswith(_TERMINATED)


def _hard_time_limit(error: str | None, started: float, timeout: float) -> bool:
    """Whether a failed attempt was the hard time limit stopping it (so: a timeout, retryable).

    The limit's clock starts when the pool accepts the message, a little before this attempt
    measures anything, so the elapsed time alone can fall just short of the timeout."""
    return _terminated(error) or time.monotonic() - started >= timeout * 0.99


def _may_commit(backends: _Backends, message: TaskMessage, guard: _LostGuard) -> Callable[[], bool]:
    """Whether the attempt may still commit a result: not taken for lost, and its run still
    at the epoch it was handed out with (one read of the run store per save)."""

    def may_commit() -> bool:
        if guard.closed:
            return False
        if backends.store is None or not message.epoch:
            return True
        try:
            return backends.store.get_run(message.run_id).epoch == message.epoch
        except DPError:
            return True  # not recorded there: nothing to fence against

    return may_commit


def _precheck(backends: _Backends, message: TaskMessage) -> CompletionMessage | None:
    """The answer to an attempt that must not run: fenced, or already committed."""
    if backends.store is not None and message.epoch:
        try:
            current = backends.store.get_run(message.run_id).epoch
        except DPError:
            current = message.epoch  # not recorded there: nothing to fence against
        if current != message.epoch:
            error = FencedError(message.run_id, message.epoch, current)
            return CompletionMessage.refused(message, f"FencedError: {error}")
    io = backends.io
    try:
        if message.streams:
            manifest = manifest_result_id(message.result_id)
            if not io.exists(message.run_id, message.task_name, manifest):
                return None
            result_ids = list(io.load(message.run_id, message.task_name, manifest))
            for rid in result_ids:  # chunks the lost delivery may not have reported
                backends.reply(message.reply_to, ChunkMessage(message.handle, rid))
        elif io.exists(message.run_id, message.task_name, message.result_id):
            result_ids = [message.result_id]
        else:
            return None
    except DPError:
        return None  # unreadable: run it again
    done = CompletionMessage.refused(message, "")
    return CompletionMessage.from_dict(
        {**done.to_dict(), "ok": True, "error": None, "result_ids": result_ids}
    )
