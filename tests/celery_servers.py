"""Real servers for the Celery executor's tests: a private redis-server and `dp worker`s.

    redis = start_redis(tmp_path)              # loopback, a free port, no persistence
    workers = Workers.start(tasks_file, env)   # real `dp worker` processes, own sessions
    workers.kill(0)                            # SIGKILL one worker and its pool processes
    workers.stop()

Debian: `apt-get install -y redis-server` (`.ci/run` does it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from ports import free_port

__all__ = ["RedisProcess", "Workers", "start_redis"]

DP = str(Path(sys.executable).with_name("dp"))


class RedisProcess:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def start_redis(directory: Path) -> RedisProcess:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; on Debian: apt-get install redis-server")
    port = free_port()
    with (directory / "redis.log").open("ab") as log:
        process = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--dir",
                str(directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return RedisProcess(process, port)
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"redis-server did not answer on port {port}")


class Workers:
    """`dp worker` processes, each the leader of its own session (so a kill takes its pool)."""

    def __init__(self, processes: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
        self.processes = processes
        self.logs = logs

    @classmethod
    def start(
        cls, tasks_file: Path, env: Mapping[str, str], *, count: int = 2, args: tuple[str, ...] = ()
    ) -> Workers:
        processes, logs = [], []
        for index in range(count):
            log = tasks_file.parent / f"worker-{index}-{time.monotonic_ns()}.log"
            with log.open("wb") as out:
                processes.append(
                    subprocess.Popen(
                        [DP, "worker", str(tasks_file), "-c", "1", *args],
                        cwd=tasks_file.parent,
                        env={**os.environ, **env},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            logs.append(log)
        workers = cls(processes, logs)
        workers.wait_ready()
        return workers

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for process, log in zip(self.processes, self.logs, strict=True):
            while "ready." not in log.read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"dp worker did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)

    def kill(self, index: int) -> None:
        os.killpg(self.processes[index].pid, signal.SIGKILL)
        self.processes[index].wait(10)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
