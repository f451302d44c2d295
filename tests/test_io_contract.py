"""The IO manager port: one contract suite run against every adapter (filesystem, memory and
S3 on a real S3 API server), each with both codecs for frames (pickle, Parquet), so an adapter
that passes it can hold any run's results."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dp.errors import InvalidIdError, ResultNotFoundError, SerializationError
from dp.io import FilesystemIOManager, InMemoryIOManager, IOManager
from dp.io.s3 import S3IOManager
from s3_server import S3Server


@dataclass(frozen=True)
class Point:
    x: int
    y: int


_prefixes = itertools.count()

Factory = Callable[[Path, pytest.FixtureRequest, str], IOManager]
ADAPTERS: dict[str, Factory] = {
    "filesystem": lambda path, _, frames: FilesystemIOManager(path / "results", frames=frames),
    "filesystem-durable": lambda path, _, frames: FilesystemIOManager(
        path / "results", durable=True, frames=frames
    ),
    "memory": lambda path, _, frames: InMemoryIOManager(),
    "memory-copy": lambda path, _, frames: InMemoryIOManager(copy=True, frames=frames),
    # each test under a prefix of its own in one session bucket
    "s3": lambda path, request, frames: S3IOManager(
        request.getfixturevalue("s3_bucket"),
        f"tests/t{next(_prefixes)}",
        endpoint_url=request.getfixturevalue("s3_server").url,
        frames=frames,
    ),
}
# Adapters that refuse what pickle refuses (plain InMemoryIOManager stores objects as they are).
PICKLING = ["filesystem", "filesystem-durable", "memory-copy", "s3"]
#: every adapter with each codec for frames (plain memory keeps objects: no codec to vary)
CASES = [f"{a}-{f}" for a in ADAPTERS for f in ("pickle", "parquet") if a != "memory"]
CASES.insert(CASES.index("memory-copy-pickle"), "memory-objects")


def _make(case: str, path: Path, request: pytest.FixtureRequest) -> IOManager:
    if case == "memory-objects":
        return InMemoryIOManager()
    adapter, _, frames = case.rpartition("-")
    if frames == "parquet":
        pytest.importorskip("pyarrow")
    return ADAPTERS[adapter](path, request, frames)


@pytest.fixture(scope="session")
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    return s3_server.create_bucket("dp-contract")


@pytest.fixture(params=CASES)
def io_manager(request: pytest.FixtureRequest, tmp_path: Path) -> IOManager:
    return _make(request.param, tmp_path, request)


@pytest.fixture(params=[c for c in CASES if c.rpartition("-")[0] in PICKLING])
def pickling_io(request: pytest.FixtureRequest, tmp_path: Path) -> IOManager:
    return _make(request.param, tmp_path, request)


def hidden_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file()] if root.exists() else []


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
    """A pandas DataFrame (a named index, dates, ints, floats, text) loads back equal, under
    the codec its manager chose; Parquet keys end `.parquet`."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {
            "region": ["eu", "us", "apac"],
            "sales": [10.5, 20.25, None],
            "orders": [1, 2, 3],
            "day": pd.to_datetime(["2025-01-01", "2025-01-02", "2025-01-03"]),
        },
        index=pd.Index(["a", "b", "c"], name="key"),
    )
    location = io_manager.save("run_1", "transform", "result_001", frame)
    pd.testing.assert_frame_equal(io_manager.load("run_1", "transform", "result_001"), frame)
    parquet = getattr(io_manager, "frames", "pickle") == "parquet"
    assert location.endswith(".parquet" if parquet else "")
    assert io_manager.list_results("run_1", "transform") == ["result_001"]


def test_arrow_table_round_trips(io_manager: IOManager) -> None:
    """An Arrow table loads back as an equal Arrow table, whichever the codec."""
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"region": ["eu", "us"], "sales": [10.5, 20.25]})
    io_manager.save("run_1", "transform", "t", table)
    loaded = io_manager.load("run_1", "transform", "t")
    assert isinstance(loaded, pa.Table)
    assert loaded.equals(table)


