"""Checking a run's recorded results: each one is there and decodes, or it is named missing or
damaged, with where it is and why (`dp runs verify`, the list `dp runs resume` prints)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from dp.errors import ResultDamagedError, ResultNotFoundError
from dp.io.ports import IOManager

__all__ = ["ResultCheck", "check_result", "verify_results"]

State = Literal["ok", "missing", "damaged"]


@dataclass(frozen=True, slots=True)
class ResultCheck:
    """One recorded result: whether it is there and readable, where, and what is wrong."""

    task_name: str
    instance: str
    result_id: str
    state: State
    location: str | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def check_result(
    io_manager: IOManager, run_id: str, task_name: str, result_id: str, instance: str = ""
) -> ResultCheck:
    """Load one result to see that it decodes (the only proof a file is whole).

    Raises:
        ResultsUnavailableError: the results store cannot be reached (an outage is not damage).
    """
    where = getattr(io_manager, "location", None)
    try:
        io_manager.load(run_id, task_name, result_id)
    except ResultNotFoundError:
        return ResultCheck(task_name, instance, result_id, "missing")
    except ResultDamagedError as exc:
        return ResultCheck(task_name, instance, result_id, "damaged", exc.location, exc.problem)
    location = where(run_id, task_name, result_id) if callable(where) else None
    return ResultCheck(task_name, instance, result_id, "ok", location)


def verify_results(
    io_manager: IOManager, run_id: str, recorded: Iterable[tuple[str, str, list[str]]]
) -> list[ResultCheck]:
    """Check every result of `recorded` (task name, instance, result ids), in order."""
    return [
        check_result(io_manager, run_id, task_name, result_id, instance)
        for task_name, instance, result_ids in recorded
        for result_id in result_ids
    ]
