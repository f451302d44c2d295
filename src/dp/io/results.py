"""`ResultStore`: the `IOManager` over any `ByteStore` and codecs, in the design's layout.

Each result is one object, `{run_id}/{task_name}/{task_result_id}{suffix}`, the suffix naming
its codec (`.pkl`, `.parquet`). `save` returns where the bytes went: for the filesystem the
path `{base_path}/{run_id}/{task_name}/{task_result_id}.pkl`, as the design promises.

Fenced commits (`stage`, `commit`, `discard`): an attempt that may be stale (a Celery worker
that was frozen past the visibility timeout) writes its results under names of its own, hidden
from listings, and only an attempt whose commit the run store accepted publishes them, never
over a result already there.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

from dp.errors import (
    ResultDamagedError,
    ResultNotFoundError,
    ResultsUnavailableError,
    SaveError,
    SerializationError,
)
from dp.ids import check_id, is_id
from dp.io.codecs import CODECS, PICKLE, ParquetCodec, PickleCodec, codecs_for
from dp.io.ports import ByteStore
from dp.logs import get_logger
from dp.safetext import describe_exception

__all__ = ["ResultStore", "check_ids", "check_results", "natural", "results_url"]

_log = get_logger("dp.io")
_NUMBER = re.compile(r"([0-9]+)")
_SUFFIXES = tuple(CODECS)
#: the codecs tried when loading, the default first (a parquet result costs one miss)
Codecs = tuple[PickleCodec | ParquetCodec, ...]
_LOAD_ORDER: Codecs = tuple(CODECS.values())


class ResultStore:
    """Results as objects in a `ByteStore`, encoded by the first codec that accepts them.

    Args:
        store: where the bytes go.
        frames: "pickle" (the default) or "parquet": how DataFrames and Arrow tables are kept.
    """

    def __init__(self, store: ByteStore, *, frames: str = "pickle") -> None:
        self.store = store
        self.frames = frames
        self._codecs: Codecs = codecs_for(frames)
        #: one codec: no choosing per value, no other suffix to remove on a save
        self._only = self._codecs[0] if len(self._codecs) == 1 else None
        #: bytes of this thread's last save (read by `save_sized`)
        self._sizes = threading.local()

    def __repr__(self) -> str:
        frames = f", frames={self.frames!r}" if self.frames != "pickle" else ""
        return f"{type(self).__name__}({self.store!r}{frames})"

    @property
    def url(self) -> str:
        """Where results go, as a results URL without credentials: what a run records, so
        `dp runs result`, resume, the API and the dashboard find its results without flags."""
        url = self.store.url
        if self.frames != "pickle":
            url += f"{'&' if '?' in url else '?'}frames={self.frames}"
        return url

    def check(self) -> None:
        """Check once, before a run starts, that results can be written here (the directory
        can be made and written; the bucket exists and the credentials work): a bad backend
        is then a clear error before any task ran, not a failure after some did.

        Raises:
            ResultsUnavailableError: what failed, where, and what to do.
        """
        key = f".dp-check-{os.getpid()}-{threading.get_ident()}"
        try:
            self.store.put(key, b"ok")
            self.store.delete(key)
        except OSError as exc:
            raise ResultsUnavailableError(
                self.url,
                "write results",
                f"{exc.strerror or describe_exception(exc)} (errno {exc.errno}); make it "
                "writable, or choose another place with --results / DP_RESULTS_URL",
            ) from None

    # --- the IOManager port ------------------------------------------------------------------

    def save(self, run_id: str, task_name: str, task_result_id: str, value: Any) -> str:
        """Encode `value` and store it atomically; return where it is.

        Raises:
            SerializationError: no codec can encode `value`; nothing was stored.
            SaveError: the bytes could not be written; it names the result and the place.
        """
        return self._save(run_id, task_name, task_result_id, value)[0]

    def save_sized(
        self, run_id: str, task_name: str, task_result_id: str, value: Any
    ) -> int | None:
        """`save` (a subclass's too), returning how many bytes the result took, or None if
        that is not known: what the write-behind budgets the memory of results it keeps for
        their consumers by."""
        self._sizes.value = None
        self.save(run_id, task_name, task_result_id, value)
        size: int | None = self._sizes.value
        return size

    def _save(
        self, run_id: str, task_name: str, task_result_id: str, value: Any
    ) -> tuple[str, int]:
        check_ids(run_id, task_name, task_result_id)
        codec, data = self._encode(run_id, task_name, task_result_id, value)
        key = f"{run_id}/{task_name}/{task_result_id}{codec.suffix}"
        store = self.store
        keep = getattr(self._sizes, "keep", False)
        others: tuple[str, ...] = ()
        if self._only is None:
            others = tuple(
                f"{run_id}/{task_name}/{task_result_id}{c.suffix}"
                for c in self._codecs
                if c is not codec
            )
        try:
            if keep and others and any(store.exists(k) for k in others):
                stored = False
            else:
                stored = store.put(key, data, replace=not keep)
        except OSError as exc:
            raise SaveError(run_id, task_name, task_result_id, store.location(key), exc) from exc
        if not stored:
            _log.warning(
                "result.commit_refused",
                run_id=run_id,
                task_name=task_name,
                result_id=task_result_id,
                reason="a result is stored there already (committed by another owner or "
                "attempt, maybe read downstream); it stays",
            )
        elif others:  # a result saved before under another codec is replaced
            for other in others:
                store.delete(other)
        size = self._sizes.value = len(data)
        return store.location(key), size

    @contextlib.contextmanager
    def keeping(self) -> Iterator[None]:
        """Within this block, this thread's saves never replace a stored result: one already
        there stays (and `result.commit_refused` is logged). The write-behind writer saves so:
        an owner that was frozen past its lease and woke after the run was taken over cannot
        replace a result the new owner committed, and a consumer may have read."""
        before = getattr(self._sizes, "keep", False)
        self._sizes.keep = True
        try:
            yield
        finally:
            self._sizes.keep = before

    def delete(self, run_id: str, task_name: str, task_result_id: str) -> bool:
        """Delete one stored result (under any codec); whether there was one. What resume
        does with a damaged result before it runs its task again."""
        check_ids(run_id, task_name, task_result_id)
        stem = f"{run_id}/{task_name}/{task_result_id}"
        return sum(self.store.delete(f"{stem}{suffix}") for suffix in _SUFFIXES) > 0

    def _encode(
        self, run_id: str, task_name: str, task_result_id: str, value: Any
    ) -> tuple[PickleCodec | ParquetCodec, bytes | memoryview]:
        codec = self._only
        if codec is None:
            codec = next(c for c in self._codecs if c.accepts(value))
            if codec is not PICKLE:
                try:
                    return codec, codec.encode(value)
                except Exception:  # e.g. a column of mixed objects Parquet cannot type
                    codec = PICKLE
        try:
            return codec, codec.encode(value)
        except Exception as exc:
            raise SerializationError(
                run_id, task_name, task_result_id, PICKLE.failure(exc)
            ) from exc

    def load(self, run_id: str, task_name: str, task_result_id: str) -> Any:
        """Decode a stored result, by the codec its suffix names.

        Raises:
            ResultNotFoundError: nothing is stored under these ids.
            ResultDamagedError: the bytes cannot be decoded; it names where they are.
        """
        check_ids(run_id, task_name, task_result_id)
        stem = f"{run_id}/{task_name}/{task_result_id}"
        get = self.store.get
        for codec in _LOAD_ORDER:
            data = get(f"{stem}{codec.suffix}")
            if data is not None:
                try:
                    return codec.decode(data)
                except Exception as exc:
                    raise self._damaged(run_id, task_name, task_result_id, codec, exc) from exc
        raise ResultNotFoundError(run_id, task_name, task_result_id)

    def _damaged(
        self,
        run_id: str,
        task_name: str,
        task_result_id: str,
        codec: PickleCodec | ParquetCodec,
        exc: BaseException,
    ) -> ResultDamagedError:
        where = self.store.location(f"{run_id}/{task_name}/{task_result_id}{codec.suffix}")
        return ResultDamagedError(
            run_id,
            task_name,
            task_result_id,
            where,
            f"cannot decode it as {codec.name} ({describe_exception(exc)}); it is truncated or "
            "corrupt, or a class it refers to can no longer be imported",
        )

    def exists(self, run_id: str, task_name: str, task_result_id: str) -> bool:
        """Whether a result is stored, under any codec."""
        check_ids(run_id, task_name, task_result_id)
        stem = f"{run_id}/{task_name}/{task_result_id}"
        exists = self.store.exists
        return any(exists(f"{stem}{suffix}") for suffix in _SUFFIXES)

    def location(self, run_id: str, task_name: str, task_result_id: str) -> str | None:
        """Where a stored result is, or None if it is not stored."""
        check_ids(run_id, task_name, task_result_id)
        stem = f"{run_id}/{task_name}/{task_result_id}"
        for suffix in _SUFFIXES:
            if self.store.exists(f"{stem}{suffix}"):
                return self.store.location(f"{stem}{suffix}")
        return None

    def list_results(self, run_id: str, task_name: str) -> list[str]:
        """Result ids of one task in natural order; hidden (staged) and stray names skipped."""
        _check("run_id", run_id)
        _check("task_name", task_name)
        names = self.store.list(f"{run_id}/{task_name}")
        return sorted({rid for n in names if (rid := _result_id(n)) is not None}, key=natural)

    def list_runs(self) -> list[str]:
        """Runs with results, in natural order; stray and hidden names are skipped."""
        names = self.store.list("")
        return sorted((run for n in names if n[-1:] == "/" and is_id(run := n[:-1])), key=natural)

    def clear_run(self, run_id: str) -> int:
        """Delete a run's results (and anything else under its prefix); return how many
        results there were."""
        _check("run_id", run_id)
        store = self.store
        count = sum(
            sum(1 for n in store.list(f"{run_id}/{task}") if _result_id(n) is not None)
            for name in store.list(run_id)
            if name[-1:] == "/" and is_id(task := name[:-1])
        )
        store.delete(run_id)
        return count

    # --- fenced commits ---------------------------------------------------------------------

    def stage(
        self, run_id: str, task_name: str, task_result_id: str, value: Any, attempt: str
    ) -> str:
        """Store `value` where only this attempt writes (a hidden, attempt-scoped key) and
        return that key for `commit` or `discard`. Nothing becomes visible yet.

        Raises:
            SerializationError, SaveError: as `save`.
        """
        check_ids(run_id, task_name, task_result_id)
        _check("attempt", attempt)
        codec, data = self._encode(run_id, task_name, task_result_id, value)
        key = f"{run_id}/{task_name}/.{task_result_id}{codec.suffix}.{attempt}"
        try:
            self.store.put(key, data)
        except OSError as exc:
            where = self.store.location(key)
            raise SaveError(run_id, task_name, task_result_id, where, exc) from exc
        return key

    def commit(self, staged: str) -> bool:
        """Publish a staged result under its visible key unless a result is there already
        (another attempt committed it first, and a consumer may have read it): False then.
        The staged copy is removed either way."""
        folder, _, name = staged.rpartition("/")
        visible = f"{folder}/{name[1:].rpartition('.')[0]}"
        store = self.store
        publish = getattr(store, "publish", None)
        if publish is not None:  # the filesystem: a hard link, no copy of the bytes
            return bool(publish(staged, visible))
        data = store.get(staged)
        if data is None:
            return False
        try:
            return store.put(visible, data, replace=False)
        finally:
            store.delete(staged)

    def discard(self, staged: str) -> None:
        """Remove a staged result that will not be committed."""
        self.store.delete(staged)


def results_url(io_manager: object) -> str:
    """The results URL of an IO manager (`ResultStore.url`), or "" for one that has none."""
    url = getattr(io_manager, "url", "")
    return url if isinstance(url, str) else ""


def check_results(io_manager: object) -> None:
    """`ResultStore.check` of an IO manager that has one (others are taken as they are).

    Raises:
        ResultsUnavailableError: results cannot be written there.
    """
    check = getattr(io_manager, "check", None)
    if callable(check):
        check()


def _result_id(name: str) -> str | None:
    """The result id a stored name holds (`r.pkl` -> `r`), or None for anything else."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            return stem if is_id(stem) else None
    return None


#: ids seen valid lately: a set lookup instead of a regex per id, three per save and load
_VALID: set[str] = set()
#: past this many, `_VALID` starts over (run ids and chunk ids keep coming in a service)
_VALID_MAX = 1 << 16


def check_ids(run_id: str, task_name: str, task_result_id: str) -> None:
    """Raise `InvalidIdError` naming the first id that is not a valid one."""
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
    _check("run_id", run_id)
    _check("task_name", task_name)
    _check("task_result_id", task_result_id)


def _check(kind: str, value: str) -> None:
    if type(value) is str and value in _VALID:
        return
    if not is_id(value):
        check_id(kind, value)  # raises, saying what is wrong
    if len(_VALID) >= _VALID_MAX:
        _VALID.clear()
    _VALID.add(value)


def natural(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key: digit runs compare as numbers (chunk_2 < chunk_10); the name breaks ties."""
    parts = _NUMBER.split(name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name
