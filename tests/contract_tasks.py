"""Tasks for the executor contract suite (tests/test_executor_contract.py).

Worker processes and Celery workers import them by module path, so they live at module level,
registered into `REGISTRY`. Each test passes a fresh `key` run parameter; side effects are
files named after it in `DP_CONTRACT_DIR`, which every process (the test's and the workers')
can see, so the tests count executions and hand signals across processes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

from dp import TaskRegistry, task

REGISTRY = TaskRegistry()
#: how long a task waits for a signal before it gives up (a test that fails should not hang)
PATIENCE = 20.0


def here() -> Path:
    return Path(os.environ["DP_CONTRACT_DIR"])


def effect(key: str, name: str) -> int:
    """Record one execution of `name` in the run keyed `key`; how many there were so far."""
    with (here() / f"{key}.effects").open("a") as log:
        log.write(name + "\n")
    return effects(key, name)


def effects(key: str, name: str) -> int:
    path = here() / f"{key}.effects"
    return path.read_text().split().count(name) if path.exists() else 0


def signal(key: str, name: str) -> None:
    (here() / f"{key}.{name}").touch()


def signalled(key: str, name: str) -> bool:
    return (here() / f"{key}.{name}").exists()


@task(registry=REGISTRY)
def root(key: str) -> int:
    effect(key, "root")
    return 1


@task(registry=REGISTRY, dependencies=["root"])
def left(root: int) -> int:
    return root + 1


@task(registry=REGISTRY, dependencies=["root"])
def right(root: int) -> int:
    return root + 2


@task(registry=REGISTRY, dependencies=["left", "right"])
def join(left: int, right: int) -> int:
    return left * right


@task(registry=REGISTRY)
def produce(key: str) -> Iterator[int]:
    yield 0
    # chunk 1 only once chunk 0 was consumed: per-chunk tasks run while the producer runs
    deadline = time.monotonic() + PATIENCE
    while not signalled(key, "consumed-0"):
        if time.monotonic() > deadline:
            raise TimeoutError("chunk 0 was not consumed while the producer ran")
        time.sleep(0.01)
    yield 1
    yield 2


@task(registry=REGISTRY, dependencies=["produce"])
def consume(produce: int, key: str) -> int:
    signal(key, f"consumed-{produce}")
    return produce * 10


@task(registry=REGISTRY, max_retries=2)
def flaky(key: str) -> str:
    if effect(key, "flaky") < 3:
        raise RuntimeError("not yet")
    return "third time"


@task(registry=REGISTRY, timeout=1)
def stuck(key: str) -> None:
    effect(key, "stuck")
    deadline = time.monotonic() + PATIENCE / 2  # bounded, for executors that cannot kill it
    while time.monotonic() < deadline:
        time.sleep(0.05)
    effect(key, "stuck-finished")


@task(registry=REGISTRY, fail_safe=True)
def fragile(key: str) -> int:
    raise ValueError("bad row")


@task(registry=REGISTRY, dependencies=["fragile"])
def after_fragile(fragile: int) -> int:
    return fragile


@task(registry=REGISTRY)
def sturdy(key: str) -> str:
    return "fine"


@task(registry=REGISTRY)
def first(key: str) -> int:
    effect(key, "first")
    return 1


@task(registry=REGISTRY, dependencies=["first"])
async def gate(first: int, key: str) -> int:
    """Waits (async, so even the inline executor can be cancelled) until `release`."""
    effect(key, "gate")
    deadline = time.monotonic() + PATIENCE
    while not signalled(key, "release"):
        if time.monotonic() > deadline:
            raise TimeoutError("gate was never released")
        await asyncio.sleep(0.02)
    return first + 1


@task(registry=REGISTRY, dependencies=["gate"])
def last(gate: int, key: str) -> int:
    effect(key, "last")
    return gate * 10
