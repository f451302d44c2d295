"""`dp serve` as a user runs it: a real subprocess, real HTTP, real signals, SQLite on disk."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from dp.store import RunStatus, SQLRunStore
from ports import free_port

TOKEN = "serve-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: how long a test waits for something that must happen (never reached when dp works)
PATIENCE = 30.0

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
    def slow(first: int) -> int:
        mark("slow")
        deadline = time.monotonic() + 60
        while not RELEASE.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return first + 1


    @task(dependencies=["slow"])
    def last(slow: int) -> int:
        mark("last")
        return slow + 1


    pipeline("job", tasks=["last"])
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    return tmp_path


def executions(project: Path) -> list[str]:
    log = project / "log.txt"
    return log.read_text().split() if log.exists() else []


def wait_for(
    check: Callable[[], object], what: str, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + PATIENCE
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        if process is not None:
            assert process.poll() is None, f"dp serve exited with {process.returncode}"
        time.sleep(0.05)


@contextmanager
def dp_serve(
    project: Path, port: int, *args: str, token: str | None = TOKEN
) -> Iterator[subprocess.Popen[bytes]]:
    """`dp serve pipeline.py` in `project`, ready to answer; killed if the test leaves it."""
    env = {
        **os.environ,
        "DP_TEST_LOG": str(project / "log.txt"),
        "DP_TEST_RELEASE": str(project / "release"),
    }
    env.pop("DP_API_TOKEN", None)
    if token is not None:
        env["DP_API_TOKEN"] = token
    with (project / "serve.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dp.cli", "serve", "pipeline.py", "--port", str(port), *args],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: _ready(port), "dp serve to be ready", process)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(PATIENCE)


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200
    except httpx.TransportError:
        return False


def test_sigterm_interrupts_a_run_and_the_next_start_resumes_it(project: Path) -> None:
    """SIGTERM past --grace records the run interrupted; a restart resumes it to success."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with dp_serve(project, port, "--grace", "0.5") as server:
        response = httpx.post(f"{url}/pipelines/job/runs", json={}, headers=AUTH)
        assert response.status_code == 202, response.text
        run_id = response.json()["run_id"]
        wait_for(lambda: "slow" in executions(project), "task slow to start", server)
        server.send_signal(signal.SIGTERM)
        server.wait(PATIENCE)
    store = SQLRunStore(path=project / ".dp" / "runs.db")
    try:
        assert store.get_run(run_id).status == RunStatus.INTERRUPTED
    finally:
        store.close()

    (project / "release").touch()
    with dp_serve(project, port) as server:
        wait_for(
            lambda: httpx.get(f"{url}/runs/{run_id}").json()["status"] == "succeeded",
            "the resumed run to succeed",
            server,
        )
        server.send_signal(signal.SIGTERM)
        server.wait(PATIENCE)
    assert executions(project) == ["first", "slow", "slow", "last"]  # first ran only once


def test_public_host_without_token_is_refused(project: Path) -> None:
    """`dp serve --host 0.0.0.0` without a token exits 2 and says how to fix it."""
    env = {k: v for k, v in os.environ.items() if k != "DP_API_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "dp.cli", "serve", "pipeline.py", "--host", "0.0.0.0"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert done.returncode == 2
    assert "refusing to listen on '0.0.0.0' without an API token" in done.stderr
    assert "DP_API_TOKEN" in done.stderr


def test_loopback_without_token_warns_and_stops_on_sigint(project: Path) -> None:
    """Without a token on loopback, dp serve says POSTs are open, and SIGINT ends it with 0."""
    (project / "release").touch()
    port = free_port()
    with dp_serve(project, port, token=None) as server:
        response = httpx.post(f"http://127.0.0.1:{port}/triggers/job/fire", json={"payload": {}})
        assert response.status_code == 202
        server.send_signal(signal.SIGINT)
        assert server.wait(PATIENCE) == 0
    logged = (project / "serve.log").read_text()
    assert "no DP_API_TOKEN set: state-changing endpoints accept any local caller" in logged


def test_a_port_in_use_is_refused_before_serving_with_exit_code_4(project: Path) -> None:
    """`dp serve` on a taken port says which port and what to do, in one line, and exits 4."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "dp.cli", "serve", "pipeline.py", "--port", str(port)],
            cwd=project,
            env={
                **os.environ,
                "DP_API_TOKEN": TOKEN,
                "DP_TEST_LOG": str(project / "log.txt"),
                "DP_TEST_RELEASE": str(project / "release"),
            },
            capture_output=True,
            text=True,
            timeout=PATIENCE,
        )
    assert done.returncode == 4
    assert done.stderr.splitlines() == [
        f"error: port {port} is already in use on 127.0.0.1: another process (perhaps another "
        "dp serve) listens there. Stop it, or serve on another port with --port."
    ]
    assert "serving" not in done.stdout + done.stderr
