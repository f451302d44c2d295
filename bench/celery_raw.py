"""The raw Celery baseline of bench_celery: one no-op task on a plain Celery app, the broker
and result backend taken from `DP_BENCH_RAW_BROKER` (a Redis URL). Its workers run as
`celery -A bench.celery_raw worker -c 1`."""

from __future__ import annotations

import os

from celery import Celery

BROKER = os.environ.get("DP_BENCH_RAW_BROKER", "redis://127.0.0.1:6379/1")

app = Celery("dp_bench_raw", broker=BROKER, backend=BROKER)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=4,
    task_acks_late=True,  # as dp's workers do: a killed worker's task is delivered again
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop(*args: object) -> int:
    """The no-op task (takes whatever it is given, as `bench.workloads.noop`)."""
    return 1
