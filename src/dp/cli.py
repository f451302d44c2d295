"""The `dp` command line."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dp.errors import DPError
from dp.loader import load_tasks
from dp.planner import ExecutionPlan, Planner, type_name

app = typer.Typer(
    name="dp",
    help="dp: event-driven data pipelines. Plan and run @task functions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """dp: event-driven data pipelines. Plan and run @task functions."""


err_console = Console(stderr=True)

TargetArg = Annotated[
    str, typer.Argument(help="A .py file or importable module with @task functions.")
]
TagsOpt = Annotated[
    list[str] | None, typer.Option("--tags", "-t", help="Select tasks with this tag (repeatable).")
]
TaskOpt = Annotated[
    list[str] | None,
    typer.Option("--task", help="Select this task (repeatable); upstream comes too."),
]


def _fail(exc: Exception) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _plan(target: str, tags: list[str] | None, tasks: list[str] | None) -> ExecutionPlan:
    try:
        load_tasks(target)
        return Planner().create_execution_plan(tags=tags or None, task_names=tasks or None)
    except DPError as exc:
        raise _fail(exc) from exc


@app.command()
def plan(
    target: TargetArg,
    tags: TagsOpt = None,
    task: TaskOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Print the execution plan of the tasks in TARGET: order, levels, parameters, dag_id."""
    execution_plan = _plan(target, tags, task)
    if as_json:
        print(execution_plan.to_json(indent=2))
        return
    print_plan(execution_plan)


def print_plan(execution_plan: ExecutionPlan) -> None:
    """Render a plan for humans."""
    console = Console()
    tasks = execution_plan.tasks
    console.print(
        f"[bold]Plan[/] dag_id=[cyan]{execution_plan.dag_id}[/]  "
        f"{len(tasks)} tasks in {len(execution_plan.parallel_levels)} levels"
    )
    table = Table(show_header=True, header_style="bold")
    for column in ("#", "level", "task", "inputs", "returns", "after", "options"):
        table.add_column(column)
    level_of = {name: i for i, level in enumerate(execution_plan.parallel_levels) for name in level}
    data_edges: dict[str, list[str]] = {}
    control_edges: dict[str, list[str]] = {}
    for edge in execution_plan.edges:
        if edge.kind == "data":
            label = (
                edge.upstream
                + {"value": "", "chunk": " (each chunk)", "collect": " (all)"}[edge.mode]
            )
            data_edges.setdefault(edge.downstream, []).append(label)
        else:
            control_edges.setdefault(edge.downstream, []).append(edge.upstream)
    for i, name in enumerate(execution_plan.execution_order, 1):
        meta = tasks[name]
        options = []
        if meta.stream_output:
            options.append("stream")
        if meta.max_retries:
            options.append(f"retries={meta.max_retries}")
        if meta.timeout:
            options.append(f"timeout={meta.timeout:g}s")
        if meta.fail_safe:
            options.append("fail_safe")
        if meta.is_async:
            options.append("async")
        cells = (
            str(i),
            str(level_of[name]),
            name,
            ", ".join(data_edges.get(name, [])),
            type_name(meta.output_schema),
            ", ".join(control_edges.get(name, [])),
            " ".join(options),
        )
        table.add_row(*(escape(cell) for cell in cells))
    console.print(table)
    console.print("[bold]Parallel levels[/]")
    for i, level in enumerate(execution_plan.parallel_levels):
        console.print(f"  {i}: {', '.join(level)}", highlight=False)
    if execution_plan.run_parameters:
        console.print("[bold]Run parameters[/] (pass with --param NAME=VALUE)")
        for param in execution_plan.run_parameters:
            need = "required" if param.required else f"default {param.default!r}"
            console.print(
                escape(
                    f"  {param.name}: {type_name(param.annotation)} ({need}; "
                    f"used by {', '.join(param.tasks)})"
                ),
                highlight=False,
            )
    else:
        console.print("[bold]Run parameters[/] none")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
