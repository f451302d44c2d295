"""`dp run` and `dp runs resume`: run a pipeline once in this process, with a live progress
display, and report how it went."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from dp import config
from dp.cli.common import (
    EXIT_UNAVAILABLE,
    ExecutorOpt,
    MaxResumeOpt,
    ParamOpt,
    ResultsOpt,
    RootOpt,
    StoreOpt,
    TagsOpt,
    TargetArg,
    TaskOpt,
    WorkersOpt,
    dp_command,
    err_console,
    fail,
    get_run,
    open_store,
    plan_tasks,
    run_results,
    settings_for,
)
from dp.cli.results import rerun_list
from dp.display import (
    LiveProgress,
    duration_text,
    pipeline_label,
    plural,
    print_task_table,
    task_row,
)
from dp.engine import Orchestrator, RunResult
from dp.engine.orchestrator import plan_for_record
from dp.engine.recorder import OUTAGE_WAIT_VARIABLE
from dp.errors import CLIError, DPError
from dp.logs import configure_logging, uncaptured
from dp.planner import ExecutionPlan
from dp.store.records import RunStatus

__all__ = ["run", "runs_resume"]

#: exit codes: 0 succeeded, 1 failed, 2 bad input, 3 partial (fail-safe tasks failed), 75 the
#: run store (or another dependency) was unreachable: the run is left resumable
_EXIT = {RunStatus.SUCCEEDED: 0, RunStatus.PARTIAL: 3}


def _parse_params(pairs: list[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise fail(
                CLIError(f"--param {pair!r} must look like NAME=VALUE, e.g. --param day=2026-01-31")
            )
        params[name.strip()] = value
    return params


class _Stderr:
    """stderr as it was when the command started, written through the progress display's
    rich Console: log lines print above the live bar instead of across it, and never land in
    a task's captured output (the engine routes `sys.stderr` per task while tasks run)."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)

    def reset(self) -> None:
        self.console = Console(file=uncaptured(sys.stderr))

    def write(self, text: str) -> int:
        if self.console.file.closed:  # the command has ended and its stderr with it (a test's
            self.reset()  # CliRunner closes the stream it swapped in); a thread still logs
        if text.strip():
            self.console.print(Text.from_ansi(text.rstrip("\n")), soft_wrap=True, highlight=False)
        return len(text)

    def flush(self) -> None:
        self.console.file.flush()

    def isatty(self) -> bool:
        return self.console.is_terminal


_stderr = _Stderr()


#: engine events the CLI reports itself, in the task table and the closing line
_SHOWN_BY_THE_CLI = frozenset({"task.failed", "run.finished", "run.unrecorded"})


def _not_shown_by_the_cli(record: logging.LogRecord) -> bool:
    event = record.msg.get("event") if isinstance(record.msg, dict) else None
    return event not in _SHOWN_BY_THE_CLI


def _cli_logging() -> None:
    """Warnings as readable lines (never JSON) on stderr, above the progress bar."""
    _stderr.reset()
    configure_logging(level="WARNING", json=False, stream=_stderr)  # type: ignore[arg-type]
    for handler in logging.getLogger("dp").handlers:
        if handler.get_name() == "dp":
            handler.addFilter(_not_shown_by_the_cli)


def _check_params(execution_plan: ExecutionPlan, params: dict[str, str]) -> None:
    try:
        execution_plan.bind_params(params)
    except DPError as exc:
        raise fail(exc) from exc


def run(
    ctx: typer.Context,
    target: TargetArg,
    tags: TagsOpt = None,
    task: TaskOpt = None,
    param: ParamOpt = None,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = None,
    store: StoreOpt = None,
    results: ResultsOpt = None,
    root: RootOpt = Path(".dp"),
) -> None:
    """Plan and run the tasks in TARGET once, with a live progress display."""
    _cli_logging()
    settings = settings_for(root, store=store, results=results, executor=executor, workers=workers)
    execution_plan = plan_tasks(target, tags, task)
    params = _parse_params(param)
    _check_params(execution_plan, params)
    target_path = str(Path(target).resolve()) if target.endswith(".py") else target
    selection = {"tags": tags or [], "task_names": task or []}
    orchestrator = _orchestrator(ctx, settings)

    async def go() -> RunResult:
        try:
            return await orchestrator.start_pipeline(
                execution_plan,
                params,
                target=target_path,
                pipeline=pipeline_label(target),
                selection=selection,
            )
        finally:
            await orchestrator.shutdown()

    result = _with_progress(orchestrator, execution_plan, go)
    _report(result, settings, orchestrator)


def runs_resume(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The interrupted run.")],
    workers: WorkersOpt = None,
    executor: ExecutorOpt = None,
    store: StoreOpt = None,
    results: ResultsOpt = None,
    root: RootOpt = Path(".dp"),
    force: Annotated[
        bool,
        typer.Option(help="Take over a run marked running on another host (that host is gone)."),
    ] = False,
    max_resume_attempts: MaxResumeOpt = None,
) -> None:
    """Resume an interrupted run: tasks whose results are stored do not run again."""
    _cli_logging()
    settings = settings_for(
        root,
        store=store,
        results=results,
        executor=executor,
        workers=workers,
        max_resume_attempts=max_resume_attempts,
    )
    run_store = open_store(ctx, settings)
    record = get_run(run_store, run_id)
    settings = run_results(settings, record, results)
    try:
        execution_plan = plan_for_record(record)
        again = (
            []
            if record.status.finished
            else rerun_list(settings, run_store, record, execution_plan.execution_order)
        )
    except DPError as exc:
        raise fail(exc) from exc
    if again:  # named before anything runs: damage is never redone silently
        err_console.print(
            f"resume runs {plural(len(again), 'task')} again:", highlight=False, soft_wrap=True
        )
        for line in again:
            err_console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
    orchestrator = _orchestrator(ctx, settings)

    async def go() -> RunResult:
        try:
            return await orchestrator.resume_pipeline(run_id, plan=execution_plan, force=force)
        finally:
            await orchestrator.shutdown()

    result = _with_progress(orchestrator, execution_plan, go)
    _report(result, settings, orchestrator)


