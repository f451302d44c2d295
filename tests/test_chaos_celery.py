"""Celery workers under faults, through the CLI: `dp run --executor celery` and `dp worker`s
started as users start them, on Celery's default visibility timeout (an hour).

Each task appends a line to a file when it starts and when it ends, so executions are counted
by what the tasks did, not by what dp says. The heartbeat bound is lowered only through its
documented setting, `DP_CELERY_HEARTBEAT_TIMEOUT`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_servers import DP, RedisProcess, Workers, start_redis
from dp.io import FilesystemIOManager
from dp.store import RunRecord, SQLRunStore, TaskRunRecord, TaskStatus

pytestmark = pytest.mark.chaos

TASKS = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path

    from dp import task

    HERE = Path(__file__).parent


    def effect(what: str, name: str) -> None:
        with (HERE / "effects").open("a") as log:  # side effects, counted by the tests
            log.write(f"{what} {name} {os.getpid()} {time.time()}\\n")


    def work(name: str, seconds: float) -> int:
        effect("start", name)
        time.sleep(seconds)
        effect("done", name)
        return os.getpid()


    @task
    def w0() -> int:
        return work("w0", 2)


    @task
    def w1() -> int:
        return work("w1", 2)


    @task
    def w2() -> int:
        return work("w2", 2)


    @task
    def w3() -> int:
        return work("w3", 2)


    @task
    def w4() -> int:
        return work("w4", 2)


    @task
    def w5() -> int:
        return work("w5", 2)


    @task
    def long() -> int:
        return work("long", 8)


    @task
    def handover() -> str:
        # the first attempt outlives its orchestrator and the resumed run's short attempt
        first = not (HERE / "handover-started").exists()
        (HERE / "handover-started").touch()
        work("handover", 12 if first else 1)
        return "first" if first else "resumed"


    @task
    def fatal() -> None:
        effect("start", "fatal")
        os._exit(1)  # kills the pool process that runs it, every time


    @task
    def frozen() -> int:
        # the first attempt is short, the next ones long: the test wakes the first one while
        # the second still runs
        first = not (HERE / "frozen-started").exists()
        (HERE / "frozen-started").touch()
        return work("frozen", 4 if first else 8)
    """
)

#: the heartbeat bound the tests set, as users set it
BOUND = 3


