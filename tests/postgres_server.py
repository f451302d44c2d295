"""A private PostgreSQL server for tests and benchmarks: `initdb` into a temporary directory,
`postgres` on a free loopback port, stopped and deleted afterwards.

It depends on no system service, only on the server binaries (Debian: `apt-get install
postgresql`, which puts them under `/usr/lib/postgresql/<version>/bin`). PostgreSQL refuses
to run as root, so under root (as in CI) the server runs as the `postgres` user the Debian
package creates, or `nobody`.

    with PostgresServer() as server:
        url = server.create_database()   # postgresql+psycopg://dp@127.0.0.1:PORT/dp_1
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from ports import free_port

__all__ = ["PostgresServer", "PostgresUnavailable", "find_bindir"]

#: Settings for throwaway test data: no fsync, no crash safety, nothing left on disk.
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed, or the server would not start."""


def find_bindir() -> Path:
    """The directory holding `initdb` and `postgres`, newest version first."""
    candidates = []
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).resolve().parent))
    for candidate in candidates:
        path = Path(candidate)
        if candidate and (path / "initdb").exists() and (path / "postgres").exists():
            return path
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, postgres) found in pg_config --bindir, "
        "/usr/lib/postgresql/*/bin or PATH; install them (Debian: apt-get install postgresql)."
    )


class PostgresServer:
    """A PostgreSQL server of its own, for one test session or one benchmark.

    Args:
        settings: server settings (`-c name=value`), e.g. `FAST` for tests.
    """

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.settings = dict(settings or {})
        self.bindir = find_bindir()
        self.port = 0
        self.user = "dp"
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._command: list[str] = []
        self._as_user: dict[str, int] = {}

    @property
    def url(self) -> str:
        """The URL of the `postgres` maintenance database."""
        return self.url_of("postgres")

    def url_of(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Initialise a cluster in a new temporary directory and start the server on it."""
        run_as = _unprivileged_user() if os.geteuid() == 0 else None
        self._dir = Path(tempfile.mkdtemp(prefix="dp-postgres-"))
        data = self._dir / "data"
        if run_as is not None:
            os.chown(self._dir, run_as.pw_uid, run_as.pw_gid)
        as_user = {} if run_as is None else {"user": run_as.pw_uid, "group": run_as.pw_gid}
        initdb = subprocess.run(
            [
                str(self.bindir / "initdb"),
                *("-D", str(data), "-U", self.user, "-A", "trust"),
                *("-E", "UTF8", "--locale", "C", "--no-sync"),
            ],
            capture_output=True,
            text=True,
            check=False,
            **as_user,  # type: ignore[call-overload]
        )
        if initdb.returncode != 0:
            self._remove()
            raise PostgresUnavailable(f"initdb failed:\n{initdb.stdout}{initdb.stderr}")
        self.port = free_port()
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self._dir),
            "max_connections": "200",
            **self.settings,
        }
        command = [str(self.bindir / "postgres"), "-D", str(data)]
        for name, value in options.items():
            command += ["-c", f"{name}={value}"]
        self._command, self._as_user = command, as_user
        self._launch()

    def kill(self) -> None:
        """SIGKILL the server and every backend (a crash: clients see connections reset,
        new ones refused); `restart()` brings it back on the same port and data."""
        processes = self._server_processes()
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert self._process is not None
        self._process.wait(timeout=20)
        self._process = None
        for pid in processes:  # backends are not our children: wait until they are gone
            deadline = time.monotonic() + 20
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.02)

    def restart(self) -> None:
        """Start the server again after `kill()` (it recovers its data from the WAL)."""
        assert self._process is None, "kill() it first"
        assert self._dir is not None, "start() it first"
        (self._dir / "data" / "postmaster.pid").unlink(missing_ok=True)
        self._launch()

    def freeze(self) -> None:
        """SIGSTOP the server and every backend: a hang, not a refusal (TCP still connects)."""
        for pid in self._server_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT what `freeze()` stopped."""
        for pid in self._server_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def _launch(self) -> None:
        assert self._dir is not None
        with (self._dir / "server.log").open("ab") as log:
            self._process = subprocess.Popen(
                self._command,
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._as_user,  # type: ignore[call-overload]
            )
        self._wait_ready()

    def _server_processes(self) -> list[int]:
        """The postmaster's pid and its children's (the backends), postmaster first."""
        assert self._process is not None, "the server is not running"
        root = self._process.pid
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == root:  # field 4 of stat: the parent's pid
                    children.append(int(stat.parent.name))
        return [root, *children]

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a new name each call by default); return its URL."""
        import psycopg

        name = name or f"dp_{next(self._names)}"
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_of(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever still uses it."""
        import psycopg

        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory."""
        if self._process is not None:
            # SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients instead of
            # waiting for them, as SIGTERM ("smart") would
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        self._remove()

    def log(self) -> str:
        """What the server wrote to its log so far."""
        if self._dir is None or not (self._dir / "server.log").exists():
            return ""
        return (self._dir / "server.log").read_text(errors="replace")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={database}"

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                log = self.log()
                self.stop()
                raise PostgresUnavailable(f"postgres exited at start:\n{log}")
            try:
                psycopg.connect(self._dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    log = self.log()
                    self.stop()
                    raise PostgresUnavailable(
                        f"postgres did not accept connections:\n{log}"
                    ) from exc
                time.sleep(0.05)

    def _remove(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable(
        "running as root, and neither a 'postgres' nor a 'nobody' user exists to run the "
        "server as (PostgreSQL refuses root); create one, e.g. useradd postgres."
    )
