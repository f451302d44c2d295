"""The IO manager port: one contract suite run against every adapter, then adapter specifics."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dp.errors import InvalidIdError, ResultNotFoundError, SerializationError
from dp.io import FilesystemIOManager, InMemoryIOManager, IOManager


@dataclass(frozen=True)
class Point:
    x: int
    y: int


ADAPTERS: dict[str, Callable[[Path], IOManager]] = {
    "filesystem": lambda path: FilesystemIOManager(path / "results"),
    "filesystem-durable": lambda path: FilesystemIOManager(path / "results", durable=True),
    "memory": lambda path: InMemoryIOManager(),
    "memory-copy": lambda path: InMemoryIOManager(copy=True),
}
# Adapters that refuse what pickle refuses (plain InMemoryIOManager stores objects as they are).
PICKLING = ["filesystem", "filesystem-durable", "memory-copy"]


@pytest.fixture(params=list(ADAPTERS))
def io_manager(request: pytest.FixtureRequest, tmp_path: Path) -> IOManager:
    return ADAPTERS[request.param](tmp_path)


@pytest.fixture(params=PICKLING)
def pickling_io(request: pytest.FixtureRequest, tmp_path: Path) -> IOManager:
    return ADAPTERS[request.param](tmp_path)


@pytest.fixture
def fs(tmp_path: Path) -> FilesystemIOManager:
    return FilesystemIOManager(tmp_path / "results")


def hidden_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file()] if root.exists() else []


# --- contract: every adapter --------------------------------------------------------------


def test_adapters_satisfy_the_port(io_manager: IOManager) -> None:
    """Every adapter is an IOManager, checked at runtime."""
    assert isinstance(io_manager, IOManager)


@pytest.mark.parametrize(
    "value",
    [
        {"processed": [1, 2, 3], "count": 3},
        [1, "two", 3.0, None, (4, 5)],
        "text",
        b"\x00bytes",
        None,
        Point(1, 2),
        {"nested": {"set": {1, 2}, "frozen": frozenset({3})}},
    ],
    ids=["dict", "list", "str", "bytes", "none", "dataclass", "nested"],
)
def test_load_returns_what_save_stored(io_manager: IOManager, value: Any) -> None:
    """A saved value loads back equal."""
    io_manager.save("run_1", "extract", "result_001", value)
    assert io_manager.load("run_1", "extract", "result_001") == value


def test_dataframe_round_trips(io_manager: IOManager) -> None:
    """A pandas DataFrame loads back equal."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"region": ["eu", "us"], "sales": [10.5, 20.25]})
    io_manager.save("run_1", "transform", "result_001", frame)
    pd.testing.assert_frame_equal(io_manager.load("run_1", "transform", "result_001"), frame)


def test_save_returns_a_location_naming_the_ids(io_manager: IOManager) -> None:
    """save returns a location string that names run, task and result id."""
    location = io_manager.save("run_1", "extract", "result_001", 1)
    assert isinstance(location, str)
    for part in ("run_1", "extract", "result_001"):
        assert part in location


def test_save_overwrites_an_existing_result(io_manager: IOManager) -> None:
    """Saving again under the same ids replaces the value."""
    io_manager.save("run_1", "extract", "r", "old")
    io_manager.save("run_1", "extract", "r", "new")
    assert io_manager.load("run_1", "extract", "r") == "new"
    assert io_manager.list_results("run_1", "extract") == ["r"]


def test_exists_tells_stored_from_missing(io_manager: IOManager) -> None:
    """exists is True only for the exact ids that were saved."""
    assert not io_manager.exists("run_1", "extract", "r")
    io_manager.save("run_1", "extract", "r", 1)
    assert io_manager.exists("run_1", "extract", "r")
    assert not io_manager.exists("run_1", "extract", "other")
    assert not io_manager.exists("run_1", "load", "r")
    assert not io_manager.exists("run_2", "extract", "r")


