"""Where task results live: the `IOManager` port and its filesystem and in-memory adapters.

Workers call `save` after every task (once per chunk for a streaming task) and `load` for every
input, so both sit on the per-task hot path: ids are validated by a precompiled regex once and
then remembered, paths are plain string joins, and the disk sees as few system calls as can be.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import os
import pickle
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dp.errors import (
    ResultNotFoundError,
    SaveError,
    SerializationError,
    UnreachableIOManagerError,
)
from dp.ids import check_id, is_id
from dp.packs import PackIndex, pack_name, read_value, write_pack
from dp.safetext import describe_exception

__all__ = ["FilesystemIOManager", "IOManager", "InMemoryIOManager"]

_NUMBER = re.compile(r"([0-9]+)")
_SEP = os.sep
_SUFFIX = ".pkl"
#: between a task's name and a result id in a file name: a character no id may contain
_JOIN = "@"
#: `InMemoryIOManager.load` found nothing (None is a result like any other)
_MISSING: Any = object()
#: longest task name + result id joined in one file name (255 bytes on most file systems)
_NAME_MAX = 255 - len(_JOIN) - len(_SUFFIX) - 1
# O_EXCL: two writers can never share a temporary file, even if their names somehow collided.
_CREATE = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)
_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


@runtime_checkable
class IOManager(Protocol):
    """Stores task results, addressed by run id, task name and result id.

    A task that returns stores one result; a streaming task stores one per chunk (`chunk_0`,
    `chunk_1`, ...). Every id must be a plain `str` matching `[A-Za-z0-9_][A-Za-z0-9_.-]*`, with
    no `..` and at most 200 characters, so that any adapter can use it as a path segment or key
    without escaping; anything else raises `InvalidIdError`. The engine depends only on this
    protocol.
    """

    def save(self, run_id: str, task_name: str, task_result_id: str, value: Any) -> str:
        """Store `value`, replacing any result under the same ids, and return where it went.

        Raises:
            SerializationError: The adapter cannot encode `value`; nothing was stored.
        """
        ...

    def load(self, run_id: str, task_name: str, task_result_id: str) -> Any:
        """Return a stored result.

        Raises:
            ResultNotFoundError: Nothing is stored under these ids.
            SerializationError: The stored bytes cannot be decoded.
        """
        ...

    def exists(self, run_id: str, task_name: str, task_result_id: str) -> bool:
        """Whether a result is stored; resuming a run skips the tasks for which it is."""
        ...

    def list_results(self, run_id: str, task_name: str) -> list[str]:
        """Result ids of one task in natural order: `chunk_2` before `chunk_10`."""
        ...

    def list_runs(self) -> list[str]:
        """Ids of the runs that have stored results, in natural order."""
        ...

    def clear_run(self, run_id: str) -> int:
        """Delete every result of a run and return how many there were (0 for an unknown run)."""
        ...


class FilesystemIOManager:
    """Pickles each result to `{base_path}/{run_id}/{task_name}@{task_result_id}.pkl`.

    One directory per run, created by the run's first save: a task costs no `mkdir`. Results
    written by dp 0.1, at `{run_id}/{task_name}/{task_result_id}.pkl`, are still
    found (`load`, `exists`, `list_results`, `clear_run`); new saves use the flat layout.

    A save writes a hidden temporary file next to the result and renames it into place, so other
    threads and worker processes see the old result or the new one, never part of one, and a
    failed save leaves the previous result untouched. Many threads and processes may save into the
    same run at once. A process crash is safe as it is; `durable=True` also fsyncs the file and its
    directory so that a saved result survives power loss, at the price of a disk flush per save.

    Loading unpickles, which can run arbitrary code: point `base_path` only at a directory that
    only your pipelines write to.

    Args:
        base_path: Root directory of all runs; created on the first save.
        durable: Flush every result to disk before `save` returns.
    """

    def __init__(self, base_path: str | os.PathLike[str], *, durable: bool = False) -> None:
        self._base = os.path.abspath(os.fspath(base_path))
        self._durable = durable
        # Temporary names are token-pid-thread-counter: unique across instances, forked and
        # spawned processes, and threads.
        self._token = os.urandom(4).hex()
        self._counter = itertools.count()
        self._packs = PackIndex()
        #: run directory -> paths of results saved there as files of their own, known since
        #: this manager first packed results into it (a pack must remove those it replaces)
        self._flat: dict[str, set[str]] = {}

    @property
    def base_path(self) -> Path:
        """The absolute root directory of all runs."""
        return Path(self._base)

    @property
    def durable(self) -> bool:
        """Whether saves are fsynced."""
        return self._durable

    def __repr__(self) -> str:
        durable = ", durable=True" if self._durable else ""
        return f"{type(self).__name__}({self._base!r}{durable})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Worker processes receive the manager pickled; each copy gets its own token and counter.
        return (functools.partial(type(self), durable=self._durable), (self._base,))

    def save(self, run_id: str, task_name: str, task_result_id: str, value: Any) -> str:
        """Pickle `value` atomically and return the path of the result file.

        Raises:
            SerializationError: `value` cannot be pickled.
            SaveError: the file cannot be written (a full disk, no permission, a read-only
                file system); it names the result and the location.
        """
        try:
            return self._save(run_id, task_name, task_result_id, value)
        except OSError as exc:
            location = f"{self._base}{_SEP}{run_id}"
            raise SaveError(run_id, task_name, task_result_id, location, exc) from exc

    def _save(self, run_id: str, task_name: str, task_result_id: str, value: Any) -> str:
        _check_ids(run_id, task_name, task_result_id)
        run_dir = f"{self._base}{_SEP}{run_id}"
        path = _flat_path(run_dir, task_name, task_result_id)
        directory = os.path.dirname(path)  # the run's folder, but for over-long ids
        tmp = f"{directory}{_SEP}{self._temp_name()}.tmp"
        try:
            fd = os.open(tmp, _CREATE, 0o666)
        except FileNotFoundError:
            # First result of this run: create the directory only now, so that the common
            # case costs no mkdir or stat. makedirs(exist_ok=True) tolerates concurrent creators.
            self._make_dirs(directory)
            fd = os.open(tmp, _CREATE, 0o666)
        try:
            # Unbuffered: pickle already writes in frames, and a buffered writer would add an
            # fstat, an ioctl and a seek to every save.
            with io.FileIO(fd, "wb") as file:
                # Streamed rather than pickle.dumps'd, so a large DataFrame is not held twice.
                try:
                    pickle.dump(value, file, pickle.HIGHEST_PROTOCOL)
                except OSError:
                    raise
                except Exception as exc:
                    raise SerializationError(
                        run_id, task_name, task_result_id, _pickle_failure(exc)
                    ) from exc
                if self._durable:
                    file.flush()
                    os.fsync(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self._durable:
            _fsync_dir(directory)
        flat = self._flat.get(run_dir)
        if flat is not None:
            flat.add(path)
        return path

    def save_many(self, run_id: str, items: list[tuple[str, str, Any]]) -> list[int]:
        """Store several results of a run (task name, result id, value) at once, as one pack
        file (see `dp.packs`): all of them are stored, or none. Returns how many bytes each
        result took, in order (what the write-behind budgets its memory by).

        One file for the batch, one rename, and with `durable=True` one fsync of the file and
        one of its directory: what the write-behind writer uses to store a batch of results.

        Raises:
            SerializationError: A value cannot be encoded; nothing of the batch was stored.
        """
        try:
            return self._save_many(run_id, items)
        except OSError as exc:
            task_name, task_result_id = items[0][0], items[0][1]
            location = f"{self._base}{_SEP}{run_id}"
            raise SaveError(run_id, task_name, task_result_id, location, exc) from exc

    def _save_many(self, run_id: str, items: list[tuple[str, str, Any]]) -> list[int]:
        _check_id("run_id", run_id)
        for task_name, task_result_id, _ in items:
            _check_id("task_name", task_name)
            _check_id("task_result_id", task_result_id)
        run_dir = f"{self._base}{_SEP}{run_id}"
        name = pack_name(self._token, next(self._counter))
        tmp = f"{run_dir}{_SEP}{self._temp_name()}.tmp"
        path = f"{run_dir}{_SEP}{name}"
        try:
            fd = os.open(tmp, _CREATE, 0o666)
        except FileNotFoundError:
            self._make_dirs(run_dir)
            fd = os.open(tmp, _CREATE, 0o666)
        try:
            with io.FileIO(fd, "wb") as file:
                index = write_pack(file, run_id, items)
                if self._durable:
                    os.fsync(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self._durable:
            _fsync_dir(run_dir)
        self._packs.added(run_dir, name, index)
        self._unshadow(run_dir, items)
        return [index[task_name, task_result_id][1] for task_name, task_result_id, _ in items]

    def load(self, run_id: str, task_name: str, task_result_id: str) -> Any:
        """Unpickle a stored result."""
        _check_ids(run_id, task_name, task_result_id)
        run_dir = f"{self._base}{_SEP}{run_id}"
        path = _flat_path(run_dir, task_name, task_result_id)
        try:
            fd = os.open(path, _READ)
        except (FileNotFoundError, NotADirectoryError):
            packed = self._packs.find(run_dir, task_name, task_result_id)
            if packed is not None:
                path = packed[0]
                try:
                    data = read_value(packed)
                except FileNotFoundError:  # cleared meanwhile
                    raise ResultNotFoundError(run_id, task_name, task_result_id) from None
                return _unpickle(data, path, run_id, task_name, task_result_id)
            # written by dp 0.1
            path = f"{run_dir}{_SEP}{task_name}{_SEP}{task_result_id}{_SUFFIX}"
            try:
                fd = os.open(path, _READ)
            except (FileNotFoundError, NotADirectoryError):
                raise ResultNotFoundError(run_id, task_name, task_result_id) from None
        # Unbuffered and read whole: fewer system calls than a buffered file for small results.
        with io.FileIO(fd, "rb") as file:
            data = file.readall()
        return _unpickle(data, path, run_id, task_name, task_result_id)

    def exists(self, run_id: str, task_name: str, task_result_id: str) -> bool:
        """Whether the result file exists."""
        _check_ids(run_id, task_name, task_result_id)
        run_dir = f"{self._base}{_SEP}{run_id}"
        return (
            os.path.isfile(_flat_path(run_dir, task_name, task_result_id))
            or self._packs.find(run_dir, task_name, task_result_id) is not None
            or os.path.isfile(f"{run_dir}{_SEP}{task_name}{_SEP}{task_result_id}{_SUFFIX}")
        )

    def list_results(self, run_id: str, task_name: str) -> list[str]:
        """Result ids of one task in natural order; temporary and stray files are skipped."""
        _check_id("run_id", run_id)
        _check_id("task_name", task_name)
        run_dir = f"{self._base}{_SEP}{run_id}"
        ids = set(_result_ids(run_dir, f"{task_name}{_JOIN}"))
        ids.update(rid for name, rid in self._packs.results(run_dir) if name == task_name)
        ids.update(_result_ids(f"{run_dir}{_SEP}{task_name}"))  # written by dp 0.1
        return sorted(ids, key=_natural)

    def list_runs(self) -> list[str]:
        """Run directories in natural order; stray files and hidden entries are skipped.

        A run whose first save failed may be listed with no results: the directories are
        created before the value is pickled, because pickling streams straight into the file.
        """
        try:
            with os.scandir(self._base) as entries:
                runs = [e.name for e in entries if is_id(e.name) and e.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(runs, key=_natural)

    def clear_run(self, run_id: str) -> int:
        """Delete a run's directory and return how many results it held.

        The directory is first renamed to a hidden name, so the run vanishes at once and a crash
        midway leaves no half-deleted run visible. Saves into the run while it is being cleared
        may fail or land in a fresh run directory.
        """
        _check_id("run_id", run_id)
        run_dir = f"{self._base}{_SEP}{run_id}"
        if not os.path.isdir(run_dir):
            return 0
        trash = f"{self._base}{_SEP}{self._temp_name()}.deleting"
        try:
            os.rename(run_dir, trash)
        except FileNotFoundError:  # cleared by someone else in the meantime
            return 0
        with os.scandir(trash) as entries:
            task_dirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        results = {tuple(rid.split(_JOIN, 1)) for rid in _result_ids(trash) if _JOIN in rid}
        results.update(self._packs.results(trash))
        self._packs.forget(trash)
        self._packs.forget(run_dir)
        self._flat.pop(run_dir, None)
        count = len(results)
        count += sum(len(_result_ids(task_dir)) for task_dir in task_dirs)  # written by dp 0.1
        shutil.rmtree(trash)
        if self._durable:
            _fsync_dir(self._base)
        return count

    def _unshadow(self, run_dir: str, items: list[tuple[str, str, Any]]) -> None:
        """Remove the files of results just packed that were saved before as files of their
        own (they would hide the packed ones). The run's directory is listed once, the first
        time this manager packs into it, and `save` tells of later files: an `unlink` per
        result, or a listing per pack, would cost system calls on every batch."""
        flat = self._flat.get(run_dir)
        if flat is None:
            flat = self._flat[run_dir] = set()  # a `save` from now on adds its file to it
            flat.update(_flat_files(run_dir))
        if not flat:
            return
        for task_name, task_result_id, _ in items:
            path = _flat_path(run_dir, task_name, task_result_id)
            if path in flat:
                flat.discard(path)
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    os.unlink(path)

    def _temp_name(self) -> str:
        # Leading dot: never a valid id, so listings skip it.
        return f".{self._token}-{os.getpid()}-{threading.get_ident()}-{next(self._counter)}"

    def _make_dirs(self, run_dir: str) -> None:
        try:
            os.mkdir(run_dir)  # the usual case: the base folder exists, the run's does not
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(run_dir, exist_ok=True)
        if self._durable:
            for parent in (os.path.dirname(run_dir), self._base, os.path.dirname(self._base)):
                _fsync_dir(parent)


class InMemoryIOManager:
    """Keeps results in a dict in this process, for tests and the inline executor.

    By default a value is stored as it is: `load` returns the very object that was saved, which is
    fast but lets a task that mutates its input change the stored result, and accepts values that
    `FilesystemIOManager` would refuse. `copy=True` stores a pickle instead, so every `load` gives
    a fresh copy and an unpicklable value raises `SerializationError` just as on disk: use it in
    tests that should catch what would break with worker processes.

    Results are visible only to this process; pickling the manager (to hand it to a worker
    process) raises `UnreachableIOManagerError` (a `TypeError`) rather than silently giving
    the worker an empty copy.

    Args:
        copy: Store pickles rather than the objects themselves.
    """

    def __init__(self, *, copy: bool = False) -> None:
        self._copy = copy
        #: run id -> {"task@result id": value}: one dict per run, not one more per task
        self._runs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @property
    def copy(self) -> bool:
        """Whether values are stored as pickles."""
        return self._copy

    def __repr__(self) -> str:
        return f"{type(self).__name__}(copy={self._copy})"

    def __reduce__(self) -> tuple[Any, ...]:
        raise UnreachableIOManagerError(
            type(self).__name__, "it keeps results in this process's memory, out of their reach"
        )

    def save(self, run_id: str, task_name: str, task_result_id: str, value: Any) -> str:
        """Store `value` (or its pickle with `copy=True`) and return a `memory://` location."""
        _check_ids(run_id, task_name, task_result_id)
        if self._copy:
            try:
                value = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise SerializationError(
                    run_id, task_name, task_result_id, _pickle_failure(exc)
                ) from exc
        results = self._runs.get(run_id)
        if results is None:
            with self._lock:
                results = self._runs.setdefault(run_id, {})
        results[f"{task_name}{_JOIN}{task_result_id}"] = value
        return f"memory://{run_id}/{task_name}/{task_result_id}"

    def load(self, run_id: str, task_name: str, task_result_id: str) -> Any:
        """Return the stored object, or a fresh unpickled copy with `copy=True`."""
        # Every stored key passed `_check_ids` in `save`, and "@" is in no id, so a hit on exact
        # `str`s proves the ids valid: they are checked only on a miss (inputs are loaded once
        # or twice per task, and this check was a tenth of an inline no-op task's cost).
        value = _MISSING
        if type(run_id) is str and type(task_name) is str and type(task_result_id) is str:
            results = self._runs.get(run_id)
            if results is not None:
                value = results.get(f"{task_name}{_JOIN}{task_result_id}", _MISSING)
        if value is _MISSING:
            _check_ids(run_id, task_name, task_result_id)
            raise ResultNotFoundError(run_id, task_name, task_result_id)
        if not self._copy:
            return value
        try:
            return pickle.loads(value)
        except Exception as exc:
            raise SerializationError(
                run_id,
                task_name,
                task_result_id,
                f"cannot unpickle the stored copy ({type(exc).__name__}: {exc})",
            ) from exc

    def exists(self, run_id: str, task_name: str, task_result_id: str) -> bool:
        """Whether a result is stored."""
        _check_ids(run_id, task_name, task_result_id)
        return f"{task_name}{_JOIN}{task_result_id}" in self._runs.get(run_id, {})

    def list_results(self, run_id: str, task_name: str) -> list[str]:
        """Result ids of one task in natural order."""
        _check_id("run_id", run_id)
        _check_id("task_name", task_name)
        keys = self._runs.get(run_id, {}).copy()  # saves go on meanwhile (a copy is atomic)
        prefix = f"{task_name}{_JOIN}"
        ids = [key[len(prefix) :] for key in keys if key.startswith(prefix)]
        return sorted(ids, key=_natural)

    def list_runs(self) -> list[str]:
        """Runs with at least one result, in natural order."""
        with self._lock:
            runs = [run_id for run_id, results in self._runs.items() if results]
        return sorted(runs, key=_natural)

    def clear_run(self, run_id: str) -> int:
        """Forget a run's results and return how many there were."""
        _check_id("run_id", run_id)
        with self._lock:
            results = self._runs.pop(run_id, {})
        return len(results)


