"""How the SQL run store tells an outage from bad data, and why no call of it hangs.

An *outage* is the database being unreachable: refused or lost connections, a server that
stopped answering, SQLite's file locked past its busy timeout or on a failing disk. Every
`SQLRunStore` method turns one into `StoreUnavailableError(url, action, reason)` (a
`DependencyUnavailableError`: callers retry it or answer 503); data errors (a duplicate key,
a value no column can hold) stay what they are.

No store call waits longer than `DP_STORE_TIMEOUT` seconds (10 by default) on PostgreSQL:
new connections give up after that (`connect_timeout`), and `Watchdog` shuts the socket of a
pooled connection whose checkout outlives it (a server that is frozen, not down, still
accepts TCP and never answers: libpq itself would wait forever). A pooled connection is
pinged as it is checked out, under the same deadline, so after the database comes back
the first call gets a fresh connection instead of an error: the store heals without a
restart.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import sqlalchemy as sa

from dp.errors import InvalidArgumentError, StoreUnavailableError

__all__ = [
    "DEFAULT_TIMEOUT",
    "TIMEOUT_VARIABLE",
    "Watchdog",
    "guarded",
    "outage_reason",
    "public_url",
    "store_timeout",
]

#: seconds a store call may wait on an unresponsive PostgreSQL server
DEFAULT_TIMEOUT = 10.0
TIMEOUT_VARIABLE = "DP_STORE_TIMEOUT"

#: SQLite result codes (primary, the low byte) that mean the file cannot be used right now
_SQLITE_OUTAGES = {
    5: "the database file is locked (busy timeout passed)",  # SQLITE_BUSY
    6: "a table is locked",  # SQLITE_LOCKED
    10: "disk I/O error",  # SQLITE_IOERR
    13: "the disk is full",  # SQLITE_FULL
    14: "the database file cannot be opened",  # SQLITE_CANTOPEN
}


def store_timeout() -> float:
    """`DP_STORE_TIMEOUT` in seconds, or the default; a bad value is refused by name."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InvalidArgumentError(
            TIMEOUT_VARIABLE, text, "a number of seconds > 0", hint="e.g. DP_STORE_TIMEOUT=10"
        )
    return value


def public_url(url: sa.URL) -> str:
    """The URL without user, password or query (which may hold a password), for messages."""
    bare = sa.URL.create(url.drivername, host=url.host, port=url.port, database=url.database)
    return bare.render_as_string(hide_password=False)


def outage_reason(exc: BaseException, timed_out: float | None = None) -> str | None:
    """Why `exc` means the database is unreachable, in one line; None if it is not an outage
    (a data error, a bug). `timed_out`: the call ran into the watchdog after that many s."""
    if not isinstance(exc, sa.exc.TimeoutError | sa.exc.DisconnectionError | sa.exc.DBAPIError):
        return None
    if timed_out is not None:
        return f"no answer within {timed_out:g} s ({TIMEOUT_VARIABLE})"
    if isinstance(exc, sa.exc.TimeoutError):  # no free pooled connection in time
        return _first_line(exc) or "no free connection in time"
    if isinstance(exc, sa.exc.DisconnectionError):
        return _first_line(exc) or "the connection was lost"
    orig: BaseException = exc.orig if exc.orig is not None else exc
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _SQLITE_OUTAGES:
            return f"{_SQLITE_OUTAGES[code & 0xFF]}: {_first_line(orig)}"
        return None
    if exc.connection_invalidated or isinstance(
        exc, sa.exc.OperationalError | sa.exc.InterfaceError
    ):
        # psycopg: connection refused or lost, the server shutting down, statement or lock
        # timeouts, too many connections: all "operational", none the data's fault
        return _first_line(orig) or type(orig).__name__
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


class _Outages(Protocol):
    """What `guarded` needs of the store it decorates."""

    @property
    def public_url(self) -> str: ...

    @property
    def watchdog(self) -> Watchdog | None: ...


