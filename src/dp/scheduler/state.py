"""Where the scheduler remembers when each cron trigger last fired, across restarts.

The misfire policy needs it: a scheduler that was down for three days compares the last
fire time with now to see that fire times were missed. `MemoryScheduleState` forgets on
exit (nothing is caught up after a restart); every `RunStore` is a `ScheduleState` too
(`dp serve` keeps fire times there, beside the runs, shared by every instance on one
database); `FileScheduleState` keeps a small JSON file for a scheduler without a store::

    {"version": 1, "last_fire": {"nightly": "2025-03-30T01:00:00Z"}}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from dp.errors import InvalidArgumentError, ScheduleStateError

__all__ = ["FileScheduleState", "MemoryScheduleState", "ScheduleState"]

_VERSION = 1


@runtime_checkable
class ScheduleState(Protocol):
    """The last fire time of each trigger, by trigger name."""

    def last_fire(self, name: str) -> datetime | None:
        """When the trigger `name` last fired (UTC), or None if it never did."""
        ...

    def record_fires(self, fires: Mapping[str, datetime]) -> None:
        """Remember these fire times; the scheduler calls it once per batch of fires."""
        ...


class MemoryScheduleState:
    """Last fire times in a dict; `MemoryScheduleState({"nightly": when})` pre-seeds it."""

    __slots__ = ("_times",)

    def __init__(self, times: Mapping[str, datetime] | None = None) -> None:
        self._times = {name: _utc(name, when) for name, when in (times or {}).items()}

    def last_fire(self, name: str) -> datetime | None:
        """When `name` last fired, or None."""
        return self._times.get(name)

    def record_fires(self, fires: Mapping[str, datetime]) -> None:
        """Remember these fire times."""
        for name, when in fires.items():
            self._times[name] = _utc(name, when)

    def __repr__(self) -> str:
        return f"MemoryScheduleState({len(self._times)} triggers)"


class FileScheduleState:
    """Last fire times in a JSON file, rewritten atomically on every `record`.

    The file is replaced by renaming a fully written and flushed temporary file next to it,
    so a crash leaves either the old or the new content, never a torn one.

    Args:
        path: the JSON file; it and its directory are created on the first `record`.

    Raises:
        ScheduleStateError: (on first use) if the file exists but is not a state file.
    """

    __slots__ = ("_times", "path")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._times: dict[str, datetime] | None = None

    def last_fire(self, name: str) -> datetime | None:
        """When `name` last fired, or None."""
        return self._load().get(name)

    def record_fires(self, fires: Mapping[str, datetime]) -> None:
        """Remember these fire times and rewrite the file.

        Raises:
            ScheduleStateError: if the file cannot be written.
        """
        times = self._load()
        times.update({name: _utc(name, when) for name, when in fires.items()})
        document = {
            "version": _VERSION,
            "last_fire": {
                name: when.isoformat().replace("+00:00", "Z") for name, when in times.items()
            },
        }
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump(document, file, indent=1, sort_keys=True)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise ScheduleStateError(self.path, f"cannot write it ({exc})") from exc

    def _load(self) -> dict[str, datetime]:
        if self._times is None:
            self._times = self._read()
        return self._times

    def _read(self) -> dict[str, datetime]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ScheduleStateError(self.path, f"cannot read it ({exc})") from exc
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ScheduleStateError(self.path, f"it is not valid JSON ({exc})") from exc
        if not isinstance(document, dict) or not isinstance(document.get("last_fire"), dict):
            raise ScheduleStateError(self.path, "it has no 'last_fire' object")
        if document.get("version") != _VERSION:
            raise ScheduleStateError(
                self.path, f"its version is {document.get('version')!r}, expected {_VERSION}"
            )
        times = {}
        for name, text_time in document["last_fire"].items():
            try:
                times[name] = _utc(name, datetime.fromisoformat(text_time))
            except (TypeError, ValueError) as exc:
                raise ScheduleStateError(
                    self.path, f"the time of trigger {name!r} is not ISO 8601 UTC ({text_time!r})"
                ) from exc
        return times

    def __repr__(self) -> str:
        return f"FileScheduleState({str(self.path)!r})"


def _utc(name: str, when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidArgumentError(
            "when", when, f"an aware datetime (the fire time of trigger {name!r} has no time zone)"
        )
    return when.astimezone(UTC)
