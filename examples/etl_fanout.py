"""An ETL with a fan-out: one extract feeds three independent transforms, joined at the end.

`batch_date` is a required run parameter: `dp plan` lists it.

    dp plan examples/etl_fanout.py
"""

from __future__ import annotations

from collections.abc import Iterator

from dp import task

Order = dict[str, int | str]


@task(tags=["etl"])
def extract_orders(batch_date: str) -> list[Order]:
    """Pretend to read one day of orders."""
    return [
        {"id": i, "customer": f"c{i % 3}", "amount": 10 * i, "date": batch_date}
        for i in range(1, 10)
    ]


@task(tags=["etl"], dependencies=["extract_orders"])
def revenue(extract_orders: list[Order]) -> int:
    return sum(int(o["amount"]) for o in extract_orders)


@task(tags=["etl"], dependencies=["extract_orders"])
def customers(extract_orders: list[Order]) -> set[str]:
    return {str(o["customer"]) for o in extract_orders}


@task(tags=["etl"], dependencies=["extract_orders"])
def order_batches(extract_orders: list[Order]) -> Iterator[list[Order]]:
    """Stream the orders in batches of 4: each batch is saved as its own result."""
    for start in range(0, len(extract_orders), 4):
        yield extract_orders[start : start + 4]


@task(tags=["etl"], dependencies=["order_batches"])
def batch_size(order_batches: list[Order]) -> int:
    """Runs once per batch: the parameter type is the chunk type."""
    return len(order_batches)


@task(tags=["etl"], dependencies=["revenue", "customers", "batch_size"], max_retries=2)
def report(revenue: int, customers: set[str], batch_size: list[int]) -> str:
    """Joins the branches; `batch_size: list[int]` collects every per-batch result."""
    return f"{len(customers)} customers, revenue {revenue}, batches {batch_size}"
