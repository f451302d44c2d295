"""The examples run on whatever backends the configuration names, as a user would run them."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dp.cli import app
from dp.loader import load_tasks
from dp.pipelines import get_pipelines
from dp.sources import get_sources, source_event_id
from s3_server import S3Server

EXAMPLES = Path(__file__).parent.parent / "examples"
pytestmark = pytest.mark.usefixtures("clean_default_registry")


def test_event_driven_transform_reads_the_extract_results_from_s3(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """With DP_RESULTS_URL=s3://..., `transform` sums what `extract` stored in the bucket."""
    bucket = s3_server.create_bucket("dp-examples")
    env = {
        "DP_HOME": str(tmp_path),
        "DP_RESULTS_URL": f"s3://{bucket}/results?endpoint={s3_server.url}",
        "COLUMNS": "200",
    }
    runner, target = CliRunner(), str(EXAMPLES / "event_driven.py")
    extract = runner.invoke(app, ["run", target, "--tags", "extract"], env=env)
    assert extract.exit_code == 0, extract.output
    transform = runner.invoke(
        app,
        ["run", target, "--tags", "transform", "-p", f"run_id={_run_id(extract.output)}"],
        env=env,
    )
    assert transform.exit_code == 0, transform.output
    totals = runner.invoke(
        app, ["runs", "result", _run_id(transform.output), "totals_by_region", "--json"], env=env
    )
    assert json.loads(totals.output) == {"north": 165.5, "south": 80.0}
    assert not (tmp_path / "results").exists(), "results went to the local directory"


def _run_id(output: str) -> str:
    found = re.search(r"^run (\S+) succeeded", output, re.M)
    assert found is not None, output
    return found[1]


def test_the_directory_watch_plans_and_reports_each_file_with_one_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/directory_watch.py loads and plans; its source reports new files, keeps the
    newest mtime as cursor, and a file seen again keeps its payload (so its event id)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    monkeypatch.setenv("DP_INBOX", str(inbox))
    target = EXAMPLES / "directory_watch.py"
    load_tasks(target)
    watch = get_sources().get("inbox")
    assert (watch.topic, watch.every, watch.timeout) == ("files.arrived", 1.0, 10.0)
    assert get_pipelines().get("ingest").plan().execution_order == ("load",)

    empty = watch.func(None)
    assert (empty.events, empty.cursor) == ([], 0.0)
    for name, mtime in (("a.csv", 100), ("b.csv", 200), ("notes.txt", 300)):
        (inbox / name).write_text("id\n1\n2\n")
        os.utime(inbox / name, (mtime, mtime))
    first = watch.func(empty.cursor)
    assert first.events == [{"path": "a.csv", "mtime": 100.0}, {"path": "b.csv", "mtime": 200.0}]
    assert first.cursor == 200.0
    (inbox / "c.csv").write_text("id\n")  # written in the same clock tick as b.csv
    os.utime(inbox / "c.csv", (200, 200))
    second = watch.func(first.cursor)
    assert second.events == [{"path": "b.csv", "mtime": 200.0}, {"path": "c.csv", "mtime": 200.0}]
    assert source_event_id("inbox", second.events[0]) == source_event_id("inbox", first.events[1])

    run = CliRunner().invoke(
        app, ["run", str(target), "-p", "path=a.csv"], env={"DP_HOME": str(tmp_path / "home")}
    )
    assert run.exit_code == 0, run.output


def test_the_directory_watch_names_a_missing_inbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polling an inbox that does not exist fails with the path and what to do."""
    monkeypatch.setenv("DP_INBOX", str(tmp_path / "nowhere"))
    load_tasks(EXAMPLES / "directory_watch.py")
    with pytest.raises(FileNotFoundError, match="nowhere does not exist; create it"):
        get_sources().get("inbox").func(None)
