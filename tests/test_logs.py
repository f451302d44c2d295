"""dp's log output, for CLI users, service operators and library users."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dp.logs import configure_logging, get_logger


@pytest.fixture(autouse=True)
def _restore_dp_logger() -> Iterator[None]:
    """configure_logging changes the process-wide "dp" logger: put it back afterwards."""
    logger = logging.getLogger("dp")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_library_user_without_logging_config_sees_readable_warnings() -> None:
    """With no logging configured, a dp warning reaches stderr as text, not a dict repr."""
    script = textwrap.dedent(
        """
        from dp.logs import get_logger
        get_logger("dp.engine").warning("task.retrying", task_name="flaky", attempt=1)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stderr.strip() == "task.retrying task_name='flaky' attempt=1"


def test_console_lines_honour_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal, log lines are coloured unless NO_COLOR is set."""
    coloured, plain = _Terminal(), _Terminal()
    configure_logging(level="INFO", stream=coloured)
    get_logger("dp.test").warning("coloured.line")
    monkeypatch.setenv("NO_COLOR", "1")
    configure_logging(level="INFO", stream=plain)
    get_logger("dp.test").warning("plain.line")
    assert "\x1b[" in coloured.getvalue()
    assert "plain.line" in plain.getvalue()
    assert "\x1b[" not in plain.getvalue()


def test_json_lines_when_not_a_terminal() -> None:
    """Off a terminal (the service's logs), each event is one JSON line."""
    out = io.StringIO()
    configure_logging(level="INFO", stream=out)
    get_logger("dp.test", run_id="r1").info("run.started")
    line = json.loads(out.getvalue())
    assert (line["event"], line["run_id"], line["level"]) == ("run.started", "r1", "info")


def _modules_after(script: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"{script}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(done.stdout.split())


def test_import_dp_loads_neither_the_engine_nor_structlog() -> None:
    """`import dp` stays light: no engine, asyncio, structlog, rich or SQLAlchemy yet."""
    loaded = _modules_after("import dp")
    heavy = {"dp.engine", "dp.store", "dp.events", "asyncio", "structlog", "rich", "sqlalchemy"}
    assert loaded & heavy == set()


def test_public_names_load_on_first_use() -> None:
    """`from dp import Orchestrator` loads the engine, still without structlog."""
    loaded = _modules_after("from dp import Orchestrator, task, SQLRunStore")
    assert {"dp.engine.orchestrator", "dp.tasks", "dp.store.sql"} <= loaded
    assert "structlog" not in loaded


def test_structlog_loads_when_a_line_is_logged() -> None:
    """A logger costs nothing until an event passes its level; then structlog renders it."""
    quiet = _modules_after("from dp.logs import get_logger\nget_logger('dp.x').info('hidden')")
    loud = _modules_after("from dp.logs import get_logger\nget_logger('dp.x').warning('shown')")
    assert ("structlog" in quiet, "structlog" in loud) == (False, True)


def test_unknown_public_name_is_an_attribute_error() -> None:
    """A name dp does not export raises AttributeError naming it."""
    import dp

    with pytest.raises(AttributeError, match="no attribute 'Orchestra'"):
        _ = dp.Orchestra  # type: ignore[attr-defined]


def test_bound_context_reaches_the_line() -> None:
    """Context bound with `bind` appears on every line of the bound logger."""
    out = io.StringIO()
    configure_logging(level="INFO", stream=out, json=True)
    get_logger("dp.test").bind(run_id="r2").bind(task_name="t").warning("task.retrying")
    line = json.loads(out.getvalue())
    assert (line["run_id"], line["task_name"]) == ("r2", "t")


def test_logging_outlives_the_stderr_it_was_configured_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A line logged after the stderr of configure time was closed goes to today's stderr."""
    first, later = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging(level="INFO", json=True)
    first.close()  # as pytest and CliRunner close the stream they swapped in
    monkeypatch.setattr(sys, "stderr", later)
    get_logger("dp.test").warning("after.close")
    assert json.loads(later.getvalue())["event"] == "after.close"


def test_log_lines_stay_out_of_a_tasks_captured_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line logged while a task's output is captured goes to stderr, not into the task's."""
    from dp.engine import capture

    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    capture.install()
    configure_logging(level="INFO", json=True)
    captured: list[str] = []
    token = capture._buffer.set(captured)
    try:
        get_logger("dp.test").warning("inside.a.task")
    finally:
        capture._buffer.reset(token)
    assert (captured, json.loads(out.getvalue())["event"]) == ([], "inside.a.task")


@pytest.mark.usefixtures("clean_default_registry")
def test_a_line_logged_after_a_cli_command_ended_reaches_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread logging after `dp run` returned (CliRunner closed its stderr) writes to stderr."""
    from typer.testing import CliRunner

    from dp.cli import app

    pipeline = tmp_path / "one.py"
    pipeline.write_text("from dp import task\n\n@task\ndef one() -> int:\n    return 1\n")
    result = CliRunner().invoke(app, ["run", str(pipeline)], env={"DP_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    thread = threading.Thread(target=lambda: get_logger("dp.engine").warning("late.line"))
    thread.start()
    thread.join()
    assert "late.line" in later.getvalue()
    assert "Logging error" not in later.getvalue()