def test_a_frame_parquet_cannot_hold_is_pickled(io_manager: IOManager) -> None:
    """A DataFrame with a column of mixed objects (no Parquet type) is still stored, as a
    pickle, and loads back equal."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"mixed": [1, "two", (3,)]})
    io_manager.save("run_1", "transform", "m", frame)
    pd.testing.assert_frame_equal(io_manager.load("run_1", "transform", "m"), frame)


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
    threads, per_thread = 8, 25
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
        (n, i) for n in range(8) for i in range(25)
    }


def test_the_manager_pickles_for_worker_processes(pickling_io: IOManager) -> None:
    """A copy sent to a worker process (by pickle) reads and writes the same results."""
    import pickle

    pickling_io.save("run_1", "extract", "r", {"a": 1})
    try:
        copy = pickle.loads(pickle.dumps(pickling_io))
    except TypeError:
        pytest.skip(f"{type(pickling_io).__name__} lives in one process's memory by design")
    assert copy.load("run_1", "extract", "r") == {"a": 1}
    copy.save("run_1", "extract", "s", 2)
    assert pickling_io.load("run_1", "extract", "s") == 2


def test_a_staged_result_is_invisible_until_committed(pickling_io: IOManager) -> None:
    """An attempt's staged result is not listed, loaded or counted as existing; its commit
    makes it the result, and leaves no staged copy behind."""
    from dp.io import ResultStore

    assert isinstance(pickling_io, ResultStore)
    staged = pickling_io.stage("run_1", "extract", "r", {"v": 1}, "e1-a1-aaaa")
    assert not pickling_io.exists("run_1", "extract", "r")
    assert pickling_io.list_results("run_1", "extract") == []
    assert pickling_io.commit(staged)
    assert pickling_io.load("run_1", "extract", "r") == {"v": 1}
    assert pickling_io.list_results("run_1", "extract") == ["r"]
    assert pickling_io.clear_run("run_1") == 1


def test_a_late_commit_never_replaces_a_committed_result(pickling_io: IOManager) -> None:
    """Two attempts stage the same result; the first commit wins, the late one is refused
    and its copy discarded, so a result a consumer read is never replaced (filesystem: a hard
    link; S3: a conditional PUT)."""
    from dp.io import ResultStore

    assert isinstance(pickling_io, ResultStore)
    late = pickling_io.stage("run_1", "extract", "r", "stale", "e1-a1-late")
    first = pickling_io.stage("run_1", "extract", "r", "committed", "e1-a1-first")
    assert pickling_io.commit(first)
    assert pickling_io.load("run_1", "extract", "r") == "committed"  # a consumer reads it
    assert not pickling_io.commit(late)
    assert pickling_io.load("run_1", "extract", "r") == "committed"
    assert pickling_io.list_results("run_1", "extract") == ["r"]
    assert pickling_io.clear_run("run_1") == 1


def test_a_fenced_attempt_commits_nothing(pickling_io: IOManager) -> None:
    """Through `FencedResults`, an attempt that may no longer commit (fenced, or taken for
    lost) raises FencedError and leaves no result and no staged copy."""
    from dp.engine.fenced_results import fenced
    from dp.errors import FencedError

    allowed = [True]
    attempt = fenced(pickling_io, "run_1", 3, 1, lambda: allowed[0])
    attempt.save("run_1", "extract", "r", 1)
    allowed[0] = False
    with pytest.raises(FencedError):
        attempt.save("run_1", "extract", "s", 2)
    assert pickling_io.list_results("run_1", "extract") == ["r"]
    assert not pickling_io.exists("run_1", "extract", "s")
    assert pickling_io.clear_run("run_1") == 1


def test_saves_while_keeping_never_replace_a_stored_result(pickling_io: IOManager) -> None:
    """What the write-behind writer does: within `keeping()` a result already stored stays
    (a frozen owner's late write); outside it, `save` replaces as the port says."""
    from dp.io import ResultStore

    assert isinstance(pickling_io, ResultStore)
    pickling_io.save("run_1", "extract", "r", "committed")
    with pickling_io.keeping():
        pickling_io.save("run_1", "extract", "r", "late")
        pickling_io.save("run_1", "extract", "new", "first")
    assert pickling_io.load("run_1", "extract", "r") == "committed"
    assert pickling_io.load("run_1", "extract", "new") == "first"
    pickling_io.save("run_1", "extract", "r", "replaced")
    assert pickling_io.load("run_1", "extract", "r") == "replaced"
    assert pickling_io.delete("run_1", "extract", "r")
    assert not pickling_io.exists("run_1", "extract", "r")
