"""The event-driven flow on the embedded defaults: cron and HTTP start `extract`, its success
starts `transform`, and an outside event starts `score_order` with its payload as parameters.

    dp serve examples/event_driven.py

    # start extract now (cron would at minute 0); transform follows on dp.run.succeeded
    curl -X POST localhost:8080/pipelines/extract/runs -H 'Content-Type: application/json' -d '{}'
    curl 'localhost:8080/runs?pipeline=transform'

    # an order arrives from another system: its payload becomes the run parameters
    curl -X POST localhost:8080/events -H 'Content-Type: application/json' \\
         -d '{"topic": "sales.orders.created", "payload": {"order_id": "A-1", "amount": 120}}'
"""

from __future__ import annotations

import os
from typing import Any

from dp import OnEvent, config, pipeline, task


@task(tags=["extract"])
def extract_orders() -> list[dict[str, Any]]:
    """Fetch new orders (here: a fixed batch)."""
    return [
        {"order_id": "A-1", "region": "north", "amount": 120.0},
        {"order_id": "A-2", "region": "south", "amount": 80.0},
        {"order_id": "A-3", "region": "north", "amount": 45.5},
    ]


@task(tags=["transform"])
def totals_by_region(run_id: str) -> dict[str, float]:
    """Sum the orders extract run `run_id` stored (the `dp.run.succeeded` event names it).

    The results are read where dp's configuration puts them (`DP_RESULTS_URL`, `dp.toml`,
    else `$DP_HOME/results`), as `dp serve` and `dp worker` store them: a directory, or an
    S3 bucket. (With `memory://` results each process has its own, and this finds nothing.)
    """
    settings = config.resolve(home=os.environ.get("DP_HOME", ".dp"))
    results = config.open_results(settings)
    totals: dict[str, float] = {}
    for order in results.load(run_id, "extract_orders", "output"):
        totals[order["region"]] = totals.get(order["region"], 0.0) + order["amount"]
    print(f"totals of extract run {run_id}: {totals}")
    return totals


@task(tags=["orders"])
def score_order(order_id: str, amount: float) -> str:
    """Score one incoming order."""
    score = "large" if amount >= 100 else "small"
    print(f"order {order_id}: {score}")
    return score


pipeline("extract", tags=["extract"], cron="0 * * * *", description="Hourly, and over HTTP.")
pipeline(
    "transform",
    tags=["transform"],
    on=OnEvent("dp.run.succeeded", where={"pipeline": "extract"}),
    api=False,
    description="After each successful extract run.",
)
pipeline("score_order", tags=["orders"], on="sales.orders.created", max_concurrent_runs=4)