#: ids seen valid lately: a set lookup instead of a regex per id, three per save and load
_VALID: set[str] = set()
#: past this many, `_VALID` starts over (run ids and chunk ids keep coming in a service)
_VALID_MAX = 1 << 16


def _check_ids(run_id: str, task_name: str, task_result_id: str) -> None:
    valid = _VALID
    # `type(...) is str`: a str subclass could fake equality; those take the slow path
    if (
        type(run_id) is str
        and type(task_name) is str
        and type(task_result_id) is str
        and run_id in valid
        and task_name in valid
        and task_result_id in valid
    ):
        return
    _check_id("run_id", run_id)
    _check_id("task_name", task_name)
    _check_id("task_result_id", task_result_id)


def _check_id(kind: str, value: str) -> None:
    if type(value) is str and value in _VALID:
        return
    if not is_id(value):
        check_id(kind, value)  # raises, saying what is wrong
    if len(_VALID) >= _VALID_MAX:
        _VALID.clear()
    _VALID.add(value)


def _natural(name: str) -> tuple[tuple[str | int, ...], str]:
    # Digit runs compare as numbers (chunk_2 < chunk_10); split() alternates text and digits, so
    # equal positions always hold the same type. The name itself breaks ties (chunk_01, chunk_1).
    parts = _NUMBER.split(name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def _flat_path(run_dir: str, task_name: str, task_result_id: str) -> str:
    """Where a result goes: `{run}/{task}@{result}.pkl`, or `{run}/{task}/{result}.pkl` when
    the two ids are too long for one file name (as every result was in dp 0.1)."""
    if len(task_name) + len(task_result_id) < _NAME_MAX:
        return f"{run_dir}{_SEP}{task_name}{_JOIN}{task_result_id}{_SUFFIX}"
    return f"{run_dir}{_SEP}{task_name}{_SEP}{task_result_id}{_SUFFIX}"


def _flat_files(run_dir: str) -> list[str]:
    """Paths of the results stored in a run's directory as files of their own."""
    paths = []
    try:
        with os.scandir(run_dir) as entries:
            for entry in entries:
                if entry.name.endswith(_SUFFIX) and _JOIN in entry.name:
                    paths.append(entry.path)
                elif is_id(entry.name) and entry.is_dir(follow_symlinks=False):
                    paths += [
                        f"{entry.path}{_SEP}{name}"
                        for name in os.listdir(entry.path)
                        if name.endswith(_SUFFIX)
                    ]
    except (FileNotFoundError, NotADirectoryError):
        pass
    return paths


def _result_ids(directory: str, prefix: str = "") -> list[str]:
    """Result ids of the `.pkl` files in `directory` whose names start with `prefix` (cut
    off); with no prefix, `task@result` names are given whole (for counting)."""
    try:
        with os.scandir(directory) as entries:
            names = [
                e.name
                for e in entries
                if e.name.startswith(prefix) and e.name.endswith(_SUFFIX) and e.is_file()
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    stems = (n[len(prefix) : -len(_SUFFIX)] for n in names)
    if prefix:
        return [stem for stem in stems if is_id(stem)]
    return [stem for stem in stems if all(map(is_id, stem.split(_JOIN, 1)))]


def _unpickle(data: bytes, path: str, run_id: str, task_name: str, task_result_id: str) -> Any:
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise SerializationError(
            run_id,
            task_name,
            task_result_id,
            f"cannot unpickle {path} ({type(exc).__name__}: {exc}); the file is "
            "truncated or corrupt, or a class it refers to can no longer be imported. "
            "Run the task again to store it anew.",
        ) from exc


def _pickle_failure(exc: Exception) -> str:
    return (
        f"cannot pickle the value ({describe_exception(exc)}). Return plain data (dicts, "
        "lists, DataFrames, dataclasses defined at module level), not functions, locks, open "
        "files or generators."
    )


def _fsync_dir(path: str) -> None:
    if os.name == "nt":  # Windows cannot open a directory to fsync it; NTFS journals renames
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
