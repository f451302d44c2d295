"""Run every `bench/bench_*.py` module (or the ones named on the command line)."""

from __future__ import annotations

import importlib
import pkgutil
import platform
import sys

import bench
from bench._harness import Report


def main(argv: list[str]) -> None:
    names = sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_")
    )
    wanted = [n if n.startswith("bench_") else f"bench_{n}" for n in argv] or names
    report = Report()
    report.console.print(
        f"[bold]dp benchmarks[/] on {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()}"
    )
    for name in wanted:
        module = importlib.import_module(f"bench.{name}")
        report.console.rule(name)
        module.run(report)
    report.print()


if __name__ == "__main__":
    main(sys.argv[1:])
