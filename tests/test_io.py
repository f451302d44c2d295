"""What only one IO manager adapter does; the port itself is tests/test_io_contract.py."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from dp.errors import InvalidIdError, ResultDamagedError, SerializationError
from dp.io import FilesystemIOManager, InMemoryIOManager


@pytest.fixture
def fs(tmp_path: Path) -> FilesystemIOManager:
    return FilesystemIOManager(tmp_path / "results")


def hidden_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file()] if root.exists() else []


# --- filesystem specifics -----------------------------------------------------------------


def test_the_designs_io_example_returns_the_designs_path(tmp_path: Path) -> None:
    """The design's own example: save returns {base}/{run}/{task}/{result}.pkl, and the file
    there is a plain pickle."""
    io_manager = FilesystemIOManager(tmp_path / "data")
    location = io_manager.save("run_1", "extract_data", "result_001", {"a": 1})
    expected = tmp_path / "data" / "run_1" / "extract_data" / "result_001.pkl"
    assert location == str(expected)
    assert pickle.loads(expected.read_bytes()) == {"a": 1}


def test_filesystem_saves_make_one_folder_per_task(fs: FilesystemIOManager, tmp_path: Path) -> None:
    """Each task of a run has its folder; nothing else (no packs, no flat files) is written."""
    for task_name in ("extract", "transform", "load"):
        fs.save("run_1", task_name, "output", task_name)
    run_dir = tmp_path / "results" / "run_1"
    assert sorted(p.name for p in run_dir.iterdir()) == ["extract", "load", "transform"]
    assert [p.name for p in (run_dir / "load").iterdir()] == ["output.pkl"]


def test_a_frame_is_a_parquet_file_others_read_without_dp(tmp_path: Path) -> None:
    """With frames="parquet" a DataFrame is {result}.parquet, which pandas reads directly; a
    frame saved again as pickle replaces it (one result, one codec)."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    io_manager = FilesystemIOManager(tmp_path, frames="parquet")
    frame = pd.DataFrame({"region": ["eu", "us"], "sales": [10.5, 20.25]})
    location = io_manager.save("run_1", "sales", "output", frame)
    assert location == str(tmp_path / "run_1" / "sales" / "output.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(location), frame)
    io_manager.save("run_1", "sales", "output", {"not": "a frame"})
    assert sorted(p.name for p in (tmp_path / "run_1" / "sales").iterdir()) == ["output.pkl"]
    assert io_manager.load("run_1", "sales", "output") == {"not": "a frame"}


def test_filesystem_relative_base_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative base_path is resolved once, so a later chdir does not move the results."""
    monkeypatch.chdir(tmp_path)
    io_manager = FilesystemIOManager("results")
    monkeypatch.chdir("/")
    expected = tmp_path / "results" / "run_1" / "t" / "r.pkl"
    assert io_manager.save("run_1", "t", "r", 1) == str(expected)
    assert io_manager.base_path == tmp_path / "results"


def test_filesystem_save_leaves_no_temporary_files(fs: FilesystemIOManager, tmp_path: Path) -> None:
    """After saves and overwrites only the result files remain."""
    for i in range(5):
        fs.save("run_1", "extract", "r", i)
        fs.save("run_1", "extract", f"r{i}", i)
    assert hidden_files(tmp_path) == []
    assert len(list((tmp_path / "results" / "run_1" / "extract").iterdir())) == 6


def test_filesystem_corrupt_file_raises_an_error_naming_it(fs: FilesystemIOManager) -> None:
    """A truncated or garbage result file raises ResultDamagedError naming run, task, result
    id and the file, not a raw pickle error."""
    path = Path(fs.save("run_1", "extract", "r", list(range(1000))))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ResultDamagedError, match="truncated or corrupt") as info:
        fs.load("run_1", "extract", "r")
    assert (info.value.run_id, info.value.task_name, info.value.task_result_id) == (
        "run_1",
        "extract",
        "r",
    )
    assert info.value.location == str(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(SerializationError):
        fs.load("run_1", "extract", "r")


def test_filesystem_listings_skip_stray_and_temporary_files(
    fs: FilesystemIOManager, tmp_path: Path
) -> None:
    """Hidden temporary files, stray files and foreign names are not reported as runs or results."""
    fs.save("run_1", "extract", "r", 1)
    base = tmp_path / "results"
    (base / "notes.txt").write_text("stray file")
    (base / ".abc-1-2-3.deleting").mkdir()
    (base / "lost+found").mkdir()
    task_dir = base / "run_1" / "extract"
    (task_dir / ".abc-1-2-3.tmp").write_bytes(b"half")
    (task_dir / ".r.pkl.e1-a1-abc").write_bytes(b"staged by an attempt")
    (task_dir / "readme.txt").write_text("stray")
    (task_dir / "bad name.pkl").write_bytes(b"")
    (task_dir / ".pkl").write_bytes(b"")
    assert fs.list_runs() == ["run_1"]
    assert fs.list_results("run_1", "extract") == ["r"]
    assert fs.clear_run("run_1") == 1


def test_filesystem_clear_run_removes_the_directory(
    fs: FilesystemIOManager, tmp_path: Path
) -> None:
    """clear_run deletes the run directory, stale temporary files included."""
    fs.save("run_1", "extract", "r", 1)
    (tmp_path / "results" / "run_1" / "extract" / ".stale.tmp").write_bytes(b"")
    fs.clear_run("run_1")
    assert sorted(os.listdir(tmp_path / "results")) == []


def test_filesystem_missing_base_path_is_empty(tmp_path: Path) -> None:
    """A base_path that does not exist yet lists nothing and is created on first save."""
    io_manager = FilesystemIOManager(tmp_path / "not" / "yet")
    assert io_manager.list_runs() == []
    assert io_manager.list_results("run_1", "t") == []
    io_manager.save("run_1", "t", "r", 1)
    assert io_manager.list_runs() == ["run_1"]


def test_filesystem_manager_pickles_for_worker_processes(tmp_path: Path) -> None:
    """A pickled FilesystemIOManager reads and writes the same results."""
    io_manager = FilesystemIOManager(tmp_path, durable=True)
    io_manager.save("run_1", "t", "r", 1)
    copy = pickle.loads(pickle.dumps(io_manager))
    assert (copy.base_path, copy.durable) == (tmp_path, True)
    assert copy.load("run_1", "t", "r") == 1


WORKER = textwrap.dedent(
    """
    import os, sys, time
    from dp.io import FilesystemIOManager
    base, name, go = sys.argv[1:]
    io_manager = FilesystemIOManager(base)
    while not os.path.exists(go):
        time.sleep(0.001)
    for i in range(200):
        io_manager.save("run_1", "extract", f"{name}_{i}", {"worker": name, "i": i})
        io_manager.save("run_1", "extract", "shared", {"worker": name, "i": i})
    """
)


def test_filesystem_concurrent_saves_from_processes(tmp_path: Path) -> None:
    """Two worker processes saving into one new run at once lose nothing and corrupt nothing."""
    go = tmp_path / "go"
    base = tmp_path / "results"
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(base), name, str(go)])
        for name in ("p0", "p1")
    ]
    go.touch()
    assert [w.wait(timeout=60) for w in workers] == [0, 0]
    io_manager = FilesystemIOManager(base)
    assert len(io_manager.list_results("run_1", "extract")) == 401
    assert io_manager.load("run_1", "extract", "p1_199") == {"worker": "p1", "i": 199}
    assert io_manager.load("run_1", "extract", "shared")["i"] == 199
    assert hidden_files(tmp_path) == []


# --- in-memory specifics ------------------------------------------------------------------


def test_memory_stores_the_object_itself() -> None:
    """By default load returns the very object that was saved, even an unpicklable one."""
    io_manager = InMemoryIOManager()
    value = {"lock": threading.Lock()}
    io_manager.save("run_1", "t", "r", value)
    assert io_manager.load("run_1", "t", "r") is value


def test_memory_copy_returns_a_fresh_copy_each_load() -> None:
    """With copy=True mutating a loaded value does not change the stored one."""
    io_manager = InMemoryIOManager(copy=True)
    io_manager.save("run_1", "t", "r", {"rows": [1, 2]})
    io_manager.load("run_1", "t", "r")["rows"].append(3)
    assert io_manager.load("run_1", "t", "r") == {"rows": [1, 2]}


def test_memory_manager_refuses_to_be_pickled() -> None:
    """Handing an InMemoryIOManager to another process fails loudly instead of losing results."""
    with pytest.raises(TypeError, match="FilesystemIOManager"):
        pickle.dumps(InMemoryIOManager())


def test_ids_accepted_before_do_not_let_a_faking_str_subclass_through(tmp_path: Path) -> None:
    """Valid ids are remembered, but only exact `str`s are looked up: a subclass that claims
    to equal an accepted id is still checked, and refused."""

    class Sneaky(str):
        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash("output")

    io_manager = FilesystemIOManager(tmp_path)
    io_manager.save("run_1", "t", "output", 1)
    with pytest.raises(InvalidIdError, match="task_result_id"):
        io_manager.save("run_1", "t", Sneaky("../escape"), 2)
    with pytest.raises(InvalidIdError, match="task_result_id"):
        io_manager.load("run_1", "t", "../escape")
