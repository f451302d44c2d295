"""A real S3 API server for tests: moto's server mode on loopback, on a free port.

    server = S3Server.start()          # `python -m moto.server` in a process of its own
    server.create_bucket("results")
    io = S3IOManager("results", "prefix", endpoint_url=server.url)
    server.stop()

moto accepts any credentials; `S3Server.env` holds the ones the tests (and the worker processes
they start) use. It comes with `moto[server]` in the dev extra (no Debian package needed).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Final

__all__ = ["S3Server"]

CREDENTIALS: Final = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Server:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**CREDENTIALS, "DP_S3_ENDPOINT_URL": self.url}

    @classmethod
    def start(cls, directory: Path) -> S3Server:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        with (directory / "moto.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **CREDENTIALS},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1):
                    return cls(process, port)
            except OSError:
                time.sleep(0.05)
        process.kill()
        log_text = (directory / "moto.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"moto's S3 server did not answer on port {port}:\n{log_text}")

    def client(self) -> object:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
