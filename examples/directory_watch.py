"""A directory watch: every CSV file that lands in the inbox starts one run of `ingest`.

    mkdir -p inbox && dp serve examples/directory_watch.py
    printf 'id,amount\\n1,9.5\\n' > inbox/sales.csv    # within a second: one run of ingest
    dp sources list                                  # interval, circuit, cursor, holder
    curl localhost:8080/sources

Several `dp serve` on one PostgreSQL store (and a shared bus, e.g. Redis) poll it from one
instance at a time; when that one dies, another takes over from the committed cursor.

The cursor is the newest modification time seen. A poll reports every file at or after it,
so a file written in the same clock tick as the last one seen is not missed; the ones seen
before come out with the same payload, hence the same event id, and start no second run.
"""

from __future__ import annotations

import os
from pathlib import Path

from dp import Poll, pipeline, source, task

#: the watched directory (DP_INBOX, default ./inbox)
INBOX = Path(os.environ.get("DP_INBOX", "inbox"))


@source(every="1s", topic="files.arrived", timeout="10s", max_failures=5)
def inbox(cursor: float | None) -> Poll:
    """CSV files in the inbox modified at or after the last one seen."""
    if not INBOX.is_dir():
        raise FileNotFoundError(f"the inbox {INBOX.resolve()} does not exist; create it")
    since = cursor if cursor is not None else 0.0
    seen = [(path.stat().st_mtime, path.name) for path in INBOX.glob("*.csv")]
    new = sorted((mtime, name) for mtime, name in seen if mtime >= since)
    return Poll(
        events=[{"path": name, "mtime": mtime} for mtime, name in new],
        cursor=max((mtime for mtime, _ in new), default=since),
    )


@task
def load(path: str) -> int:
    """Count the data rows of one file."""
    with (INBOX / path).open() as rows:
        return sum(1 for _ in rows) - 1


pipeline("ingest", tasks=["load"], on="files.arrived", description="Load one arrived file.")
