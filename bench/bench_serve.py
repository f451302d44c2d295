"""What `dp serve`'s default executor costs: worker processes (`process`, the default, where a
task cannot take the service down) beside threads of the service itself (`inprocess`).

A real `dp serve` per executor on a small pipeline (three no-op tasks in a chain), driven over
HTTP: the latency of one run (POST, then poll until it succeeded, one run at a time), and the
throughput of a burst of runs started at once. Each figure of `process` is printed beside the
same figure of `inprocess` measured in the same session.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

from bench._harness import Report

SECTION = "dp serve: process (default) vs inprocess executor"
TOKEN = "bench"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LATENCY_RUNS = 40
BURST = 100

PIPELINE = textwrap.dedent(
    """
    from dp import pipeline, task

    @task
    def extract() -> int:
        return 1

    @task(dependencies=["extract"])
    def transform(extract: int) -> int:
        return extract + 1

    @task(dependencies=["transform"])
    def load(transform: int) -> int:
        return transform * 2

    pipeline("small", tasks=["load"])
    """
)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve(root: Path, executor: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dp.cli", "serve", "pipeline.py", "--port", str(port),
         "-e", executor, "--max-concurrent-pipelines", "16", "--max-queued-pipelines", "1000"],
        cwd=root,
        env={**os.environ, "DP_API_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health/ready").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"dp serve -e {executor} did not start")
        time.sleep(0.05)


def _wait(client: httpx.Client, url: str, run_ids: list[str]) -> None:
    pending = set(run_ids)
    while pending:
        for run_id in list(pending):
            status = client.get(f"{url}/runs/{run_id}").json()["status"]
            if status == "succeeded":
                pending.discard(run_id)
            elif status not in ("queued", "running"):
                raise RuntimeError(f"run {run_id} ended {status}")
        if pending:
            time.sleep(0.002)


def _measure(executor: str) -> tuple[float, float]:
    """(median seconds per run, one at a time; runs per second in a burst of BURST)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pipeline.py").write_text(PIPELINE)
        process, url = _serve(root, executor)
        try:
            with httpx.Client(headers=AUTH) as client:
                start = f"{url}/pipelines/small/runs"
                latencies = []
                for index in range(LATENCY_RUNS + 3):
                    began = time.perf_counter()
                    run_id = client.post(start, json={}).json()["run_id"]
                    _wait(client, url, [run_id])
                    if index >= 3:  # the first runs warm the workers up
                        latencies.append(time.perf_counter() - began)
                began = time.perf_counter()
                run_ids = [client.post(start, json={}).json()["run_id"] for _ in range(BURST)]
                _wait(client, url, run_ids)
                burst = time.perf_counter() - began
        finally:
            process.terminate()
            process.wait(60)
    return statistics.median(latencies), BURST / burst


def run(report: Report) -> None:
    threads = _measure("inprocess")
    processes = _measure("process")
    report.add(
        SECTION,
        "one run of 3 chained tasks, POST to succeeded (median)",
        processes[0] * 1000,
        "ms",
        baseline_name="inprocess",
        baseline=threads[0] * 1000,
        higher_is_better=False,
    )
    report.add(
        SECTION,
        f"throughput, {BURST} runs started at once",
        processes[1],
        "runs/s",
        baseline_name="inprocess",
        baseline=threads[1],
    )
