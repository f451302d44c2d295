"""Faults against re-running from failure: the process running a retry is SIGKILLed; side
effects counted through a file each task appends to."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from dp.store import RunStatus, SQLRunStore
from test_cli_run import sigkill_when

PIPELINE = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path

    from dp import task

    LOG = Path(os.environ["DP_TEST_LOG"])
    HERE = LOG.parent


    def mark(name: str) -> None:
        with LOG.open("a") as log:
            log.write(name + "\\n")


    @task
    def a() -> int:
        mark("a")
        return 1


    @task(dependencies=["a"])
    def b(a: int) -> int:
        mark("b")
        if (HERE / "FAIL").exists():
            raise RuntimeError("b fails while FAIL exists")
        return a + 1


    @task(dependencies=["b"])
    def c(b: int) -> int:
        mark("c")
        deadline = time.monotonic() + 60
        while not (HERE / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return b * 100
    """
)


def _env(project: Path) -> dict[str, str]:
    return {**os.environ, "DP_TEST_LOG": str(project / "log.txt"), "COLUMNS": "200"}


def dp(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dp.cli", *args],
        cwd=project,
        env=_env(project),
        capture_output=True,
        text=True,
        timeout=120,
    )


def executions(project: Path) -> list[str]:
    log = project / "log.txt"
    return log.read_text().split() if log.exists() else []


def run_ids(project: Path) -> list[str]:
    store = SQLRunStore(path=project / ".dp" / "runs.db")
    try:
        return [r.run_id for r in reversed(store.list_runs())]
    finally:
        store.close()


@pytest.mark.chaos
def test_a_killed_retry_resumes_still_reading_its_parents_results(tmp_path: Path) -> None:
    """SIGKILL `dp runs retry` while c runs; `dp runs resume` of the retry finishes it: a is
    never run again (it is still read from the parent), the retry succeeds with the right
    value and still names what it reused."""
    project = tmp_path
    (project / "pipeline.py").write_text(PIPELINE)
    (project / "FAIL").touch()
    assert dp(project, "run", "pipeline.py").returncode == 1
    (parent,) = run_ids(project)
    (project / "FAIL").unlink()

    sigkill_when(
        project,
        ["runs", "retry", parent],
        lambda: "c" in executions(project),
        "task c",
        env=_env(project),
        patience=60,
    )
    child = run_ids(project)[-1]
    assert child != parent

    (project / "release").touch()
    resumed = dp(project, "runs", "resume", child)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    counts = Counter(executions(project))
    store = SQLRunStore(path=project / ".dp" / "runs.db")
    record = store.get_run(child)
    store.close()
    print(
        f"runs: 2 (parent, retry); a executed {counts['a']}x (1 expected), "
        f"b {counts['b']}x, c {counts['c']}x; retry ended {record.status.value}"
    )
    assert counts["a"] == 1  # reused by the retry, and again by its resume
    assert counts["c"] >= 2  # killed once, then finished
    assert record.status == RunStatus.SUCCEEDED
    assert (record.parent_run_id, record.metadata["reused"]) == (parent, {"a": parent})
    assert dp(project, "runs", "result", child, "c").stdout.strip() == "200"
    assert f"reused from {parent}: a" in dp(project, "runs", "show", child).stdout
