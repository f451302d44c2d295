"""`InMemoryIOManager` and `MemoryByteStore`: results in this process's memory, for tests and
the inline executor."""

from __future__ import annotations

import threading
from typing import Any

from dp.errors import ResultNotFoundError, UnreachableIOManagerError
from dp.io.results import ResultStore, check_ids, natural

__all__ = ["InMemoryIOManager", "MemoryByteStore"]

#: `InMemoryIOManager.load` found nothing (None is a result like any other)
_MISSING: Any = object()


class MemoryByteStore:
    """Bytes in a dict of this process: the `ByteStore` port at its smallest."""

    url = "memory://"

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __reduce__(self) -> tuple[Any, ...]:
        raise UnreachableIOManagerError(
            type(self).__name__, "it keeps results in this process's memory, out of their reach"
        )

    def location(self, key: str) -> str:
        return f"memory://{key}"

    def put(self, key: str, data: bytes | memoryview, *, replace: bool = True) -> bool:
        data = bytes(data)
        with self._lock:
            if not replace and key in self._data:
                return False
            self._data[key] = data
        return True

    def get(self, key: str) -> bytes | None:
        return self._data.get(key)

    def exists(self, key: str) -> bool:
        return key in self._data

    def list(self, prefix: str) -> list[str]:
        start = f"{prefix}/" if prefix else ""
        with self._lock:
            keys = [k for k in self._data if k.startswith(start)]
        names = {k[len(start) :].partition("/")[:2] for k in keys}
        return [f"{name}{slash}" for name, slash in names]

    def delete(self, key: str) -> int:
        below = f"{key}/"
        with self._lock:
            gone = [k for k in self._data if k == key or k.startswith(below)]
            for k in gone:
                del self._data[k]
        return len(gone)


class InMemoryIOManager(ResultStore):
    """Keeps results in this process.

    By default a value is stored as it is: `load` returns the very object that was saved, which is
    fast but lets a task that mutates its input change the stored result, and accepts values that
    `FilesystemIOManager` would refuse. `copy=True` stores the encoded bytes instead (pickle, or
    Parquet for frames with `frames="parquet"`), so every `load` gives a fresh copy and a value
    that cannot be encoded raises `SerializationError` just as on disk: use it in tests that
    should catch what would break with worker processes.

    Results are visible only to this process; pickling the manager (to hand it to a worker
    process) raises `UnreachableIOManagerError` (a `TypeError`) rather than silently giving
    the worker an empty copy.

    Args:
        copy: store encoded bytes rather than the objects themselves.
        frames: with `copy=True`, "pickle" or "parquet" for DataFrames and Arrow tables.
    """

    store: MemoryByteStore

    def __init__(self, *, copy: bool = False, frames: str = "pickle") -> None:
        super().__init__(MemoryByteStore(), frames=frames)
        self._copy = copy
        #: run id -> {"task/result id": value}, when values are kept as they are
        self._runs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @property
    def copy(self) -> bool:
        """Whether values are stored encoded."""
        return self._copy

    def __repr__(self) -> str:
        return f"{type(self).__name__}(copy={self._copy})"

    def __reduce__(self) -> tuple[Any, ...]:
        raise UnreachableIOManagerError(
            type(self).__name__, "it keeps results in this process's memory, out of their reach"
        )

    def save(self, run_id: str, task_name: str, task_result_id: str, value: Any) -> str:
        """Store `value` (encoded with `copy=True`) and return a `memory://` location."""
        if self._copy:
            return super().save(run_id, task_name, task_result_id, value)
        check_ids(run_id, task_name, task_result_id)
        results = self._runs.get(run_id)
        if results is None:
            with self._lock:
                results = self._runs.setdefault(run_id, {})
        results[f"{task_name}/{task_result_id}"] = value
        return f"memory://{run_id}/{task_name}/{task_result_id}"

    def load(self, run_id: str, task_name: str, task_result_id: str) -> Any:
        """Return the stored object, or a freshly decoded copy with `copy=True`."""
        if self._copy:
            return super().load(run_id, task_name, task_result_id)
        # Every stored key passed `check_ids` in `save`, and "/" is in no id, so a hit on exact
        # `str`s proves the ids valid: they are checked only on a miss (inputs are loaded once
        # or twice per task, and this check was a tenth of an inline no-op task's cost).
        value = _MISSING
        if type(run_id) is str and type(task_name) is str and type(task_result_id) is str:
            results = self._runs.get(run_id)
            if results is not None:
                value = results.get(f"{task_name}/{task_result_id}", _MISSING)
        if value is _MISSING:
            check_ids(run_id, task_name, task_result_id)
            raise ResultNotFoundError(run_id, task_name, task_result_id)
        return value

    def exists(self, run_id: str, task_name: str, task_result_id: str) -> bool:
        if self._copy:
            return super().exists(run_id, task_name, task_result_id)
        check_ids(run_id, task_name, task_result_id)
        return f"{task_name}/{task_result_id}" in self._runs.get(run_id, {})

    def location(self, run_id: str, task_name: str, task_result_id: str) -> str | None:
        if self._copy:
            return super().location(run_id, task_name, task_result_id)
        if not self.exists(run_id, task_name, task_result_id):
            return None
        return f"memory://{run_id}/{task_name}/{task_result_id}"

    def list_results(self, run_id: str, task_name: str) -> list[str]:
        if self._copy:
            return super().list_results(run_id, task_name)

        check_ids(run_id, task_name, "x")
        keys = self._runs.get(run_id, {}).copy()  # saves go on meanwhile (a copy is atomic)
        prefix = f"{task_name}/"
        return sorted((k[len(prefix) :] for k in keys if k.startswith(prefix)), key=natural)

    def list_runs(self) -> list[str]:
        if self._copy:
            return super().list_runs()

        with self._lock:
            runs = [run_id for run_id, results in self._runs.items() if results]
        return sorted(runs, key=natural)

    def clear_run(self, run_id: str) -> int:
        if self._copy:
            return super().clear_run(run_id)
        check_ids(run_id, "x", "x")
        with self._lock:
            results = self._runs.pop(run_id, {})
        return len(results)
