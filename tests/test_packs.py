"""Result packs: `FilesystemIOManager.save_many` stores a batch of results as one file."""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path

import pytest

from dp.errors import InvalidIdError, ResultNotFoundError, SerializationError
from dp.io import FilesystemIOManager


def _files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir())


def test_a_batch_is_one_pack_file_whose_results_load_like_any_other(tmp_path: Path) -> None:
    """save_many writes one .dpk file; load, exists, list_results and clear_run see into it."""
    io = FilesystemIOManager(tmp_path)
    sizes = io.save_many("run_1", [("a", "output", 1), ("b", "chunk_0", [2]), ("b", "chunk_1", 3)])
    (name,) = _files(tmp_path / "run_1")
    assert name.endswith(".dpk")
    assert sizes == [len(pickle.dumps(v, pickle.HIGHEST_PROTOCOL)) for v in (1, [2], 3)]
    assert io.load("run_1", "a", "output") == 1
    assert io.load("run_1", "b", "chunk_0") == [2]
    assert io.exists("run_1", "b", "chunk_1")
    assert not io.exists("run_1", "b", "chunk_2")
    assert io.list_results("run_1", "b") == ["chunk_0", "chunk_1"]
    assert io.list_runs() == ["run_1"]
    assert io.clear_run("run_1") == 3
    assert not io.exists("run_1", "a", "output")
    with pytest.raises(ResultNotFoundError):
        io.load("run_1", "a", "output")


def test_another_manager_on_the_same_directory_finds_packed_results(tmp_path: Path) -> None:
    """Packs are read from disk by any process: a resume, `dp runs`, a worker process."""
    FilesystemIOManager(tmp_path).save_many("run_1", [("a", "output", "x"), ("b", "output", "y")])
    reader = FilesystemIOManager(tmp_path)
    assert reader.load("run_1", "b", "output") == "y"
    FilesystemIOManager(tmp_path).save_many("run_1", [("c", "output", "z"), ("d", "output", 0)])
    assert reader.load("run_1", "c", "output") == "z"  # a pack written after its first look


def test_the_latest_save_of_a_result_wins_whichever_way_it_was_saved(tmp_path: Path) -> None:
    """A pack replaces an earlier file or pack of the same result; a later file replaces it."""
    io = FilesystemIOManager(tmp_path)
    io.save("run_1", "a", "output", "file 1")
    io.save_many("run_1", [("a", "output", "pack 1"), ("b", "output", 0)])
    assert io.load("run_1", "a", "output") == "pack 1"
    io.save_many("run_1", [("a", "output", "pack 2"), ("b", "output", 0)])
    assert FilesystemIOManager(tmp_path).load("run_1", "a", "output") == "pack 2"
    io.save("run_1", "a", "output", "file 2")
    assert FilesystemIOManager(tmp_path).load("run_1", "a", "output") == "file 2"
    assert io.load("run_1", "a", "output") == "file 2"
    assert io.clear_run("run_1") == 2


def test_a_batch_with_an_unpicklable_value_stores_none_of_it(tmp_path: Path) -> None:
    """All of a batch is stored or nothing: no pack, no temporary file is left behind."""
    io = FilesystemIOManager(tmp_path)
    io.save("run_1", "before", "output", 0)
    with pytest.raises(SerializationError, match=r"task 'b' .*cannot pickle the value"):
        io.save_many("run_1", [("a", "output", 1), ("b", "output", threading.Lock())])
    assert _files(tmp_path / "run_1") == ["before@output.pkl"]
    assert not io.exists("run_1", "a", "output")


def test_a_durable_batch_costs_one_fsync_of_the_pack_and_one_of_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: durable=True flushes a batch of 50 results with two fsyncs, not 100."""
    io = FilesystemIOManager(tmp_path, durable=True)
    io.save("run_1", "first", "output", 0)  # the run's directory exists (created durably)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    io.save_many("run_1", [(f"t{i}", "output", i) for i in range(50)])
    assert len(synced) == 2
    assert io.load("run_1", "t49", "output") == 49


def test_bad_ids_in_a_batch_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    """Every id of a batch is checked first, naming the bad one."""
    io = FilesystemIOManager(tmp_path)
    with pytest.raises(InvalidIdError, match="task_result_id"):
        io.save_many("run_1", [("a", "output", 1), ("b", "../x", 2)])
    assert not (tmp_path / "run_1").exists()


def test_a_run_cleared_and_written_anew_by_another_manager_is_seen_anew(tmp_path: Path) -> None:
    """A manager that read a run's packs notices when another one cleared and rewrote it."""
    reader = FilesystemIOManager(tmp_path)
    FilesystemIOManager(tmp_path).save_many("run_1", [("a", "output", 1), ("b", "output", 2)])
    assert reader.load("run_1", "a", "output") == 1
    other = FilesystemIOManager(tmp_path)
    assert other.clear_run("run_1") == 2
    assert not reader.exists("run_1", "a", "output")
    other.save_many("run_1", [("a", "output", 3), ("c", "output", 4)])
    assert reader.load("run_1", "a", "output") == 3
    assert not reader.exists("run_1", "b", "output")


def test_a_pack_replaces_an_earlier_file_of_a_result_with_over_long_ids(tmp_path: Path) -> None:
    """Ids too long for one file name are saved in a task folder; a pack still replaces it."""
    io = FilesystemIOManager(tmp_path)
    task, result_id = "t" * 150, "r" * 150
    io.save("run_1", task, result_id, "file")
    io.save_many("run_1", [(task, result_id, "pack"), ("b", "output", 0)])
    assert FilesystemIOManager(tmp_path).load("run_1", task, result_id) == "pack"
    assert io.load("run_1", task, result_id) == "pack"


def test_large_and_small_values_share_a_pack_and_load_back_whole(tmp_path: Path) -> None:
    """Big values stream into the pack between gathered small ones; each loads back intact."""
    io = FilesystemIOManager(tmp_path)
    big = os.urandom(3 << 20)
    values = [("a", "output", 1), ("big", "output", big), ("c", "output", list(range(9)))]
    sizes = io.save_many("run_1", values + [(f"s{i}", "output", "x" * i) for i in range(300)])
    assert sizes[1] == len(pickle.dumps(big, pickle.HIGHEST_PROTOCOL))
    reader = FilesystemIOManager(tmp_path)
    assert reader.load("run_1", "big", "output") == big
    assert reader.load("run_1", "c", "output") == list(range(9))
    assert reader.load("run_1", "s299", "output") == "x" * 299


def test_a_pack_replaces_a_file_saved_after_the_runs_first_pack(tmp_path: Path) -> None:
    """The manager remembers files it saved into a run it packs into, and removes them."""
    io = FilesystemIOManager(tmp_path)
    io.save_many("run_1", [("a", "output", "pack 1"), ("b", "output", 0)])
    io.save("run_1", "a", "output", "file")
    io.save_many("run_1", [("a", "output", "pack 2"), ("c", "output", 0)])
    assert not (tmp_path / "run_1" / "a@output.pkl").exists()
    assert FilesystemIOManager(tmp_path).load("run_1", "a", "output") == "pack 2"
