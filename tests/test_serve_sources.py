"""Polling sources in a real `dp serve`: a file dropped in a directory starts one run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ports import free_port

#: how long a test waits for something that must happen (never reached when dp works)
PATIENCE = 30.0

PIPELINE = textwrap.dedent(
    """
    import os
    from pathlib import Path

    from dp import pipeline, source, task

    INBOX = Path(os.environ["DP_TEST_INBOX"])
    LOG = Path(os.environ["DP_TEST_LOG"])


    @source(every="100ms", topic="files.arrived")
    def inbox() -> list[dict[str, str]]:
        \"\"\"CSV files in the inbox.\"\"\"
        return [{"path": path.name} for path in sorted(INBOX.glob("*.csv"))]


    @task
    def load(path: str) -> str:
        with LOG.open("a") as log:
            log.write(path + "\\n")
        return path


    pipeline("ingest", tasks=["load"], on="files.arrived")
    """
)


def wait_for(check: Callable[[], object], what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        assert process.poll() is None, f"dp serve exited with {process.returncode}"
        time.sleep(0.05)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    (tmp_path / "inbox").mkdir()
    return tmp_path


@contextmanager
def dp_serve(project: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "DP_TEST_INBOX": str(project / "inbox"),
        "DP_TEST_LOG": str(project / "log.txt"),
    }
    env.pop("DP_API_TOKEN", None)
    with (project / "serve.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dp.cli", "serve", "pipeline.py", "--port", str(port)],
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


def loaded(project: Path) -> list[str]:
    log = project / "log.txt"
    return log.read_text().split() if log.exists() else []


def test_a_dropped_file_starts_one_run_and_re_polls_start_no_more(project: Path) -> None:
    """The source sees the file on its next poll, the pipeline bound to its topic runs once,
    and the polls that see the file again start nothing; /sources and /health show it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with dp_serve(project, port) as server:
        (item,) = httpx.get(f"{url}/sources").json()["items"]
        assert (item["name"], item["topic"], item["every"]) == ("inbox", "files.arrived", 0.1)
        assert item["description"] == "CSV files in the inbox."
        (project / "inbox" / "sales.csv").write_text("a,b\n")
        wait_for(lambda: loaded(project) == ["sales.csv"], "the run of sales.csv", server)

        def polls() -> int:
            (listed,) = httpx.get(f"{url}/sources").json()["items"]
            return int(listed["polls_total"])

        seen = polls()
        wait_for(lambda: polls() >= seen + 5, "five more polls", server)
        runs = httpx.get(f"{url}/runs", params={"pipeline": "ingest"}).json()["items"]
        wait_for(
            lambda: httpx.get(f"{url}/runs/{runs[0]['run_id']}").json()["status"] == "succeeded",
            "the run to succeed",
            server,
        )
        health = httpx.get(f"{url}/health").json()
        server.send_signal(signal.SIGTERM)
        server.wait(PATIENCE)
    assert loaded(project) == ["sales.csv"]
    assert len(runs) == 1
    assert runs[0]["trigger"] == "event:files.arrived"
    assert health["sources"]["inbox"]["healthy"] is True
    assert health["sources"]["inbox"]["polled_here"] is True


def test_dp_sources_list_shows_what_the_store_recorded(tmp_path: Path) -> None:
    """`dp sources list` prints each source's interval, circuit, error and cursor; --json too."""
    from datetime import UTC, datetime, timedelta

    from dp.store import SourceRecord, SQLRunStore

    store = SQLRunStore(path=tmp_path / ".dp" / "runs.db")
    now = datetime.now(UTC)
    store.claim_source("inbox", holder="host:1:ab", now=now, lease_until=now + timedelta(hours=1))
    store.save_source(
        SourceRecord(
            "inbox",
            topic="files.arrived",
            every=0.1,
            cursor={"mtime": 17},
            polled_at=now,
            last_error="OSError: gone",
            failures=5,
            circuit="open",
            holder="host:1:ab",
        )
    )
    store.close()
    run = [sys.executable, "-m", "dp.cli", "sources", "list"]
    shown = subprocess.run(
        run, cwd=tmp_path, capture_output=True, text=True, timeout=PATIENCE, env=_wide()
    )
    assert shown.returncode == 0, shown.stderr
    for text in ("inbox", "files.arrived", "0.1s", "open (5 failures)", "OSError: gone"):
        assert text in shown.stdout
    assert '{"mtime": 17}' in shown.stdout
    as_json = subprocess.run(
        [*run, "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=PATIENCE
    )
    assert '"holder": "host:1:ab"' in as_json.stdout


def test_dp_sources_list_without_a_store_says_so(tmp_path: Path) -> None:
    """With no run store yet, `dp sources list` fails with exit 1 and names the store."""
    shown = subprocess.run(
        [sys.executable, "-m", "dp.cli", "sources", "list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert shown.returncode == 1
    assert "runs.db" in shown.stderr


def _wide() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "250"}
