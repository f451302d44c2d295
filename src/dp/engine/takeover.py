"""Taking over a run whose owner is gone: to end a crash loop, or to cancel it.

A run's owner records it `running` and renews its lease; when the owner dies (SIGKILL, a
machine restart, a task calling `os._exit` in the service's own process), the run stays
`running` until someone resumes it. If the owner died *because* of the run, say a task that
exhausts memory, resuming it only kills the next owner: `dp serve` restarted by systemd would
resume it and die again, forever. So each resume of a run whose owner died counts one death
(in the run's metadata, `owner_deaths`), and at `max_resume_attempts` deaths the run is failed
as a crash loop instead, naming the task(s) that were running each time.

A graceful stop (SIGTERM past the grace period) records the run `interrupted`: that is no
death, and does not count.

Cancelling a run no live process owns (stale, interrupted, orphaned) works the same way: the
canceller claims the run (a new ownership epoch fences any former owner, which then writes
nothing more) and records it cancelled.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime

from dp.errors import FencedError, RunNotActiveError
from dp.logs import get_logger
from dp.planner import ExecutionPlan
from dp.store.records import (
    HOST,
    RunRecord,
    RunStatus,
    RunStore,
    TaskRunRecord,
    TaskStatus,
)

__all__ = [
    "DEATHS_KEY",
    "cancel_recorded",
    "count_death",
    "crash_loop",
    "fail_crash_loop",
    "owner_died",
]

_log = get_logger("dp.engine")

#: the run metadata key counting the owners that died while running the run
DEATHS_KEY = "owner_deaths"
#: the run metadata key naming the tasks that were running at each of those deaths
SUSPECTS_KEY = "running_at_owner_deaths"


def owner_died(record: RunRecord) -> bool:
    """Whether resuming `record` follows its owner's death (it still says running), rather
    than a graceful stop (interrupted) or a wait in the queue."""
    return record.status == RunStatus.RUNNING


def count_death(
    record: RunRecord, tasks: list[TaskRunRecord], plan: ExecutionPlan
) -> dict[str, object]:
    """The run's metadata with one more owner death, and the tasks running at it: those
    recorded running, or else (task states are written in batches, so a task that killed its
    owner at once was never recorded running) those that were ready to run then."""
    metadata = dict(record.metadata)
    deaths = _deaths(record) + 1
    running = sorted({t.task_name for t in tasks if t.status == TaskStatus.RUNNING})
    if not running:
        running = _ready(plan, tasks)
    suspects = list(metadata.get(SUSPECTS_KEY) or [])
    suspects.append(running)
    metadata[DEATHS_KEY] = deaths
    metadata[SUSPECTS_KEY] = suspects[-20:]
    return metadata


def crash_loop(metadata: dict[str, object], limit: int) -> str | None:
    """Why the run is a crash loop (its owner died `limit` times), or None."""
    deaths = metadata.get(DEATHS_KEY)
    if not isinstance(deaths, int) or deaths < limit:
        return None
    counts: Counter[str] = Counter()
    for names in metadata.get(SUSPECTS_KEY) or []:  # type: ignore[attr-defined]
        counts.update(names)
    if counts:
        top = max(counts.values())
        names = sorted(name for name, n in counts.items() if n == top)
        task = "task " + " or ".join(repr(n) for n in names)
    else:
        task = "no task (between tasks)"
    return (
        f"crash loop: the owner died {deaths} times while running {task}; "
        f"not resumed again (max_resume_attempts={limit}). Fix the task, then start a new run"
    )


def fail_crash_loop(
    store: RunStore, record: RunRecord, metadata: dict[str, object], reason: str
) -> None:
    """Record the run failed as a crash loop, under a new epoch (fencing the dead owner)."""
    _end(store, record, RunStatus.FAILED, reason, TaskStatus.FAILED, metadata)
    _log.error("run.crash_loop", run_id=record.run_id, error=reason)


def cancel_recorded(store: RunStore, run_id: str, *, by: str) -> RunRecord:
    """Cancel a run in the store, whoever owns it: claim it (its owner, if any is alive,
    is fenced and stops at its next write or lease renewal) and record it cancelled.

    Raises:
        RunNotFoundError: no such run.
        RunNotActiveError: it finished already.
    """
    for _ in range(5):  # claims race with the owner's and others': try again on a newer epoch
        record = store.get_run(run_id)
        if record.status.finished:
            raise RunNotActiveError(run_id, record.status)
        try:
            _end(
                store,
                record,
                RunStatus.CANCELLED,
                f"cancelled by {by}",
                TaskStatus.CANCELLED,
                None,
            )
        except FencedError:
            continue
        _log.warning("run.cancelled_offline", run_id=run_id, by=by, was=record.status.value)
        return store.get_run(run_id)
    raise RunNotActiveError(run_id, store.get_run(run_id).status)


def _end(
    store: RunStore,
    record: RunRecord,
    status: RunStatus,
    error: str,
    task_status: TaskStatus,
    metadata: dict[str, object] | None,
) -> None:
    now = datetime.now(UTC)
    epoch = store.claim_run(
        record.run_id,
        host=HOST,
        pid=os.getpid(),
        lease_until=now,
        expected_epoch=record.epoch,
        status=record.status,
    )
    unfinished = [t for t in store.get_task_runs(record.run_id) if not t.status.finished]
    for task in unfinished:
        task.status = task_status
        task.finished_at = now
        if task_status == TaskStatus.FAILED:
            task.error = error
    store.update_run(
        record.run_id,
        status=status,
        finished_at=now,
        error=error,
        metadata=metadata,
        task_runs=unfinished,
        epoch=epoch,
    )


def _ready(plan: ExecutionPlan, tasks: list[TaskRunRecord]) -> list[str]:
    """The tasks of `plan` not finished whose upstream tasks all succeeded."""
    succeeded = {t.task_name for t in tasks if t.status == TaskStatus.SUCCEEDED}
    finished = {t.task_name for t in tasks if t.status.finished}
    upstream: dict[str, set[str]] = {name: set() for name in plan.execution_order}
    for edge in plan.edges:
        upstream[edge.downstream].add(edge.upstream)
    return sorted(
        name for name, needs in upstream.items() if name not in finished and needs <= succeeded
    )


def _deaths(record: RunRecord) -> int:
    deaths = (record.metadata or {}).get(DEATHS_KEY)
    return deaths if isinstance(deaths, int) and not isinstance(deaths, bool) else 0
