"""Re-running a run from its failure (`dp runs retry`): a new run, linked to its parent, that
reuses the parent's committed results of the tasks that need not run again.

Which tasks run again: every task that did not succeed (failed, skipped, cancelled,
interrupted, never started) and everything downstream of one; with `from_task`, also that
task and everything downstream of it (Airflow's "clear downstream"). Every other task is
reused: its results are read where the run that computed them stored them (the parent, or
the run the parent itself reused them from), never copied. A reused result that is gone or
damaged is computed again instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from dp.engine.model import ExecutionContext
from dp.errors import RetryError
from dp.planner import ExecutionPlan
from dp.store.records import RunRecord, RunStatus, TaskRunRecord, TaskStatus

__all__ = [
    "RETRYABLE",
    "Lineage",
    "check_plan",
    "check_retryable",
    "reused_map",
    "reused_tasks",
    "stored_in",
]

#: the statuses a run can be retried from without `from_task`
RETRYABLE = frozenset({RunStatus.FAILED, RunStatus.PARTIAL, RunStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class Lineage:
    """What a run inherits: the time it is for, its parent and the results it reuses."""

    scheduled_for: datetime | None = None
    schedule_tz: str | None = None
    parent_run_id: str | None = None
    reuse: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None

    @classmethod
    def of(cls, record: RunRecord) -> Lineage:
        """A recorded run's own lineage (to resume it as it was)."""
        reused = record.metadata.get("reused")
        return cls(
            record.scheduled_for,
            record.schedule_tz,
            record.parent_run_id,
            _reuse_map(reused),
            record.created_at,
        )

    @classmethod
    def retry_of(cls, record: RunRecord, reuse: Mapping[str, str]) -> Lineage:
        """A retry of `record`: a run for the same time (its tick, or when it was created)."""
        when = record.scheduled_for or record.created_at
        return cls(when, record.schedule_tz, record.run_id, dict(reuse))

    def apply(self, context: ExecutionContext) -> None:
        context.scheduled_for = self.scheduled_for
        context.schedule_tz = self.schedule_tz
        context.parent_run_id = self.parent_run_id
        context.reuse = dict(self.reuse)
        if self.created_at is not None:
            context.created_at = self.created_at


def check_retryable(record: RunRecord, from_task: str | None, here: str = "") -> None:
    """Refuse a run that is not over, that succeeded with nothing named to re-run, or whose
    results are elsewhere than `here` (this process's results URL) says."""
    status = record.status
    if status in (RunStatus.RUNNING, RunStatus.QUEUED):
        raise RetryError(
            record.run_id, f"it is still {status.value}; wait for it to end, or cancel it first"
        )
    if status is RunStatus.INTERRUPTED:
        raise RetryError(
            record.run_id, f"it was interrupted; finish it with dp runs resume {record.run_id}"
        )
    if status not in RETRYABLE and from_task is None:
        raise RetryError(
            record.run_id,
            f"it {status.value}, so nothing failed; name a task to re-run with --from TASK",
        )
    if record.results and here and record.results != here:
        raise RetryError(
            record.run_id,
            f"its results are at {record.results}, and this process would read them at "
            f"{here}; retry with --results {record.results!r}",
        )


def check_plan(record: RunRecord, plan: ExecutionPlan) -> None:
    """Refuse a plan whose tasks changed: the parent's results may not fit them."""
    if plan.dag_id != record.dag_id:
        raise RetryError(
            record.run_id,
            f"its tasks changed since it ran (dag_id {record.dag_id} is now "
            f"{plan.dag_id}), so its results cannot be reused; start a new run",
        )


def reused_tasks(
    record: RunRecord,
    rows: Sequence[TaskRunRecord],
    plan: ExecutionPlan,
    from_task: str | None = None,
) -> dict[str, str]:
    """The tasks a retry of `record` reuses: task -> the run whose stored results it reads.

    Raises:
        RetryError: `from_task` is not a task of the run's plan (with close matches).
    """
    order = plan.execution_order
    if from_task is not None and from_task not in order:
        close = difflib.get_close_matches(from_task, order, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; its tasks: {list(order)}"
        raise RetryError(record.run_id, f"it has no task {from_task!r}{hint}")
    succeeded = dict.fromkeys(order, True)
    seen: set[str] = set()
    for row in rows:
        seen.add(row.task_name)
        if row.status is not TaskStatus.SUCCEEDED:
            succeeded[row.task_name] = False
    again = {name for name in order if not (succeeded.get(name) and name in seen)}
    if from_task is not None:
        again.add(from_task)
    downstream: dict[str, list[str]] = {name: [] for name in order}
    for edge in plan.edges:
        downstream[edge.upstream].append(edge.downstream)
    pending = list(again)
    while pending:
        for child in downstream[pending.pop()]:
            if child not in again:
                again.add(child)
                pending.append(child)
    earlier = _reuse_map(record.metadata.get("reused"))
    return {name: earlier.get(name, record.run_id) for name in order if name not in again}


def reused_map(record: RunRecord) -> dict[str, str]:
    """A retry's reused tasks -> the run that stored each one's results ({} for others)."""
    return _reuse_map(record.metadata.get("reused"))


def stored_in(record: RunRecord, task_name: str) -> str:
    """The run under whose id a task's results of `record` are stored: the run itself, or
    for a task a retry reused, the run that computed it."""
    return _reuse_map(record.metadata.get("reused")).get(task_name, record.run_id)


def _reuse_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items() if isinstance(v, str)}
