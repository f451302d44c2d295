"""Hostile tasks against `dp run` and `dp serve`, as users run them, on the defaults.

A task may raise what cannot be formatted, kill its process with `os._exit`, fork children
and leave them behind, or print what the run store refuses. None of that may hang a run,
take `dp serve` down, make it loop, or leave processes behind. Side effects are counted
through files (each task appends its name to `log.txt`); each test prints its figures.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from dp.store import RunStatus, SQLRunStore
from ports import free_port
from postgres_server import PostgresServer
from test_serve import AUTH, dp_serve, executions, wait_for

pytestmark = pytest.mark.chaos

PIPELINE = textwrap.dedent(
    """
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from dp import pipeline, task

    LOG = Path(os.environ["DP_TEST_LOG"])
    PIDS = LOG.parent / "pids.txt"


    def mark(name: str) -> None:
        with LOG.open("a") as log:
            log.write(name + "\\n")


    class Nasty(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

        def __repr__(self) -> str:
            raise RuntimeError("no repr either")


    @task
    def nasty() -> None:
        mark("nasty")
        raise Nasty()


    @task
    def nul_then_fail() -> None:
        mark("nul")
        print("before\\x00after")
        raise ValueError("failed after printing a NUL byte")


    @task
    def exits() -> None:
        mark("exits")
        os._exit(1)


    @task
    def sleeper() -> int:
        mark("sleeper")
        time.sleep(120)
        return 1


    @task
    def quick() -> int:
        mark("quick")
        return 1


    SLEEP = [sys.executable, "-c", "import time; time.sleep(300)"]
    # a grandchild whose parent exits at once: a double fork, as daemons do
    DOUBLE_FORK = [
        sys.executable,
        "-c",
        "import subprocess, sys; "
        f"print(subprocess.Popen({SLEEP!r}, start_new_session=True, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)",
    ]


    @task
    def forks() -> int:
        mark("forks")
        child = subprocess.Popen(SLEEP, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        grandchild = int(subprocess.run(DOUBLE_FORK, capture_output=True, text=True).stdout)
        with PIDS.open("a") as pids:
            pids.write(f"{child.pid} {grandchild}\\n")
        return child.pid


    pipeline("nasty", tasks=["nasty"])
    pipeline("nul", tasks=["nul_then_fail"])
    pipeline("exits", tasks=["exits"])
    pipeline("sleepy", tasks=["sleeper"])
    pipeline("quick", tasks=["quick"])
    """
)

#: how long a `dp run` may take before the test calls it hung
HUNG = 90


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    return tmp_path


def dp(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`dp ARGS` in `project`; a run that does not end within HUNG seconds fails the test."""
    return subprocess.run(
        [sys.executable, "-m", "dp.cli", *args],
        cwd=project,
        env={
            **os.environ,
            "DP_TEST_LOG": str(project / "log.txt"),
            "DP_TEST_RELEASE": str(project / "release"),
            "COLUMNS": "300",
        },
        capture_output=True,
        text=True,
        timeout=HUNG,
    )


def run_status(url: str, run_id: str) -> str:
    return str(httpx.get(f"{url}/runs/{run_id}").json()["status"])


def start(url: str, pipeline: str) -> str:
    response = httpx.post(f"{url}/pipelines/{pipeline}/runs", json={}, headers=AUTH)
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


def ended(url: str, run_id: str) -> bool:
    return run_status(url, run_id) not in ("queued", "running")


@pytest.mark.parametrize("executor", ["inline", "inprocess", "process"])
def test_an_error_that_cannot_be_formatted_fails_dp_run_instead_of_hanging(
    project: Path, executor: str
) -> None:
    """A task raising an exception whose __str__ and __repr__ raise: `dp run` ends, the run
    failed, the error says what could not be had; the worker is not reported dead."""
    started = time.monotonic()
    done = dp(project, "run", "pipeline.py", "--task", "nasty", "-e", executor)
    seconds = time.monotonic() - started
    print(f"executor={executor} exit={done.returncode} seconds={seconds:.1f}")
    assert done.returncode != 0
    assert "Nasty: <exception str() failed: RuntimeError>" in done.stdout
    assert "WorkerDied" not in done.stdout + done.stderr
    assert executions(project) == ["nasty"]


def test_os_exit_in_a_task_does_not_take_dp_serve_down(project: Path) -> None:
    """On the default executor a task calling os._exit(1) kills its worker process, not the
    service: the run fails saying so, /health stays ok, and other pipelines keep running."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with dp_serve(project, port) as server:
        dead = start(url, "exits")
        nasty = start(url, "nasty")
        wait_for(lambda: ended(url, dead) and ended(url, nasty), "both runs to end", server)
        quick = start(url, "quick")
        wait_for(lambda: ended(url, quick), "the quick run to end", server)
        health = httpx.get(f"{url}/health").json()
        failed = httpx.get(f"{url}/runs/{dead}").json()
        statuses = [run_status(url, run) for run in (dead, nasty, quick)]
        print(f"runs=3 statuses={statuses} health={health['status']} alive={server.poll()}")
        assert server.poll() is None
        assert statuses == ["failed", "failed", "succeeded"]
        assert "exited with code 1" in failed["error"]
        assert health["status"] == "ok"
        assert health["active_pipelines"] == 0
    assert sorted(executions(project)) == ["exits", "nasty", "quick"]


def test_a_run_whose_owner_keeps_dying_is_failed_as_a_crash_loop(project: Path) -> None:
    """SIGKILL dp serve while a task runs, three times: each restart resumes the run, and
    the fourth start fails it as a crash loop (max_resume_attempts=3) naming the task,
    instead of running it a fourth time."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    run_id = ""
    for death in range(1, 4):
        with dp_serve(project, port) as server:
            if not run_id:
                run_id = start(url, "sleepy")
            wait_for(
                lambda n=death: executions(project).count("sleeper") == n,  # type: ignore[misc]
                f"execution {death} of the task",
                server,
            )
            server.send_signal(signal.SIGKILL)
            server.wait(30)
    with dp_serve(project, port) as server:
        wait_for(lambda: ended(url, run_id), "the run to be failed", server)
        record = httpx.get(f"{url}/runs/{run_id}").json()
        alive = server.poll() is None
    runs = executions(project).count("sleeper")
    print(f"owner_deaths=3 executions={runs} status={record['status']} alive={alive}")
    assert record["status"] == "failed"
    assert record["error"].startswith("crash loop: the owner died 3 times while running task")
    assert "'sleeper'" in record["error"]
    assert runs == 3


def _leftovers(project: Path) -> tuple[int, int]:
    """(processes the tasks forked, those of them still alive)."""
    pids = [int(pid) for pid in (project / "pids.txt").read_text().split()]
    alive = 0
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive += 1
        except psutil.NoSuchProcess:
            pass
    return len(pids), alive


@pytest.mark.parametrize("executor", ["inline", "inprocess", "process"])
def test_children_a_task_forked_die_with_its_attempt(project: Path, executor: str) -> None:
    """A task that starts a child and a double-forked grandchild and returns: when `dp run`
    ends, neither is alive (the grandchild, reparented away, only under process workers)."""
    done = dp(project, "run", "pipeline.py", "--task", "forks", "-e", executor)
    assert done.returncode == 0, done.stdout + done.stderr
    deadline = time.monotonic() + 10
    forked, alive = _leftovers(project)
    expected = 0 if executor == "process" else 1  # see dp.engine.children
    while alive > expected and time.monotonic() < deadline:
        time.sleep(0.1)
        forked, alive = _leftovers(project)
    print(f"executor={executor} forked={forked} alive={alive}")
    for pid in (project / "pids.txt").read_text().split():  # leave nothing behind
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(int(pid)).kill()
    assert alive == expected


def test_a_nul_byte_the_store_refuses_fails_the_run_once_on_postgresql(
    project: Path, postgres: PostgresServer
) -> None:
    """A task prints a NUL byte and fails, on PostgreSQL: `dp run` exits with the store's
    error and the run recorded failed; under `dp serve` (lease 1 s) the run ends failed once
    and is never resumed, though several leases pass."""
    store = postgres.create_database()
    done = dp(project, "run", "pipeline.py", "--task", "nul_then_fail", "--store", store)
    print(f"dp run exit={done.returncode}")
    assert done.returncode != 0
    assert executions(project) == ["nul"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with dp_serve(project, port, "--store", store, "--lease", "1") as server:
        run_id = start(url, "nul")
        wait_for(lambda: ended(url, run_id), "the run to end", server)
        time.sleep(5)  # five lease periods: a dead run would have been resumed by now
        record = httpx.get(f"{url}/runs/{run_id}").json()
        runs = httpx.get(f"{url}/runs").json()
    count = executions(project).count("nul")
    print(f"serve: status={record['status']} executions={count} error={record['error']!r}")
    assert record["status"] == "failed"
    assert count == 2  # one by dp run, one by dp serve: no loop
    assert all(item["status"] != "running" for item in runs["items"])


def test_a_run_no_process_owns_can_be_cancelled(project: Path) -> None:
    """`dp run` SIGKILLed mid-task leaves its run `running` with a dead owner: `dp runs
    cancel` ends it cancelled; resume then refuses it. The API cancels such a run too."""
    env = {**os.environ, "DP_TEST_LOG": str(project / "log.txt")}
    runs = []
    for _ in range(2):
        process = subprocess.Popen(
            [sys.executable, "-m", "dp.cli", "run", "pipeline.py", "--task", "sleeper"],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        count = len(runs) + 1
        wait_for(lambda n=count: executions(project).count("sleeper") == n, "the task to start")  # type: ignore[misc]
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        store = SQLRunStore(path=project / ".dp" / "runs.db")
        try:
            runs.append(next(r for r in store.list_runs() if r.run_id not in runs).run_id)
        finally:
            store.close()
    by_cli, by_api = runs
    cancelled = dp(project, "runs", "cancel", by_cli)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled; it was running" in cancelled.stdout
    resumed = dp(project, "runs", "resume", by_cli)
    assert resumed.returncode != 0
    assert "it already cancelled" in resumed.stderr
    port = free_port()
    with dp_serve(project, port) as server:
        response = httpx.post(f"http://127.0.0.1:{port}/runs/{by_api}/cancel", headers=AUTH)
        assert server.poll() is None
    assert (response.status_code, response.json()["status"]) == (202, "cancelled")
    store = SQLRunStore(path=project / ".dp" / "runs.db")
    try:
        statuses = [store.get_run(run).status for run in runs]
    finally:
        store.close()
    print(f"stale runs=2 cancelled={statuses.count(RunStatus.CANCELLED)}")
    assert statuses == [RunStatus.CANCELLED, RunStatus.CANCELLED]


def test_os_exit_in_the_service_s_own_process_is_a_crash_loop_not_a_restart_loop(
    project: Path,
) -> None:
    """With -e inprocess a task calling os._exit(1) kills dp serve itself, and every restart
    (as systemd would) resumes the run and dies again: the fourth start fails the run as a
    crash loop instead, and stays up."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DP_TEST_LOG": str(project / "log.txt"), "DP_API_TOKEN": "t"}
    command = [sys.executable, "-m", "dp.cli", "serve", "pipeline.py", "--port", str(port)]
    command += ["-e", "inprocess"]
    exits = []
    for start_number in range(1, 4):
        with (project / "serve.log").open("ab") as log:
            server = subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=log)
        try:
            if start_number == 1:
                wait_for(lambda: _up(url), "dp serve to be ready", server)
                response = httpx.post(
                    f"{url}/pipelines/exits/runs", json={}, headers={"Authorization": "Bearer t"}
                )
                run_id = response.json()["run_id"]
            exits.append(server.wait(60))  # the task (resumed at start) kills it
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(30)
    with (project / "serve.log").open("ab") as log:
        server = subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=log)
    try:
        wait_for(lambda: _up(url) and ended(url, run_id), "the run to be failed", server)
        record = httpx.get(f"{url}/runs/{run_id}").json()
        alive = server.poll() is None
    finally:
        server.kill()
        server.wait(30)
    runs = executions(project).count("exits")
    print(f"service exits={exits} executions={runs} status={record['status']} alive={alive}")
    assert exits == [1, 1, 1]
    assert record["status"] == "failed"
    assert record["error"].startswith("crash loop: the owner died 3 times while running task")
    assert runs == 3
    assert alive


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready").status_code == 200
    except httpx.TransportError:
        return False


MATRIX = textwrap.dedent(
    """
    import os
    import sys
    from pathlib import Path

    from dp import task

    LOG = Path(os.environ["DP_TEST_LOG"])


    def mark(name: str) -> None:
        with LOG.open("a") as log:
            log.write(name + "\\n")


    class Hostile(Exception):
        def __str__(self): raise RuntimeError("str")
        def __repr__(self): raise RuntimeError("repr")
        def __reduce__(self): raise RuntimeError("reduce")
        def __hash__(self): raise RuntimeError("hash")
        def __eq__(self, other): raise RuntimeError("eq")
        def __del__(self): raise RuntimeError("del")


    class HostileValue:
        def __reduce__(self): raise RuntimeError("reduce")
        def __repr__(self): raise RuntimeError("repr")
        def __del__(self): raise RuntimeError("del")


    class Fatal(BaseException):
        pass


    @task(fail_safe=True)
    def unprintable() -> None:
        mark("unprintable")
        raise Hostile()


    @task(fail_safe=True)
    def cause_cycle() -> None:
        mark("cause_cycle")
        outer, inner = ValueError("outer"), Hostile()
        outer.__cause__, inner.__context__ = inner, outer
        raise outer


    @task(fail_safe=True)
    def group() -> None:
        mark("group")
        raise ExceptionGroup("many", [Hostile(), ValueError(HostileValue())])


    @task(fail_safe=True)
    def base_exception() -> None:
        mark("base_exception")
        raise Fatal("not an Exception")


    @task(fail_safe=True)
    def exits() -> None:
        mark("exits")
        sys.exit(3)


    @task(fail_safe=True)
    def unpicklable() -> object:
        mark("unpicklable")
        return HostileValue()


    @task(fail_safe=True)
    def cyclic() -> list:
        mark("cyclic")
        loop: list = []
        loop.append(loop)
        return loop


    @task(fail_safe=True)
    def huge_output() -> int:
        mark("huge_output")
        print("x" * 5_000_000)
        return 1


    @task(fail_safe=True)
    def writes_bytes() -> int:
        mark("writes_bytes")
        sys.stdout.write(b"bytes")  # type: ignore[arg-type]
        return 1


    @task(fail_safe=True)
    def huge_error() -> None:
        mark("huge_error")
        raise ValueError("e" * 5_000_000)


    @task(fail_safe=True)
    def closes_streams() -> int:
        mark("closes_streams")
        sys.stdout.close()
        sys.stderr.close()
        return 1
    """
)


@pytest.mark.parametrize("executor", ["inline", "inprocess", "process"])
def test_the_hostile_matrix_ends_every_attempt_under_dp_run(project: Path, executor: str) -> None:
    """Eleven hostile tasks in one run (unprintable, cause cycles, groups, BaseException,
    sys.exit, unpicklable and cyclic results, 5 MB of output or error, bytes on stdout,
    closing stdout and stderr): `dp run` ends and still prints its report, each task ran once
    and has a recorded outcome; nothing is reported dead."""
    (project / "matrix.py").write_text(MATRIX)
    started = time.monotonic()
    done = dp(project, "run", "matrix.py", "-e", executor)
    seconds = time.monotonic() - started
    store = SQLRunStore(path=project / ".dp" / "runs.db")
    try:
        (record,) = store.list_runs()
        rows = {row.task_name: row for row in store.get_task_runs(record.run_id)}
    finally:
        store.close()
    statuses = {name: row.status.value for name, row in sorted(rows.items())}
    print(f"executor={executor} exit={done.returncode} seconds={seconds:.1f} tasks={statuses}")
    if executor == "inprocess":
        # results are written behind the run: an unpicklable one fails the run, fail-safe or
        # not, as its consumers may have used it from memory already (see the README)
        assert done.returncode == 1
        assert (record.error or "").startswith("task 'unpicklable' failed: SaveError:")
    else:
        assert done.returncode == 3  # partial: the fail-safe tasks failed, others succeeded
        assert statuses["cyclic"] == statuses["huge_output"] == "succeeded"
        assert statuses["closes_streams"] == "succeeded"
    assert sorted(executions(project)) == sorted(rows)  # each ran once
    assert len(rows) == 11
    assert f"run {record.run_id} " in done.stdout  # the report, on the stdout a task closed
    assert all(row.status.finished for row in rows.values())
    assert all(row.error for row in rows.values() if row.status.value == "failed")
    assert "<exception str() failed: RuntimeError>" in (rows["unprintable"].error or "")
    assert len(rows["huge_error"].error or "") < 10_000
    assert "WorkerDied" not in done.stdout + done.stderr


BIG = textwrap.dedent(
    """
    from dp import task

    @task
    def big() -> bytes:
        return b"x" * 300_000
    """
)


#: runs its arguments under a 200 kB file size limit (Python ignores SIGXFSZ, so a write past
#: it fails with EFBIG, as a write to a full disk fails with ENOSPC)
LIMITED = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


@pytest.mark.parametrize("executor", ["inline", "inprocess", "process"])
@pytest.mark.parametrize("fault", ["file too large", "not a directory"])
def test_a_result_that_cannot_be_written_is_a_save_error_naming_it(
    project: Path, executor: str, fault: str
) -> None:
    """A result larger than the file size limit (as a full disk: the write fails midway):
    the task fails with SaveError naming the run, task, result id and the location; `dp run`
    ends failed. A results location that is a file is refused by the check of the results
    backend before the run starts (issue 18): exit 2, naming it, nothing ran."""
    (project / "big.py").write_text(BIG)
    results = project / "results"
    if fault == "not a directory":
        results.write_text("in the way")
    command = ["-m", "dp.cli", "run", "big.py", "-e", executor, "--results", f"file://{results}"]
    if fault == "file too large":
        command = ["-c", LIMITED, *command]
    done = subprocess.run(
        [sys.executable, *command],
        cwd=project,
        env={**os.environ, "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=HUNG,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("big ")), "")
    print(f"executor={executor} fault={fault!r} exit={done.returncode} row={line.strip()!r}")
    if fault == "not a directory":
        # refused by the results check before any task runs: the results store is a
        # dependency dp cannot use (ResultsUnavailableError), exit 75 as for the run store
        assert done.returncode == 75, done.stdout + done.stderr
        assert f"cannot write results at file://{results}: Not a directory" in done.stderr
        assert line == ""  # no task ran
        return
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SaveError: result 'output' of task 'big' in run '" in line
    assert f"could not be written to {results}/" in line
    assert ("File too large" if fault == "file too large" else "Not a directory") in line