def test_missing_result_error_names_run_task_and_id(io_manager: IOManager) -> None:
    """Loading a result that was never saved names all three ids."""
    io_manager.save("run_1", "extract", "chunk_0", 1)
    with pytest.raises(ResultNotFoundError) as info:
        io_manager.load("run_1", "extract", "chunk_1")
    assert (info.value.run_id, info.value.task_name, info.value.task_result_id) == (
        "run_1",
        "extract",
        "chunk_1",
    )
    for part in ("'run_1'", "'extract'", "'chunk_1'"):
        assert part in str(info.value)


def test_list_results_is_in_natural_order(io_manager: IOManager) -> None:
    """Chunk ids list numerically (chunk_2 before chunk_10), other ids alphabetically."""
    for result_id in ["chunk_10", "chunk_2", "chunk_1", "chunk_0", "b", "a"]:
        io_manager.save("run_1", "stream", result_id, result_id)
    assert io_manager.list_results("run_1", "stream") == [
        "a",
        "b",
        "chunk_0",
        "chunk_1",
        "chunk_2",
        "chunk_10",
    ]


def test_list_results_keeps_tasks_and_runs_apart(io_manager: IOManager) -> None:
    """list_results shows one task of one run; unknown ones are empty."""
    io_manager.save("run_1", "extract", "r1", 1)
    io_manager.save("run_1", "load", "r2", 2)
    io_manager.save("run_2", "extract", "r3", 3)
    assert io_manager.list_results("run_1", "extract") == ["r1"]
    assert io_manager.list_results("run_1", "unknown") == []
    assert io_manager.list_results("run_9", "extract") == []


def test_list_runs_lists_runs_in_natural_order(io_manager: IOManager) -> None:
    """list_runs returns every run with results, run_2 before run_10."""
    assert io_manager.list_runs() == []
    for run_id in ["run_10", "run_2", "2025-01-15T10-00-00"]:
        io_manager.save(run_id, "extract", "r", 1)
    assert io_manager.list_runs() == ["2025-01-15T10-00-00", "run_2", "run_10"]


def test_clear_run_deletes_one_run_and_counts_results(io_manager: IOManager) -> None:
    """clear_run returns how many results it removed and leaves other runs alone."""
    io_manager.save("run_1", "extract", "r", 1)
    io_manager.save("run_1", "stream", "chunk_0", 1)
    io_manager.save("run_1", "stream", "chunk_1", 1)
    io_manager.save("run_2", "extract", "r", 2)
    assert io_manager.clear_run("run_1") == 3
    assert io_manager.list_runs() == ["run_2"]
    assert not io_manager.exists("run_1", "extract", "r")
    assert io_manager.load("run_2", "extract", "r") == 2


def test_clear_run_of_an_unknown_run_is_zero(io_manager: IOManager) -> None:
    """Clearing a run that has no results (or was already cleared) returns 0."""
    assert io_manager.clear_run("never_ran") == 0
    io_manager.save("run_1", "extract", "r", 1)
    io_manager.clear_run("run_1")
    assert io_manager.clear_run("run_1") == 0


def test_a_cleared_run_can_be_saved_into_again(io_manager: IOManager) -> None:
    """A run id is usable again after clear_run."""
    io_manager.save("run_1", "extract", "r", 1)
    io_manager.clear_run("run_1")
    io_manager.save("run_1", "extract", "r", 2)
    assert io_manager.load("run_1", "extract", "r") == 2


BAD_IDS = {
    "empty": "",
    "slash": "a/b",
    "backslash": "a\\b",
    "dotdot": "..",
    "dotdot-inside": "a..b",
    "hidden": ".hidden",
    "nul": "a\0b",
    "not-str": 42,
    "too-long": "x" * 201,
    "space": "a b",
}
POSITIONS = ["run_id", "task_name", "task_result_id"]


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("bad", list(BAD_IDS.values()), ids=list(BAD_IDS))
def test_save_rejects_an_unsafe_id_and_names_it(
    io_manager: IOManager, position: str, bad: Any
) -> None:
    """An unsafe id in any position raises InvalidIdError naming which id, and stores nothing."""
    ids = {"run_id": "run_1", "task_name": "extract", "task_result_id": "r"} | {position: bad}
    with pytest.raises(InvalidIdError, match=position) as info:
        io_manager.save(value=1, **ids)
    assert (info.value.kind, info.value.value) == (position, bad)
    assert isinstance(info.value, ValueError)
    assert io_manager.list_runs() == []


