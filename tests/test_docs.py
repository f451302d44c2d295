"""The documentation site builds strictly, and its tutorial runs as written.

A page's blocks run in order in an empty directory, as a reader would type them:
- a ```python block with `title="FILE"` is saved as FILE;
- each `$ ` line of a ```console block runs in bash and must exit 0; `<run id>` stands for the
  newest run's id; a line ending in `&` starts a server in the background (its `--port` is
  waited for, and it is stopped at the end); a `curl` must get an answer below 400;
- the page's example port, 8765, becomes a free one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dp.store import SQLRunStore
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: no broken link, no page left out of the nav, no warning."""
    built = subprocess.run(
        [BIN / "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").exists()


@pytest.mark.parametrize("page", ["tutorial.md"])
def test_the_page_runs_as_written(page: str, tmp_path: Path) -> None:
    text = (DOCS / page).read_text().replace("8765", str(free_port()))
    with _servers() as background:
        for kind, info, body in BLOCK.findall(text):
            title = re.search(r'title="([^"]+)"', info)
            if kind == "python" and title:
                (tmp_path / title.group(1)).write_text(body)
            elif kind == "console":
                for line in body.splitlines():
                    if line.startswith("$ "):
                        _run(line[2:], tmp_path, background)


def _run(command: str, cwd: Path, background: list[subprocess.Popen[bytes]]) -> None:
    if "<run id>" in command:
        store = SQLRunStore(path=cwd / ".dp" / "runs.db")
        try:
            newest = store.list_runs(limit=1)[0].run_id
        finally:
            store.close()
        command = command.replace("<run id>", newest)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DP_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    if command.endswith("&"):
        server = subprocess.Popen(
            command.removesuffix("&"),
            shell=True,
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        background.append(server)
        port = re.search(r"--port (\d+)", command)
        if port:
            _wait_for_port(int(port.group(1)), server)
        return
    if command.startswith("curl "):
        command += " -o /dev/stderr -w '%{http_code}'"
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"$ {command}\n{done.stdout}\n{done.stderr}"
    if command.startswith("curl "):
        assert int(done.stdout) < 400, f"$ {command}\n{done.stdout}\n{done.stderr}"


def _wait_for_port(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server on port {port} exited with {server.returncode}"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} after 60 s")


class _servers:
    """Background processes a page started, stopped (with their children) at the end."""

    def __enter__(self) -> list[subprocess.Popen[bytes]]:
        self.started: list[subprocess.Popen[bytes]] = []
        return self.started

    def __exit__(self, *_: object) -> None:
        for process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(autouse=True)
def _needs_curl() -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (apt-get install curl)")


def test_every_test_the_guarantees_name_exists() -> None:
    """The guarantees page names the test behind each promise; a renamed or removed test
    fails here, so the page cannot point at nothing."""
    text = (DOCS / "guarantees.md").read_text() + (ROOT / "README.md").read_text()
    named = set(re.findall(r"`(test_\w+\.py)::(test_\w+)", text))
    assert len(named) >= 20
    missing = []
    for module, test in sorted(named):
        source = Path(__file__).with_name(module)
        if not source.exists() or not re.search(rf"def {test}\b", source.read_text()):
            missing.append(f"{module}::{test}")
    assert missing == []


def test_the_readme_example_plans_and_runs(tmp_path: Path) -> None:
    """The example at the top of the README is a working pipeline file."""
    (python,) = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    (tmp_path / "sales.py").write_text(python)
    for command in ("dp plan sales.py", "dp run sales.py -p day=2026-03-01"):
        _run(command, tmp_path, [])


def test_every_dp_variable_the_code_reads_is_in_the_readme() -> None:
    """A setting a user (or a test) changes through the environment is documented."""
    code = " ".join(path.read_text() for path in (ROOT / "src" / "dp").rglob("*.py"))
    variables = set(re.findall(r"\"(DP_[A-Z0-9_]+)\"", code))
    readme = (ROOT / "README.md").read_text()
    assert len(variables) >= 15
    assert sorted(v for v in variables if v not in readme) == []
