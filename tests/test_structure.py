"""The code's shape: no import circles, no dp import deferred into a function without a reason,
and the wiring (`dp.config`) and the CLI imported by nobody below them.

Imports are read from the source (ast), deferred ones included: a circle hidden by an import
inside a function or under TYPE_CHECKING is still a circle.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dp

SRC = Path(dp.__file__).parent
#: circles not fixed yet, with why (the Kafka broker was being rewritten on another branch)
KNOWN_CIRCLES = [{"dp.events.kafka", "dp.events.kafka_reader"}]
#: dp imports left inside functions: each names an extra that may not be installed, or a
#: measured import cost (a comment at each says which)
DEFERRED = {
    ("dp.config", "dp.engine.celery_executor"),  # Celery modules, ~30 ms
    ("dp.config", "dp.io.s3"),  # boto3, dp[s3]
    ("dp.config", "dp.store.sql"),  # SQLAlchemy, ~130 ms
    ("dp.engine.orchestrator", "dp.engine.process"),  # worker processes
    ("dp.engine.orchestrator", "dp.store"),  # SQLAlchemy, ~130 ms
    ("dp.store", "dp.store.sql"),  # SQLAlchemy, ~130 ms
    ("dp.cli.main", "dp.service.server"),  # FastAPI, uvicorn, ~170 ms
    ("dp.cli.worker", "dp.engine.celery_beat"),  # celery, redis-py: dp[celery]
    ("dp.cli.worker", "dp.engine.celery_worker"),
    ("dp.cli.events", "dp.events.kafka"),  # aiokafka: dp[kafka]
    ("dp.cli.events", "dp.events.redis"),  # redis-py: dp[redis]
    ("dp.events.kafka", "dp.events.kafka_reader"),  # the known circle above
    ("dp.settings", "dp.events.kafka_options"),  # a URL parser; dp.events would load the buses
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _target(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> Iterator[tuple[str, bool]]:
    """Each dp module `module` imports, and whether the import is inside a function."""
    path = MODULES[module]

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = module.split(".")
                    if path.name != "__init__.py":
                        package.pop()
                    package = package[: len(package) - child.level + 1]
                    base = ".".join([*package, base] if base else package)
                names = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                    for a in child.names
                ]
            for name in names:
                target = _target(name) if name.startswith("dp") else None
                if target is not None and target != module:
                    yield target, inner
            yield from walk(child, inner)

    yield from walk(ast.parse(path.read_text()), False)


GRAPH = {module: set(_imports(module)) for module in MODULES}


def _circles() -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    edges = {m: {t for t, _ in targets} for m, targets in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def test_no_import_circles_but_the_known_one() -> None:
    assert sorted(map(sorted, _circles())) == sorted(map(sorted, KNOWN_CIRCLES))


def test_the_checker_finds_a_circle_hidden_in_a_function() -> None:
    """The kafka circle is hidden the same way (imports inside methods): it is seen."""
    assert ("dp.events.kafka_reader", True) in GRAPH["dp.events.kafka"]


def test_no_dp_import_inside_a_function_without_a_reason() -> None:
    deferred = {(m, t) for m, targets in GRAPH.items() for t, inner in targets if inner}
    assert deferred <= DEFERRED, sorted(deferred - DEFERRED)


def test_nothing_below_the_top_floor_imports_the_wiring_or_the_cli() -> None:
    top = ("dp.cli", "dp.config", "dp.service.server")
    for module, targets in GRAPH.items():
        if module.startswith(top):
            continue
        for target, _ in targets:
            assert not target.startswith(("dp.cli", "dp.config")), f"{module} imports {target}"


def test_the_settings_import_no_backend() -> None:
    """Reading the settings (`dp config`, a worker's start) loads no engine, store or bus."""
    code = "import json, sys, dp.settings; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert not [m for m in loaded if m.startswith(("dp.engine", "dp.store", "dp.events"))]
