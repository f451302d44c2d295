"""Tiny benchmark harness: medians of repeated runs, each figure beside a same-run baseline."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table


def measure(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds of `fn()` over `repeat` runs, after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternate(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each variant, after one warm-up each, running the variants in turn
    every round, so a noisy moment of the machine hits dp and its baseline alike."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(measure(fn, repeat=1, warmup=0))
    return {name: statistics.median(t) for name, t in times.items()}


@dataclass
class Row:
    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float | None
    target: str
    higher_is_better: bool

    @property
    def ratio(self) -> str:
        if not self.baseline:
            return "-"
        return f"{self.value / self.baseline:.2f}x"


class Report:
    """Collects rows and prints them as one table per section."""

    def __init__(self) -> None:
        self.console = Console(width=None if Console().is_terminal else 140)
        self.rows: list[tuple[str, Row]] = []

    def add(
        self,
        section: str,
        name: str,
        value: float,
        unit: str,
        *,
        baseline_name: str = "",
        baseline: float | None = None,
        target: str = "",
        higher_is_better: bool = True,
    ) -> None:
        row = Row(name, value, unit, baseline_name, baseline, target, higher_is_better)
        self.rows.append((section, row))
        base = f"{_fmt(baseline)} {unit} ({baseline_name})" if baseline is not None else ""
        self.console.print(
            f"[dim]{section}[/] {name}: [bold]{_fmt(value)}[/] {unit}  {base}  ratio {row.ratio}"
        )

    def print(self) -> None:
        sections: dict[str, list[Row]] = {}
        for section, row in self.rows:
            sections.setdefault(section, []).append(row)
        for section, rows in sections.items():
            table = Table(title=section, title_justify="left")
            for col in ("figure", "dp", "baseline", "dp / baseline", "target"):
                table.add_column(col, justify="left" if col == "figure" else "right")
            for r in rows:
                base = (
                    "" if r.baseline is None else f"{_fmt(r.baseline)} {r.unit} ({r.baseline_name})"
                )
                table.add_row(r.name, f"{_fmt(r.value)} {r.unit}", base, r.ratio, r.target)
            self.console.print(table)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"
