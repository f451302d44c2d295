"""`dp runs verify`, and the list `dp runs resume` prints before it starts: a run's recorded
results checked one by one, each missing or damaged one named with where it is and why."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from dp import config
from dp.cli.common import (
    ResultsOpt,
    RootOpt,
    StoreOpt,
    dp_command,
    fail,
    get_run,
    open_store,
    run_results,
    settings_for,
)
from dp.errors import DPError
from dp.io.verify import ResultCheck, verify_results
from dp.store.records import RunRecord, RunStore, TaskRunRecord, TaskStatus

__all__ = ["rerun_list", "runs_verify"]


def runs_verify(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to check.")],
    store: StoreOpt = None,
    results: ResultsOpt = None,
    root: RootOpt = Path(".dp"),
) -> None:
    """Check every recorded result of a run: each is there and decodes, or it is named
    missing or damaged (with where it is and why). Exit code 1 if any is."""
    settings = settings_for(root, store=store, results=results)
    run_store = open_store(ctx, settings)
    record = get_run(run_store, run_id)
    settings = run_results(settings, record, results)
    try:
        checks = _checks(settings, run_store, record)
    except DPError as exc:
        raise fail(exc) from exc
    console = Console()
    bad = [c for c in checks if not c.ok]
    for check in checks:
        console.print(_line(check), highlight=False, soft_wrap=True)
    where = record.results or settings.results
    console.print(
        f"{len(checks) - len(bad)} of {len(checks)} results of run {run_id} are whole "
        f"({escape(where)})",
        highlight=False,
        soft_wrap=True,
    )
    if bad:
        console.print(
            f"[red]{len(bad)} missing or damaged[/]: `{dp_command()} runs resume {run_id}` "
            "runs their tasks again",
            highlight=False,
        )
        raise typer.Exit(code=1)


def rerun_list(
    settings: config.Settings, run_store: RunStore, record: RunRecord, tasks: Sequence[str]
) -> list[str]:
    """What a resume of `record` runs again, one line each: a task whose results are missing
    or damaged (named), one that did not finish, one that never started.

    Raises:
        DPError: the results store cannot be reached (`ResultsUnavailableError`).
    """
    rows = run_store.get_task_runs(record.run_id)
    broken: dict[tuple[str, str], list[ResultCheck]] = {}
    for check in _checks(settings, run_store, record, rows=rows):
        if not check.ok:
            broken.setdefault((check.task_name, check.instance), []).append(check)
    lines = []
    for (task, instance), checks in broken.items():
        name = f"{task}[{instance}]" if instance else task
        lines.append(f"{name}: " + "; ".join(_problem(c) for c in checks))
    seen = {r.task_name for r in rows}
    for row in rows:
        if row.status != TaskStatus.SUCCEEDED:
            name = f"{row.task_name}[{row.instance}]" if row.instance else row.task_name
            lines.append(f"{name}: {row.status.value}, not finished")
    lines += [f"{task}: never started" for task in tasks if task not in seen]
    return lines


def _checks(
    settings: config.Settings,
    run_store: RunStore,
    record: RunRecord,
    rows: list[TaskRunRecord] | None = None,
) -> list[ResultCheck]:
    task_runs = run_store.get_task_runs(record.run_id) if rows is None else rows
    recorded = [
        (r.task_name, r.instance, list(r.result_ids))
        for r in task_runs
        if r.status == TaskStatus.SUCCEEDED
    ]
    return verify_results(config.open_results(settings), record.run_id, recorded)


def _problem(check: ResultCheck) -> str:
    if check.state == "missing":
        return f"result {check.result_id!r} is missing"
    return f"result {check.result_id!r} is damaged at {check.location}: {check.problem}"


def _line(check: ResultCheck) -> str:
    name = f"{check.task_name}[{check.instance}]" if check.instance else check.task_name
    colour = {"ok": "green", "missing": "yellow", "damaged": "red"}[check.state]
    detail = check.location or ""
    if check.state == "damaged":
        detail = f"{check.location}: {check.problem}"
    return (
        f"[{colour}]{check.state:<8}[/] {escape(name)} {escape(check.result_id)}  {escape(detail)}"
    )
