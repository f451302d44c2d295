"""The three ports of result storage: what the engine sees (`IOManager`), what moves bytes
(`ByteStore`) and what turns a value into bytes and back (`Codec`).

Storage and encoding are apart, as in Huey (storage, serializer) and Temporal (payload
converter): a byte store knows keys and bytes, never values; a codec knows values and bytes,
never where they go. `ResultStore` joins one store with the codecs.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["ByteStore", "Codec", "IOManager"]


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
            ResultDamagedError: The stored bytes cannot be decoded (it names where they are).
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


@runtime_checkable
class ByteStore(Protocol):
    """Moves bytes under `/`-separated keys made of checked ids (never `..`, never empty).

    `put` is atomic: a reader sees the old bytes or the new ones, never part of them.
    """

    @property
    def url(self) -> str:
        """Where the bytes are, as a URL without credentials (for messages and run records)."""
        ...

    def location(self, key: str) -> str:
        """Where `key`'s bytes are (a path or a URL), for messages and `save`'s answer."""
        ...

    def put(self, key: str, data: bytes | memoryview, *, replace: bool = True) -> bool:
        """Store `data` under `key`. With `replace=False` only if nothing is stored there yet:
        False then, and nothing changed (how a fenced commit never overwrites).

        Raises:
            OSError: The bytes could not be written (a full disk, no permission).
            ResultsUnavailableError: A remote store could not be reached or refused.
        """
        ...

    def get(self, key: str) -> bytes | None:
        """The bytes under `key`, or None if there are none."""
        ...

    def exists(self, key: str) -> bool:
        """Whether bytes are stored under `key`."""
        ...

    def list(self, prefix: str) -> list[str]:
        """The names directly under `prefix` (`""`: the root), in no particular order: a key's
        last segment as it is, a deeper prefix's with a trailing `/` (`run_1/`)."""
        ...

    def delete(self, key: str) -> int:
        """Delete `key` and everything under `key/`; return how many objects went."""
        ...


class Codec(Protocol):
    """Turns a value into bytes and back. `suffix` ends the key of every result it encodes,
    so the codec is recorded with the result and loading never guesses."""

    @property
    def name(self) -> str: ...

    @property
    def suffix(self) -> str: ...

    def accepts(self, value: object) -> bool:
        """Whether this codec should encode `value` (the manager asks the codecs in order)."""
        ...

    def encode(self, value: object) -> bytes | memoryview:
        """The bytes of `value`.

        Raises:
            Exception: whatever the encoder raises; the manager names the result.
        """
        ...

    def decode(self, data: bytes) -> Any:
        """The value of `data`."""
        ...