@pytest.mark.parametrize("position", POSITIONS)
def test_every_method_validates_its_ids(io_manager: IOManager, position: str) -> None:
    """load, exists, list_results and clear_run reject unsafe ids too."""
    ids = {"run_id": "run_1", "task_name": "extract", "task_result_id": "r"} | {position: "../x"}
    with pytest.raises(InvalidIdError, match=position):
        io_manager.load(**ids)
    with pytest.raises(InvalidIdError, match=position):
        io_manager.exists(**ids)
    if position != "task_result_id":
        with pytest.raises(InvalidIdError, match=position):
            io_manager.list_results(ids["run_id"], ids["task_name"])
    if position == "run_id":
        with pytest.raises(InvalidIdError, match=position):
            io_manager.clear_run(ids["run_id"])


class Sneaky(str):
    def __format__(self, spec: str) -> str:
        return "../../elsewhere"


def test_ids_must_be_plain_str_even_when_equal_to_a_valid_one(io_manager: IOManager) -> None:
    """A str subclass is refused, even one equal to an id that was accepted before."""
    io_manager.save("run_1", "extract", "r", 1)
    with pytest.raises(InvalidIdError, match="plain str"):
        io_manager.save(Sneaky("run_1"), "extract", "r", 2)
    assert io_manager.load("run_1", "extract", "r") == 1


def test_the_longest_allowed_id_works(io_manager: IOManager) -> None:
    """Ids of 200 characters with '.', '-' and '_' are accepted."""
    long_id = "a" + "b-c_d.e" * 28 + "f" * 3
    assert len(long_id) == 200
    io_manager.save(long_id, long_id, long_id, 1)
    assert io_manager.load(long_id, long_id, long_id) == 1


@pytest.mark.parametrize(
    "value",
    [lambda: 1, threading.Lock(), (i for i in range(3))],
    ids=["lambda", "lock", "generator"],
)
def test_unpicklable_value_keeps_the_previous_result(
    pickling_io: IOManager, tmp_path: Path, value: Any
) -> None:
    """An unpicklable value raises SerializationError naming the ids; the old result survives."""
    pickling_io.save("run_1", "extract", "r", "good")
    with pytest.raises(SerializationError) as info:
        pickling_io.save("run_1", "extract", "r", value)
    assert (info.value.run_id, info.value.task_name, info.value.task_result_id) == (
        "run_1",
        "extract",
        "r",
    )
    assert "pickle" in info.value.reason
    assert pickling_io.load("run_1", "extract", "r") == "good"
    assert pickling_io.list_results("run_1", "extract") == ["r"]
    assert hidden_files(tmp_path) == []


def test_concurrent_saves_from_threads(io_manager: IOManager) -> None:
    """Threads saving into one new run at once all succeed, directory creation races included."""
    threads, per_thread = 8, 50
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                io_manager.save("run_1", f"task_{n % 2}", f"r_{n}_{i}", (n, i))
                io_manager.save("run_1", "shared", "same_id", (n, i))
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    saved = io_manager.list_results("run_1", "task_0") + io_manager.list_results("run_1", "task_1")
    assert len(saved) == threads * per_thread
    assert io_manager.load("run_1", "task_1", "r_3_7") == (3, 7)
    assert io_manager.load("run_1", "shared", "same_id") in {
        (n, i) for n in range(8) for i in range(50)
    }


# --- filesystem specifics -----------------------------------------------------------------


def test_filesystem_layout_is_run_then_task_at_result(
    fs: FilesystemIOManager, tmp_path: Path
) -> None:
    """Results are pickle files at {base}/{run}/{task}@{result}.pkl, the path save returns."""
    location = fs.save("run_1", "extract", "result_001", {"a": 1})
    expected = tmp_path / "results" / "run_1" / "extract@result_001.pkl"
    assert location == str(expected)
    assert pickle.loads(expected.read_bytes()) == {"a": 1}


