"""The engine contract: one suite of behaviours every executor keeps (inline, inprocess,
process, celery), run on real components (worker processes; redis-server, two `dp worker`s and
S3 results on moto for Celery). The tasks are in tests/contract_tasks.py."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import contract_tasks as tasks
from celery_servers import RedisProcess, Workers, start_redis
from dp import DAGBuilder, Planner
from dp.engine import Orchestrator
from dp.engine.celery_executor import CeleryExecutor
from dp.engine.executors import Executor
from dp.engine.model import RunResult
from dp.io import FilesystemIOManager, IOManager
from dp.io.s3 import S3IOManager
from dp.store import RunStatus, SQLRunStore, TaskStatus
from s3_server import S3Server

EXECUTORS = ["inline", "inprocess", "process", "celery"]
VISIBILITY = 15.0  # the Celery broker's visibility timeout: above every task's run time here


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The folder every process sees: side-effect files and the run store."""
    folder = tmp_path_factory.mktemp("contract")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DP_CONTRACT_DIR", str(folder))  # read by this process and its workers
        yield folder


@dataclass
class Celery:
    redis: RedisProcess
    workers: Workers
    results: S3IOManager


@pytest.fixture(scope="module")
def celery(
    shared: Path, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Celery]:
    """redis-server, two `dp worker`s (one process each), results in a bucket of moto's S3."""
    home = tmp_path_factory.mktemp("celery-workers")
    redis = start_redis(home)
    tasks_file = home / "contract_tasks.py"  # the workers' logs go beside it, not into tests/
    shutil.copy(Path(tasks.__file__), tasks_file)
    s3_server.create_bucket("dp-engine-contract")
    results = S3IOManager("dp-engine-contract", "results", endpoint_url=s3_server.url)
    env = {
        **s3_server.env,
        "DP_CONTRACT_DIR": str(shared),
        "DP_CELERY_BROKER_URL": redis.url,
        "DP_RESULTS_URL": results.url,
        "DP_STORE_URL": f"sqlite:///{shared / 'runs.db'}",
        "DP_CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY),
    }
    try:
        workers = Workers.start(tasks_file, env)
    except BaseException:
        redis.stop()
        raise
    yield Celery(redis, workers, results)
    workers.stop()
    redis.stop()


class Engine:
    """One executor, with the IO manager its workers share and the session's run store."""

    def __init__(self, name: str, io: IOManager, store: SQLRunStore, celery: Celery | None) -> None:
        self.name = name
        self.io = io
        self.store = store
        self._celery = celery

    def executor(self) -> str | Executor:
        if self._celery is None:
            return self.name
        return CeleryExecutor(self._celery.redis.url, visibility=VISIBILITY)

    def orchestrator(self) -> Orchestrator:
        workers = 2 if self.name == "process" else None
        return Orchestrator(
            io_manager=self.io, store=self.store, executor=self.executor(), workers=workers
        )

    def run(self, *names: str, key: str) -> RunResult:
        async def go() -> RunResult:
            orchestrator = self.orchestrator()
            try:
                return await orchestrator.start_pipeline(plan(*names), {"key": key})
            finally:
                await orchestrator.shutdown()

        return asyncio.run(go())

    def value(self, result: RunResult, name: str, instance: str = "") -> object:
        result_id = result.task(name, instance).result_ids[-1]
        return self.io.load(result.run_id, name, result_id)


def plan(*names: str) -> object:
    return Planner(DAGBuilder(tasks.REGISTRY)).create_execution_plan(task_names=list(names))


@pytest.fixture(params=EXECUTORS)
def engine(request: pytest.FixtureRequest, shared: Path, tmp_path: Path) -> Engine:
    store = SQLRunStore(path=shared / "runs.db")
    if request.param == "celery":
        celery: Celery = request.getfixturevalue("celery")
        return Engine("celery", celery.results, store, celery)
    return Engine(request.param, FilesystemIOManager(tmp_path / "results"), store, None)


@pytest.fixture
def key() -> str:
    """A fresh key per test: the side-effect files of one run."""
    return f"k{uuid.uuid4().hex[:12]}"


