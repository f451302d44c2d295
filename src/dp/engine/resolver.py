"""`TaskDependencyResolver`: which tasks of one run may start now.

Bookkeeping is O(1) per finished task, like `graphlib.TopologicalSorter.done()`: each task
counts its unfinished *gates* (value, control and collect edges); a finished task decrements
its dependents' counters and queues those that reach zero. Streams add one twist: a task
mapped over a stream gets one instance per chunk, started as soon as the chunk is saved, and
is finished when the stream is finished and all its instances are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from dp.engine.model import OUTPUT, ExecutableTask, Input, mapped_result_id
from dp.planner import ExecutionPlan
from dp.store.records import TaskStatus
from dp.tasks import SCHEDULED_FOR, TaskMetadata

__all__ = ["PlanIndex", "TaskDependencyResolver"]

_PENDING, _ACTIVE, _DONE, _FAILED, _SKIPPED, _CANCELLED = range(6)
_STATUS = {
    _PENDING: TaskStatus.PENDING,
    _ACTIVE: TaskStatus.RUNNING,
    _DONE: TaskStatus.SUCCEEDED,
    _FAILED: TaskStatus.FAILED,
    _SKIPPED: TaskStatus.SKIPPED,
    _CANCELLED: TaskStatus.CANCELLED,
}


class TaskDependencyResolver:
    """Turns finished tasks into newly ready `ExecutableTask`s for one run.

    Call `succeeded`, `chunk` and `failed` as outcomes arrive, then take work from `ready`.
    """

    def __init__(
        self,
        plan: ExecutionPlan,
        run_id: str,
        params: Mapping[str, Any] | None = None,
        *,
        index: PlanIndex | None = None,
    ) -> None:
        self.plan = plan
        self.run_id = run_id
        self.ready: deque[ExecutableTask] = deque()
        #: set when a task that is not fail_safe failed: nothing new may start
        self.halted = False
        if index is None:  # the orchestrator passes the one it keeps for all runs of the plan
            index = PlanIndex(plan)
        self._meta = index.meta
        self._gate_children = index.gate_children
        self._chunk_children = index.chunk_children
        self._data_children = index.data_children
        self._inputs = index.inputs
        self._source = index.source
        self._chain_child = index.chain_child
        self._state = dict.fromkeys(index.meta, _PENDING)
        self._gates = dict(index.gates)
        self._result: dict[str, str] = {}  # single-result task -> result id
        self._stream: dict[str, list[str]] = {name: [] for name in index.streaming}
        #: streaming task -> result id -> sort key (position in the stream)
        self._rank: dict[str, dict[str, tuple[int, ...]]] = {n: {} for n in index.streaming}
        self._instance_chunks: dict[str, dict[str, int]] = {n: {} for n in index.source}
        self._waiting_chunks: dict[str, list[str]] = {name: [] for name in index.source}
        self._open_instances = dict.fromkeys(index.source, 0)
        params = params or {}
        no_params: dict[str, Any] = {}
        self._params = {
            name: {p: params[p] for p in names if p in params} if names else no_params
            for name, names in index.param_names.items()
        }

    # --- queries --------------------------------------------------------------------------

    def status(self, name: str) -> TaskStatus:
        return _STATUS[self._state[name]]

    def statuses(self) -> dict[str, TaskStatus]:
        return {name: _STATUS[state] for name, state in self._state.items()}

    def stream_of(self, name: str) -> list[str]:
        """Result ids a streaming task has produced so far, in stream order."""
        produced = self._stream.get(name, [])
        if name in self._source:  # mapped: instances finish in any order
            rank = self._rank[name]
            return sorted(produced, key=rank.__getitem__)
        return list(produced)

    def successor(self, name: str, result_ids: list[str]) -> ExecutableTask | None:
        """The one task that `name` succeeding with `result_ids` alone makes ready, built
        without changing any state, or None when there is no such task or it is not pending.

        Safe to call from another thread: it only reads. `succeeded` will queue the same task
        in `ready` later (the caller takes it out again, see `ActiveRun.on_done`).
        """
        child = self._chain_child.get(name)
        if child is None or self.halted or self._state[child] != _PENDING:
            return None
        result_id = result_ids[0] if result_ids else OUTPUT
        inputs: dict[str, Input] = {p: (name, result_id) for p, _, _ in self._inputs[child]}
        return ExecutableTask(
            self.run_id, child, OUTPUT, self._meta[child], inputs, self._params[child]
        )

    # --- transitions ----------------------------------------------------------------------

    def start(self) -> None:
        """Queue every task with nothing to wait for."""
        for name in self.plan.execution_order:
            if self._gates[name] == 0 and self._state[name] == _PENDING:
                self._gate_opened(name)

    def chunk(self, name: str, result_id: str, instance: str = "") -> None:
        """A streaming task (or a mapped instance that yields) saved one more chunk.

        `instance` is the input chunk of a mapped task's instance: items of a mapped task
        keep the order of the stream they were mapped over, whatever order they finish in.
        """
        if self._state[name] not in (_ACTIVE, _PENDING):
            return  # a late chunk of a task already failed or skipped
        rank = self._rank[name]
        if result_id in rank:
            return  # a retried stream yields its chunks again: each was handed on once
        self._stream[name].append(result_id)
        if instance:
            source = self._source[name][1]
            per_instance = self._instance_chunks[name]
            index = per_instance.get(instance, 0)
            per_instance[instance] = index + 1
            rank[result_id] = (*self._rank[source][instance], index)
        else:
            rank[result_id] = (len(rank),)
        for child in self._chunk_children[name]:
            state = self._state[child]
            if state == _ACTIVE:
                self._start_instance(child, result_id)
            elif state == _PENDING:
                self._waiting_chunks[child].append(result_id)

    def succeeded(self, name: str, instance: str, result_ids: list[str]) -> None:
        """An attempt finished well; its results are saved under `result_ids`."""
        if self._state[name] != _ACTIVE:
            return  # e.g. another instance of this mapped task failed fail-safe meanwhile
        meta = self._meta[name]
        if name in self._source:
            if not meta.stream_output:  # one result per instance: it is the next stream item
                self.chunk(name, result_ids[0], instance)
            self._open_instances[name] -= 1
            self._close_if_complete(name)
        elif meta.stream_output:
            if not self._stream[name] and result_ids:  # chunks not reported one by one
                for rid in result_ids:
                    self.chunk(name, rid)
            self._finish(name)
        else:
            self._result[name] = result_ids[0] if result_ids else OUTPUT
            self._finish(name)

    def failed(self, name: str) -> None:
        """An attempt failed for good (no retries left)."""
        if self._state[name] != _ACTIVE:
            return
        self._state[name] = _FAILED
        if not self._meta[name].fail_safe:
            self.halted = True
            self.ready.clear()
            return
        data_children = self._data_children[name]
        for child in self._gate_children[name]:
            if child in data_children:
                self._skip(child)
            else:
                self._release(child)  # a control dependent only needed the order
        for child in self._chunk_children[name]:
            self._skip(child)

    def halt(self) -> None:
        """Start nothing more (the run is failing for a reason outside any task)."""
        self.halted = True
        self.ready.clear()

    def cancel_pending(self) -> list[str]:
        """Mark every task that never started as cancelled (the run is stopping)."""
        self.ready.clear()
        cancelled = [n for n, state in self._state.items() if state == _PENDING]
        for name in cancelled:
            self._state[name] = _CANCELLED
        return cancelled

    def unfinished(self) -> list[str]:
        return [n for n, s in self._state.items() if s in (_PENDING, _ACTIVE)]

    # --- internals ------------------------------------------------------------------------

    def _finish(self, name: str) -> None:
        state, gates = self._state, self._gates
        state[name] = _DONE
        for child in self._gate_children[name]:  # `_release`, written out: once per edge
            left = gates[child] - 1
            gates[child] = left
            if left == 0 and state[child] == _PENDING:
                self._gate_opened(child)
        for child in self._chunk_children[name]:
            self._close_if_complete(child)

    def _release(self, child: str) -> None:
        gates = self._gates[child] - 1
        self._gates[child] = gates
        if gates == 0 and self._state[child] == _PENDING:
            self._gate_opened(child)

    def _gate_opened(self, name: str) -> None:
        if self.halted:
            return
        self._state[name] = _ACTIVE
        if name not in self._source:
            self.ready.append(self._task(name, OUTPUT, ""))
            return
        waiting = self._waiting_chunks[name]
        self._waiting_chunks[name] = []
        for result_id in waiting:
            self._start_instance(name, result_id)
        self._close_if_complete(name)

    def _start_instance(self, name: str, chunk_id: str) -> None:
        if self.halted:
            return
        self._open_instances[name] += 1
        task = self._task(name, mapped_result_id(chunk_id), chunk_id)
        parameter, stream = self._source[name]
        task.inputs[parameter] = (stream, chunk_id)
        self.ready.append(task)

    def _close_if_complete(self, name: str) -> None:
        """A mapped task is done when its stream is done and every instance has finished."""
        if (
            self._state[name] == _ACTIVE
            and self._open_instances[name] == 0
            and self._state[self._source[name][1]] == _DONE
        ):
            self._finish(name)

    def _skip(self, name: str) -> None:
        """Skip `name` and everything downstream of it (iteratively: chains can be long)."""
        stack = [name]
        while stack:
            current = stack.pop()
            if self._state[current] not in (_PENDING, _ACTIVE):
                continue
            self._state[current] = _SKIPPED
            stack.extend(self._gate_children[current])
            stack.extend(self._chunk_children[current])

    def _task(self, name: str, result_id: str, instance: str) -> ExecutableTask:
        inputs: dict[str, Input] = {}
        for parameter, upstream, mode in self._inputs[name]:
            if mode == "collect":
                inputs[parameter] = (upstream, tuple(self.stream_of(upstream)))
            else:
                inputs[parameter] = (upstream, self._result[upstream])
        return ExecutableTask(
            self.run_id,
            name,
            result_id,
            self._meta[name],
            inputs,
            self._params[name],
            0,
            instance,
        )


class PlanIndex:
    """The static part of a resolver's state, computed once per plan and shared by runs."""

    def __init__(self, plan: ExecutionPlan) -> None:
        tasks = plan.tasks
        self.meta: dict[str, TaskMetadata] = tasks
        self.gates = dict.fromkeys(tasks, 0)
        self.gate_children: dict[str, list[str]] = {name: [] for name in tasks}
        self.chunk_children: dict[str, list[str]] = {name: [] for name in tasks}
        self.data_children: dict[str, set[str]] = {name: set() for name in tasks}
        self.inputs: dict[str, list[tuple[str, str, str]]] = {name: [] for name in tasks}
        self.source: dict[str, tuple[str, str]] = {}  # mapped task -> (parameter, stream)
        #: how many loads each task's results get in a run: one per data edge out of it
        self.consumers: dict[str, int] = {}
        for edge in plan.edges:
            up, down = edge.upstream, edge.downstream
            if edge.mode == "chunk":
                self.chunk_children[up].append(down)
                self.source[down] = (edge.parameter or up, up)
            else:
                self.gates[down] += 1
                self.gate_children[up].append(down)
            if edge.kind == "data":
                self.consumers[up] = self.consumers.get(up, 0) + 1
                self.data_children[up].add(down)
                if edge.mode != "chunk":
                    self.inputs[down].append((edge.parameter or up, up, edge.mode))
        self.streaming = plan.streaming_tasks
        #: task -> the one task it alone gates, when a thread may run that one right after
        #: it (a link of a chain: one result, no stream, no mapping, no timeout, not async)
        self.chain_child: dict[str, str] = {}
        for name, meta in tasks.items():
            children = self.gate_children[name]
            if len(children) != 1 or self.chunk_children[name] or name in self.source:
                continue
            child = children[0]
            if _special(meta):
                continue
            if self.gates[child] == 1 and child not in self.source and not _special(tasks[child]):
                self.chain_child[name] = child
        #: each task's key in a run's results, built once: a run keeps one per task until it
        #: ends, and a tuple fewer per task alive keeps the garbage collector out of most runs
        self.keys: dict[str, tuple[str, str]] = {name: (name, "") for name in tasks}
        #: each task's place in the plan's execution order (the order of a run's results)
        self.rank: dict[str, int] = {name: i for i, name in enumerate(plan.execution_order)}
        self.param_names = {
            name: (
                tuple(p.name for p in meta.run_parameters)
                + ((SCHEDULED_FOR,) if meta.wants_scheduled_for else ())
            )
            if meta.input_schema
            else ()
            for name, meta in tasks.items()
        }
        #: whether a task takes `scheduled_for` (then the run's params carry it)
        self.wants_scheduled_for = any(SCHEDULED_FOR in n for n in self.param_names.values())


def _special(meta: TaskMetadata) -> bool:
    """Whether a task needs the event loop around it: async, streaming, or timed."""
    return meta.is_async or meta.stream_output or meta.timeout is not None
