"""Where results are, as a user finds them: `dp run` writes the design's layout and says where,
the run records its results URL so `dp runs result` / `show` need no flag, and a results
backend that cannot be written is refused before any task runs."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from dp.store import SQLRunStore
from s3_server import S3Server
from test_cli_run import PIPELINE, dp, executions


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    return tmp_path


def _run_id(project: Path) -> str:
    store = SQLRunStore(path=project / ".dp" / "runs.db")
    try:
        (record,) = store.list_runs()
        return record.run_id
    finally:
        store.close()


def test_the_designs_io_example_prints_the_designs_path(tmp_path: Path) -> None:
    """The design's I/O example, run as written, prints
    {base_path}/run_1/extract_data/result_001.pkl."""
    code = (
        "from dp.io import FilesystemIOManager\n"
        "io_manager = FilesystemIOManager('data')\n"
        "print(io_manager.save('run_1', 'extract_data', 'result_001', {'rows': 3}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    expected = tmp_path / "data" / "run_1" / "extract_data" / "result_001.pkl"
    assert done.stdout.strip() == str(expected)


def test_results_are_where_dp_run_says(project: Path) -> None:
    """`dp run` prints `results: .dp/results/<run>/<task>/`; every task has its folder there
    holding `output.pkl`, a plain pickle, and nothing else (no packs, no flat files)."""
    (project / "release").touch()
    done = dp(project, "run", "pipeline.py")
    assert done.returncode == 0, done.stderr
    run_id = _run_id(project)
    assert f"results: .dp/results/{run_id}/<task>/" in done.stdout
    run_dir = project / ".dp" / "results" / run_id
    assert sorted(p.name for p in run_dir.iterdir()) == ["a", "b", "c", "d"]
    for task, value in zip("abcd", (1, 2, 3, 3), strict=True):
        assert [p.name for p in (run_dir / task).iterdir()] == ["output.pkl"]
        assert pickle.loads((run_dir / task / "output.pkl").read_bytes()) == value


def test_a_run_on_s3_is_read_back_without_the_flag(project: Path, s3_server: S3Server) -> None:
    """Results sent to `--results s3://...` are found by `dp runs result` and named by
    `dp runs show` without repeating the flag: the run recorded where they went."""
    bucket = s3_server.create_bucket("dp-cli-results")
    url = f"s3://{bucket}/runs?endpoint={s3_server.url}"
    (project / "release").touch()
    done = dp(project, "run", "pipeline.py", "--results", url)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = _run_id(project)
    assert not (project / ".dp" / "results").exists()
    shown = dp(project, "runs", "show", run_id)
    assert f"results: s3://{bucket}/runs?endpoint={s3_server.url}" in shown.stdout
    result = dp(project, "runs", "result", run_id, "b")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
    verified = dp(project, "runs", "verify", run_id)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "4 of 4 results" in verified.stdout


def test_a_missing_bucket_is_refused_before_any_task_runs(
    project: Path, s3_server: S3Server
) -> None:
    """A bucket that does not exist is a clear error naming it and what to do; no task ran
    and no run was started."""
    url = f"s3://no-such-bucket/x?endpoint={s3_server.url}"
    (project / "release").touch()
    done = dp(project, "run", "pipeline.py", "--results", url)
    assert done.returncode != 0
    assert "NoSuchBucket" in done.stderr
    assert "create the bucket" in done.stderr
    assert executions(project) == []


def test_results_that_cannot_be_written_are_refused_before_any_task_runs(
    project: Path,
) -> None:
    """A results directory that cannot be made (under a regular file) is refused up front,
    naming it; nothing ran."""
    (project / "a-file").write_text("not a directory")
    (project / "release").touch()
    done = dp(project, "run", "pipeline.py", "--results", f"file://{project}/a-file/results")
    assert done.returncode != 0
    assert f"{project}/a-file/results" in done.stderr
    assert "Not a directory" in done.stderr
    assert executions(project) == []


def test_the_api_reads_a_result_where_the_run_put_it(tmp_path: Path) -> None:
    """GET /runs/{id} names the run's results URL; GET /runs/{id}/tasks/{task}/result reads
    the value there; a damaged result is a 409 naming the file, not a 500."""
    from test_api import serving

    with serving(tmp_path) as api:
        started = api.client.post("/pipelines/hello/runs", json={"params": {"name": "ada"}})
        run_id = started.json()["run_id"]
        run = api.wait_for_status(run_id, "succeeded")
        read = api.client.get(f"/runs/{run_id}/tasks/greet/result")
        path = tmp_path / "results" / run_id / "greet" / "output.pkl"
        path.write_bytes(path.read_bytes()[:-8])
        damaged = api.client.get(f"/runs/{run_id}/tasks/greet/result")
        missing = api.client.get(f"/runs/{run_id}/tasks/nope/result")
    assert run["results"] == f"file://{tmp_path / 'results'}"
    assert read.status_code == 200, read.text
    assert read.json() == {
        "run_id": run_id,
        "task": "greet",
        "results": f"file://{tmp_path / 'results'}",
        "result_ids": ["output"],
        "value": "hello ada",
    }
    assert damaged.status_code == 409
    assert str(path) in damaged.json()["detail"]
    assert missing.status_code == 404