def test_a_fan_out_and_fan_in_joins_both_branches(engine: Engine, key: str) -> None:
    """root -> left, right -> join gives (1 + 1) * (1 + 2), each task run once."""
    result = engine.run("join", key=key)
    assert (result.ok, engine.value(result, "join"), tasks.effects(key, "root")) == (True, 6, 1)


def test_each_chunk_is_consumed_while_the_producer_still_runs(engine: Engine, key: str) -> None:
    """A consumer of chunk 0 runs before the producer yields chunk 1; one consumer per chunk."""
    if engine.name == "inline":
        pytest.skip("inline runs one task at a time, so no consumer runs beside its producer")
    result = engine.run("consume", key=key)
    assert result.ok, result
    values = sorted(
        engine.value(result, "consume", r.instance) for r in result.instances("consume")
    )  # type: ignore[type-var]
    assert values == [0, 10, 20]


def test_a_failing_task_is_retried_until_it_succeeds(engine: Engine, key: str) -> None:
    """flaky (max_retries=2) fails twice and succeeds on its third attempt."""
    result = engine.run("flaky", key=key)
    assert (result.ok, result.task("flaky").attempts, tasks.effects(key, "flaky")) == (True, 3, 3)


def test_a_task_past_its_timeout_fails_with_a_timeout_error(engine: Engine, key: str) -> None:
    """stuck (timeout 1 s, runs for 10 s) fails with TimeoutError, the run fails."""
    if engine.name == "inline":
        pytest.skip("inline runs sync tasks in the caller's thread and cannot interrupt them")
    result = engine.run("stuck", key=key)
    assert (result.status, result.task("stuck").status) == (RunStatus.FAILED, TaskStatus.FAILED)
    assert "TimeoutError" in (result.task("stuck").error or "")


def test_a_fail_safe_failure_lets_the_other_branches_finish(engine: Engine, key: str) -> None:
    """fragile fails fail-safe: its dependent is skipped, sturdy succeeds, the run is partial."""
    result = engine.run("after_fragile", "sturdy", key=key)
    statuses = result.statuses()
    assert (result.status, statuses["after_fragile"], statuses["sturdy"]) == (
        RunStatus.PARTIAL,
        TaskStatus.SKIPPED,
        TaskStatus.SUCCEEDED,
    )


async def _run_until_gate(engine: Engine, orchestrator: Orchestrator, key: str) -> str:
    """Start first -> gate -> last and return the run id once gate is executing."""
    handle = await orchestrator.submit_pipeline(plan("last"), {"key": key})
    while tasks.effects(key, "gate") == 0:
        await asyncio.sleep(0.02)
    return handle.run_id


async def test_a_cancelled_run_stops_and_starts_nothing_more(engine: Engine, key: str) -> None:
    """Cancelling a run while gate executes ends it cancelled; last never runs."""
    orchestrator = engine.orchestrator()
    try:
        run_id = await _run_until_gate(engine, orchestrator, key)
        handle = orchestrator.active_runs()[0]
        assert orchestrator.cancel(run_id)
        result = await handle.result()
    finally:
        tasks.signal(key, "release")  # let the abandoned gate finish wherever it runs
        await orchestrator.shutdown()
    assert (result.status, engine.store.get_run(run_id).status) == (
        RunStatus.CANCELLED,
        RunStatus.CANCELLED,
    )
    assert tasks.effects(key, "last") == 0


async def test_an_interrupted_run_resumes_without_redoing_finished_tasks(
    engine: Engine, key: str
) -> None:
    """Interrupted while gate waits, the run resumes: first is not run again, last runs once."""
    orchestrator = engine.orchestrator()
    try:
        run_id = await _run_until_gate(engine, orchestrator, key)
        handle = orchestrator.active_runs()[0]
        orchestrator.cancel(run_id, status=RunStatus.INTERRUPTED)
        await handle.result()
        assert engine.store.get_run(run_id).status == RunStatus.INTERRUPTED
        tasks.signal(key, "release")
        result = await orchestrator.resume_pipeline(run_id, plan=plan("last"))  # type: ignore[arg-type]
    finally:
        tasks.signal(key, "release")
        await orchestrator.shutdown()
    assert (result.ok, engine.value(result, "last")) == (True, 20)
    assert (tasks.effects(key, "first"), tasks.effects(key, "last")) == (1, 1)
