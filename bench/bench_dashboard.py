"""Dashboard speed in headless Chromium against a real `dp serve`: a 5,000-task run's page, and
the runs page over 100,000 recorded runs, each beside fetching the same JSON in the same page.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench._harness import Report, alternate
from dp.store import RunRecord, SQLRunStore

SECTION = "dashboard (headless Chromium)"
TASKS = 5_000
RUNS = 100_000
ROUNDS = 5
TOKEN = "bench"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip

PIPELINE = textwrap.dedent(
    f"""
    from dp import pipeline, task

    def _make(index: int):
        def noop() -> None:
            return None
        noop.__name__ = noop.__qualname__ = f"t{{index:04d}}"
        return noop

    for index in range({TASKS}):
        chain_start = index % 50 == 0
        deps = [] if chain_start else [f"t{{index - 1:04d}}"]
        task(name=f"t{{index:04d}}", tags=["big"], dependencies=deps)(_make(index))

    pipeline("big", tags=["big"])
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _record_runs(db: Path) -> None:
    """100,000 finished runs, written straight into the store's table (fast to set up)."""
    store = SQLRunStore(path=db)
    store.create_run(RunRecord(run_id="seed", dag_id="d", pipeline="other"))
    store.close()
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        seed = dict(conn.execute("SELECT * FROM dp_runs WHERE run_id = 'seed'").fetchone())
        start = datetime(2025, 1, 1, tzinfo=UTC)
        rows = []
        for index in range(RUNS):
            row = dict(seed)
            row.update(
                run_id=f"old-{index:06d}",
                status=("succeeded", "failed", "partial")[index % 3],
                trigger=("api", "cron:other.cron", "event:a.b")[index % 3],
                created_at=(start + timedelta(seconds=index)).isoformat(sep=" "),
            )
            rows.append(row)
        columns = list(seed)
        conn.executemany(
            f"INSERT INTO dp_runs ({', '.join(columns)}) "
            f"VALUES ({', '.join(':' + c for c in columns)})",
            rows,
        )


def run(report: Report) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="dp-bench-dashboard-") as tmp:
        project = Path(tmp)
        (project / "pipeline.py").write_text(PIPELINE)
        (project / ".dp").mkdir()
        _record_runs(project / ".dp" / "runs.db")
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "dp.cli", "serve", "pipeline.py", "--port", str(port)],
            cwd=project,
            env={**os.environ, "DP_API_TOKEN": TOKEN},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait(lambda: _ready(url))
            auth = {"Authorization": f"Bearer {TOKEN}"}
            run_id = httpx.post(f"{url}/pipelines/big/runs", json={}, headers=auth).json()["run_id"]
            _wait(lambda: httpx.get(f"{url}/runs/{run_id}").json()["status"] == "succeeded", 300)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(
                    base_url=url, viewport={"width": 1280, "height": 900}, bypass_csp=True
                )
                _measure_pages(report, page, run_id)
                browser.close()
        finally:
            server.terminate()
            server.wait(60)


def _measure_pages(report: Report, page: Any, run_id: str) -> None:
    def run_page() -> None:
        page.goto("about:blank")
        page.goto(f"/#/run/{run_id}")
        page.wait_for_function(
            f"document.querySelectorAll('.node.s-succeeded').length === {TASKS}", timeout=60_000
        )

    def run_json() -> None:
        page.evaluate(f"fetch('/runs/{run_id}').then((r) => r.json()).then((d) => d.tasks.length)")

    t = alternate({"dp": run_page, "raw": run_json}, ROUNDS)
    report.add(
        SECTION,
        f"run page of a {TASKS:,}-task run, to every node drawn in its state",
        t["dp"],
        "s",
        baseline_name="fetch + parse GET /runs/{id} in the page",
        baseline=t["raw"],
        target="<= 2 s",
        higher_is_better=False,
    )

    def runs_page() -> None:
        page.goto("about:blank")
        page.goto("/#/runs")
        page.wait_for_selector(".pager .count >> text=/of 100,00[0-9]/")

    def runs_json() -> None:
        page.evaluate("fetch('/runs?limit=50').then((r) => r.json()).then((d) => d.total)")

    t = alternate({"dp": runs_page, "raw": runs_json}, ROUNDS)
    report.add(
        SECTION,
        f"runs page over {RUNS:,} recorded runs, to the first page listed",
        t["dp"],
        "s",
        baseline_name="fetch + parse GET /runs?limit=50 in the page",
        baseline=t["raw"],
        target="<= 1 s",
        higher_is_better=False,
    )


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready").status_code == 200
    except httpx.TransportError:
        return False


def _wait(check: Any, patience: float = 60.0) -> None:
    deadline = time.monotonic() + patience
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("gave up waiting")
        time.sleep(0.1)
