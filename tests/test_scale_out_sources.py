"""A directory-watch source under two `dp serve` instances on one Redis and one PostgreSQL:
one instance polls at a time, and when it is SIGKILLed the other takes the source's lease over
and goes on from the committed cursor. Every dropped file runs once; counted through files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dp.store import RunStatus, SQLRunStore
from ports import free_port
from postgres_server import PostgresServer
from redis_server import RedisServer

pytest.importorskip("redis")

#: how long a test waits for something that must happen (never reached when dp works)
PATIENCE = 90.0
#: the source lease (and run lease) of both instances: a dead holder's source is taken over
#: this long after its last renewal; long enough that a live holder never loses it under load
LEASE = 8

PIPELINES = textwrap.dedent(
    """
    import os
    from pathlib import Path

    from dp import Poll, pipeline, source, task

    HERE = Path(__file__).parent
    INBOX = HERE / "inbox"


    @source(every="100ms", topic="files.arrived")
    def inbox(cursor: str | None) -> Poll:
        \"\"\"New CSV files in the inbox, by name; the cursor is the last name seen.\"\"\"
        with (HERE / "polls").open("a") as log:
            log.write(f"{os.getpid()} {cursor or '-'}\\n")
        new = sorted(p.name for p in INBOX.glob("*.csv") if cursor is None or p.name > cursor)
        return Poll(events=[{"path": name} for name in new], cursor=new[-1] if new else None)


    @task
    def load(path: str) -> str:
        with (HERE / "effects").open("a") as log:
            log.write(path + "\\n")
        return path


    pipeline("ingest", tasks=["load"], on="files.arrived", api=False)
    """
)


def _serve(project: Path, port: int, bus: str, store: str) -> subprocess.Popen[bytes]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    with (project / f"serve-{port}.log").open("wb") as log:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "dp.cli", "serve", "pipelines.py"),
                *("--port", str(port), "--bus", bus, "--store", store),
                *("--results", f"file://{project / 'results'}", "--lease", str(LEASE)),
            ],
            cwd=project,
            env={**os.environ, "PYTHONPATH": src, "DP_API_TOKEN": "sources-test"},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def wait_for(check: Callable[[], Any], what: str) -> Any:
    """Wait (generously) until `check()` returns something true; return it."""
    deadline = time.monotonic() + PATIENCE
    while not (result := check()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)
    return result


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _polls_here(port: int) -> bool:
    (item,) = httpx.get(f"http://127.0.0.1:{port}/sources", timeout=5).json()["items"]
    return bool(item["polled_here"])


def _drop(inbox: Path, names: list[str]) -> None:
    for name in names:  # in name order, each whole before it is seen (rename is atomic)
        (inbox / f"{name}.part").write_text("a,b\n")
        (inbox / f"{name}.part").rename(inbox / name)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _finished(store_url: str, count: int) -> bool:
    store = SQLRunStore(store_url)
    try:
        runs = store.list_runs(pipeline="ingest", limit=1000)
    finally:
        store.close()
    return len(runs) >= count and all(r.status is RunStatus.SUCCEEDED for r in runs)


def test_one_instance_polls_and_a_killed_pollers_source_goes_on_from_its_cursor(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """Only the lease holder polls; SIGKILLed, its source moves to the survivor, which starts
    from the committed cursor: each of the ten files is loaded once, none is lost."""
    project = tmp_path / "project"
    inbox = project / "inbox"
    inbox.mkdir(parents=True)
    (project / "pipelines.py").write_text(PIPELINES)
    redis = RedisServer.start(tmp_path / "redis")
    store_url = postgres.create_database()
    ports = [free_port(), free_port()]
    instances = {p: _serve(project, p, redis.url, store_url) for p in ports}
    first = [f"{i:04d}.csv" for i in range(5)]
    second = [f"{i:04d}.csv" for i in range(5, 10)]
    try:
        for port in ports:
            wait_for(lambda: _ready(port), f"dp serve on port {port} to be ready")  # noqa: B023
        holder = wait_for(
            lambda: [p for p in ports if _polls_here(p)] or None, "one instance to poll"
        )
        assert len(holder) == 1
        (polling,) = holder
        (other,) = [p for p in ports if p != polling]
        _drop(inbox, first)
        wait_for(lambda: _finished(store_url, len(first)), "the first five runs")
        assert not _polls_here(other)

        instances[polling].send_signal(signal.SIGKILL)  # no run in flight: each file once
        instances[polling].wait(30)
        killed_pid = instances[polling].pid
        _drop(inbox, second)
        wait_for(lambda: _finished(store_url, len(first) + len(second)), "all ten runs")
        assert _polls_here(other)
        store = SQLRunStore(store_url)
        runs = store.list_runs(pipeline="ingest", limit=1000)
        store.close()
    finally:
        for process in instances.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in instances.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        redis.stop()

    assert sorted(_lines(project / "effects")) == first + second  # each file loaded once
    assert sorted(r.params["path"] for r in runs) == first + second  # one run each
    polls = [line.split() for line in _lines(project / "polls") if len(line.split()) == 2]
    pids = [int(pid) for pid, _ in polls]
    survivor = instances[other].pid
    assert set(pids) == {killed_pid, survivor}
    took_over = pids.index(survivor)
    assert set(pids[:took_over]) == {killed_pid}  # one poller at a time: never interleaved
    assert set(pids[took_over:]) == {survivor}
    assert polls[took_over][1] == first[-1]  # the survivor starts from the committed cursor
