"""`LiveFeed`: what changed in runs, tasks and on the bus, pushed to dashboards in batches.

The feed is a `RunListener` on the service's orchestrator and a subscriber of its bus. Changes
are collected, coalesced (a task that changed ten times since the last batch is sent once, in
its latest state) and flushed every `interval` seconds to each connected page as one
server-sent event, so a run finishing 1,000 tasks a second costs a page a few small updates a
second. Nothing is sent while nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from dp.engine import ExecutionContext, RunResult, TaskRunResult
from dp.errors import DPError
from dp.events import EventBase, InMemoryBroker, TopicMatcher
from dp.events.ports import Broker, Subscription
from dp.jsonable import jsonable
from dp.limits import preview
from dp.logs import get_logger

__all__ = ["LiveFeed", "Subscriber", "event_dict"]

_log = get_logger("dp.service.dashboard")

#: batches a page may fall behind by before it is told to reload its state instead
_MAX_BACKLOG = 20
#: bus events one batch carries at most (the newest); the rest are in `recent()`
_MAX_EVENTS_PER_BATCH = 200
#: characters of an event's payload kept for the dashboard
_MAX_PAYLOAD = 2_000
#: levels of an event's payload shown; deeper ones are "…"
_PREVIEW_DEPTH = 16


class Subscriber:
    """One connected page: which run's tasks and which topics it follows, and its backlog."""

    def __init__(self, *, run_id: str | None = None, events: TopicMatcher | None = None) -> None:
        self.run_id = run_id
        self.events = events
        self.backlog: deque[dict[str, Any]] = deque()
        self.ready = asyncio.Event()

    def push(self, batch: dict[str, Any]) -> None:
        if len(self.backlog) >= _MAX_BACKLOG:  # a stalled page: tell it to start afresh
            self.backlog.clear()
            batch = {"resync": True}
        self.backlog.append(batch)
        self.ready.set()

    def take(self) -> list[dict[str, Any]]:
        batches = list(self.backlog)
        self.backlog.clear()
        self.ready.clear()
        return batches


