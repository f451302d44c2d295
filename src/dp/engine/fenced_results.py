"""`FencedResults`: how an attempt that may be stale stores its results.

A Celery worker frozen past the broker's visibility timeout is woken after another worker ran
the same message, committed its result and a downstream task read it. Its late save must not
replace that result. So each save of an attempt:

1. writes the value where no other attempt writes: a hidden, attempt-scoped name next to the
   result (`ResultStore.stage`);
2. asks whether the attempt may still commit (`may_commit`: its run's ownership epoch in the run
   store is unchanged, and its orchestrator has not taken it for lost); a fenced attempt's
   staged value is discarded and the save fails with `FencedError`;
3. publishes it under the visible name only if no result is there yet (`ResultStore.commit`:
   a hard link on a filesystem, a conditional PUT, `If-None-Match: *`, on S3). A result already
   committed by another attempt stays; this attempt's copy is discarded.

So whatever the timing, a visible result is never replaced by a late attempt, on the
filesystem and on S3.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from dp.errors import FencedError
from dp.io import IOManager, ResultStore
from dp.logs import get_logger

__all__ = ["FencedResults", "attempt_token", "fenced"]

_log = get_logger("dp.engine")


def attempt_token(epoch: int, attempt: int) -> str:
    """A name part only this attempt writes under: epoch, attempt and 8 random bytes (two
    deliveries of one message carry the same epoch and attempt)."""
    return f"e{epoch}-a{attempt}-{os.urandom(8).hex()}"


class FencedResults:
    """An `IOManager` over a `ResultStore` whose saves are fenced commits (see the module).

    Args:
        results: where results are.
        run_id: the attempt's run (for the error of a fenced save).
        epoch: the run's ownership epoch the attempt was handed out with.
        token: the attempt's `attempt_token`.
        may_commit: asked before each commit: False once the attempt is fenced or lost.
    """

    def __init__(
        self,
        results: ResultStore,
        run_id: str,
        epoch: int,
        token: str,
        may_commit: Callable[[], bool],
    ) -> None:
        self.results = results
        self.run_id = run_id
        self.epoch = epoch
        self.token = token
        self.may_commit = may_commit
        #: results another attempt had committed first (this attempt's copies were dropped)
        self.refused: list[tuple[str, str]] = []

    def __repr__(self) -> str:
        return f"FencedResults({self.results!r}, {self.token!r})"

    def save(self, run_id: str, task_name: str, task_result_id: str, value: Any) -> str:
        results = self.results
        staged = results.stage(run_id, task_name, task_result_id, value, self.token)
        if not self.may_commit():
            results.discard(staged)
            raise FencedError(run_id, self.epoch)
        if not results.commit(staged):
            self.refused.append((task_name, task_result_id))
            _log.warning(
                "result.commit_refused",
                run_id=run_id,
                task_name=task_name,
                result_id=task_result_id,
                attempt=self.token,
                reason="another attempt committed this result first; it stays",
            )
        location = results.location(run_id, task_name, task_result_id)
        return location or f"{run_id}/{task_name}/{task_result_id}"

    def load(self, run_id: str, task_name: str, task_result_id: str) -> Any:
        return self.results.load(run_id, task_name, task_result_id)

    def exists(self, run_id: str, task_name: str, task_result_id: str) -> bool:
        return self.results.exists(run_id, task_name, task_result_id)

    def list_results(self, run_id: str, task_name: str) -> list[str]:
        return self.results.list_results(run_id, task_name)

    def list_runs(self) -> list[str]:
        return self.results.list_runs()

    def clear_run(self, run_id: str) -> int:
        return self.results.clear_run(run_id)


def fenced(
    io_manager: IOManager, run_id: str, epoch: int, attempt: int, may_commit: Callable[[], bool]
) -> IOManager:
    """`io_manager` with fenced commits, when it can stage (a `ResultStore`); else as it is."""
    if isinstance(io_manager, ResultStore):
        return FencedResults(io_manager, run_id, epoch, attempt_token(epoch, attempt), may_commit)
    return io_manager
