"""The examples run on whatever backends the configuration names, as a user would run them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dp.cli import app
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