def test_filesystem_saves_create_one_directory_per_run(
    fs: FilesystemIOManager, tmp_path: Path
) -> None:
    """Tasks add files, never directories: the run's folder is the only one created."""
    for task_name in ("extract", "transform", "load"):
        fs.save("run_1", task_name, "output", task_name)
    run_dir = tmp_path / "results" / "run_1"
    assert [p for p in run_dir.iterdir() if p.is_dir()] == []
    assert len(list(run_dir.iterdir())) == 3


def _old_layout(base: Path, run_id: str, task_name: str, result_id: str, value: object) -> None:
    """Write a result where dp 0.1 put it: {run}/{task}/{result}.pkl."""
    task_dir = base / run_id / task_name
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / f"{result_id}.pkl").write_bytes(pickle.dumps(value))


def test_filesystem_reads_results_of_the_old_layout(
    fs: FilesystemIOManager, tmp_path: Path
) -> None:
    """Results written in the per-task folders of dp 0.1 load, list and clear."""
    base = tmp_path / "results"
    _old_layout(base, "run_old", "extract", "output", {"rows": 3})
    _old_layout(base, "run_old", "stream", "chunk-000000", [1])
    fs.save("run_old", "stream", "chunk-000001", [2])
    assert fs.load("run_old", "extract", "output") == {"rows": 3}
    assert fs.exists("run_old", "stream", "chunk-000000")
    assert fs.list_results("run_old", "stream") == ["chunk-000000", "chunk-000001"]
    assert fs.list_runs() == ["run_old"]
    assert fs.clear_run("run_old") == 3


def test_filesystem_new_save_wins_over_an_old_layout_result(
    fs: FilesystemIOManager, tmp_path: Path
) -> None:
    """Saving over a result of the old layout makes the new value the one loaded."""
    _old_layout(tmp_path / "results", "run_old", "extract", "output", "old")
    fs.save("run_old", "extract", "output", "new")
    assert fs.load("run_old", "extract", "output") == "new"
    assert fs.list_results("run_old", "extract") == ["output"]


def test_filesystem_relative_base_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative base_path is resolved once, so a later chdir does not move the results."""
    monkeypatch.chdir(tmp_path)
    io_manager = FilesystemIOManager("results")
    monkeypatch.chdir("/")
    assert io_manager.save("run_1", "t", "r", 1) == str(tmp_path / "results" / "run_1" / "t@r.pkl")
    assert io_manager.base_path == tmp_path / "results"


def test_filesystem_save_leaves_no_temporary_files(fs: FilesystemIOManager, tmp_path: Path) -> None:
    """After saves and overwrites only the result files remain."""
    for i in range(5):
        fs.save("run_1", "extract", "r", i)
        fs.save("run_1", "extract", f"r{i}", i)
    assert hidden_files(tmp_path) == []
    assert len(list((tmp_path / "results" / "run_1").iterdir())) == 6


def test_filesystem_corrupt_file_raises_serialization_error(fs: FilesystemIOManager) -> None:
    """A truncated or garbage result file raises SerializationError, not a raw pickle error."""
    path = Path(fs.save("run_1", "extract", "r", list(range(1000))))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(SerializationError, match="truncated or corrupt") as info:
        fs.load("run_1", "extract", "r")
    assert info.value.task_result_id == "r"
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
    run_dir = base / "run_1"
    (run_dir / ".abc-1-2-3.tmp").write_bytes(b"half")
    (run_dir / "readme.txt").write_text("stray")
    (run_dir / "extract@bad name.pkl").write_bytes(b"")
    (run_dir / "extract@.pkl").write_bytes(b"")
    assert fs.list_runs() == ["run_1"]
    assert fs.list_results("run_1", "extract") == ["r"]
    assert fs.clear_run("run_1") == 1


def test_filesystem_clear_run_removes_the_directory(
    fs: FilesystemIOManager, tmp_path: Path
) -> None:
    """clear_run deletes the run directory, stale temporary files included."""
    fs.save("run_1", "extract", "r", 1)
    (tmp_path / "results" / "run_1" / ".stale.tmp").write_bytes(b"")
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
