"""Result packs: many results of one run in one file, so a batch costs one file, not one each.

`FilesystemIOManager.save_many` (what the write-behind writer calls) stores a batch of a run's
results as one pack, `{run_id}/{stamp}.dpk`, written to a hidden temporary file and renamed
into place: the whole batch is stored at once or not at all. A pack is:

    b"DPK1" | pickle of value 1 | pickle of value 2 | ... | index pickle | index offset (8 bytes)

where the index is `{(task_name, task_result_id): (offset, length)}`. Pack names sort in the
order they were written (a nanosecond clock stamp, then the writer's token and counter), and
for a result in several packs the latest pack holds the current value.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import threading
import time
from typing import Any

from dp.errors import SerializationError

__all__ = ["PACK_SUFFIX", "PackIndex", "pack_name", "read_index", "read_value", "write_pack"]

PACK_SUFFIX = ".dpk"
_MAGIC = b"DPK1"
_TAIL = struct.Struct("<Q")

#: where a packed result is: (pack path, offset, length)
Location = tuple[str, int, int]


def pack_name(token: str, counter: int) -> str:
    """A pack's file name: sorts by time written (then writer and counter)."""
    return f"{time.time_ns():020d}-{token}-{counter:08d}{PACK_SUFFIX}"


def write_pack(
    file: io.FileIO, run_id: str, items: list[tuple[str, str, Any]]
) -> dict[tuple[str, str], tuple[int, int]]:
    """Write `items` (task name, result id, value) as a pack into `file`; return its index.

    Small pickles are gathered and written a few hundred KiB at a time (a `write` each would
    cost a system call per result); large ones stream through, so a big value is not held
    twice.

    Raises:
        SerializationError: A value cannot be pickled (the pack is then incomplete).
    """
    out = _Gather(file)
    out.write(_MAGIC)
    index: dict[tuple[str, str], tuple[int, int]] = {}
    for task_name, result_id, value in items:
        start = out.offset
        try:
            pickle.dump(value, out, pickle.HIGHEST_PROTOCOL)
        except OSError:
            raise
        except Exception as exc:
            raise SerializationError(
                run_id,
                task_name,
                result_id,
                f"cannot pickle the value ({type(exc).__name__}: {exc}). Return plain data "
                "(dicts, lists, DataFrames, dataclasses defined at module level), not "
                "functions, locks, open files or generators.",
            ) from exc
        index[task_name, result_id] = (start, out.offset - start)
    end = out.offset
    out.write(pickle.dumps(index, pickle.HIGHEST_PROTOCOL))
    out.write(_TAIL.pack(end))
    out.flush()
    return index


#: `_Gather` writes once this much is gathered (and writes larger pieces straight through)
_GATHER = 256 << 10


class _Gather:
    """A write-only file over `file` that gathers small writes and counts what it was given."""

    __slots__ = ("buffer", "file", "offset")

    def __init__(self, file: io.FileIO) -> None:
        self.file = file
        self.buffer = bytearray()
        self.offset = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = len(data) if not isinstance(data, memoryview) else data.nbytes
        self.offset += size
        if size >= _GATHER:
            self.flush()
            self._write_all(data)
        else:
            self.buffer += data
            if len(self.buffer) >= _GATHER:
                self.flush()
        return size

    def flush(self) -> None:
        if self.buffer:
            self._write_all(self.buffer)
            self.buffer = bytearray()

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            written = self.file.write(view)
            if written is None:  # a non-blocking file that is full: not a pack's file
                raise OSError("the pack's file took no bytes")
            view = view[written:]


def read_index(path: str) -> dict[tuple[str, str], tuple[int, int]]:
    """The index of the pack at `path` (empty if it is not a whole pack)."""
    with open(path, "rb", buffering=0) as file:
        size = os.fstat(file.fileno()).st_size
        if size < len(_MAGIC) + _TAIL.size or file.read(len(_MAGIC)) != _MAGIC:
            return {}
        file.seek(size - _TAIL.size)
        (offset,) = _TAIL.unpack(file.read(_TAIL.size))
        if not len(_MAGIC) <= offset <= size - _TAIL.size:
            return {}
        file.seek(offset)
        index = pickle.loads(file.read(size - _TAIL.size - offset))
    return index if isinstance(index, dict) else {}


def read_value(location: Location) -> bytes:
    """The pickled bytes of one packed result."""
    path, offset, length = location
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


class PackIndex:
    """Where each packed result of each run is, read from the packs in a run's directory and
    kept up to date by this process's own saves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: run directory -> (pack names read, {(task, result id): location})
        self._runs: dict[str, tuple[set[str], dict[tuple[str, str], Location]]] = {}

    def added(self, run_dir: str, name: str, index: dict[tuple[str, str], tuple[int, int]]) -> None:
        """This process just wrote pack `name` into `run_dir`."""
        path = f"{run_dir}{os.sep}{name}"
        with self._lock:
            seen, where = self._runs.setdefault(run_dir, (set(), {}))
            seen.add(name)
            for key, (offset, length) in index.items():
                where[key] = (path, offset, length)

    def find(self, run_dir: str, task_name: str, result_id: str) -> Location | None:
        """Where a packed result is, reading packs not read yet if it is not known."""
        entry = self._runs.get(run_dir)
        found = entry[1].get((task_name, result_id)) if entry is not None else None
        # unless that pack is gone (the run was cleared, maybe written anew elsewhere)
        if found is not None and os.path.exists(found[0]):
            return found
        return self.results(run_dir).get((task_name, result_id))

    def results(self, run_dir: str) -> dict[tuple[str, str], Location]:
        """Every packed result of a run (reading the packs written since the last look)."""
        try:
            names = sorted(n for n in os.listdir(run_dir) if n.endswith(PACK_SUFFIX))
        except (FileNotFoundError, NotADirectoryError):
            with self._lock:
                self._runs.pop(run_dir, None)
            return {}
        with self._lock:
            seen, where = self._runs.setdefault(run_dir, (set(), {}))
            if set(names) != seen:
                # re-read in name order so that the latest pack wins for every result
                fresh: dict[tuple[str, str], Location] = {}
                for name in names:
                    path = f"{run_dir}{os.sep}{name}"
                    try:
                        index = read_index(path)
                    except (OSError, pickle.UnpicklingError, EOFError, ValueError):
                        continue  # removed meanwhile, or not a pack dp wrote
                    for key, (offset, length) in index.items():
                        fresh[key] = (path, offset, length)
                seen.clear()
                seen.update(names)
                where.clear()
                where.update(fresh)
            return dict(where)

    def forget(self, run_dir: str) -> None:
        with self._lock:
            self._runs.pop(run_dir, None)
