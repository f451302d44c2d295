"""Processes a task forked end with its attempt.

A task may start a subprocess and return (or fail, or time out) without waiting for it; left
alone such children outlive their attempt, and their run, holding files, ports and memory.
So when an attempt ends, its worker kills what the attempt forked, children and their own
descendants, with SIGKILL, and reaps them.

What can be told apart, on Linux (elsewhere nothing is done):
- Children of the thread that ran the attempt (`/proc/self/task/TID/children`): every
  executor runs an attempt on one thread (inline: the caller's; in-process: a pool thread;
  process and Celery: the worker's main thread), so tasks running at once on other threads
  keep theirs.
- A worker process (process executor) is also a child subreaper and leads its own process
  group: a grandchild whose parent exited (a double fork) is handed to the worker rather than
  to init, so it is found too; and when the worker itself dies or is killed on a timeout,
  its orchestrator kills the worker's process group, so what it forked goes with it.
- Under the in-process and inline executors, a grandchild whose parent already exited is
  reparented to init and cannot be attributed to the attempt any more: it is not killed.

What is watched: forks made through Python (`subprocess`, `os.fork`, `os.posix_spawn`,
`os.system`, `pty.spawn`: the audit events `sys.addaudithook` sees), on the attempt's thread
(in a worker process: on any thread). An attempt that forked nothing costs a few attribute
writes, nothing else; the first fork of an attempt takes a note of the thread's children
that existed before it, so only what the attempt forked is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading

__all__ = [
    "attempt_ended",
    "attempt_started",
    "become_subreaper",
    "forks",
    "kill_attempt_children",
    "kill_group",
]

_LINUX = sys.platform.startswith("linux")
_PR_SET_CHILD_SUBREAPER = 36
_WAITID = getattr(os, "waitid", None)
_FLAGS = (
    os.WEXITED | os.WNOHANG | os.WNOWAIT if _WAITID is not None and hasattr(os, "WNOWAIT") else 0
)


def _has_children() -> bool:
    """Whether this process has any child, live or not yet reaped (reaps nothing)."""
    if _WAITID is None or not _FLAGS:
        return False
    try:
        _WAITID(os.P_ALL, 0, _FLAGS)
    except ChildProcessError:
        return False
    except OSError:
        return True  # cannot tell: look
    return True


def _children_of(pid: int, tid: int | None = None) -> list[int]:
    """The children of process `pid` (of its thread `tid` only, when given)."""
    tids = [tid] if tid is not None else _threads_of(pid)
    found: list[int] = []
    for thread in tids:
        try:
            with open(f"/proc/{pid}/task/{thread}/children", "rb") as file:
                found += [int(child) for child in file.read().split()]
        except (OSError, ValueError):
            continue
    return found


def _threads_of(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        return []


def _tree(roots: list[int]) -> list[int]:
    """`roots` and all their descendants, parents first."""
    seen: list[int] = []
    pending = list(roots)
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.append(pid)
        pending += _children_of(pid)
    return seen


#: the audit events of Python's ways to start a process
_FORK_EVENTS = frozenset(
    {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen",
     "pty.spawn"}
)  # fmt: skip


class _Watch(threading.local):
    """Per thread: whether an attempt runs on it, and its children from before the
    attempt's first fork (None: it forked nothing yet)."""

    active = False
    before: frozenset[int] | None = None


_watch = _Watch()
#: forks made through Python in this process so far (a worker compares it across an attempt)
_forks = [0]


def forks() -> int:
    """How many forks this process made through Python so far."""
    return _forks[0]


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event in _FORK_EVENTS:
        _forks[0] += 1
        watch = _watch
        if watch.active and watch.before is None:
            watch.before = thread_children()  # before the fork: what is not the attempt's


if _LINUX:
    sys.addaudithook(_audit)


def attempt_started() -> None:
    """An attempt starts on this thread: watch what it forks."""
    watch = _watch
    watch.active = True
    watch.before = None


def attempt_ended() -> None:
    """The attempt on this thread ended: kill what it forked, if it forked anything."""
    watch = _watch
    watch.active = False
    before = watch.before
    if before is not None:
        watch.before = None
        kill_attempt_children(before)


def thread_children() -> frozenset[int]:
    """The live children of the calling thread, taken before an attempt so that only what
    the attempt forks is killed after it (the caller's thread may have children of its own,
    e.g. the main thread of an application using the inline executor). Empty, at the cost
    of one system call, when the process has no children at all."""
    if not _LINUX or not _has_children():
        return frozenset()
    return frozenset(_children_of(os.getpid(), threading.get_native_id()))


def kill_attempt_children(
    before: frozenset[int] = frozenset(), *, whole_process: bool = False
) -> int:
    """SIGKILL and reap what the calling thread forked since `thread_children()` gave
    `before` (with `whole_process`: what any thread of this process forked, for a worker
    process between attempts). Returns how many processes were killed; never raises."""
    if not _LINUX or not _has_children():
        return 0
    try:
        me = os.getpid()
        if whole_process:
            roots = _children_of(me)
        else:
            mine = _children_of(me, threading.get_native_id())
            roots = [pid for pid in mine if pid not in before]
        if not roots:
            return 0
        victims = _tree(roots)
        for pid in victims:  # stop them all first: none can fork a replacement meanwhile
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in roots:  # our own children: reap them (grandchildren are their parents')
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
        if whole_process:  # orphans handed to this subreaper, now zombies: reap those too
            with contextlib.suppress(OSError):
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
        return len(victims)
    except Exception:  # best effort: never let cleanup fail an attempt or a worker
        return 0


def become_subreaper() -> bool:
    """Make this process (a worker) the reaper of its orphaned descendants and the leader
    of a process group of its own. Linux only; False where it could not be done."""
    if not _LINUX:
        return False
    try:
        os.setpgid(0, 0)
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def kill_group(pgid: int) -> None:
    """SIGKILL the process group `pgid` (a dead or killed worker's), if any is left."""
    if pgid <= 0 or not hasattr(os, "killpg"):
        return
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)
