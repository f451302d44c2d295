"""`dp run` and `dp runs` as a user drives them: real subprocesses, a real SQLite run store."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from dp.store import RunStatus, SQLRunStore, TaskStatus

PIPELINE = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path

    from dp import task

    LOG = Path(os.environ["DP_TEST_LOG"])


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
        print("b printed this")
        return a + 1


    @task(dependencies=["b"])
    def c(b: int) -> int:
        mark("c")
        if not Path(os.environ["DP_TEST_RELEASE"]).exists():
            time.sleep(60)
        return b + 1


    @task(dependencies=["c"])
    def d(c: int, factor: int = 1) -> int:
        mark("d")
        if factor < 0:
            raise ValueError(f"factor must be positive, got {factor}")
        return c * factor
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    return tmp_path


def dp(
    project: Path, *args: str, timeout: float = 60, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dp.cli", *args],
        cwd=project,
        env={**_env(project), "COLUMNS": str(columns)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env(project: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DP_TEST_LOG": str(project / "log.txt"),
        "DP_TEST_RELEASE": str(project / "release"),
        "COLUMNS": "200",
    }


def sigkill_when(
    project: Path,
    args: Sequence[str],
    reached: Callable[[], bool],
    what: str,
    *,
    env: dict[str, str] | None = None,
    patience: float = 30.0,
) -> None:
    """Start `dp ARGS` in `project`, SIGKILL it as soon as `reached()`, and fail if it exits
    first or never gets there within `patience` seconds (`what` says where it should get)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dp.cli", *args],
        cwd=project,
        env=_env(project) if env is None else env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + patience
        while not reached():
            assert time.monotonic() < deadline, f"dp {args[0]} never reached {what}"
            assert process.poll() is None, f"dp {args[0]} exited early"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def executions(project: Path) -> list[str]:
    log = project / "log.txt"
    return log.read_text().split() if log.exists() else []


def test_run_succeeds_and_shows_where_results_are(project: Path) -> None:
    """`dp run` runs every task, prints the task table and the results folder, exits 0."""
    (project / "release").touch()
    done = dp(project, "run", "pipeline.py")
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout
    assert "results: .dp/results/" in done.stdout
    assert executions(project) == ["a", "b", "c", "d"]


def test_failing_run_exits_non_zero_with_the_error_once(project: Path) -> None:
    """A task raising makes `dp run` exit 1; its error is printed once, in the task's row."""
    (project / "release").touch()
    done = dp(project, "run", "pipeline.py", "--param", "factor=-2")
    assert done.returncode == 1
    error = "ValueError: factor must be positive, got -2"
    assert re.search(rf"^d +failed +1 +\S+ ms +{error}", done.stdout, re.MULTILINE), done.stdout
    assert (done.stdout + done.stderr).count(error) == 1


def test_bad_param_is_refused_before_running(project: Path) -> None:
    """A --param of the wrong type exits 2 naming the parameter; nothing runs."""
    done = dp(project, "run", "pipeline.py", "--param", "factor=many")
    assert done.returncode == 2
    assert "'factor' = 'many' is not a valid int" in done.stderr
    assert executions(project) == []


def test_runs_show_and_logs_tell_what_happened(project: Path) -> None:
    """`dp runs list/show/logs` show the run, each task's status and what tasks printed."""
    (project / "release").touch()
    dp(project, "run", "pipeline.py", "--param", "factor=-1")
    store = SQLRunStore(path=project / ".dp" / "runs.db")
    (record,) = store.list_runs()
    store.close()
    listed = dp(project, "runs", "list")
    assert record.run_id in listed.stdout
    assert "failed" in listed.stdout
    shown = dp(project, "runs", "show", record.run_id)
    assert "ValueError: factor must be positive, got -1" in shown.stdout
    assert "succeeded" in shown.stdout
    logs = dp(project, "runs", "logs", record.run_id)
    assert "b printed this" in logs.stdout
    assert 'raise ValueError(f"factor must be positive' in logs.stdout


