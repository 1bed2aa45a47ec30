"""The ingest journal against real process deaths (a forked worker that SIGKILLs itself)."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

from emostream.ingest.journal import Journal, read_segment


def records(prefix: str, n: int) -> list[tuple[str, bytes]]:
    return [(f"{prefix}{i}", b'{"user_id":"%s%d"}' % (prefix.encode(), i)) for i in range(n)]


def _worker_that_dies(folder: str, ready) -> None:
    journal = Journal(Path(folder)).open()
    journal.append(records("acked", 2))
    flushed = journal.rotate(2)
    flushed.acknowledged()
    flushed.acknowledged()  # all of the first flush is in Kafka: its segment is gone
    journal.append(records("half", 3))
    half = journal.rotate(3)
    half.acknowledged()  # Kafka has one of the second flush, not the other two
    journal.append(records("buffered", 4))  # answered 202, not flushed yet
    ready.send(sorted(p.name for p in Path(folder).iterdir()))
    os.kill(os.getpid(), signal.SIGKILL)


def kill_a_worker(folder: Path, worker=_worker_that_dies) -> list[str]:
    """Run ``worker`` in a forked process that SIGKILLs itself; returns the files it saw."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=worker, args=(str(folder), send))
    child.start()
    files = receive.recv()
    child.join(10)
    assert child.exitcode == -signal.SIGKILL
    return files


def test_a_sigkilled_workers_unacknowledged_emoji_are_taken_over_by_the_next_one(tmp_path):
    files = kill_a_worker(tmp_path)
    assert len([name for name in files if name.endswith(".seg")]) == 2  # the first flush's segment is gone

    survivor = Journal(tmp_path).open()
    taken = survivor.recover()

    recovered = [key for _, batch in taken for key, _ in batch]
    # The whole half-acknowledged segment comes back: its one acknowledged record may reach Kafka
    # twice (at least once, never lost); nothing of the fully acknowledged flush comes back.
    assert recovered == [key for key, _ in records("half", 3) + records("buffered", 4)]
    assert [segment.left for segment, _ in taken] == [3, 4]
    assert [p.name for p in tmp_path.glob("*.lock")] == [f"{survivor.owner}.lock"]
    assert all(p.name.startswith(survivor.owner) for p in tmp_path.glob("*.seg"))
    assert survivor.recover() == []  # taken once

    for segment, batch in taken:
        for _ in batch:
            segment.acknowledged()
    assert list(tmp_path.glob("*.seg")) == []


def test_a_live_workers_segments_are_left_alone(tmp_path):
    alive = Journal(tmp_path).open()
    alive.append(records("mine", 2))
    other = Journal(tmp_path).open()

    assert other.recover() == []
    assert len(list(tmp_path.glob(f"{alive.owner}-*.seg"))) == 1


def test_a_copy_cut_short_is_not_replayed(tmp_path):
    kill_a_worker(tmp_path)
    # The worker died while copying a request: its records are there, its commit line is not.
    (buffered,) = [p for p in tmp_path.glob("*.seg") if b"buffered" in p.read_bytes()]
    with open(buffered, "r+b") as segment:
        end = segment.read().index(b"\x00")
        segment.seek(end)
        segment.write(b'torn0\t{"user_id":"torn0"}\ntorn1\t{"user_id":"to')

    taken = Journal(tmp_path).open().recover()

    keys = [key for _, batch in taken for key, _ in batch]
    assert not [key for key in keys if key.startswith("torn")]
    assert sum(len(batch) for _, batch in taken) == 7


def test_a_flush_that_outgrows_one_file_spans_several_and_all_go_when_acknowledged(tmp_path, monkeypatch):
    monkeypatch.setattr("emostream.ingest.journal.FILE_BYTES", 4096)
    journal = Journal(tmp_path).open()
    for n in range(40):
        journal.append(records(f"r{n}-", 5))  # about 200 KB in all: many files
    segment = journal.rotate(200)

    assert len(segment.paths) > 1
    assert sum(len(read_segment(path)) for path in segment.paths) == 200
    for _ in range(200):
        segment.acknowledged()
    assert list(tmp_path.glob("*.seg")) == []


def test_a_graceful_close_keeps_exactly_the_leftover_and_releases_the_worker(tmp_path):
    journal = Journal(tmp_path).open()
    journal.append(records("u", 5))
    segment = journal.rotate(5)
    segment.acknowledged()
    journal.close(records("u", 5)[1:])

    assert not list(tmp_path.glob("*.lock"))
    taken = Journal(tmp_path).open().recover()
    assert [key for _, batch in taken for key, _ in batch] == [key for key, _ in records("u", 5)[1:]]


def test_a_file_mapped_ahead_becomes_the_next_segment_and_a_dead_workers_spare_is_cleaned_up(tmp_path):
    journal = Journal(tmp_path).open()
    journal.offer_spare(journal.make_spare())
    (spare,) = tmp_path.glob("*.spare")

    journal.append(records("u", 2))

    assert list(tmp_path.glob("*.spare")) == []
    assert [p.stem for p in tmp_path.glob("*.seg")] == [spare.stem]

    files = kill_a_worker(tmp_path, _worker_with_a_spare)
    assert any(name.endswith(".spare") for name in files)
    Journal(tmp_path).open().recover()
    assert list(tmp_path.glob("*.spare")) == []


def _worker_with_a_spare(folder: str, ready) -> None:
    journal = Journal(Path(folder)).open()
    journal.offer_spare(journal.make_spare())
    ready.send(sorted(p.name for p in Path(folder).iterdir()))
    os.kill(os.getpid(), signal.SIGKILL)
