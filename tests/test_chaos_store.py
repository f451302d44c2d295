"""The run store under an outage, through the CLI: `dp serve` and `dp run` on a real PostgreSQL
that the tests SIGKILL (a crash: connections reset, new ones refused) or SIGSTOP (a hang: TCP
still connects, nothing answers), then bring back. Side effects are counted through files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dp.store import SQLRunStore
from ports import free_port
from postgres_server import PostgresServer
from test_serve import AUTH, PATIENCE, dp_serve, wait_for

pytestmark = pytest.mark.chaos

#: settings of a throwaway server that still keeps every commit across a SIGKILL of it
#: (fsync off only risks a machine crash; synchronous_commit stays on)
SURVIVES_KILL = {"fsync": "off", "full_page_writes": "off"}
#: what a test sets, as a user would: every store call gives up after this many seconds
STORE_TIMEOUT = "2"

PIPELINE = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path

    from dp import pipeline, task

    LOG = Path(os.environ["DP_TEST_LOG"])
    RELEASE = Path(os.environ["DP_TEST_RELEASE"])


    def mark(name: str) -> None:
        with LOG.open("a") as log:
            log.write(name + "\\n")


    @task
    def first() -> int:
        mark("first")
        return 1


    @task(dependencies=["first"])
    def second(first: int) -> int:
        mark("second")
        return first + 1


    @task(dependencies=["second"])
    def last(second: int) -> int:
        mark("last")
        # waits for the test, which kills the store meanwhile
        deadline = time.monotonic() + 60
        while os.environ.get("DP_TEST_WAIT") and not RELEASE.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the test never released the last task")
            time.sleep(0.02)
        return second + 1


    pipeline("job", tasks=["last"], on="orders.created")
    """
)


