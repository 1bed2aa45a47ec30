"""The ingest write-ahead journal: a 202 means the emoji is on disk, not only in memory.

Request threads append each accepted request's records to the worker's open journal segment
(one ``write`` per request, under the buffer's lock) before ingest answers 202. Every flush
closes the segment that holds the flushed records; once Kafka has acknowledged each record
of a segment, the producer's acknowledgement callback deletes the file. What remains on disk
is therefore exactly what was answered 202 and not yet acknowledged by Kafka.

A worker that dies, even by SIGKILL, leaves its segments behind: the data is in the kernel's
page cache once ``write`` returns, so only a machine crash before the kernel writes it out
can lose it (set ``EMOSTREAM_INGEST_JOURNAL_FSYNC=true`` to sync every write; it costs a disk
flush per request). Every worker looks for orphaned segments when it starts and then twice a
second, so a sibling worker, or another instance sharing the state folder, sends them on
within about a second, well inside the processor's watermark.

Ownership uses one lock file per worker (``<owner>.lock``, held with ``flock`` for the
worker's life); the kernel releases it when the worker dies however it dies. A worker that
can take a dead owner's lock renames that owner's segments into its own name (atomic) and
then deletes the lock file, so two workers never send the same segment.

Exactness: a record is sent again only when its segment survives its sender. A segment is
deleted in the acknowledgement callback of its last record, so a duplicate needs a SIGKILL
in the instant between Kafka acknowledging part of a segment and the rest (one produce
response per broker): at-least-once, never lost.

Segment lines are ``key TAB value NEWLINE``: keys are validated user ids (no tabs or
newlines) and values are compact JSON, which escapes control characters.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

Record = tuple[str, bytes]  # (Kafka key, JSON value)

SUFFIX = ".seg"


class Segment:
    """Records on disk, deleted when Kafka has acknowledged all of them."""

    __slots__ = ("path", "left", "_lock")

    def __init__(self, path: Path, count: int):
        self.path = path
        self.left = count
        self._lock = threading.Lock()

    def acknowledged(self, _metadata: object = None) -> None:
        """A producer callback: one more record of this segment is in Kafka."""
        with self._lock:
            self.left -= 1
            done = self.left == 0
        if done:
            _unlink(self.path)

    @property
    def done(self) -> bool:
        return self.left <= 0


class Journal:
    """One worker's segments in ``folder``; every method but :meth:`append` runs on the flusher thread."""

    def __init__(self, folder: Path, fsync: bool = False):
        self.folder = Path(folder)
        self.fsync = fsync
        self.owner = f"{os.getpid()}-{time.time_ns()}"
        self._lock_fd: int | None = None
        self._fd: int | None = None  # the open segment, created by the first append after a rotation
        self._path: Path | None = None
        self._size = 0
        self._sequence = 0  # segments written by this worker (request threads, under the buffer's lock)
        self._adopted = itertools.count(1)  # segments taken over from stopped workers (flusher thread)

    # ------------------------------------------------------------------ life cycle

    def open(self) -> Journal:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / f"{self.owner}.lock", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = fd
        return self

    def close(self, leftover: Sequence[Record]) -> None:
        """Shutdown: keep exactly ``leftover`` (what Kafka did not acknowledge) for the next worker."""
        self._close_segment()
        if leftover:
            self._write_segment(leftover)
        keep = f"{self.owner}-{self._sequence:08d}{SUFFIX}" if leftover else None
        for path in self.folder.glob(f"{self.owner}-*{SUFFIX}"):
            if path.name != keep:
                _unlink(path)  # partly acknowledged segments: their unacknowledged rest is in ``keep``
        if self._lock_fd is not None:
            _unlink(self.folder / f"{self.owner}.lock")
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ request threads

    def append(self, records: Sequence[Record]) -> None:
        """Write ``records`` to the open segment; raises OSError, leaving the segment as it was."""
        data = b"".join(b"%s\t%s\n" % (key.encode(), value) for key, value in records)
        if self._fd is None:
            self._sequence += 1
            self._path = self.folder / f"{self.owner}-{self._sequence:08d}{SUFFIX}"
            try:
                self._fd = os.open(self._path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
            except FileNotFoundError:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self._path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
            self._size = 0
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            if self.fsync:
                os.fdatasync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, self._size)  # no half-request for a later recovery to replay
            except OSError:
                pass
            raise
        self._size += len(data)

    def rotate(self, count: int) -> Segment | None:
        """Close the open segment (it holds the ``count`` records being flushed) and return it.

        Called under the same lock as :meth:`append`, when the flusher takes the buffer.
        """
        path = self._path
        self._close_segment()
        if path is None or count == 0:
            return None
        return Segment(path, count)

    # ------------------------------------------------------------------ recovery

    def recover(self) -> list[tuple[Segment, list[Record]]]:
        """Take over the segments of workers that are gone; returns them with their records."""
        owners = {
            _owner_of(path) for pattern in (f"*{SUFFIX}", "*.lock", "*.partial") for path in self.folder.glob(pattern)
        }
        owners.discard(self.owner)
        taken: list[tuple[Segment, list[Record]]] = []
        for owner in sorted(owners):
            lock_path = self.folder / f"{owner}.lock"
            try:
                fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
            except OSError as error:
                log.error("cannot open %s: %s", lock_path, error)
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its worker is alive
                for path in sorted(self.folder.glob(f"{owner}-*{SUFFIX}")):
                    recovered = self._adopt(path)
                    if recovered is not None:
                        taken.append(recovered)
                for path in self.folder.glob(f"{owner}-*.partial"):
                    _unlink(path)  # a shutdown write cut short: its records are still in the segments
                _unlink(lock_path)
            finally:
                os.close(fd)
        return taken

    def _adopt(self, path: Path) -> tuple[Segment, list[Record]] | None:
        mine = self.folder / f"{self.owner}-r{next(self._adopted):08d}{SUFFIX}"
        try:
            path.rename(mine)
            records = _read(mine)
        except OSError as error:
            log.error("cannot take over journal segment %s: %s", path.name, error)
            return None
        if not records:
            _unlink(mine)
            return None
        log.warning("sending %d emoji that a stopped ingest worker had accepted (%s)", len(records), path.name)
        return Segment(mine, len(records)), records

    # ------------------------------------------------------------------ internals

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._path, self._size = None, None, 0

    def _write_segment(self, records: Iterable[Record]) -> None:
        self._sequence += 1
        final = self.folder / f"{self.owner}-{self._sequence:08d}{SUFFIX}"
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = final.with_suffix(".partial")
        with open(partial, "wb") as out:
            out.write(b"".join(b"%s\t%s\n" % (key.encode(), value) for key, value in records))
            out.flush()
            os.fsync(out.fileno())
        partial.rename(final)


def _owner_of(path: Path) -> str:
    """``<pid>-<ns>`` from ``<pid>-<ns>.lock`` or ``<pid>-<ns>-<sequence>.seg``."""
    stem = path.name.split(".", 1)[0]
    return stem if path.suffix == ".lock" else stem.rsplit("-", 1)[0]


def _read(path: Path) -> list[Record]:
    records: list[Record] = []
    with open(path, "rb") as segment:
        for line in segment:
            if not line.endswith(b"\n"):
                break  # a write cut short by the crash: it was never answered 202
            key, _, value = line[:-1].partition(b"\t")
            if key and value:
                records.append((key.decode(), value))
    return records


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as error:
        log.error("cannot delete journal file %s: %s", path, error)
