"""The orchestrator <-> worker messages: JSON round trips, compatibility rules, clear errors."""

from __future__ import annotations

import json
import pickle

import pytest

from dp.engine.messages import (
    VERSION,
    ChunkMessage,
    CompletionMessage,
    HeartbeatMessage,
    StartedMessage,
    TaskMessage,
    decode,
)
from dp.engine.model import ExecutableTask, TaskOutcome
from dp.errors import MessageFormatError
from dp.tasks import TaskMetadata


def _double(x: int) -> int:
    return 2 * x


META = TaskMetadata.from_function(_double, name="double", timeout=3)


def _task() -> ExecutableTask:
    return ExecutableTask(
        "run-1",
        "double",
        "output",
        META,
        {"x": ("extract", "output"), "rows": ("stream", ("chunk-000000", "chunk-000001"))},
        {"currency": "EUR"},
        retry_count=1,
        instance="",
        epoch=4,
        attempt_offset=2,
    )


def test_a_task_message_survives_json_with_its_inputs_as_tuples() -> None:
    """A task message read back from JSON equals the one sent, tuples included."""
    message = TaskMessage.of(_task(), handle=7)
    assert decode(message.to_json()) == message


def test_a_task_message_carries_attempt_epoch_and_timeout() -> None:
    """The attempt number, ownership epoch and timeout travel with the task."""
    message = TaskMessage.of(_task(), handle=7)
    assert (message.attempt, message.epoch, message.timed, message.timeout) == (4, 4, True, 3.0)


def test_a_worker_rebuilds_the_same_executable_task() -> None:
    """The task a worker rebuilds counts the same attempt as the one handed out."""
    rebuilt = TaskMessage.from_json(TaskMessage.of(_task(), 1).to_json()).task(META)
    assert (rebuilt.attempt, rebuilt.inputs, rebuilt.epoch) == (4, _task().inputs, 4)


def test_a_completion_message_carries_the_whole_outcome() -> None:
    """Every field of an outcome, host and pid included, comes back from JSON."""
    outcome = TaskOutcome("t", "i", False, [], 1.5, 0.25, "E: x", "tb", "out", False, "h", 42)
    assert CompletionMessage.from_json(CompletionMessage.of(9, outcome).to_json()).outcome() == (
        outcome
    )


def test_a_field_unknown_to_this_reader_is_ignored() -> None:
    """A newer sender's extra field (added with a default) does not break this reader."""
    data = json.loads(ChunkMessage(3, "chunk-000001").to_json())
    data["priority"] = 5
    assert decode(json.dumps(data)) == ChunkMessage(3, "chunk-000001")


def test_a_field_an_older_sender_did_not_have_takes_its_default() -> None:
    """An older sender's message without a defaulted field reads with the default."""
    data = json.loads(TaskMessage.of(_task(), 1).to_json())
    del data["queue"], data["timeout"]
    assert decode(json.dumps(data)).timeout is None  # type: ignore[union-attr]


def test_an_unknown_version_is_refused_with_what_to_do() -> None:
    """A message of another format version is an error naming both versions."""
    data = {"kind": "started", "v": VERSION + 1, "handle": 1}
    with pytest.raises(MessageFormatError, match=r"version 2, and this dp reads version 1"):
        decode(json.dumps(data))


def test_an_unknown_kind_is_refused() -> None:
    """A message of a kind dp does not send names the kinds it does."""
    with pytest.raises(
        MessageFormatError, match=r"unknown kind 'hello'; dp sends beat, chunk, done"
    ):
        decode('{"kind": "hello", "v": 1}')


def test_a_missing_required_field_is_refused() -> None:
    """A message without a required field says it is incomplete."""
    with pytest.raises(MessageFormatError, match=r"chunk message is incomplete"):
        decode('{"kind": "chunk", "v": 1, "handle": 1}')


def test_text_that_is_not_json_is_refused() -> None:
    """Garbage on the wire is a MessageFormatError, not a crash deeper in."""
    with pytest.raises(MessageFormatError, match=r"is not JSON"):
        decode("{oops")


def test_a_malformed_input_is_refused() -> None:
    """An input that is not [upstream, result id] is named."""
    data = json.loads(TaskMessage.of(_task(), 1).to_json())
    data["inputs"]["x"] = "extract"
    with pytest.raises(MessageFormatError, match=r"input 'x' is 'extract'"):
        decode(json.dumps(data))


def test_messages_pickle_for_the_local_process_pipe() -> None:
    """The process executor's pickled messages come back equal."""
    for message in (TaskMessage.of(_task(), 2), StartedMessage(2), ChunkMessage(2, "c")):
        assert pickle.loads(pickle.dumps(message)) == message


def test_a_heartbeat_names_the_worker_and_what_it_holds() -> None:
    """A heartbeat's host, pid, held handles and their pool pids come back from JSON."""
    beat = HeartbeatMessage("node-7", 321, [4, 9], [322, 0])
    assert decode(beat.to_json()) == beat


def test_a_start_says_where_and_when_and_an_older_one_still_reads() -> None:
    """A start carries host, pid and time; one without them (older worker) reads with defaults."""
    started = StartedMessage(5, "node-7", 322, 1700000000.5)
    assert decode(started.to_json()) == started
    assert decode('{"kind": "started", "v": 1, "handle": 5}') == StartedMessage(5)


def test_a_task_message_carries_the_heartbeat_bound() -> None:
    """The orchestrator's heartbeat bound travels with the attempt, so workers beat in time."""
    message = TaskMessage.of(_task(), 1, "dp:celery:replies:x", 30.0)
    assert TaskMessage.from_json(message.to_json()).heartbeat == 30.0
