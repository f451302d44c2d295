"""Damaged results are named, never silently redone: `dp run` killed mid-run, a stored result
truncated by 8 bytes, then `dp runs result`, a downstream load, `dp runs verify` and
`dp runs resume` each name the run, task, result id and file."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dp.engine.model import ExecutableTask
from dp.engine.worker import Worker
from dp.io import FilesystemIOManager
from dp.store import SQLRunStore, TaskStatus
from dp.tasks import TaskRegistry, task
from test_cli_run import PIPELINE, _recorded_running, dp, executions, sigkill_when


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    return tmp_path


def _killed_at_c(project: Path) -> str:
    """`dp run` SIGKILLed while task c runs (a and b stored and recorded); the run id."""
    sigkill_when(
        project,
        ["run", "pipeline.py"],
        lambda: "c" in executions(project) and _recorded_running(project, "c"),
        "task c",
        patience=60,
    )
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


FENCED_TASKS = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path

    from dp import task

    HERE = Path(__file__).parent


    def effect(*words: object) -> None:
        with (HERE / "effects").open("a") as log:  # side effects, counted by the test
            log.write(" ".join(map(str, words)) + "\\n")


    @task
    def k1() -> int:
        first = not (HERE / "k1-started").exists()
        (HERE / "k1-started").touch()
        effect("start", "k1", os.getpid())
        time.sleep(6 if first else 0.5)  # the first delivery is frozen in here
        effect("done", "k1", os.getpid())
        return os.getpid()


    @task(dependencies=["k1"])
    def k2(k1: int) -> int:
        effect("read", "k2", k1)
        return k1
    """
)


def _effects(root: Path) -> list[list[str]]:
    path = root / "effects"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.chaos
def test_a_worker_frozen_past_the_visibility_timeout_never_replaces_a_read_result(
    tmp_path: Path,
) -> None:
    """The issue's case on Celery: the worker running k1 is SIGSTOPped past the broker's
    visibility timeout (heartbeats set far longer, so only the broker redelivers); another
    worker runs k1 again, commits, and k2 reads that result. SIGCONT: the woken attempt ends
    its function and saves, and its write is refused. k1's result stays the one k2 read."""
    from celery_servers import DP, Workers, start_redis

    (tmp_path / "pipeline.py").write_text(FENCED_TASKS)
    redis = start_redis(tmp_path)
    env = {
        "DP_CELERY_BROKER_URL": redis.url,
        "DP_RESULTS_URL": f"file://{tmp_path / 'results'}",
        "DP_STORE_URL": f"sqlite:///{tmp_path / 'runs.db'}",
        "DP_CELERY_VISIBILITY_TIMEOUT": "3",
        "DP_CELERY_HEARTBEAT_TIMEOUT": "3600",
    }
    workers = Workers.start(tmp_path / "pipeline.py", env, count=2)
    run = subprocess.Popen(
        [DP, "run", "pipeline.py", "--executor", "celery"],
        cwd=tmp_path,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stopped = None
    try:
        _until(lambda: any(e[:2] == ["start", "k1"] for e in _effects(tmp_path)), 60, "k1")
        frozen_pid = int(_effects(tmp_path)[0][2])
        stopped = next(p for p in workers.processes if p.pid == os.getpgid(frozen_pid))
        os.killpg(stopped.pid, signal.SIGSTOP)
        _until(lambda: any(e[0] == "read" for e in _effects(tmp_path)), 60, "k2 to read k1")
        os.killpg(stopped.pid, signal.SIGCONT)
        stopped = None
        # the woken attempt finishes its function and then tries to save its result
        _until(
            lambda: sum(e[:2] == ["done", "k1"] for e in _effects(tmp_path)) == 2,
            60,
            "the woken attempt to end k1",
        )
        out, err = run.communicate(timeout=60)
        time.sleep(1.0)  # time for the woken attempt's save, which is refused
    finally:
        if stopped is not None:
            os.killpg(stopped.pid, signal.SIGCONT)
        if run.poll() is None:
            run.kill()
            run.communicate()
        workers.stop()
        redis.stop()
    effects = _effects(tmp_path)
    read = int(next(e[2] for e in effects if e[0] == "read"))
    runs = [int(e[2]) for e in effects if e[:2] == ["start", "k1"]]
    (run_dir,) = (tmp_path / "results").iterdir()
    stored = pickle.loads((run_dir / "k1" / "output.pkl").read_bytes())
    leftovers = [p.name for p in (run_dir / "k1").iterdir() if p.name.startswith(".")]
    logs = "".join(log.read_text(errors="replace") for log in workers.logs)
    print(
        f"\nk1 executions {len(runs)} (pids {runs}), k2 read k1 = {read}, k1 stored = "
        f"{stored}, late writes refused {logs.count('result.commit_refused')}, "
        f"staged files left {len(leftovers)}"
    )
    assert run.returncode == 0, out + err
    assert runs[0] == frozen_pid != read
    assert len(runs) == 2  # the woken worker did run its task a second time...
    assert stored == read  # ...but its write never replaced the result k2 had read
    assert "result.commit_refused" in logs
    assert leftovers == []


STALE_OWNER = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path

    from dp import Orchestrator, get_planner, task

    HERE = Path(__file__).parent


    def effect(*words: object) -> None:
        with (HERE / "effects").open("a") as log:
            log.write(" ".join(map(str, words)) + "\\n")


    @task
    def slow() -> int:
        effect("start", "slow", os.getpid())
        while not (HERE / "release").exists():
            time.sleep(0.01)
        effect("done", "slow", os.getpid())
        return os.getpid()


    @task(dependencies=["slow"])
    def after(slow: int) -> int:
        effect("read", "after", slow)
        return slow


    if __name__ == "__main__":
        plan = get_planner().create_execution_plan()
        orchestrator = Orchestrator.embedded(HERE / ".dp", lease_seconds=1.0)
        result = orchestrator.run(plan, run_id="frozen", target=__file__)
        print(result.status.value, result.error)
    """
)


@pytest.mark.chaos
def test_an_owner_frozen_past_its_lease_never_replaces_a_result_the_new_owner_committed(
    tmp_path: Path,
) -> None:
    """In-process: the `dp run` owner is SIGSTOPped while `slow` runs, its lease runs out, the
    run is resumed elsewhere (slow runs there, `after` reads its result); SIGCONT: the old
    owner's `slow` returns, and its result must not replace the one `after` read."""
    script = tmp_path / "owner.py"
    script.write_text(STALE_OWNER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    owner = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _until(lambda: any(e[:2] == ["start", "slow"] for e in _effects(tmp_path)), 30, "slow")
        owner.send_signal(signal.SIGSTOP)
        time.sleep(1.5)  # its 1 s lease runs out while it is frozen
        (tmp_path / "release").touch()
        resumed = subprocess.run(
            [sys.executable, "-m", "dp.cli", "runs", "resume", "frozen"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        owner.send_signal(signal.SIGCONT)
    out, err = owner.communicate(timeout=30)
    time.sleep(0.5)
    effects = _effects(tmp_path)
    read = int(next(e[2] for e in effects if e[0] == "read"))
    stored = pickle.loads(
        (tmp_path / ".dp" / "results" / "frozen" / "slow" / "output.pkl").read_bytes()
    )
    ran = [int(e[2]) for e in effects if e[:2] == ["done", "slow"]]
    print(
        f"\nslow ended in pids {ran} (old owner {owner.pid}), after read {read}, stored "
        f"{stored}, late writes refused {err.count('result.commit_refused')}; old owner: "
        f"{out.strip()[:60]}"
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert read != owner.pid
    assert stored == read
