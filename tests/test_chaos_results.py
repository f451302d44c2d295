"""Damaged results are named, never silently redone: `dp run` killed mid-run, a stored result
truncated by 8 bytes, then `dp runs result`, a downstream load, `dp runs verify` and
`dp runs resume` each name the run, task, result id and file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dp.engine.model import ExecutableTask
from dp.engine.worker import Worker
from dp.io import FilesystemIOManager
from dp.store import SQLRunStore, TaskStatus
from dp.tasks import TaskRegistry, task
from test_cli_run import PIPELINE, _env, _recorded_running, dp, executions


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    return tmp_path


def _killed_at_c(project: Path) -> str:
    """`dp run` SIGKILLed while task c runs (a and b stored and recorded); the run id."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dp.cli", "run", "pipeline.py"],
        cwd=project,
        env=_env(project),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while "c" not in executions(project) or not _recorded_running(project, "c"):
            assert time.monotonic() < deadline, "the run never reached task c"
            assert process.poll() is None, "dp run exited early"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    store = SQLRunStore(path=project / ".dp" / "runs.db")
    try:
        (record,) = store.list_runs()
        states = {t.task_name: t.status for t in store.get_task_runs(record.run_id)}
    finally:
        store.close()
    assert states["b"] == TaskStatus.SUCCEEDED
    return record.run_id


@pytest.mark.chaos
def test_a_truncated_result_is_named_everywhere_and_resume_reruns_exactly_it(
    project: Path,
) -> None:
    run_id = _killed_at_c(project)
    damaged = project / ".dp" / "results" / run_id / "b" / "output.pkl"
    damaged.write_bytes(damaged.read_bytes()[:-8])
    where = str(damaged)

    shown = dp(project, "runs", "result", run_id, "b")
    assert shown.returncode != 0
    for part in (run_id, "'b'", "'output'", where, "damaged"):
        assert part in shown.stderr, shown.stderr
    assert "has not produced it yet" not in shown.stderr

    verified = dp(project, "runs", "verify", run_id)
    assert verified.returncode == 1
    lines = verified.stdout.splitlines()
    assert any(
        line.startswith("damaged") and " b output" in line and where in line for line in lines
    )
    assert any(line.startswith("ok") and " a output" in line for line in lines)

    (project / "release").touch()
    before = executions(project)
    resumed = dp(project, "runs", "resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    listed = resumed.stderr[: resumed.stderr.index("c: ")]
    assert "resume runs 3 tasks again:" in resumed.stderr
    assert f"b: result 'output' is damaged at {where}" in listed
    assert "c: " in resumed.stderr
    assert "d: never started" in resumed.stderr
    again = executions(project)[len(before) :]
    print(f"ran before the kill: {before}; resume ran: {again}; listed: {listed!r}")
    assert sorted(again) == ["b", "c", "d"]  # a's result was whole: not run again
    assert dp(project, "runs", "result", run_id, "d").stdout.strip() == "3"
    assert dp(project, "runs", "verify", run_id).returncode == 0


def test_a_downstream_load_of_a_damaged_result_fails_naming_it(tmp_path: Path) -> None:
    """A task whose input is damaged fails with ResultDamagedError naming the run, the
    upstream task, the result id and the file, and is not retried (it would fail again)."""
    registry = TaskRegistry()

    @task(registry=registry, dependencies=["up"])
    def down(up: int) -> int:
        return up + 1

    io = FilesystemIOManager(tmp_path)
    path = Path(io.save("run_1", "up", "output", list(range(100))))
    path.write_bytes(path.read_bytes()[:-8])
    outcome = Worker(io, capture_output=False).execute(
        ExecutableTask(
            "run_1", "down", "output", registry.get("down"), inputs={"up": ("up", "output")}
        )
    )
    assert not outcome.ok
    assert (outcome.error or "").startswith("ResultDamagedError: ")
    for part in ("'run_1'", "'up'", "'output'", str(path)):
        assert part in (outcome.error or "")
    assert not outcome.retryable
