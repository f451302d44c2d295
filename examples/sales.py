"""The seed's sales pipeline: extract sales, transform them with pandas, then summarise.

dp plan examples/sales.py
"""

from __future__ import annotations

import pandas as pd

from dp import task


@task(tags=["sales", "extract"])
def extract_sales() -> pd.DataFrame:
    """Read raw sales (here: a small in-memory table)."""
    return pd.DataFrame(
        {
            "region": ["north", "south", "north", "east", "south"],
            "sales": [100, 200, 150, 80, 120],
        }
    )


@task(tags=["sales", "transform"], dependencies=["extract_sales"])
def transform(extract_sales: pd.DataFrame, multiplier: float = 2.0) -> pd.DataFrame:
    """Scale sales by `multiplier` (a run parameter with a default)."""
    return extract_sales.assign(sales=extract_sales["sales"] * multiplier)


@task(tags=["sales", "report"], dependencies=["transform"])
def sales_by_region(transform: pd.DataFrame) -> dict[str, float]:
    """Total sales per region."""
    totals = transform.groupby("region")["sales"].sum()
    return {str(region): float(total) for region, total in totals.items()}
