"""Screenshots of each dashboard page into docs/screenshots/, for the README.

Serves tests/dashboard_pipelines.py with a real `dp serve` in a temporary directory, runs a
few pipelines, and photographs each page in Debian's Chromium. `make screenshots` runs it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
TOKEN = "screenshots"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait(check: object, what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            sys.exit(f"gave up waiting for {what}")
        time.sleep(0.1)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready").status_code == 200
    except httpx.TransportError:
        return False


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "release").touch()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "DP_API_TOKEN": TOKEN, "DP_TEST_RELEASE": str(project / "release")}
        pipelines = ROOT / "tests" / "dashboard_pipelines.py"
        server = subprocess.Popen(
            [sys.executable, "-m", "dp.cli", "serve", str(pipelines), "--port", str(port)],
            cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait(lambda: ready(url), "dp serve")
            runs = {}
            for name, params in [("greet", {"name": "Ada", "times": 2}), ("broken", {}),
                                 ("greet", {"name": "Grace"}), ("html", {})]:  # fmt: skip
                body = {"params": params}
                response = httpx.post(f"{url}/pipelines/{name}/runs", json=body, headers=AUTH)
                runs[name] = response.json()["run_id"]
            httpx.post(f"{url}/events", json={"topic": "sales.orders.created",
                       "payload": {"order_id": "A-17"}}, headers=AUTH)  # fmt: skip
            for run_id in runs.values():
                wait(lambda r=run_id: httpx.get(f"{url}/runs/{r}").json()["status"] != "running",
                     run_id)  # fmt: skip
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 860}, base_url=url)
                page.goto("/")
                page.wait_for_selector(".card .recent ul")
                page.screenshot(path=OUT / "pipelines.png")
                page.goto("/#/runs")
                page.wait_for_selector(".runs tbody tr")
                page.screenshot(path=OUT / "runs.png")
                page.goto(f"/#/run/{runs['greet']}")
                page.wait_for_selector(".run-header .badge.s-succeeded")
                page.click(".node[data-task=hello]")
                page.wait_for_selector("#task-panel .attempt")
                page.screenshot(path=OUT / "run.png", full_page=True)
                page.goto(f"/#/run/{runs['broken']}")
                page.wait_for_selector(".run-header .badge.s-failed")
                page.click(".node[data-task=explode]")
                page.wait_for_selector("#task-panel .traceback")
                page.screenshot(path=OUT / "run-failed.png", full_page=True)
                page.goto("/#/events?pattern=sales.**")
                page.wait_for_selector(".events tbody tr")
                page.screenshot(path=OUT / "events.png")
                page.goto("/docs")
                page.wait_for_selector(".opblock")
                page.screenshot(path=OUT / "api-docs.png")
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
    print(f"screenshots in {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
