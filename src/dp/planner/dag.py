"""The task graph: `DAGBuilder` selects tasks from a registry into a validated `DAG` of `Node`s."""

from __future__ import annotations

from collections.abc import Iterable

from dp.errors import (
    CycleError,
    ShadowedTaskError,
    TaskNotFoundError,
    UnknownTagError,
    UnselectedDependencyError,
)
from dp.tasks import TaskMetadata, TaskRegistry, get_registry

__all__ = ["DAG", "DAGBuilder", "Node"]


class Node:
    """One task in a DAG, linked to the tasks it waits for and the tasks that wait for it."""

    __slots__ = ("downstream", "metadata", "name", "upstream")

    def __init__(self, name: str, metadata: TaskMetadata) -> None:
        self.name = name
        self.metadata = metadata
        self.upstream: list[str] = []
        self.downstream: list[str] = []

    def __repr__(self) -> str:
        return f"Node({self.name!r}, upstream={self.upstream}, downstream={self.downstream})"


class DAG:
    """A directed graph of tasks. `levels()` orders it and proves it acyclic."""

    def __init__(self, nodes: dict[str, Node]) -> None:
        self.nodes = nodes
        self._levels: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def levels(self) -> list[list[str]]:
        """Tasks grouped so each group depends only on earlier ones, names sorted in a group.

        Raises:
            CycleError: with the cycle's path, when the graph has one.
        """
        if self._levels is not None:
            return self._levels
        nodes = self.nodes
        pending = {name: len(node.upstream) for name, node in nodes.items()}
        level = sorted(name for name, count in pending.items() if count == 0)
        levels: list[list[str]] = []
        placed = 0
        while level:
            levels.append(level)
            placed += len(level)
            ready: list[str] = []
            for name in level:
                for child in nodes[name].downstream:
                    count = pending[child] - 1
                    pending[child] = count
                    if count == 0:
                        ready.append(child)
            ready.sort()
            level = ready
        if placed != len(nodes):
            raise CycleError(self._find_cycle({n for n, c in pending.items() if c > 0}))
        self._levels = levels
        return levels

    def _find_cycle(self, candidates: set[str]) -> list[str]:
        """A cycle among `candidates` (the nodes Kahn's algorithm could not place)."""
        start = min(candidates)
        path: list[str] = []
        index: dict[str, int] = {}
        name = start
        # Every unplaced node has an unplaced upstream, so walking upstream must revisit a node.
        while name not in index:
            index[name] = len(path)
            path.append(name)
            name = min(u for u in self.nodes[name].upstream if u in candidates)
        cycle = path[index[name] :]
        cycle.reverse()  # walked upstream; print in execution direction
        first = cycle.index(min(cycle))
        cycle = cycle[first:] + cycle[:first]
        return [*cycle, cycle[0]]


class DAGBuilder:
    """Builds a `DAG` from the tasks of a registry, selected by tags and/or names."""

    def __init__(self, registry: TaskRegistry | None = None) -> None:
        self.registry = registry if registry is not None else get_registry()

    def build(
        self,
        *,
        tags: Iterable[str] | None = None,
        task_names: Iterable[str] | None = None,
        include_upstream: bool = True,
    ) -> DAG:
        """Select tasks (all when neither `tags` nor `task_names` is given) into a DAG.

        Selected tasks bring their upstream closure unless `include_upstream=False`, in which
        case control dependencies outside the selection are dropped and data dependencies
        outside it are an error (their result would be missing).
        """
        registry = self.registry
        tasks = registry.as_dict()
        if tags is None and task_names is None:
            selected: list[str] = list(tasks)  # everything: the upstream closure is implied
        else:
            selected = self._select(tags, task_names)
            if include_upstream:
                selected = self._with_upstream(selected)
        nodes = {name: Node(name, tasks[name]) for name in selected}
        for node in nodes.values():
            meta = node.metadata
            for dep in meta.dependencies:
                if dep not in nodes:
                    if dep not in registry:
                        raise TaskNotFoundError(dep, registry.suggest(dep), referenced_by=meta.name)
                    if dep in meta.input_schema:
                        raise UnselectedDependencyError(meta.name, dep)
                    continue
                node.upstream.append(dep)
                nodes[dep].downstream.append(node.name)
            if meta.input_schema:
                self._check_shadowed_tasks(meta, tasks)
        return DAG(nodes)

    def _select(self, tags: Iterable[str] | None, task_names: Iterable[str] | None) -> list[str]:
        registry = self.registry
        chosen: dict[str, None] = {}
        if task_names is not None:
            for name in [task_names] if isinstance(task_names, str) else task_names:
                chosen[registry.get(name).name] = None
        if tags is not None:
            tag_list = [tags] if isinstance(tags, str) else list(tags)
            matched = registry.by_tags(*tag_list)
            if not matched:
                known = sorted({t for meta in registry for t in meta.tags})
                raise UnknownTagError(tag_list, known)
            for meta in matched:
                chosen[meta.name] = None
        return list(chosen)

    def _with_upstream(self, names: list[str]) -> list[str]:
        registry = self.registry
        seen = dict.fromkeys(names)
        stack = list(names)
        while stack:
            meta = registry.get(stack.pop())
            for dep in meta.dependencies:
                if dep not in seen:
                    if dep not in registry:
                        raise TaskNotFoundError(dep, registry.suggest(dep), referenced_by=meta.name)
                    seen[dep] = None
                    stack.append(dep)
        return list(seen)

    @staticmethod
    def _check_shadowed_tasks(meta: TaskMetadata, tasks: dict[str, TaskMetadata]) -> None:
        """A parameter named like a task that is not a dependency is almost always a mistake."""
        for param in meta.input_schema:
            if param not in meta.dependencies and param in tasks:
                raise ShadowedTaskError(meta.name, param)
