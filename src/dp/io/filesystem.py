"""`FilesystemIOManager`: results as files, `{base_path}/{run_id}/{task_name}/{task_result_id}.pkl`
(`.parquet` for frames with `frames="parquet"`), over `FilesystemByteStore`.

Workers call `save` after every task (once per chunk for a streaming task) and `load` for every
input, so both sit on the per-task hot path: keys are plain string joins, ids are validated once
and then remembered, and the disk sees as few system calls as can be.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dp.io.results import ResultStore

__all__ = ["FilesystemByteStore", "FilesystemIOManager"]

_SEP = os.sep
# O_EXCL: two writers can never share a temporary file, even if their names somehow collided.
_CREATE = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)
#: directories a store remembers having made before it starts over
_DIRS_MAX = 1 << 14
_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


class FilesystemByteStore:
    """Bytes as files under `base_path`; a key's `/` are directories.

    A put writes a hidden temporary file next to its key and renames it into place, so other
    threads and processes see the old bytes or the new ones, never part of them, and a failed
    put leaves the old bytes untouched. `durable=True` also fsyncs the file and its directory.

    Args:
        base_path: the root; created on the first put.
        durable: flush every put to disk before it returns.
    """

    def __init__(self, base_path: str | os.PathLike[str], *, durable: bool = False) -> None:
        self.base = os.path.abspath(os.fspath(base_path))
        self.durable = durable
        # Temporary names are token-pid-thread-counter: unique across instances, forked and
        # spawned processes, and threads.
        self._token = os.urandom(4).hex()
        self._counter = itertools.count()
        #: directories this store made or found (a put into one needs no mkdir); forgotten
        #: past `_DIRS_MAX`, so a long-lived service does not grow it without bound
        self._dirs: set[str] = set()

    @property
    def url(self) -> str:
        return f"file://{Path(self.base).as_posix()}"

    def __repr__(self) -> str:
        durable = ", durable=True" if self.durable else ""
        return f"{type(self).__name__}({self.base!r}{durable})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Worker processes receive the store pickled; each copy gets its own token and counter.
        return (functools.partial(type(self), durable=self.durable), (self.base,))

    def location(self, key: str) -> str:
        return f"{self.base}{_SEP}{key}" if _SEP == "/" else os.path.join(self.base, key)

    def put(self, key: str, data: bytes | memoryview, *, replace: bool = True) -> bool:
        path = f"{self.base}{_SEP}{key}" if _SEP == "/" else self.location(key)
        directory = path[: path.rfind(_SEP)]
        if directory not in self._dirs:
            # A task's first result: one mkdir, as a plain script would do; its later results
            # (a stream's chunks) go straight to the open.
            self._make_dirs(directory)
        tmp = f"{directory}{_SEP}{self._temp_name()}.tmp"
        try:
            fd = os.open(tmp, _CREATE, 0o666)
        except FileNotFoundError:  # removed meanwhile (the run was cleared): make it again
            self._dirs.discard(directory)
            self._make_dirs(directory)
            fd = os.open(tmp, _CREATE, 0o666)
        try:
            try:
                written = os.write(fd, data)
                if written < len(data):  # a short write: go on from where it stopped
                    view = memoryview(data)[written:]
                    while view:
                        view = view[os.write(fd, view) :]
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if replace:
                os.replace(tmp, path)
            else:
                return self._link(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self.durable:
            _fsync_dir(directory)
        return True

    def publish(self, staged: str, key: str) -> bool:
        """Make `staged`'s file visible as `key` unless `key` exists (a hard link: atomic,
        no copy); the staged name goes either way. False if `key` existed."""
        tmp = self.location(staged)
        try:
            return self._link(tmp, self.location(key))
        except FileNotFoundError:
            return False

    def _link(self, tmp: str, path: str) -> bool:
        """Move `tmp` to `path` unless `path` exists (then drop `tmp`): one atomic
        `renameat2(RENAME_NOREPLACE)` where the kernel and file system have it, else a hard
        link that fails if `path` exists, then an unlink of `tmp`."""
        global _noreplace
        if _noreplace is not None:
            try:
                moved = _noreplace(tmp, path)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                _noreplace = None  # not supported by this kernel or file system: link
            else:
                if not moved:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                    return False
                if self.durable:
                    _fsync_dir(os.path.dirname(path))
                return True
        try:
            os.link(tmp, path)  # fails if `path` exists: never replaces
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if self.durable:
            _fsync_dir(os.path.dirname(path))
        return True

    def get(self, key: str) -> bytes | None:
        try:
            fd = os.open(self.location(key), _READ)
        except (FileNotFoundError, NotADirectoryError):
            return None
        # Unbuffered and read whole: fewer system calls than a buffered file for small results.
        with open(fd, "rb", buffering=0) as file:
            return file.readall()

    def exists(self, key: str) -> bool:
        return os.path.isfile(self.location(key))

    def list(self, prefix: str) -> list[str]:
        try:
            with os.scandir(self.location(prefix) if prefix else self.base) as entries:
                return [f"{e.name}/" if e.is_dir() else e.name for e in entries]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, key: str) -> int:
        """A file goes at once; a directory is first renamed to a hidden name, so it vanishes
        at once and a crash midway leaves nothing half-deleted visible."""
        path = self.location(key)
        try:
            os.unlink(path)
            return 1
        except FileNotFoundError:
            return 0
        except (IsADirectoryError, PermissionError):
            if not os.path.isdir(path):
                raise
        trash = f"{os.path.dirname(path)}{_SEP}{self._temp_name()}.deleting"
        below = f"{path}{_SEP}"
        self._dirs = {d for d in self._dirs if not d.startswith(below) and d != path}
        try:
            os.rename(path, trash)
        except FileNotFoundError:  # deleted by someone else in the meantime
            return 0
        count = sum(len(files) for _, _, files in os.walk(trash))
        shutil.rmtree(trash)
        if self.durable:
            _fsync_dir(os.path.dirname(path))
        return count

    def _temp_name(self) -> str:
        # Leading dot: never a valid id, so listings skip it.
        return f".{self._token}-{os.getpid()}-{threading.get_ident()}-{next(self._counter)}"

    def _make_dirs(self, directory: str) -> None:
        try:
            os.mkdir(directory)  # the usual case: the run's folder exists, the task's does not
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
        if len(self._dirs) >= _DIRS_MAX:
            self._dirs.clear()
        self._dirs.add(directory)
        if self.durable:
            parent = directory
            while parent != os.path.dirname(self.base):
                parent = os.path.dirname(parent)
                _fsync_dir(parent)


class FilesystemIOManager(ResultStore):
    """Each result one file, `{base_path}/{run_id}/{task_name}/{task_result_id}.pkl`.

    Saves are atomic (a temporary file, then a rename): a crash never leaves half a result.
    Many threads and processes may save into the same run at once. `durable=True` also fsyncs
    each file and its directory, so a saved result survives power loss, at the price of a disk
    flush per save. With `frames="parquet"`, DataFrames and Arrow tables are stored as
    `{task_result_id}.parquet`, readable without dp.

    Loading unpickles, which can run arbitrary code: point `base_path` only at a directory that
    only your pipelines write to.

    Args:
        base_path: root directory of all runs; created on the first save.
        durable: flush every result to disk before `save` returns.
        frames: "pickle" or "parquet", how DataFrames and Arrow tables are kept.
    """

    store: FilesystemByteStore

    def __init__(
        self, base_path: str | os.PathLike[str], *, durable: bool = False, frames: str = "pickle"
    ) -> None:
        super().__init__(FilesystemByteStore(base_path, durable=durable), frames=frames)

    @property
    def base_path(self) -> Path:
        """The absolute root directory of all runs."""
        return Path(self.store.base)

    @property
    def durable(self) -> bool:
        """Whether saves are fsynced."""
        return self.store.durable

    def __repr__(self) -> str:
        durable = ", durable=True" if self.durable else ""
        frames = f", frames={self.frames!r}" if self.frames != "pickle" else ""
        return f"{type(self).__name__}({self.store.base!r}{durable}{frames})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            functools.partial(type(self), durable=self.durable, frames=self.frames),
            (self.store.base,),
        )


def _find_noreplace() -> Callable[[str, str], bool] | None:
    """glibc's `renameat2(..., RENAME_NOREPLACE)` (Linux 3.15+, glibc 2.28+) as a function
    `(src, dst) -> moved`, False when `dst` exists; None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return None
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    renameat2.restype = ctypes.c_int
    at_fdcwd, noreplace = -100, 1

    def rename(src: str, dst: str) -> bool:
        if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), noreplace) == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        raise OSError(err, os.strerror(err), src, None, dst)

    return rename


#: the no-replace rename, or None (then a hard link and an unlink)
_noreplace: Callable[[str, str], bool] | None = _find_noreplace()


def _fsync_dir(path: str) -> None:
    if os.name == "nt":  # Windows cannot open a directory to fsync it; NTFS journals renames
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