class Project:
    """A task file, shared results and a SQLite store in a folder, and a private Redis."""

    def __init__(self, root: Path, redis: RedisProcess) -> None:
        self.root = root
        self.redis = redis
        self.file = root / "pipeline.py"
        self.file.write_text(TASKS)
        self.results = root / "results"
        self.store_path = root / "runs.db"
        self.env = {
            "DP_CELERY_BROKER_URL": redis.url,
            "DP_RESULTS_URL": f"file://{self.results}",
            "DP_STORE_URL": f"sqlite:///{self.store_path}",
            "DP_CELERY_HEARTBEAT_TIMEOUT": str(BOUND),
        }

    def effects(self) -> list[tuple[str, str, int]]:
        """(what, task, pid) of each side effect, in order."""
        return [(what, name, pid) for what, name, pid, _ in self.timed_effects()]

    def timed_effects(self) -> list[tuple[str, str, int, float]]:
        path = self.root / "effects"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(w, n, int(pid), float(t)) for w, n, pid, t in (line.split() for line in lines)]

    def count(self, what: str, name: str) -> int:
        return sum(1 for w, n, _ in self.effects() if (w, n) == (what, name))

    def run(self, *tasks: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """`dp run pipeline.py --executor celery`, as a user types it."""
        selection = [arg for name in tasks for arg in ("--task", name)]
        return subprocess.Popen(
            [DP, "run", str(self.file), "--executor", "celery", *selection],
            cwd=self.root,
            env={**os.environ, **self.env, **(env or {}), "COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def store(self) -> SQLRunStore:
        return SQLRunStore(path=self.store_path)

    def last_run(self, timeout: float = 60) -> RunRecord:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.store_path.exists():
                store = self.store()
                try:
                    runs = store.list_runs(limit=1)
                finally:
                    store.close()
                if runs:
                    return runs[0]
            time.sleep(0.1)
        raise AssertionError("dp run recorded no run")

    def attempts(self, run_id: str, task_name: str) -> list[TaskRunRecord]:
        store = self.store()
        try:
            return [a for a in store.get_attempts(run_id) if a.task_name == task_name]
        finally:
            store.close()

    def show(self, run_id: str, *args: str) -> str:
        done = subprocess.run(
            [DP, "runs", "show", run_id, *args],
            cwd=self.root,
            env={**os.environ, **self.env, "COLUMNS": "250"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout + done.stderr


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    redis = start_redis(tmp_path)
    yield Project(tmp_path, redis)
    redis.stop()


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _finish(process: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"dp run did not end within {timeout}s:\n{out}\n{err}") from None
    return process.returncode, out, err


def _worker_of(workers: Workers, pid: int) -> int:
    """Which `dp worker` (each leads its own session) the pool process `pid` belongs to."""
    group = os.getpgid(pid)
    return next(i for i, p in enumerate(workers.processes) if p.pid == group)


def test_a_sigkilled_worker_s_tasks_run_on_the_other_within_the_heartbeat_bound(
    project: Project,
) -> None:
    """SIGKILL one of two workers mid-task: its attempts are recorded lost with its host and
    pid and sent again; the run succeeds long before the visibility timeout, every task ends
    once, only the killed in-flight one started twice."""
    workers = Workers.start(project.file, project.env, count=2)
    names = [f"w{i}" for i in range(6)]
    try:
        run = project.run(*names)
        _wait(lambda: project.effects(), 60, "a task to start")
        _, victim_task, victim_pid = project.effects()[0]
        victim = _worker_of(workers, victim_pid)
        workers.kill(victim)
        killed_at = time.time()
        code, out, err = _finish(run)
        ended = time.time() - killed_at
    finally:
        workers.stop()
    restarted = [t for w, n, _, t in project.timed_effects() if (w, n) == ("start", victim_task)]
    record = project.last_run()
    starts = {name: project.count("start", name) for name in names}
    ends = {name: project.count("done", name) for name in names}
    lost = [
        a for name in names for a in project.attempts(record.run_id, name) if a.status == "lost"
    ]
    killed = [a for a in lost if a.task_name == victim_task]
    detected = min(a.finished_at.timestamp() for a in lost if a.finished_at) - killed_at
    print(
        f"\ntasks {len(names)}, executions {sum(starts.values())}, ends {sum(ends.values())}, "
        f"duplicates {sum(starts.values()) - len(names)} (killed in flight: {victim_task}), "
        f"attempts recorded lost {len(lost)} (the first {detected:.1f}s after the kill); "
        f"{victim_task} started again "
        f"{restarted[-1] - killed_at:.1f}s after the kill, the run ended {ended:.1f}s after it "
        f"(one worker left for the rest; heartbeat bound {BOUND}s; visibility timeout 3600s)"
    )
    assert (code, record.status.value) == (0, "succeeded"), out + err
    assert ends == dict.fromkeys(names, 1)
    assert starts == {name: 2 if name == victim_task else 1 for name in names}

    assert [(a.attempt, a.host is not None, a.pid) for a in killed] == [(1, True, victim_pid)]
    assert "WorkerLost: no heartbeat" in (killed[0].error or "")
    assert "lost" in project.show(record.run_id, "--attempts")
    shown = project.show(record.run_id)
    print(shown)
    assert f"attempt 1 lost with worker {killed[0].host} pid {victim_pid}" in shown


def test_a_sigstopped_worker_is_replaced_and_commits_nothing_when_woken(project: Project) -> None:
    """SIGSTOP the worker running `frozen` past the bound: the attempt is recorded lost and
    sent to the other worker; SIGCONT: the woken attempt saves no result and its late answer
    is ignored (and counted); the run's result is the second worker's."""
    workers = Workers.start(project.file, project.env, count=2)
    try:
        run = project.run("frozen")
        _wait(lambda: project.count("start", "frozen") == 1, 60, "frozen to start")
        frozen_pid = project.effects()[0][2]
        stopped = _worker_of(workers, frozen_pid)
        os.killpg(workers.processes[stopped].pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            _wait(lambda: project.count("start", "frozen") == 2, 60, "frozen to be sent again")
        finally:
            os.killpg(workers.processes[stopped].pid, signal.SIGCONT)
        redispatched = time.monotonic() - stopped_at
        record = project.last_run()
        output = project.results / record.run_id / "frozen" / "output.pkl"
        # the woken attempt's sleep is over: it finishes its function, then must save nothing
        _wait(lambda: project.count("done", "frozen") == 1, 60, "the woken attempt to end")
        time.sleep(0.5)
        saved_by_woken = output.exists()
        code, out, err = _finish(run)
    finally:
        workers.stop()
    second_pid = next(pid for what, _, pid in project.effects()[1:] if what == "start")
    attempts = project.attempts(record.run_id, "frozen")
    record = project.last_run()
    result = FilesystemIOManager(project.results).load(record.run_id, "frozen", "output")
    late = err.count("celery.late_answer_ignored")
    print(
        f"\ntasks 1, executions {project.count('start', 'frozen')}, function ends "
        f"{project.count('done', 'frozen')}, results saved by the woken attempt "
        f"{int(saved_by_woken)}, late answers ignored {late}, sent again "
        f"{redispatched:.1f}s after SIGSTOP (bound {BOUND}s)"
    )
    assert (code, record.status.value) == (0, "succeeded"), out + err
    assert not saved_by_woken
    assert result == second_pid != frozen_pid
    assert [(a.attempt, a.status, a.pid) for a in attempts] == [
        (1, TaskStatus.LOST, frozen_pid),
        (2, TaskStatus.SUCCEEDED, second_pid),
    ]
    assert late >= 1


def test_a_redelivery_after_a_pool_process_died_is_a_new_attempt(project: Project) -> None:
    """SIGKILL only the pool process running w0: Celery delivers the message again; the run
    records attempt 1 lost with that process's pid and attempt 2 with its own start time."""
    workers = Workers.start(project.file, project.env, count=1)
    try:
        run = project.run("w0")
        _wait(lambda: project.count("start", "w0") == 1, 60, "w0 to start")
        killed_pid = project.effects()[0][2]
        os.kill(killed_pid, signal.SIGKILL)
        code, out, err = _finish(run)
    finally:
        workers.stop()
    record = project.last_run()
    attempts = project.attempts(record.run_id, "w0")
    print(
        f"\ntasks 1, executions {project.count('start', 'w0')}, ends "
        f"{project.count('done', 'w0')}, attempts "
        f"{[(a.attempt, a.status.value, a.pid) for a in attempts]}"
    )
    assert (code, record.status.value) == (0, "succeeded"), out + err
    assert [(a.attempt, a.status) for a in attempts] == [
        (1, TaskStatus.LOST),
        (2, TaskStatus.SUCCEEDED),
    ]
    first, second = attempts
    assert (first.pid, first.host is not None) == (killed_pid, True)
    assert second.pid not in (None, killed_pid)
    assert first.started_at is not None
    assert second.started_at is not None
    assert second.started_at > first.started_at
    assert project.count("done", "w0") == 1


def test_a_frozen_broker_is_no_reason_to_take_workers_for_lost(project: Project) -> None:
    """SIGSTOP redis-server past the heartbeat bound while a task runs, then SIGCONT: no
    heartbeat could travel, yet no attempt is taken for lost; the task runs once."""
    workers = Workers.start(project.file, project.env, count=1)
    try:
        run = project.run("long")
        _wait(lambda: project.count("start", "long") == 1, 60, "long to start")
        os.kill(project.redis.process.pid, signal.SIGSTOP)
        try:
            time.sleep(2 * BOUND)
        finally:
            os.kill(project.redis.process.pid, signal.SIGCONT)
        code, out, err = _finish(run)
    finally:
        workers.stop()
    record = project.last_run()
    attempts = project.attempts(record.run_id, "long")
    print(
        f"\nbroker frozen {2 * BOUND}s (bound {BOUND}s); executions "
        f"{project.count('start', 'long')}, attempts {[a.status.value for a in attempts]}"
    )
    assert (code, record.status.value) == (0, "succeeded"), out + err
    assert [a.status for a in attempts] == [TaskStatus.SUCCEEDED]
    assert project.count("start", "long") == 1


def test_an_attempt_of_a_run_taken_over_by_a_resume_saves_nothing(project: Project) -> None:
    """SIGKILL `dp run` while a worker runs `handover`, `dp runs resume` the run (a new
    epoch): the resumed attempt's result stays, the old attempt, ending later, saves none."""
    workers = Workers.start(project.file, project.env, count=2)
    try:
        run = project.run("handover")
        _wait(lambda: project.count("start", "handover") == 1, 60, "handover to start")
        run.kill()
        run.communicate()
        record = project.last_run()
        resumed = subprocess.run(
            [DP, "runs", "resume", record.run_id, "--executor", "celery"],
            cwd=project.root,
            env={**os.environ, **project.env},
            capture_output=True,
            text=True,
            timeout=90,
        )
        _wait(lambda: project.count("done", "handover") == 2, 60, "the old attempt to end")
        time.sleep(1)
    finally:
        workers.stop()
    result = FilesystemIOManager(project.results).load(record.run_id, "handover", "output")
    record = project.last_run()
    print(
        f"\nexecutions {project.count('start', 'handover')}, function ends "
        f"{project.count('done', 'handover')}, resumed run {record.status.value} at epoch "
        f"{record.epoch}; the stored result is the {result} attempt's"
    )
    assert (resumed.returncode, record.status.value) == (0, "succeeded"), resumed.stderr
    assert (result, project.count("start", "handover")) == ("resumed", 2)


def test_a_task_that_kills_every_worker_process_it_runs_in_fails(project: Project) -> None:
    """A task that exits its pool process is delivered again by Celery each time; the third
    lost attempt fails it, instead of the redeliveries going on forever (on main they do)."""
    workers = Workers.start(project.file, project.env, count=1)
    try:
        code, out, err = _finish(project.run("fatal"))
    finally:
        workers.stop()
    record = project.last_run()
    attempts = project.attempts(record.run_id, "fatal")
    print(
        f"\nexecutions {project.count('start', 'fatal')}, attempts "
        f"{[(a.attempt, a.status.value) for a in attempts]}: {record.error}"
    )
    assert (code, record.status.value) == (1, "failed"), out + err
    assert [a.status for a in attempts] == [TaskStatus.LOST, TaskStatus.LOST, TaskStatus.FAILED]
    assert "3 attempts were lost in a row" in (record.error or "")
    # the third loss shows when the broker's fourth delivery starts: that one runs too, and
    # any later delivery finds the attempt marked and runs nothing
    assert project.count("start", "fatal") == 4


def test_a_worker_that_cannot_import_its_file_fails_the_waiting_run(project: Project) -> None:
    """A `dp worker` whose copy of the task file does not import tells the waiting run,
    which fails with the import error, the file and the worker's host, instead of waiting."""
    run = project.run("w0")
    _wait(lambda: _recorded(project, "w0"), 60, "w0 to be queued")
    elsewhere = project.root / "worker-machine"
    elsewhere.mkdir()
    broken = elsewhere / "pipeline.py"
    broken.write_text("import dp_missing_dependency\n" + TASKS)
    started = time.monotonic()
    worker = subprocess.run(
        [DP, "worker", str(broken), "-c", "1"],
        cwd=elsewhere,
        env={**os.environ, **project.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    code, _, _ = _finish(run)
    failed_after = time.monotonic() - started
    record = project.last_run()
    print(
        f"\nworker exit {worker.returncode}; run {record.status.value} {failed_after:.1f}s "
        f"after the worker started; executions {len(project.effects())}"
    )
    assert worker.returncode == 2
    assert "told the orchestrators waiting on queue dp" in worker.stderr
    assert (code, record.status.value) == (1, "failed")
    error = record.error or ""
    assert "No module named 'dp_missing_dependency'" in error
    assert str(broken) in error
    assert "on host " in error
    assert "0 workers" in error
    assert project.effects() == []


def test_a_task_no_worker_takes_fails_after_the_queued_timeout(project: Project) -> None:
    """With no worker at all and DP_CELERY_QUEUED_TIMEOUT=2, the run fails naming the
    queue and its 0 workers."""
    code, _, _ = _finish(project.run("w0", env={"DP_CELERY_QUEUED_TIMEOUT": "2"}))
    record = project.last_run()
    print(f"\nrun {record.status.value}: {record.error}")
    assert (code, record.status.value) == (1, "failed")
    assert "queue 'dp'" in (record.error or "")
    assert "0 workers" in (record.error or "")


def _recorded(project: Project, task_name: str) -> bool:
    if not project.store_path.exists():
        return False
    store = project.store()
    try:
        runs = store.list_runs(limit=1)
        return bool(runs) and any(
            r.task_name == task_name and r.status == TaskStatus.QUEUED
            for r in store.get_task_runs(runs[0].run_id)
        )
    finally:
        store.close()
