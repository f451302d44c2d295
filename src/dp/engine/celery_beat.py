"""How dp tells a dead, frozen or broken Celery worker from a slow one: heartbeats and Redis keys.

Celery alone notices a lost worker only when the broker's visibility timeout (an hour) gives its
unacknowledged messages to another worker. dp does not wait for that:

- Every `dp worker` process runs a `Heartbeat` thread (in the worker's main process, apart
  from the pool processes that run task code, so a task holding the GIL or a pool process
  being replaced never silences it). Every few seconds it pushes one `HeartbeatMessage` per
  orchestrator onto that orchestrator's reply list, naming the attempts it holds (running, or
  prefetched and waiting), and it stamps itself in the worker registry of each queue it serves.
- The orchestrator (`CeleryExecutor`) takes an attempt for lost once nothing was heard of it
  for `DP_CELERY_HEARTBEAT_TIMEOUT` seconds: it marks the attempt's handle lost (below) and
  sends the task again as the next attempt. A worker checks that mark before it starts an
  attempt and before it saves a result of one that ran longer than half that bound, so a
  lost attempt that wakes up (a SIGSTOPped worker, a partitioned machine) commits nothing.
- A `dp worker` that cannot import its task file leaves a report (below) for each
  of its queues before it exits; an orchestrator whose tasks wait on such a queue, with no
  live worker on it, fails them with that report instead of waiting.

The keys (all on the Celery broker, a Redis database):

| key | type | what |
| --- | --- | --- |
| `dp:celery:workers:<queue>` | sorted set | worker name -> Redis time of its last heartbeat |
| `dp:celery:broken:<queue>` | hash | worker name -> JSON report of its import failure (10 min) |
| `dp:celery:lost:<reply list>` | set | handles of attempts the orchestrator took for lost (1 day) |
| `dp:celery:replies:<id>` | list | workers' answers to one orchestrator (1 day after the last) |
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from dp.engine.messages import HeartbeatMessage
from dp.logs import get_logger
from dp.store.records import HOST

__all__ = [
    "ALIVE",
    "REPLY_TTL",
    "BrokenReport",
    "Heartbeat",
    "beat_period",
    "broken_reports",
    "clear_broken",
    "is_lost",
    "live_workers",
    "mark_lost",
    "report_broken",
]

_log = get_logger("dp.worker")

#: seconds since its last stamp for which a worker counts as live in the registry
ALIVE: Final = 15.0
#: the registry is stamped at least this often (and so are heartbeats, when nothing is held)
_REGISTRY_EVERY: Final = 5.0
#: how long an import-failure report is kept (as long as the default queued timeout)
_BROKEN_TTL: Final = 600
#: how long a lost mark is kept at least (the executor keeps it past the visibility timeout)
LOST_TTL: Final = 86_400
#: a reply list expires this long after a worker's last answer: one whose orchestrator is
#: gone (killed, or done before a late worker answered) does not stay in Redis forever
REPLY_TTL: Final = 86_400
#: seconds a heartbeat round may wait on Redis before it gives up (and tries again)
_SOCKET_TIMEOUT: Final = 2.0
#: how often the heartbeat thread looks at what its worker holds: an attempt the worker
#: takes is reported within this, so a worker dying right after taking it is noticed too
_TICK: Final = 0.2


def workers_key(queue: str) -> str:
    return f"dp:celery:workers:{queue}"


def broken_key(queue: str) -> str:
    return f"dp:celery:broken:{queue}"


def lost_key(reply_to: str) -> str:
    return f"dp:celery:lost:{reply_to}"


def beat_period(bound: float) -> float:
    """How often a worker beats for an orchestrator that waits `bound` seconds: four beats
    per bound, so one or two lost or late beats never make an attempt look lost."""
    return min(_REGISTRY_EVERY, max(0.2, bound / 4))


#: what a worker holds: (task message payload, pool pid running it or 0), per attempt
Held = Callable[[], list[tuple[dict[str, Any], int]]]


def worker_name(pid: int | None = None) -> str:
    """The name `dp worker` gives its Celery worker, and the registry's member for it."""
    return f"dp-{pid or os.getpid()}@{HOST}"