@pytest.fixture
def postgres_alone() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own: the test kills it."""
    server = PostgresServer(SURVIVES_KILL)
    server.start()
    try:
        yield server
    finally:
        if server._process is not None:
            server.thaw()  # a test that failed while it was frozen
        server.stop()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    monkeypatch.setenv("DP_STORE_TIMEOUT", STORE_TIMEOUT)
    return tmp_path


def executions(project: Path) -> list[str]:
    log = project / "log.txt"
    return log.read_text().split() if log.exists() else []


def dp(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`dp ARGS` in the project, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "dp.cli", *args],
        cwd=project,
        env={
            **os.environ,
            "DP_TEST_LOG": str(project / "log.txt"),
            "DP_TEST_RELEASE": str(project / "release"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=PATIENCE * 2,
    )


def test_serve_answers_503_while_postgres_is_down_and_recovers_without_a_restart(
    project: Path, postgres_alone: PostgresServer
) -> None:
    """SIGKILL PostgreSQL under `dp serve`: starts, events, reads, health and the dashboard
    answer 503 naming the store; once it is back every one answers 200 again, same process."""
    store_url = postgres_alone.create_database()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with dp_serve(project, port, "--store", store_url) as server, httpx.Client() as client:
        before = client.post(f"{url}/pipelines/job/runs", json={}, headers=AUTH)
        assert before.status_code == 202, before.text
        wait_for(
            lambda: (
                client.get(f"{url}/runs/{before.json()['run_id']}").json()["status"] == "succeeded"
            ),
            "the first run",
            server,
        )

        postgres_alone.kill()
        event = {"topic": "orders.created", "payload": {}}
        down = {
            "POST /pipelines/job/runs": client.post(
                f"{url}/pipelines/job/runs", json={}, headers=AUTH
            ),
            "POST /events": client.post(f"{url}/events", json=event, headers=AUTH),
            "GET /runs": client.get(f"{url}/runs"),
            "GET /health": client.get(f"{url}/health"),
            "GET /health/ready": client.get(f"{url}/health/ready"),
            "GET /": client.get(f"{url}/"),
        }
        for what, response in down.items():
            print(what, response.status_code, response.headers.get("retry-after"))
            assert response.status_code == 503, (what, response.text)
        public = store_url.replace("dp@", "")  # named without credentials
        for what in ("POST /pipelines/job/runs", "POST /events", "GET /runs"):
            body = down[what].json()
            assert body["error"] == "StoreUnavailableError", body
            assert body["dependency"] == "store"
            assert public in body["detail"], body["detail"]
            assert down[what].headers["retry-after"] == "5"
        health = down["GET /health"].json()
        assert health["unavailable"] == ["store"]
        assert health["store"]["ok"] is False
        assert "Connection refused" in health["store"]["error"]
        assert down["GET /health/ready"].json()["unavailable"] == ["store"]
        page = down["GET /"]
        assert page.headers["content-type"].startswith("text/html")
        assert "The run store is unavailable" in page.text
        assert public in page.text

        postgres_alone.restart()
        wait_for(lambda: client.get(f"{url}/health/ready").status_code == 200, "ready", server)
        back = {
            "GET /runs": client.get(f"{url}/runs"),
            "GET /health": client.get(f"{url}/health"),
            "GET /": client.get(f"{url}/"),
            "POST /events": client.post(f"{url}/events", json=event, headers=AUTH),
            "POST /pipelines/job/runs": client.post(
                f"{url}/pipelines/job/runs", json={}, headers=AUTH
            ),
        }
        for what, response in back.items():
            print(what, "after recovery", response.status_code)
            expected = 202 if what.startswith("POST") else 200
            assert response.status_code == expected, (what, response.text)
        after = back["POST /pipelines/job/runs"].json()["run_id"]
        wait_for(
            lambda: client.get(f"{url}/runs/{after}").json()["status"] == "succeeded",
            "a run started after recovery",
            server,
        )
        wait_for(
            lambda: client.get(f"{url}/runs", params={"trigger": "event"}).json()["total"] == 1,
            "the run of the event accepted after recovery",
            server,
        )
        runs = client.get(f"{url}/runs").json()
        assert server.poll() is None  # the same process all along
    statuses = sorted(r["status"] for r in runs["items"])
    print("runs", statuses, "executions of first", executions(project).count("first"))
    # refused requests started nothing; the three accepted ones ran once each
    assert statuses == ["succeeded"] * 3, runs
    assert executions(project).count("first") == 3


def test_serve_answers_503_in_bounded_time_while_postgres_hangs(
    project: Path, postgres_alone: PostgresServer
) -> None:
    """SIGSTOP PostgreSQL (a hang, not a refusal): reads, starts and readiness answer 503
    within about DP_STORE_TIMEOUT, never hang; after SIGCONT they answer 200 again."""
    store_url = postgres_alone.create_database()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with dp_serve(project, port, "--store", store_url) as server, httpx.Client() as client:
        assert client.get(f"{url}/runs").status_code == 200  # a pooled connection to freeze
        postgres_alone.freeze()
        try:
            took = {}
            for what, call in {
                "GET /runs": lambda: client.get(f"{url}/runs", timeout=PATIENCE),
                "GET /health/ready": lambda: client.get(f"{url}/health/ready", timeout=PATIENCE),
                "POST /pipelines/job/runs": lambda: client.post(
                    f"{url}/pipelines/job/runs", json={}, headers=AUTH, timeout=PATIENCE
                ),
                "POST /events": lambda: client.post(
                    f"{url}/events",
                    json={"topic": "orders.created", "payload": {}},
                    headers=AUTH,
                    timeout=PATIENCE,
                ),
                "GET /": lambda: client.get(f"{url}/", timeout=PATIENCE),
            }.items():
                started = time.monotonic()
                response = call()
                took[what] = round(time.monotonic() - started, 2)
                assert response.status_code == 503, (what, response.text)
                assert "store" in response.text
            print("seconds to a 503 while PostgreSQL hangs:", took)
        finally:
            postgres_alone.thaw()
        wait_for(lambda: client.get(f"{url}/health/ready").status_code == 200, "ready", server)
        assert client.get(f"{url}/runs").status_code == 200
        after = client.post(f"{url}/pipelines/job/runs", json={}, headers=AUTH)
        assert after.status_code == 202, after.text
        wait_for(
            lambda: (
                client.get(f"{url}/runs/{after.json()['run_id']}").json()["status"] == "succeeded"
            ),
            "a run started after the hang",
            server,
        )
        runs = client.get(f"{url}/runs").json()["items"]
    print("runs", [r["status"] for r in runs], "executions of first", executions(project))
    # the start refused during the hang recorded nothing and ran nothing
    assert [r["status"] for r in runs] == ["succeeded"]
    assert executions(project).count("first") == 1


def test_run_whose_end_meets_an_outage_says_so_in_one_line_and_resumes_without_rerunning(
    project: Path, postgres_alone: PostgresServer
) -> None:
    """`dp run --store postgresql://...` with PostgreSQL killed while the last task runs:
    one line naming the store and the resume command, exit 75, the run left stale; once
    PostgreSQL is back `dp runs resume` finishes it and no task runs a second time."""
    store_url = postgres_alone.create_database()
    env = {"DP_TEST_WAIT": "1", "DP_STORE_OUTAGE_WAIT": "3"}
    running = subprocess.Popen(
        [sys.executable, "-m", "dp.cli", "run", "pipeline.py", "--store", store_url],
        cwd=project,
        env={
            **os.environ,
            "DP_TEST_LOG": str(project / "log.txt"),
            "DP_TEST_RELEASE": str(project / "release"),
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: "last" in executions(project), "the last task to start", running)
        postgres_alone.kill()
        (project / "release").touch()
        out, err = running.communicate(timeout=PATIENCE)
    finally:
        if running.poll() is None:
            running.kill()
            running.communicate()
    print("dp run exit", running.returncode, "stderr:", err, sep="\n")
    assert running.returncode == 75
    assert "Traceback" not in err + out
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    line = errors[0]
    assert "every task of run" in line
    assert "succeeded, but recording the run's end failed" in line
    assert store_url.replace("dp@", "") in line
    assert "dp runs resume" in line
    run_id = line.split("every task of run '", 1)[1].split("'", 1)[0]
    assert executions(project) == ["first", "second", "last"]

    postgres_alone.restart()
    listed = dp(project, "runs", "list", "--store", store_url)
    print(listed.stdout)
    assert listed.returncode == 0, listed.stderr
    assert "stale" in listed.stdout
    store = SQLRunStore(store_url)
    try:
        assert store.get_run(run_id).status == "running"
    finally:
        store.close()

    resumed = dp(project, "runs", "resume", run_id, "--store", store_url)
    print(resumed.stdout, resumed.stderr)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    store = SQLRunStore(store_url)
    try:
        assert store.get_run(run_id).status == "succeeded"
    finally:
        store.close()
    counts = {name: executions(project).count(name) for name in ("first", "second", "last")}
    print("executions after resume", counts)
    assert counts == {"first": 1, "second": 1, "last": 1}
