"""How the run store reports an outage, and how a run rides one out (in process; the CLI and
HTTP paths under a real PostgreSQL outage are in test_chaos_store.py)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dp import TaskRegistry, task
from dp.engine import Orchestrator
from dp.errors import (
    DependencyUnavailableError,
    InvalidArgumentError,
    RunNotFoundError,
    StoreUnavailableError,
)
from dp.io import InMemoryIOManager
from dp.store import MemoryRunStore, RunStatus, SQLRunStore, TaskRunRecord, TaskStatus
from dp.store.outage import public_url
from dp.testing import plan_for


def test_an_unopenable_sqlite_file_is_an_outage_naming_the_store() -> None:
    """A SQLite file that cannot be opened is a StoreUnavailableError (dependency "store")."""
    with pytest.raises(StoreUnavailableError) as caught:
        SQLRunStore("sqlite:///file:/nonexistent/dir/runs.db?mode=ro&uri=true")
    assert caught.value.dependency == "store"
    assert isinstance(caught.value, DependencyUnavailableError)
    assert "cannot be opened" in caught.value.reason
    assert caught.value.action == "open the run store"


def test_a_refused_postgresql_connection_is_an_outage_without_credentials() -> None:
    """Nothing listening: StoreUnavailableError naming host, port and database, no password."""
    from ports import free_port

    url = f"postgresql://dp:s3cret@127.0.0.1:{free_port()}/dp"
    with pytest.raises(StoreUnavailableError) as caught:
        SQLRunStore(url)
    assert caught.value.url == f"postgresql+psycopg://127.0.0.1:{url.rsplit(':', 1)[1]}"
    assert "s3cret" not in str(caught.value)
    assert "Connection refused" in caught.value.reason


def test_data_errors_stay_what_they_are(tmp_path: Path) -> None:
    """Task runs of an unknown run are refused as such (a foreign key), not as an outage."""
    store = SQLRunStore(path=tmp_path / "runs.db")
    try:
        with pytest.raises(RunNotFoundError):
            store.save_task_runs([TaskRunRecord("ghost", "t", status=TaskStatus.RUNNING)])
    finally:
        store.close()


def test_public_url_drops_user_password_and_query() -> None:
    """Errors name the store by host, port and database only."""
    url = sa.make_url("postgresql+psycopg://u:p@db:5433/runs?password=x&sslmode=require")
    assert public_url(url) == "postgresql+psycopg://db:5433/runs"


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan"])
def test_a_bad_store_timeout_is_refused_by_name(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DP_STORE_TIMEOUT must be seconds > 0; the error names the variable."""
    monkeypatch.setenv("DP_STORE_TIMEOUT", value)
    with pytest.raises(InvalidArgumentError, match="DP_STORE_TIMEOUT"):
        SQLRunStore(path=tmp_path / "runs.db")


class FlakyStore(MemoryRunStore):
    """A store whose database is down while `down` is set: every write raises the outage."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.refused = 0

    def _outage(self, action: str) -> None:
        if self.down.is_set():
            self.refused += 1
            raise StoreUnavailableError("postgresql+psycopg://db:5432/dp", action, "refused")

    def save_task_runs(self, records: Any, **options: Any) -> None:
        self._outage("save task runs")
        super().save_task_runs(records, **options)

    def update_run(self, run_id: str, **options: Any) -> None:
        self._outage("update run")
        super().update_run(run_id, **options)


def _pipeline(gate: threading.Event, down: threading.Event) -> Any:
    registry = TaskRegistry()

    @task(registry=registry)
    def first() -> int:
        return 1

    @task(registry=registry, dependencies=["first"])
    def last(first: int) -> int:
        down.set()  # the store goes down while the last task runs
        gate.wait(10)
        return first + 1

    return plan_for(registry)


def test_a_run_waits_out_a_short_outage_and_loses_no_task_state() -> None:
    """Writes refused during an outage are kept and retried: once the store is back within
    the wait, the run and every task are recorded succeeded."""
    store = FlakyStore()
    gate = threading.Event()
    plan = _pipeline(gate, store.down)
    orchestrator = Orchestrator(
        io_manager=InMemoryIOManager(), store=store, flush_interval=0.01, store_outage_wait=30
    )

    async def main() -> Any:
        handle = await orchestrator.submit_pipeline(plan)
        while store.refused < 3:  # flushes fail meanwhile
            await asyncio.sleep(0.01)
        gate.set()  # the last task ends; the end is refused, then retried
        await asyncio.sleep(0.3)
        store.down.clear()
        result = await handle.result()
        await orchestrator.shutdown()
        return result

    result = asyncio.run(main())
    print("writes refused during the outage:", store.refused)
    assert result.status == RunStatus.SUCCEEDED, result.error
    assert result.unrecorded is None
    assert store.get_run(result.run_id).status == RunStatus.SUCCEEDED
    tasks = {t.task_name: t.status for t in store.get_task_runs(result.run_id)}
    assert tasks == {"first": TaskStatus.SUCCEEDED, "last": TaskStatus.SUCCEEDED}


def test_a_run_whose_end_outlasts_the_wait_ends_unrecorded_and_says_so() -> None:
    """Past the wait, the run ends `interrupted` with the outage attached; the message says
    every task succeeded, and the store still says running (resumable)."""
    store = FlakyStore()
    gate = threading.Event()
    gate.set()
    plan = _pipeline(gate, store.down)
    orchestrator = Orchestrator(
        io_manager=InMemoryIOManager(), store=store, flush_interval=0.01, store_outage_wait=0.5
    )
    result = orchestrator.run(plan)
    assert result.status == RunStatus.INTERRUPTED
    assert isinstance(result.unrecorded, StoreUnavailableError)
    assert result.error is not None
    assert result.error.startswith(f"every task of run {result.run_id!r} succeeded, but")
    assert "postgresql+psycopg://db:5432/dp" in result.error
    assert store.get_run(result.run_id).status == RunStatus.RUNNING


@pytest.mark.parametrize(
    "command",
    [["run", "pipeline.py"], ["runs", "list"], ["serve", "pipeline.py", "--port", "0"]],
    ids=["run", "runs-list", "serve"],
)
def test_a_command_that_cannot_reach_the_store_says_so_in_one_line_and_exits_75(
    command: list[str], tmp_path: Path
) -> None:
    """dp run, dp runs list and dp serve with nothing listening at the store's address: one
    line naming the store (no password, no traceback), exit code 75, nothing run."""
    import subprocess
    import sys

    from ports import free_port

    (tmp_path / "pipeline.py").write_text(
        "from pathlib import Path\n"
        "from dp import pipeline, task\n\n"
        "@task\n"
        "def side_effect() -> int:\n"
        "    Path('ran').touch()\n"
        "    return 1\n\n"
        "pipeline('job')\n"
    )
    store = f"postgresql://dp:s3cret@127.0.0.1:{free_port()}/dp"
    done = subprocess.run(
        [sys.executable, "-m", "dp.cli", *command],
        cwd=tmp_path,
        env={**os.environ, "DP_STORE_URL": store},
        capture_output=True,
        text=True,
        timeout=60,
    )
    print(done.stderr)
    assert done.returncode == 75, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    assert "the run store at postgresql+psycopg://127.0.0.1:" in lines[0]
    assert "s3cret" not in done.stderr + done.stdout
    assert not (tmp_path / "ran").exists()