def runs_retry(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The failed, partial or cancelled run.")],
    from_task: Annotated[
        str | None,
        typer.Option(
            "--from", metavar="TASK", help="Re-run this task and everything downstream of it too."
        ),
    ] = None,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = None,
    store: StoreOpt = None,
    results: ResultsOpt = None,
    root: RootOpt = Path(".dp"),
) -> None:
    """Re-run a run from its failure: a new run, linked to it, that reuses its results of the
    tasks that succeeded and runs the others and everything downstream of them."""
    _cli_logging()
    settings = settings_for(root, store=store, results=results, executor=executor, workers=workers)
    run_store = open_store(ctx, settings)
    record = get_run(run_store, run_id)
    settings = run_results(settings, record, results)
    try:
        execution_plan = plan_for_record(record)
    except DPError as exc:
        raise fail(exc) from exc
    orchestrator = _orchestrator(ctx, settings)

    async def go() -> RunResult:
        try:
            handle = await orchestrator.submit_retry(
                run_id, from_task=from_task, plan=execution_plan
            )
            reused = handle.context.reuse
            err_console.print(
                f"retry of {run_id}: run {handle.run_id} reuses "
                f"{plural(len(reused), 'task')}{': ' if reused else ''}{', '.join(reused)}",
                highlight=False,
                soft_wrap=True,
            )
            return await handle.result()
        finally:
            await orchestrator.shutdown()

    result = _with_progress(orchestrator, execution_plan, go)
    _report(result, settings, orchestrator)


def _orchestrator(ctx: typer.Context, settings: config.Settings) -> Orchestrator:
    try:
        orchestrator = config.build_orchestrator(settings)
    except DPError as exc:
        raise fail(exc) from exc
    if orchestrator.store is not None:
        ctx.call_on_close(orchestrator.store.close)  # its database connections
    return orchestrator


def _with_progress(
    orchestrator: Orchestrator,
    execution_plan: ExecutionPlan,
    go: Callable[[], Coroutine[Any, Any, RunResult]],
) -> RunResult:
    progress = LiveProgress(len(execution_plan.execution_order), _stderr.console)
    orchestrator.listeners.append(progress)
    try:
        with progress.live():
            return asyncio.run(go())
    except DPError as exc:
        raise fail(exc) from exc
    except KeyboardInterrupt:
        run_id = progress.run_id or "RUN_ID"
        err_console.print(
            f"[yellow]interrupted[/]: resume with `{dp_command()} runs resume {run_id}`"
        )
        raise typer.Exit(code=130) from None


def _unrecorded(result: RunResult, waited: float) -> None:
    """The run ended but the store never heard: one line saying so, and how to finish it."""
    err_console.print(
        f"[bold red]error:[/] {escape(result.error or 'the run store is unavailable')} "
        f"(retried for {waited:g} s, {OUTAGE_WAIT_VARIABLE}). The run is left resumable: once "
        f"the store is back, `{dp_command()} runs resume {result.run_id}` finishes it without "
        "running again the tasks whose results are stored.",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(code=EXIT_UNAVAILABLE)


def _report(result: RunResult, settings: config.Settings, orchestrator: Orchestrator) -> None:
    if result.unrecorded is not None:
        _unrecorded(result, orchestrator.store_outage_wait)
    console = Console()
    rows = [task_row(r) for r in result.tasks.values()]
    print_task_table(console, rows)
    colour = {RunStatus.SUCCEEDED: "green", RunStatus.PARTIAL: "yellow"}.get(result.status, "red")
    duration = f" in {duration_text(result.duration)}" if result.duration is not None else ""
    console.print(
        f"run [cyan]{result.run_id}[/] [bold {colour}]{result.status.value}[/]{duration}",
        highlight=False,
    )
    refused = (result.error or "").startswith(("the run store refused", "crash loop"))
    if result.error and (refused or not any(error for *_, error in rows)):  # else the table
        console.print(f"[red]{escape(result.error)}[/]", highlight=False)
    dp = dp_command()
    last = next((r.task_name for r in reversed(result.tasks.values()) if r.result_ids), None)
    results = settings.results_path
    where = (
        f"{settings.results.partition('?')[0].rstrip('/')}/{result.run_id}/<task>/"
        if settings.results.startswith("s3://")
        else "in memory (gone when dp exits)"
        if results is None
        else f"{results / result.run_id}/<task>/"
    )
    console.print(
        f"results: {where}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"details: {dp} runs show {result.run_id}", highlight=False, soft_wrap=True)
    if last is not None:
        console.print(
            f"a result: {dp} runs result {result.run_id} {last}", highlight=False, soft_wrap=True
        )
    raise typer.Exit(code=_EXIT.get(result.status, 1))