class Heartbeat:
    """The heartbeat thread of one `dp worker` (started in its main process).

    `held()` lists what the worker holds as (task message payload, pool pid or 0); by
    default Celery's own record of the requests the worker reserved (`celery.worker.state`).
    """

    def __init__(self, broker_url: str, queues: Sequence[str], *, held: Held | None = None) -> None:
        self.broker_url = broker_url
        self.queues = list(queues)
        self.name = worker_name()
        self._held = held or _celery_requests
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dp-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        import redis

        client = redis.Redis.from_url(
            self.broker_url,
            socket_timeout=_SOCKET_TIMEOUT,
            socket_connect_timeout=_SOCKET_TIMEOUT,
        )
        state = _BeatState()
        try:
            while not self._stop.wait(_TICK):
                try:
                    self._beat(client, state, time.monotonic())
                except Exception as exc:  # never die: a silent worker's tasks are sent again
                    _log.warning("worker.heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            client.close()

    def _beat(self, client: Any, state: _BeatState, now: float) -> None:
        """One tick: a heartbeat to each orchestrator that is due one (its period passed, or
        the worker took one of its attempts since the last), the registry when due."""
        held: dict[str, tuple[list[int], list[int], float]] = {}
        for payload, pid in self._held():
            reply_to, handle = payload.get("reply_to"), payload.get("handle")
            if not isinstance(reply_to, str) or not reply_to or not isinstance(handle, int):
                continue
            handles, pids, bound = held.get(reply_to, ([], [], 0.0))
            handles.append(handle)
            pids.append(pid)
            wanted = payload.get("heartbeat")
            if isinstance(wanted, int | float) and wanted > 0:
                bound = min(bound, float(wanted)) if bound else float(wanted)
            held[reply_to] = (handles, pids, bound)
        pipe = client.pipeline(transaction=False)
        me, sent = os.getpid(), 0
        for reply_to, (handles, pids, bound) in held.items():
            last, known = state.beats.get(reply_to, (-1e9, ()))
            news = (*handles, *pids) != known
            if news or now - last >= beat_period(bound or _REGISTRY_EVERY * 4):
                pipe.rpush(reply_to, HeartbeatMessage(HOST, me, handles, pids).to_json())
                pipe.expire(reply_to, REPLY_TTL)
                state.beats[reply_to] = (now, (*handles, *pids))
                sent += 1
        for reply_to in set(state.beats) - set(held):
            del state.beats[reply_to]
        if now - state.stamped >= _REGISTRY_EVERY:
            seconds, _ = client.time()
            for queue in self.queues:
                pipe.zadd(workers_key(queue), {self.name: seconds})
            state.stamped = now
            sent += 1
        if sent:
            pipe.execute()

    def leave(self) -> None:
        """Take this worker out of the registry (a clean exit)."""
        import redis

        with redis.Redis.from_url(self.broker_url, socket_timeout=_SOCKET_TIMEOUT) as client:
            pipe = client.pipeline(transaction=False)
            for queue in self.queues:
                pipe.zrem(workers_key(queue), self.name)
            pipe.execute()


class _BeatState:
    """What the heartbeat thread sent last: per orchestrator, when and which attempts."""

    __slots__ = ("beats", "stamped")

    def __init__(self) -> None:
        self.beats: dict[str, tuple[float, tuple[int, ...]]] = {}
        self.stamped = -_REGISTRY_EVERY


def _celery_requests() -> list[tuple[dict[str, Any], int]]:
    """The dp attempts this Celery worker reserved, with the pool pid running each (0: not
    started). Read from another thread: `list()` of a dict's values is one C call under the
    GIL, so Celery changing the dict meanwhile cannot break it."""
    from celery.worker import state

    held: list[tuple[dict[str, Any], int]] = []
    for request in list(state.requests.values()):
        args = getattr(request, "args", None)
        if isinstance(args, list | tuple) and args and isinstance(args[0], dict):
            pid = getattr(request, "worker_pid", None)
            held.append((args[0], pid if isinstance(pid, int) else 0))
    return held


@dataclass(frozen=True, slots=True)
class BrokenReport:
    """A `dp worker` that could not import its task file, as it reported itself."""

    host: str
    pid: int
    target: str
    module: str
    error: str

    def describe(self) -> str:
        return (
            f"dp worker on host {self.host} (pid {self.pid}) could not import {self.target}: "
            f"{self.error}"
        )


def report_broken(client: Any, queues: Iterable[str], report: BrokenReport) -> None:
    """Leave `report` for the orchestrators whose tasks wait on `queues`."""
    name = worker_name(report.pid)
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.hset(broken_key(queue), name, json.dumps(asdict(report)))
        pipe.expire(broken_key(queue), _BROKEN_TTL)
        pipe.zrem(workers_key(queue), name)
    pipe.execute()


def clear_broken(client: Any, queues: Iterable[str]) -> None:
    """A worker that imported its file serves `queues`: earlier failure reports are moot."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.delete(broken_key(queue))
    pipe.execute()


def live_workers(client: Any, queues: Sequence[str]) -> dict[str, int]:
    """How many workers stamped the registry of each queue in the last `ALIVE` seconds
    (by Redis's clock, so machines' clocks never matter)."""
    seconds, _ = client.time()
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.zremrangebyscore(workers_key(queue), "-inf", seconds - 24 * 3600)
        pipe.zcount(workers_key(queue), seconds - ALIVE, "+inf")
    counts = pipe.execute()[1::2]
    return dict(zip(queues, (int(c) for c in counts), strict=True))


def broken_reports(client: Any, queues: Sequence[str]) -> dict[str, list[BrokenReport]]:
    """The import-failure reports left on each queue, newest workers' included."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.hvals(broken_key(queue))
    found: dict[str, list[BrokenReport]] = {}
    for queue, values in zip(queues, pipe.execute(), strict=True):
        reports = []
        for raw in values:
            try:
                reports.append(BrokenReport(**json.loads(raw)))
            except (TypeError, ValueError):
                continue  # not a report this dp wrote: ignore it
        if reports:
            found[queue] = reports
    return found


def mark_lost(client: Any, reply_to: str, handles: Iterable[int], ttl: float) -> None:
    """Record that the attempts `handles` of the orchestrator `reply_to` were taken for lost."""
    key = lost_key(reply_to)
    pipe = client.pipeline(transaction=False)
    pipe.sadd(key, *handles)
    pipe.expire(key, int(max(ttl, LOST_TTL)))
    pipe.execute()


def is_lost(client: Any, reply_to: str, handle: int) -> bool:
    """Whether the orchestrator took this attempt for lost (and sent the task again)."""
    return bool(client.sismember(lost_key(reply_to), str(handle)))
