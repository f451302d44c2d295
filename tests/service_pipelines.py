"""Tasks and pipelines for the HTTP API tests, in registries of their own (not the defaults).

`GATE` holds the `hold` task until a test opens it, so a test keeps a run running for as
long as it needs (to cancel it, or to fill the run slots) without sleeping.
"""

from __future__ import annotations

import threading

from dp import OnEvent, TaskRegistry, pipeline, task
from dp.pipelines import PipelineRegistry

TASKS = TaskRegistry()
PIPELINES = PipelineRegistry()
GATE = threading.Event()
#: the longest `hold` waits for the gate, so a gate left shut never hangs the suite
HOLD_LIMIT = 30.0


@task(registry=TASKS, tags=["hello"])
def greet(name: str = "world") -> str:
    print(f"hello {name}")
    return f"hello {name}"


@task(registry=TASKS)
def noop() -> None:
    return None


@task(registry=TASKS)
def extract() -> list[int]:
    return [1, 2, 3]


@task(registry=TASKS)
def load(run_id: str) -> str:
    """Loads what extract run `run_id` produced: the chaining event's payload names it."""
    return run_id


@task(registry=TASKS)
def score_order(order_id: str, amount: float = 0.0) -> float:
    return amount * 2


@task(registry=TASKS)
def hold() -> None:
    if not GATE.wait(HOLD_LIMIT):
        raise TimeoutError("nobody opened the gate")


pipeline(
    "hello", tags=["hello"], description="Greets someone.", registry=TASKS, pipelines=PIPELINES
)
pipeline("noop", tasks=["noop"], registry=TASKS, pipelines=PIPELINES)
pipeline("extract", tasks=["extract"], cron="0 3 * * *", registry=TASKS, pipelines=PIPELINES)
pipeline(
    "load",
    tasks=["load"],
    on=OnEvent("dp.run.succeeded", where={"pipeline": "extract"}),
    registry=TASKS,
    pipelines=PIPELINES,
)
pipeline(
    "orders",
    tasks=["score_order"],
    on="sales.orders.created",
    api=False,
    registry=TASKS,
    pipelines=PIPELINES,
)
pipeline("hold", tasks=["hold"], registry=TASKS, pipelines=PIPELINES)
