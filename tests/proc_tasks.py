"""Tasks for the process-executor tests. Worker processes import them by module path, so they
live at module level in a module of their own, registered into `REGISTRY`, not the default."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from dp import TaskRegistry, task

REGISTRY = TaskRegistry()


@task(registry=REGISTRY, tags=["flow"])
def numbers(count: int) -> list[int]:
    print(f"numbers in pid {os.getpid()}")
    return list(range(count))


@task(registry=REGISTRY, tags=["flow"], dependencies=["numbers"])
def squares(numbers: list[int]) -> list[int]:
    return [n * n for n in numbers]


@task(registry=REGISTRY, tags=["flow"], dependencies=["numbers"])
async def total(numbers: list[int]) -> int:
    return sum(numbers)


@task(registry=REGISTRY, tags=["flow"], dependencies=["squares", "total"])
def summary(squares: list[int], total: int) -> str:
    return f"{sum(squares)}/{total}"


@task(registry=REGISTRY, tags=["stream"])
def pages(count: int) -> Iterator[str]:
    for i in range(count):
        yield f"page-{i}"


@task(registry=REGISTRY, tags=["stream"], dependencies=["pages"])
def shout(pages: str) -> str:
    return pages.upper()


@task(registry=REGISTRY, tags=["stream"], dependencies=["shout"])
def book(shout: list[str]) -> str:
    return " ".join(shout)


def _first_time(marker: str) -> bool:
    """True the first time it is called for `marker` (a file path), across processes."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


@task(registry=REGISTRY, tags=["crash"], max_retries=1)
def dies_once(marker: str, how: str) -> str:
    """Dies the way `how` says on its first attempt, succeeds on the second."""
    if _first_time(marker):
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "exit":
            os._exit(3)
        elif how == "segfault":
            ctypes.string_at(0)
    return "survived"


@task(registry=REGISTRY, tags=["crash-for-good"])
def always_dies() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@task(registry=REGISTRY, tags=["crash-for-good"])
def innocent_bystander(marker_dir: str) -> str:
    Path(marker_dir, f"bystander-{os.getpid()}-{time.monotonic_ns()}").touch()
    return "fine"


@task(registry=REGISTRY, tags=["hang"], timeout=0.5)
def hangs() -> None:
    time.sleep(60)


@task(registry=REGISTRY, tags=["hang"])
def quick() -> str:
    return "quick"


@task(registry=REGISTRY, tags=["unpicklable"], max_retries=2)
def returns_generator_object() -> object:
    return (x for x in range(3))


@task(registry=REGISTRY, tags=["blame"])
def innocent() -> int:
    return 1


@task(registry=REGISTRY, tags=["blame"])
def crasher() -> None:
    os._exit(7)
