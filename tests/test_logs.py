"""dp's log output, for CLI users, service operators and library users."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator

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
    import json

    out = io.StringIO()
    configure_logging(level="INFO", stream=out)
    get_logger("dp.test", run_id="r1").info("run.started")
    line = json.loads(out.getvalue())
    assert (line["event"], line["run_id"], line["level"]) == ("run.started", "r1", "info")
