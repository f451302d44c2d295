"""The statuses live in one module, and the dashboard spells the same sets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import dp.statuses
from dp.statuses import FINISHED_RUN, FINISHED_TASK, LIVE_RUN, LIVE_TASK, RunStatus, TaskStatus
from dp.store import records

STATIC = Path(dp.__file__).parent / "service" / "dashboard" / "static"


def _js_array(name: str) -> list[str]:
    text = (STATIC / "statuses.js").read_text()
    match = re.search(rf"export const {name} = (\[[^\]]*\]);", text)
    assert match, f"statuses.js has no {name}"
    values = json.loads(match.group(1))
    assert isinstance(values, list)
    return [str(v) for v in values]


def test_the_dashboard_spells_the_same_statuses_as_python() -> None:
    assert _js_array("RUN_STATUSES") == [s.value for s in RunStatus]
    assert sorted(_js_array("LIVE_RUN")) == sorted(s.value for s in LIVE_RUN)


def test_the_sets_partition_the_statuses() -> None:
    assert {RunStatus.QUEUED, RunStatus.RUNNING} == LIVE_RUN
    assert not LIVE_RUN & FINISHED_RUN
    assert set(RunStatus) - LIVE_RUN - FINISHED_RUN == {RunStatus.INTERRUPTED}
    assert set(TaskStatus) == LIVE_TASK | FINISHED_TASK
    assert not LIVE_TASK & FINISHED_TASK
    assert [s for s in RunStatus if s.live] == [RunStatus.QUEUED, RunStatus.RUNNING]
    assert [s for s in RunStatus if s.finished] == [s for s in RunStatus if s in FINISHED_RUN]
    assert {s for s in TaskStatus if not s.finished} == LIVE_TASK


def test_the_store_re_exports_the_same_classes() -> None:
    assert records.RunStatus is RunStatus
    assert records.TaskStatus is TaskStatus


def test_the_errors_import_without_the_store() -> None:
    """dp.errors (and dp.statuses under it) import no store: the errors -> store -> ids ->
    errors circle is gone."""
    code = (
        "import sys, dp.errors; print(sorted(m for m in sys.modules if m.startswith('dp.store')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
