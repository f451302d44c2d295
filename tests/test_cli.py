"""The `dp` command line, driven like a user does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dp.cli import app

EXAMPLES = Path(__file__).parent.parent / "examples"
pytestmark = pytest.mark.usefixtures("clean_default_registry")
runner = CliRunner()


def test_plan_prints_order_levels_params_and_dag_id() -> None:
    """`dp plan` on the fan-out example shows every task, the levels, run parameters and dag_id."""
    result = runner.invoke(app, ["plan", str(EXAMPLES / "etl_fanout.py")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("dag_id=", "extract_orders", "order_batches (each chunk)", "batch_size (all)"):
        assert text in result.output
    assert "1: customers, order_batches, revenue" in result.output
    assert "batch_date: str (required; used by extract_orders)" in result.output


def test_plan_json_is_machine_readable() -> None:
    """`dp plan --json` prints the plan as JSON."""
    result = runner.invoke(app, ["plan", str(EXAMPLES / "sales.py"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["execution_order"] == ["extract_sales", "transform", "sales_by_region"]
    assert data["run_parameters"] == [
        {"name": "multiplier", "type": "float", "required": False,
         "tasks": ["transform"], "default": 2.0}
    ]  # fmt: skip


def test_plan_selects_by_tag_and_task() -> None:
    """--tags and --task narrow the plan to the selection and its upstream."""
    result = runner.invoke(
        app, ["plan", str(EXAMPLES / "sales.py"), "--task", "transform", "--json"]
    )
    assert json.loads(result.output)["execution_order"] == ["extract_sales", "transform"]
    result = runner.invoke(app, ["plan", str(EXAMPLES / "sales.py"), "-t", "extract", "--json"])
    assert json.loads(result.output)["execution_order"] == ["extract_sales"]


def test_plan_of_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A task file that does not exist exits 2 with its name."""
    result = runner.invoke(app, ["plan", str(tmp_path / "nope.py")])
    assert result.exit_code == 2
    assert "nope.py' does not exist" in result.output


def test_plan_of_broken_file_names_the_exception(tmp_path: Path) -> None:
    """A task file that raises on import exits 2 and says what it raised."""
    broken = tmp_path / "broken_tasks.py"
    broken.write_text("raise RuntimeError('no database configured')\n")
    result = runner.invoke(app, ["plan", str(broken)])
    assert result.exit_code == 2
    assert "RuntimeError: no database configured" in result.output


def test_plan_with_cycle_exits_with_the_cycle(tmp_path: Path) -> None:
    """A cycle in a task file is reported with its path, not a traceback."""
    source = tmp_path / "cyclic_tasks.py"
    source.write_text(
        "from dp import task\n"
        "@task(dependencies=['second'])\ndef first(): ...\n"
        "@task(dependencies=['first'])\ndef second(): ...\n"
    )
    result = runner.invoke(app, ["plan", str(source)])
    assert result.exit_code == 2
    assert "first -> second -> first" in result.output


def test_version_prints_the_installed_version() -> None:
    """`dp --version` prints dp's version and exits 0."""
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"dp {version('dp')}"


@pytest.mark.parametrize("command", ["run", "serve", "plan"])
def test_help_names_every_option_in_full_at_80_columns(command: str) -> None:
    """Option help fits 80 columns without cut names or `<bool>`-style type labels."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    assert "<bool>" not in result.output
    assert "list[str]" not in result.output
    if command == "serve":
        assert "--max-concurrent-pipelines" in result.output


def test_plan_of_a_folder_says_it_is_a_folder(tmp_path: Path) -> None:
    """`dp plan DIR` says DIR is a folder, not that it does not exist."""
    result = runner.invoke(app, ["plan", str(tmp_path)])
    assert result.exit_code == 2
    assert "is a folder; pass the .py file" in result.output


def test_plan_of_a_file_without_tasks_is_an_error(tmp_path: Path) -> None:
    """An empty task file does not plan and 'succeed' with 0 tasks: it exits 2 and says why."""
    empty = tmp_path / "empty_tasks.py"
    empty.write_text("")
    result = runner.invoke(app, ["plan", str(empty)])
    assert result.exit_code == 2
    assert "defines no @task functions" in result.output


def test_unknown_task_is_a_sentence_with_a_suggestion() -> None:
    """`--task` with a typo names the typo and the close match in one sentence."""
    result = runner.invoke(app, ["plan", str(EXAMPLES / "sales.py"), "--task", "transfrom"])
    assert result.exit_code == 2
    assert "no task named 'transfrom' is registered; did you mean 'transform'?" in result.output


def test_workers_with_the_inline_executor_is_refused() -> None:
    """`-w 2 -e inline` contradict each other: exit 2 before anything is planned or run."""
    result = runner.invoke(app, ["run", str(EXAMPLES / "sales.py"), "-w", "2", "-e", "inline"])
    assert result.exit_code == 2
    assert "--workers 2 and --executor inline contradict each other" in result.output


def test_every_bad_parameter_is_reported_before_the_run_starts(tmp_path: Path) -> None:
    """Unknown, ill-typed and list parameters are all reported at once, and no run starts."""
    source = tmp_path / "param_tasks.py"
    source.write_text(
        "from dp import task\n@task\ndef use(ids: list[int], n: int) -> int:\n    return n\n"
    )
    result = runner.invoke(
        app,
        ["run", str(source), "-p", "ids=1,2", "-p", "n=x", "-p", "nn=3", "--root", str(tmp_path)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 2
    assert "3 problems with the run parameters" in result.output
    assert "unknown run parameter(s) ['nn']" in result.output
    assert "'ids' = '1,2' is not a valid list[int]" in result.output
    assert "give it as JSON, e.g. ids=[1,2]" in result.output
    assert "'n' = 'x' is not a valid int" in result.output
    assert "started" not in result.output
    assert not (tmp_path / "runs.db").exists()


def test_missing_optional_dependency_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task file importing a missing module that a dp extra provides says which extra."""
    from dp import loader

    monkeypatch.setitem(loader.EXTRAS, "dp_test_absent_module", "examples")
    source = tmp_path / "needs_extra.py"
    source.write_text("import dp_test_absent_module.sub\n")
    result = runner.invoke(app, ["plan", str(source)], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "No module named 'dp_test_absent_module'" in result.output
    assert "pip install 'dp[examples]'" in result.output