_S = TypeVar("_S", bound=_Outages)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def guarded(
    action: str,
) -> Callable[[Callable[Concatenate[_S, _P], _R]], Callable[Concatenate[_S, _P], _R]]:
    """Decorate a store method: an outage it meets becomes `StoreUnavailableError` naming
    `action` (and the run or name it was called with)."""

    def decorate(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
        @functools.wraps(method)
        def call(store: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return method(store, *args, **kwargs)
            except sa.exc.SQLAlchemyError as exc:
                watchdog = store.watchdog
                timed_out = watchdog.expired_here() if watchdog is not None else None
                reason = outage_reason(exc, timed_out)
                if reason is None:
                    raise
                what = f"{action} {args[0]!r}" if args and isinstance(args[0], str) else action
                raise StoreUnavailableError(store.public_url, what, reason) from exc

        return call

    return decorate


class _Watch:
    __slots__ = ("deadline", "fd", "thread")

    def __init__(self, fd: int, deadline: float, thread: int) -> None:
        self.fd = fd
        self.deadline = deadline
        self.thread = thread


class Watchdog:
    """Bounds every checkout of a pooled PostgreSQL connection to `timeout` seconds.

    Hooked to the pool: a checkout is watched from the moment it starts (before the ping)
    until the connection is checked back in. A checkout past its deadline gets its socket
    shut down, so the call blocked on it fails at once as a lost connection, and the pool
    drops the connection. One thread per watchdog, started on first use, wakes a few times
    a second only while something is watched.
    """

    def __init__(self, engine: sa.Engine, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._watched: dict[int, _Watch] = {}  # id(connection record) -> watch
        self._expired: set[int] = set()  # threads whose checkout the watchdog cut
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        sa.event.listen(engine, "connect", _mark_fresh)
        sa.event.listen(engine, "checkout", self._checkout)
        sa.event.listen(engine, "checkin", self._checkin)
        self._ping = engine.dialect.do_ping

    def after_fork(self) -> None:
        """In a forked child: no thread, nothing watched, a lock nobody holds."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._watched, self._expired, self._thread = {}, set(), None

    def expired_here(self) -> float | None:
        """The timeout, if the watchdog cut this thread's last checkout (and forget it)."""
        ident = threading.get_ident()
        with self._lock:
            if ident in self._expired:
                self._expired.discard(ident)
                return self.timeout
        return None

    def _checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        fd = _socket_of(dbapi_connection)
        ident = threading.get_ident()
        with self._lock:
            self._expired.discard(ident)
            if fd is not None:
                watch = _Watch(fd, time.monotonic() + self.timeout, ident)
                self._watched[id(record)] = watch
                self._ensure_thread()
        if record.info.pop("dp_fresh", False):
            return  # connected just now: nothing to check
        try:
            self._ping(dbapi_connection)
        except Exception as exc:
            self._forget(record)
            with self._lock:
                hung = ident in self._expired
            if hung:  # the server does not answer: a new connection would not either
                raise sa.exc.TimeoutError(_first_line(exc)) from exc
            # lost while pooled (the server restarted): the pool reconnects and retries
            raise sa.exc.DisconnectionError(_first_line(exc)) from exc

    def _checkin(self, dbapi_connection: Any, record: Any) -> None:
        self._forget(record)

    def _forget(self, record: Any) -> None:
        with self._lock:
            self._watched.pop(id(record), None)

    def _ensure_thread(self) -> None:
        """Start the thread (under the lock); again in a forked child, which has none."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dp-store-watchdog", daemon=True)
            self._thread.start()
        else:
            self._wake.notify()

    def _run(self) -> None:
        with self._lock:
            while True:
                if not self._watched:
                    self._wake.wait(timeout=5.0)
                    if not self._watched:
                        self._thread = None  # `_ensure_thread` starts another when needed
                        return
                now = time.monotonic()
                for key, watch in list(self._watched.items()):
                    if watch.deadline <= now:
                        del self._watched[key]
                        self._expired.add(watch.thread)
                        _shut(watch.fd)
                soonest = min((w.deadline for w in self._watched.values()), default=now + 1.0)
                self._wake.wait(timeout=min(max(soonest - now, 0.05), 1.0))


def _mark_fresh(dbapi_connection: Any, record: Any) -> None:
    record.info["dp_fresh"] = True


def _socket_of(dbapi_connection: Any) -> int | None:
    with contextlib.suppress(Exception):  # a closed connection has no socket
        fd = dbapi_connection.pgconn.socket
        return fd if isinstance(fd, int) and fd >= 0 else None
    return None


def _shut(fd: int) -> None:
    """Shut the socket down (not close: the fd stays the driver's), so a blocked read ends."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()
