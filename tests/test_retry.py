"""`dp runs retry` as a user drives it: a failed run re-run from its failure, side effects
counted through a file each task appends to."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from dp.store import RunStatus, SQLRunStore
from ports import free_port
from s3_server import S3Server
from test_serve import AUTH, dp_serve, wait_for

PIPELINE = textwrap.dedent(
    """
    import os
    from datetime import datetime
    from pathlib import Path

    from dp import pipeline, task

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
        if Path(os.environ["DP_TEST_FAIL"]).exists():
            raise RuntimeError("b fails while the FAIL file exists")
        return a + 1


    @task(dependencies=["b"])
    def c(b: int) -> int:
        mark("c")
        return b + 1


    @task(dependencies=["c"])
    def d(c: int, scheduled_for: datetime) -> int:
        mark("d@" + scheduled_for.isoformat())
        return c * 10


    pipeline("job", tasks=["d"])
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    return tmp_path


def dp(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DP_TEST_LOG": str(project / "log.txt"),
        "DP_TEST_FAIL": str(project / "FAIL"),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "dp.cli", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def executions(project: Path) -> list[str]:
    log = project / "log.txt"
    return [line.split("@")[0] for line in log.read_text().split()] if log.exists() else []


def runs(project: Path) -> list[str]:
    """Run ids, oldest first."""
    store = SQLRunStore(path=project / ".dp" / "runs.db")
    try:
        return [r.run_id for r in reversed(store.list_runs())]
    finally:
        store.close()


def test_retry_reuses_what_succeeded_and_runs_the_failure_and_its_downstream(
    project: Path,
) -> None:
    """b fails; `dp runs retry` runs b, c, d (not a), succeeds, and `dp runs show` names the
    parent and the reused task; `--from c` then re-runs exactly c and d; values are right."""
    (project / "FAIL").touch()
    failed = dp(project, "run", "pipeline.py")
    assert failed.returncode == 1
    assert executions(project) == ["a", "b"]
    (first,) = runs(project)

    (project / "FAIL").unlink()
    retried = dp(project, "runs", "retry", first)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    second = runs(project)[-1]
    assert f"retry of {first}: run {second} reuses 1 task: a" in retried.stderr
    assert executions(project) == ["a", "b", "b", "c", "d"]
    shown = dp(project, "runs", "show", second)
    assert f"retry of: {first}" in shown.stdout
    assert f"reused from {first}: a" in shown.stdout
    (row,) = [line for line in shown.stdout.splitlines() if line.startswith("a ")]
    assert "reused from" in row
    assert dp(project, "runs", "result", second, "d").stdout.strip() == "30"
    assert dp(project, "runs", "result", second, "a").stdout.strip() == "1"  # read in the parent

    again = dp(project, "runs", "retry", second, "--from", "c")
    assert again.returncode == 0, again.stdout + again.stderr
    third = runs(project)[-1]
    assert executions(project) == ["a", "b", "b", "c", "d", "c", "d"]
    shown = dp(project, "runs", "show", third)
    assert f"retry of: {second}, from task c" in shown.stdout
    assert f"reused from {first}: a" in shown.stdout  # where a's result really is
    assert f"reused from {second}: b" in shown.stdout
    assert dp(project, "runs", "result", third, "d").stdout.strip() == "30"
    # not copied: the retries stored only what they computed
    results = project / ".dp" / "results"
    assert sorted(p.name for p in (results / second).iterdir()) == ["b", "c", "d"]
    assert sorted(p.name for p in (results / third).iterdir()) == ["c", "d"]
    # the task's scheduled time of a run not started by cron: when the first run was created,
    # for the retries too (they are runs for the same time)
    lines = (project / "log.txt").read_text().split()
    times = {line.split("@")[1] for line in lines if "@" in line}
    assert len(times) == 1


def test_retry_is_refused_with_a_reason(project: Path) -> None:
    """Unknown --from task, a succeeded run without --from, a running run, changed tasks:
    each exits 2 saying why and what to do; nothing runs."""
    (project / "FAIL").touch()
    dp(project, "run", "pipeline.py")
    (first,) = runs(project)
    (project / "FAIL").unlink()

    unknown = dp(project, "runs", "retry", first, "--from", "cc")
    assert unknown.returncode == 2
    assert f"run '{first}' cannot be retried: it has no task 'cc'; did you mean c" in unknown.stderr

    store = SQLRunStore(path=project / ".dp" / "runs.db")
    store.update_run(first, status=RunStatus.RUNNING)
    store.close()
    running = dp(project, "runs", "retry", first)
    assert running.returncode == 2
    assert "it is still running; wait for it to end, or cancel it first" in running.stderr

    store = SQLRunStore(path=project / ".dp" / "runs.db")
    store.update_run(first, status=RunStatus.SUCCEEDED)
    store.close()
    succeeded = dp(project, "runs", "retry", first)
    assert succeeded.returncode == 2
    assert "it succeeded, so nothing failed; name a task to re-run with --from TASK" in (
        succeeded.stderr
    )

    with (project / "pipeline.py").open("a") as source:
        source.write("\n\n@task(dependencies=['d'])\ndef e(d: int) -> int:\n    return d\n")
    changed = dp(project, "runs", "retry", first, "--from", "b")
    assert changed.returncode == 2
    assert "its tasks changed since it ran" in changed.stderr
    assert executions(project) == ["a", "b"]
    assert len(runs(project)) == 1


def test_retry_over_http(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /runs/{id}/retry on `dp serve`: 202 with the new run, its parent and the reused
    task; the retry succeeds without running a again; GET /runs/{id} shows the lineage;
    retrying a run of no served pipeline or with an unknown task is a 409 saying why."""
    monkeypatch.setenv("DP_TEST_FAIL", str(project / "FAIL"))
    (project / "FAIL").touch()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with dp_serve(project, port) as process, httpx.Client(base_url=base, headers=AUTH) as http:
        started = http.post("/pipelines/job/runs", json={})
        assert started.status_code == 202, started.text
        first = started.json()["run_id"]

        def status(run_id: str) -> str:
            return str(http.get(f"/runs/{run_id}").json()["status"])

        wait_for(lambda: status(first) == "failed", "the first run to fail", process)
        (project / "FAIL").unlink()
        unknown = http.post(f"/runs/{first}/retry", json={"from": "zz"})
        assert unknown.status_code == 409
        assert "has no task 'zz'" in unknown.json()["detail"]

        retried = http.post(f"/runs/{first}/retry")
        assert retried.status_code == 202, retried.text
        body = retried.json()
        assert (body["parent_run_id"], body["reused"]) == (first, {"a": first})
        second = body["run_id"]
        assert retried.headers["Location"] == f"/runs/{second}"
        wait_for(lambda: status(second) == "succeeded", "the retry to succeed", process)
        detail = http.get(f"/runs/{second}").json()
        assert (detail["parent_run_id"], detail["reused"]) == (first, {"a": first})
        assert detail["trigger"] == "retry"
        (listed,) = [r for r in http.get("/runs").json()["items"] if r["run_id"] == second]
        assert listed["parent_run_id"] == first
        assert http.get(f"/runs/{second}/tasks/a/result").json()["value"] == 1

        from_c = http.post(f"/runs/{second}/retry", json={"from": "c"})
        assert from_c.status_code == 202, from_c.text
        assert from_c.json()["reused"] == {"a": first, "b": second}
        third = from_c.json()["run_id"]
        wait_for(lambda: status(third) == "succeeded", "the retry from c to succeed", process)
    assert executions(project) == ["a", "b", "b", "c", "d", "c", "d"]

    other = dp(project, "run", "pipeline.py")  # a run of the task file, not of pipeline job
    assert other.returncode == 0
    with dp_serve(project, port) as process, httpx.Client(base_url=base, headers=AUTH) as http:
        ad_hoc = runs(project)[-1]
        refused = http.post(f"/runs/{ad_hoc}/retry", json={"from": "a"})
        assert refused.status_code == 409
        assert "its pipeline 'pipeline.py' is not served here" in refused.json()["detail"]


def test_retry_reads_the_reused_results_on_s3_where_the_parent_stored_them(
    project: Path, s3_server: S3Server
) -> None:
    """A run whose results went to S3 fails; `dp runs retry` (no --results: the recorded URL)
    reads a's result under the parent's run id on S3, runs b, c, d, and stores only those."""
    bucket = s3_server.create_bucket("dp-retry-results")
    url = f"s3://{bucket}/runs?endpoint={s3_server.url}"
    (project / "FAIL").touch()
    assert dp(project, "run", "pipeline.py", "--results", url).returncode == 1
    (first,) = runs(project)
    (project / "FAIL").unlink()

    retried = dp(project, "runs", "retry", first)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    second = runs(project)[-1]
    assert executions(project) == ["a", "b", "b", "c", "d"]
    assert not (project / ".dp" / "results").exists()
    assert dp(project, "runs", "result", second, "d").stdout.strip() == "30"
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]  # type: ignore[attr-defined]
    assert sorted({k.split("/")[2] for k in keys if k.split("/")[1] == second}) == ["b", "c", "d"]
    assert f"reused from {first}: a" in dp(project, "runs", "show", second).stdout
