"""`import dp` and a first `dp run`, each in a fresh interpreter beside `python -c pass`.

Each figure is the median wall time of many fresh processes, dp and the baseline
alternating, so a noisy moment of the machine hits both alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

from bench._harness import Report, alternate

SECTION = "import time (fresh interpreter, wall time)"
ROUNDS = 21

_FIRST_RUN = textwrap.dedent(
    """
    import sys
    from dp import Orchestrator, TaskRegistry, DAGBuilder, Planner, task
    from dp.io import FilesystemIOManager
    registry = TaskRegistry()

    @task(registry=registry)
    def hello() -> int:
        return 1

    plan = Planner(DAGBuilder(registry)).create_execution_plan()
    result = Orchestrator(io_manager=FilesystemIOManager(sys.argv[1])).run(plan)
    assert result.ok, result
    """
)


def _python(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True, env={**os.environ, "PYTHONWARNINGS": ""})


def run(report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix="dp-bench-import-") as tmp:
        times = alternate(
            {
                "pass": lambda: _python("-c", "pass"),
                "import": lambda: _python("-c", "import dp"),
                "first run": lambda: _python("-c", _FIRST_RUN, tmp),
            },
            ROUNDS,
        )
    base = times["pass"] * 1e3
    report.add(
        SECTION,
        "import dp",
        times["import"] * 1e3,
        "ms",
        baseline_name="python -c pass",
        baseline=base,
        target="<= 60 ms more than python -c pass",
        higher_is_better=False,
    )
    report.add(
        SECTION,
        "import dp, plan and run one task (in-process, results on disk)",
        times["first run"] * 1e3,
        "ms",
        baseline_name="python -c pass",
        baseline=base,
        target="not slower than before",
        higher_is_better=False,
    )
