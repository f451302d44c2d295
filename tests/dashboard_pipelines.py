"""Pipelines the dashboard's browser tests (and its screenshots) serve with `dp serve`."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

from dp import Poll, pipeline, source, task

#: a file whose existence lets `hold` finish (so a test controls when a run ends)
RELEASE = Path(os.environ.get("DP_TEST_RELEASE", "release"))


@task(tags=["greet"], description="Says hello to `name`, `times` times.")
def hello(name: str, times: int = 1) -> str:
    print(f"saying hello to {name}")
    return " ".join([f"hello {name}"] * times)


@task(tags=["greet"], dependencies=["hello"])
def shout(hello: str) -> str:
    return hello.upper()


@task(tags=["greet"])
def numbers() -> Iterator[int]:
    yield from range(3)


@task(tags=["greet"], dependencies=["numbers"])
def square(numbers: int) -> int:
    return numbers * numbers


@task(tags=["broken"])
def explode() -> int:
    print("reading rows")
    raise ValueError("bad row 3")


@task(tags=["slow"])
async def wait_long() -> str:
    await asyncio.sleep(120)
    return "done"


@task(tags=["html"])
def html_output() -> str:
    payload = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    print(payload)
    return payload


@task(tags=["resumable"])
def extract() -> int:
    return 41


@task(tags=["resumable"], dependencies=["extract"])
def load(extract: int) -> int:
    deadline = time.monotonic() + 60
    while not RELEASE.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return extract + 1


#: `publish` fails until this file exists; `fetch` appends a line to FETCHED each run
FIXED = RELEASE.with_name("flaky-fixed")
FETCHED = RELEASE.with_name("fetched.log")


@task(tags=["flaky"])
def fetch() -> int:
    with FETCHED.open("a") as log:
        log.write("fetch\n")
    return 7


@task(tags=["flaky"], dependencies=["fetch"])
def publish(fetch: int) -> int:
    if not FIXED.exists():
        raise ConnectionError("the warehouse is down")
    return fetch * 6


pipeline("greet", tags=["greet"], description="Greets someone, loudly.")
pipeline("flaky", tags=["flaky"])
pipeline("broken", tags=["broken"])
pipeline("slow", tags=["slow"])
pipeline("html", tags=["html"])
pipeline("resumable", tags=["resumable"])


@source(every="1s", topic="dashboard.inbox", max_failures=1, max_backoff="1s")
def html_inbox() -> None:
    """A source whose error carries HTML (the dashboard shows it as text)."""
    raise OSError('<img src=x onerror="window.__pwned = 2">')


@source(every="1s", topic="dashboard.marker")
def marker(cursor: object) -> Poll:
    """A healthy source with a cursor that carries HTML."""
    return Poll(events=[], cursor={"seen": "<b>ok</b>"})
