"""The run store: what ran, when, with which parameters, and how each task ended.

`RunStore` is the port; `MemoryRunStore` keeps runs in memory for tests, `SQLRunStore` keeps
them in SQLite (the default, `.dp/runs.db`) or PostgreSQL. `SQLRunStore` is imported on first
use, so `import dp.store` does not load SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dp.store.memory import MemoryRunStore
from dp.store.records import (
    RunRecord,
    RunStatus,
    RunStore,
    SourceRecord,
    TaskRunRecord,
    TaskStatus,
)

if TYPE_CHECKING:
    from dp.store.sql import SQLRunStore

__all__ = [
    "MemoryRunStore",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "SQLRunStore",
    "SourceRecord",
    "TaskRunRecord",
    "TaskStatus",
]


def __getattr__(name: str) -> Any:
    if name == "SQLRunStore":  # SQLAlchemy costs ~130 ms: paid only by who opens a SQL store
        from dp.store.sql import SQLRunStore

        return SQLRunStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
