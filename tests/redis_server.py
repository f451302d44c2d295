"""A private `redis-server` for tests and benchmarks: loopback, a free port, its own directory.

    server = RedisServer.start(tmp_path)   # AOF on, no RDB snapshots, no system service
    server.url                             # redis://127.0.0.1:<port>/0
    server.restart()                       # stop, then start on the same port and data
    server.stop()

Debian: `apt-get install -y redis-server` (`.ci/run` does it).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from ports import free_port

__all__ = ["RedisServer"]


class RedisServer:
    """One redis-server process with AOF persistence in `directory`."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, directory: Path, *, port: int | None = None) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed; on Debian: apt-get install -y redis-server"
            )
        directory.mkdir(parents=True, exist_ok=True)
        server = cls(directory, port or free_port())
        server._launch(binary)
        return server

    def _launch(self, binary: str) -> None:
        log = (self.directory / "redis.log").open("ab")
        options = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "dir": str(self.directory),
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": "",
            "daemonize": "no",
            "protected-mode": "no",
        }
        arguments = [item for name, value in options.items() for item in (f"--{name}", value)]
        self.process = subprocess.Popen([binary, *arguments], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited at start:\n{output}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 10 s")

    def stop(self) -> None:
        """Stop the server (SIGTERM: it writes its AOF and exits)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, *, down_for: float = 0.0) -> None:
        """Stop, stay down `down_for` seconds, start again on the same port and data."""
        binary = shutil.which("redis-server")
        assert binary is not None
        self.stop()
        time.sleep(down_for)
        self._launch(binary)
