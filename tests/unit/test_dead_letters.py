"""The dead-letter writer's bookkeeping: which offset ranges it reads again, and when."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from emostream.processor import dead_letters
from emostream.processor.dead_letters import BatchRange, DeadLetterWriter, offsets

TOPIC = "emoji_topic"


def at(*positions: int) -> dict[str, dict[str, int]]:
    return {TOPIC: {str(partition): offset for partition, offset in enumerate(positions)}}


class MemoryPositionFile:
    def __init__(self, value: Any = None):
        self.value = value
        self.reads = 0
        self.writes = 0

    def read(self) -> Any:
        self.reads += 1
        return self.value

    def write(self, value: Any) -> None:
        self.value = value
        self.writes += 1


class Reads:
    """Stands in for the Spark batch job: records the ranges and can fail a number of times."""

    def __init__(self, failures: int = 0, letters: int = 1):
        self.ranges: list[tuple[Any, Any]] = []
        self.failures = failures
        self.letters = letters
        self.done = threading.Event()

    def __call__(self, start, end) -> int:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("broker unavailable")
        self.ranges.append((start, end))
        self.done.set()
        return self.letters


def follow(writer: DeadLetterWriter, *batches: BatchRange) -> None:
    for batch in batches:
        writer.on_batch(batch)
    writer.stop(timeout=10)


def test_a_writer_reads_its_position_and_starts_its_thread_only_when_started():
    reads, position = Reads(), MemoryPositionFile({"written_through": at(4, 4)})
    threads = threading.active_count()
    writer = DeadLetterWriter(position, reads)

    assert position.reads == 0
    assert threading.active_count() == threads
    assert writer.position is None

    writer.start()
    assert position.reads == 1
    assert writer.position == at(4, 4)
    writer.stop(timeout=10)


def test_a_writer_never_started_stops_at_once():
    writer = DeadLetterWriter(MemoryPositionFile(), Reads())

    started = time.monotonic()
    writer.stop(timeout=10)

    assert time.monotonic() - started < 1


def test_batches_without_rejects_are_never_read_again():
    reads, position = Reads(), MemoryPositionFile()
    writer = DeadLetterWriter(position, reads).start()

    follow(writer, BatchRange(0, None, at(10, 10), 0), BatchRange(1, at(10, 10), at(25, 20), 0))

    assert reads.ranges == []
    assert position.value == {"written_through": at(25, 20)}


def test_a_batch_with_rejects_is_read_again_from_the_position_through_its_end():
    reads, position = Reads(letters=2), MemoryPositionFile()
    written = []
    writer = DeadLetterWriter(position, reads, on_written=written.append).start()

    follow(
        writer,
        BatchRange(0, None, at(10, 10), 0),
        BatchRange(1, at(10, 10), at(25, 20), 2),
        BatchRange(2, at(25, 20), at(30, 30), 0),
    )

    assert reads.ranges == [(at(10, 10), at(25, 20))]
    assert written == [2]
    assert writer.written == 2
    assert position.value == {"written_through": at(30, 30)}


def test_the_first_batch_of_a_fresh_checkpoint_reads_from_the_earliest_offsets():
    reads = Reads()
    writer = DeadLetterWriter(MemoryPositionFile(), reads).start()

    follow(writer, BatchRange(0, None, at(5, 7), 1))

    assert reads.ranges == [(None, at(5, 7))]


def test_after_a_crash_the_range_nobody_followed_is_read_even_without_counted_rejects():
    # The last saved position is behind where the query resumes: those batches ran unobserved.
    reads = Reads()
    writer = DeadLetterWriter(MemoryPositionFile({"written_through": at(10, 10)}), reads).start()

    follow(writer, BatchRange(7, at(40, 35), at(50, 45), 0), BatchRange(8, at(50, 45), at(60, 50), 0))

    assert reads.ranges == [(at(10, 10), at(50, 45))]


def test_a_batch_whose_rejects_are_unknown_is_read_again():
    reads = Reads()
    writer = DeadLetterWriter(MemoryPositionFile({"written_through": at(3, 3)}), reads).start()

    follow(writer, BatchRange(4, at(3, 3), at(9, 9), None))

    assert reads.ranges == [(at(3, 3), at(9, 9))]


def test_a_failed_write_is_retried_and_the_position_waits_for_it(monkeypatch):
    monkeypatch.setattr(dead_letters, "RETRY_SECONDS", 0.01)
    reads, position = Reads(failures=2), MemoryPositionFile()
    writer = DeadLetterWriter(position, reads).start()

    writer.on_batch(BatchRange(0, None, at(4, 4), 1))
    assert reads.done.wait(10)
    writer.stop(timeout=10)

    assert reads.ranges == [(None, at(4, 4))]
    assert writer.last_error is None
    assert position.value == {"written_through": at(4, 4)}


def test_a_write_interrupted_by_stop_leaves_the_position_before_it(monkeypatch):
    monkeypatch.setattr(dead_letters, "RETRY_SECONDS", 30)
    reads, position = Reads(failures=1000), MemoryPositionFile({"written_through": at(1, 1)})
    writer = DeadLetterWriter(position, reads).start()

    writer.on_batch(BatchRange(3, at(1, 1), at(8, 8), 4))
    deadline = time.monotonic() + 10
    while writer.last_error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.stop(timeout=0.1)

    assert writer.last_error == "broker unavailable"
    assert position.value == {"written_through": at(1, 1)}


@pytest.mark.parametrize("text", [None, "", "None", "null"])
def test_a_first_batch_has_no_start_offsets(text):
    assert offsets(text) is None


def test_offsets_are_read_from_spark_progress_json():
    assert offsets('{"emoji_topic":{"1":20,"0":10}}') == {TOPIC: {"0": 10, "1": 20}}