class LiveFeed:
    """Collects lifecycle changes and bus events, and pushes them to `Subscriber`s in batches.

    Args:
        interval: seconds between batches while something changes.
        keep_events: how many recent bus events `recent()` keeps.
        keepalive: seconds of silence after which a stream sends a comment line, so proxies
            keep the connection open.
    """

    def __init__(
        self, *, interval: float = 0.25, keep_events: int = 500, keepalive: float = 15.0
    ) -> None:
        self.interval = interval
        self.keepalive = keepalive
        self._subscribers: set[Subscriber] = set()
        self._runs: dict[str, dict[str, Any]] = {}
        self._tasks: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=_MAX_EVENTS_PER_BATCH)
        self._recent: deque[dict[str, Any]] = deque(maxlen=keep_events)
        self._changed = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._stopped = False

    # --- life cycle -------------------------------------------------------------------------

    def start(self, broker: Broker) -> None:
        """Start flushing batches and reading `broker`'s events (on the running loop)."""
        loop = asyncio.get_running_loop()
        self._workers.append(loop.create_task(self._flush_forever(), name="dp-dashboard-flush"))
        subscription: Subscription
        try:
            if isinstance(broker, InMemoryBroker):  # a slow page must never hold the bus up
                subscription = broker.subscribe("**", maxsize=10_000, overflow="drop_oldest")
            else:  # other buses read each subscription on its own
                subscription = broker.subscribe("**")
        except DPError as exc:  # a closed bus: the dashboard works without its events
            _log.warning("dashboard.no_events", error=str(exc))
            return
        self._workers.append(loop.create_task(self._tap(subscription), name="dp-dashboard-bus"))

    async def stop(self) -> None:
        """Stop the background tasks and end every open stream."""
        self._stopped = True
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers.clear()
        for subscriber in self._subscribers:
            subscriber.ready.set()

    # --- RunListener --------------------------------------------------------------------------

    def on_run_start(self, *, context: ExecutionContext, **_: Any) -> None:
        self._runs[context.run_id] = {
            "run_id": context.run_id,
            "pipeline": context.pipeline,
            "trigger": context.trigger,
            "status": "running",
        }
        self._changed.set()

    def on_task_update(self, *, context: ExecutionContext, task: TaskRunResult, **_: Any) -> None:
        self._tasks[(context.run_id, task.task_name, task.instance)] = {
            "run_id": context.run_id,
            "task": task.task_name,
            "instance": task.instance,
            "status": task.status.value,
            "attempt": task.attempts,
            "start": task.start_time,
            "end": task.end_time,
            "duration": task.duration,
            "error": task.error,
            "queue": task.queue,
        }
        self._changed.set()

    def on_run_end(self, *, context: ExecutionContext, result: RunResult, **_: Any) -> None:
        self._runs[context.run_id] = {
            "run_id": context.run_id,
            "pipeline": context.pipeline,
            "trigger": context.trigger,
            "status": result.status.value,
            "error": result.error,
            "duration": result.duration,
        }
        self._changed.set()

    # --- pages --------------------------------------------------------------------------------

    def recent(self, pattern: TopicMatcher | None = None) -> list[dict[str, Any]]:
        """The recent bus events, oldest first, those matching `pattern` if given."""
        return [e for e in self._recent if pattern is None or pattern.matches(e["topic"])]

    async def stream(self, subscriber: Subscriber) -> AsyncIterator[str]:
        """Server-sent events for `subscriber`: one `data:` line per batch, until stopped."""
        self._subscribers.add(subscriber)
        try:
            yield "retry: 2000\n\n"
            while not self._stopped:
                try:
                    await asyncio.wait_for(subscriber.ready.wait(), self.keepalive)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                for batch in subscriber.take():
                    yield f"data: {_encode_batch(batch)}\n\n"
        finally:
            self._subscribers.discard(subscriber)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    # --- internals ----------------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while True:
            await self._changed.wait()
            await asyncio.sleep(self.interval)  # let changes pile up: one batch per interval
            self._changed.clear()
            self.flush()

    def flush(self) -> None:
        """Send what changed since the last batch to every subscriber, and forget it."""
        runs, tasks, events = (
            list(self._runs.values()),
            list(self._tasks.values()),
            list(self._events),
        )
        self._runs.clear()
        self._tasks.clear()
        self._events.clear()
        for subscriber in self._subscribers:
            batch: dict[str, Any] = {}
            if runs:
                batch["runs"] = runs
            if subscriber.run_id is not None:
                mine = [t for t in tasks if t["run_id"] == subscriber.run_id]
                if mine:
                    batch["tasks"] = mine
            if subscriber.events is not None:
                matcher = subscriber.events
                seen = [e for e in events if matcher.matches(e["topic"])]
                if seen:
                    batch["events"] = seen
            if batch:
                subscriber.push(batch)

    async def _tap(self, subscription: Any) -> None:
        async for event in subscription:
            data = event_dict(event)  # never raises: one odd event cannot end the feed
            self._recent.append(data)
            if any(s.events is not None for s in self._subscribers):
                self._events.append(data)
                self._changed.set()


def _encode_batch(batch: dict[str, Any]) -> str:
    """A batch as JSON; one that cannot be encoded as it is (a task error holding something
    odd) is shown through `preview` rather than ending the stream."""
    try:
        return json.dumps(jsonable(batch))
    except (TypeError, ValueError, RecursionError):
        return json.dumps(preview(batch, items=10_000))


def event_dict(event: EventBase) -> dict[str, Any]:
    """An event as the dashboard shows it, whatever it holds: a large payload is cut to a
    preview, a deep one shown to `_PREVIEW_DEPTH` levels (deeper levels as "…"), odd text made
    showable (`dp.limits.preview`). Never raises."""
    payload = json.dumps(preview(event.payload, depth=_PREVIEW_DEPTH), ensure_ascii=False)
    return {
        "event_id": preview(event.event_id),
        "topic": preview(event.topic),
        "event_type": preview(event.event_type),
        "source": preview(event.source),
        "correlation_id": preview(event.correlation_id),
        "timestamp": event.timestamp.isoformat(),
        "payload": payload if len(payload) <= _MAX_PAYLOAD else payload[:_MAX_PAYLOAD] + " …",
    }