def test_resume_after_the_orchestrator_is_killed(project: Path) -> None:
    """SIGKILL `dp run` mid-run; `dp runs resume` finishes it without redoing finished tasks."""
    # until c is running and recorded so (task states are written every 0.2 s)
    sigkill_when(
        project,
        ["run", "pipeline.py"],
        lambda: "c" in executions(project) and _recorded_running(project, "c"),
        "task c",
    )
    store = SQLRunStore(path=project / ".dp" / "runs.db")
    (record,) = store.list_runs()
    assert record.status == RunStatus.RUNNING  # nobody was left to record the end
    store.close()
    listed = dp(project, "runs", "list")
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(record.run_id)]
    assert row.split()[1] == "stale"
    assert f"dp runs resume {record.run_id}" in listed.stdout
    shown = dp(project, "runs", "show", record.run_id)
    assert f"stale: its owner is gone; resume it with `dp runs resume {record.run_id}`" in (
        shown.stdout
    )

    (project / "release").touch()
    resumed = dp(project, "runs", "resume", record.run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert executions(project) == ["a", "b", "c", "c", "d"]
    store = SQLRunStore(path=project / ".dp" / "runs.db")
    assert store.get_run(record.run_id).status == RunStatus.SUCCEEDED
    store.close()
    attempts = dp(project, "runs", "show", record.run_id, "--attempts")
    cells = [tuple(line.split()[:3]) for line in attempts.stdout.splitlines()]
    assert ("c", "1", "interrupted") in cells
    assert ("c", "2", "succeeded") in cells
    first = dp(project, "runs", "logs", record.run_id, "c", "--attempt", "1")
    assert "(interrupted, attempt 1)" in first.stdout
    none = dp(project, "runs", "logs", record.run_id, "c", "--attempt", "3")
    assert none.returncode == 2
    assert f"run {record.run_id!r} has no attempt 3 of task 'c'" in none.stderr


def _recorded_running(project: Path, task_name: str) -> bool:
    path = project / ".dp" / "runs.db"
    if not path.exists():
        return False
    store = SQLRunStore(path=path)
    try:
        runs = store.list_runs()
        return bool(runs) and any(
            t.task_name == task_name and t.status == TaskStatus.RUNNING
            for t in store.get_task_runs(runs[0].run_id)
        )
    finally:
        store.close()


def test_ctrl_c_names_the_run_to_resume(project: Path) -> None:
    """SIGINT during `dp run` exits 130 and prints the exact `dp runs resume <id>` command."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dp.cli", "run", "pipeline.py"],
        cwd=project,
        env=_env(project),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while "c" not in executions(project):
        assert time.monotonic() < deadline, "the run never reached task c"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    store = SQLRunStore(path=project / ".dp" / "runs.db")
    (record,) = store.list_runs()
    store.close()
    assert process.returncode == 130
    assert f"resume with `dp runs resume {record.run_id}`" in err
    assert f"interrupted: resume with `dp runs resume {record.run_id}`" in err.splitlines()


def test_resume_refuses_unknown_and_finished_runs(project: Path) -> None:
    """Resuming a run that does not exist, or already succeeded, exits 2 and says why."""
    (project / "release").touch()
    dp(project, "run", "pipeline.py")
    unknown = dp(project, "runs", "resume", "no-such-run")
    assert unknown.returncode == 2
    assert "run 'no-such-run' is not in the run store" in unknown.stderr
    store = SQLRunStore(path=project / ".dp" / "runs.db")
    (record,) = store.list_runs()
    store.close()
    finished = dp(project, "runs", "resume", record.run_id)
    assert finished.returncode == 2
    assert "cannot be resumed: it already succeeded" in finished.stderr
    assert "tasks" not in finished.stderr  # no empty progress bar before the error


RETRYING = textwrap.dedent(
    """
    from collections.abc import Iterator

    from dp import task


    @task
    def numbers() -> Iterator[int]:
        yield from (10, 20, 30)


    @task(dependencies=["numbers"])
    def total(numbers: list[int]) -> dict[str, int]:
        return {"total": sum(numbers)}


    @task(max_retries=1, fail_safe=True)
    def flaky() -> int:
        raise RuntimeError("flaky service")
    """
)


@pytest.fixture
def streams(tmp_path: Path) -> Path:
    (tmp_path / "streams.py").write_text(RETRYING)
    return tmp_path


def test_runs_list_fits_80_columns_and_filters_by_file_name(project: Path) -> None:
    """`dp runs list` is readable at 80 columns; `--pipeline pipeline.py` finds the CLI's runs."""
    (project / "release").touch()
    dp(project, "run", "pipeline.py")
    listed = dp(project, "runs", "list", "--pipeline", "pipeline.py", columns=80)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["run", "id", "status", "started", "duration", "trigger", "pipeline"]
    assert "…" not in listed.stdout
    assert row.split()[1] == "succeeded"
    assert row.split()[-2:] == ["manual", "pipeline.py"]
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80


def test_runs_list_says_when_nothing_matches(project: Path) -> None:
    """An empty listing says so and names the filter instead of printing an empty table."""
    (project / "release").touch()
    dp(project, "run", "pipeline.py")
    listed = dp(project, "runs", "list", "--pipeline", "other.py")
    assert listed.returncode == 0
    assert listed.stdout.strip() == "no runs match --pipeline other.py in .dp."


def test_runs_result_prints_a_result_its_chunks_and_json(streams: Path) -> None:
    """`dp runs result` prints a task's value, a stream's chunks, one chunk, or JSON."""
    done = dp(streams, "run", "streams.py")
    assert done.returncode == 3, done.stdout + done.stderr  # partial: flaky is fail-safe
    run_id = re.search(r"run (\S+) partial", done.stdout).group(1)  # type: ignore[union-attr]
    total = dp(streams, "runs", "result", run_id, "total", "--json")
    assert json.loads(total.stdout) == {"total": 60}
    assert json.loads(dp(streams, "runs", "result", run_id, "numbers", "--json").stdout) == [
        10,
        20,
        30,
    ]
    assert dp(streams, "runs", "result", run_id, "numbers", "--chunk", "1").stdout.strip() == "20"
    beyond = dp(streams, "runs", "result", run_id, "numbers", "--chunk", "3")
    assert beyond.returncode == 2
    assert "stored 3 chunks; --chunk takes 0 to 2" in beyond.stderr
    failed = dp(streams, "runs", "result", run_id, "flaky")
    assert failed.returncode == 2
    assert "stored no result (it is failed)" in failed.stderr
    unknown = dp(streams, "runs", "result", run_id, "nope")
    assert unknown.returncode == 2
    assert "has no task 'nope'; its tasks are flaky, numbers, total" in unknown.stderr


def test_logs_are_readable_lines_and_the_failure_is_not_repeated(streams: Path) -> None:
    """With stderr not a terminal, a retry is one readable line (no JSON), and the failure is
    left to the task table."""
    done = dp(streams, "run", "streams.py")
    assert "{" not in done.stderr
    (retry,) = [line for line in done.stderr.splitlines() if "task.retrying" in line]
    assert "task_name=flaky" in retry
    assert "task.failed" not in done.stderr
    assert "run.finished" not in done.stderr


def test_the_printed_next_step_works_as_printed(project: Path) -> None:
    """Called by path (as `make run` does, dp not on PATH), dp prints commands that work."""
    (project / "release").touch()
    script = Path(sys.executable).parent / "dp"
    env = {**_env(project), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [str(script), "run", "pipeline.py"], cwd=project, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    (details,) = [line for line in done.stdout.splitlines() if line.startswith("details: ")]
    command = shlex.split(details.removeprefix("details: "))
    assert command[0] == str(script)
    shown = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "succeeded" in shown.stdout
