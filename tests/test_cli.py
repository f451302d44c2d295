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
