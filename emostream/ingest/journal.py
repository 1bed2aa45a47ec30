"""The ingest write-ahead journal: a 202 means the emoji is on disk, not only in memory.

Request threads append each accepted request's records to the worker's open journal segment
(under the buffer's lock) before ingest answers 202. Every flush closes the segment that
holds the flushed records; once Kafka has acknowledged each record of a segment, the
producer's acknowledgement callback deletes its files. What remains on disk is therefore
exactly what was answered 202 and not yet acknowledged by Kafka.

A segment file is memory-mapped (shared) and space for it is allocated up front, so an
append is a copy into the kernel's page cache with no system call: a ``write`` would release
Python's GIL and make the request thread queue for it again behind the flusher, a large part
of the single-emoji request rate. A worker that dies, even by SIGKILL, leaves its
segments behind: once copied, the data belongs to the page cache, so only a machine crash
before the kernel writes it out can lose it (set ``EMOSTREAM_INGEST_JOURNAL_FSYNC=true`` to
sync every append; it costs a disk flush per request). Allocating and mapping a file takes a few
milliseconds, so the flusher maps the next one ahead (a ``.spare``) and a request only renames it. Each request ends with a commit line,
copied after its records: records after the last commit line (a copy cut short by the kill)
were never answered and are not replayed. Every worker looks for orphaned segments when it starts and then twice a
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

Segment lines are ``key TAB value NEWLINE``, and ``RS NEWLINE`` (0x1E) commits a request; the
unused end of a file is zeros. Keys are validated user ids (no tabs or newlines) and values are
compact JSON, which escapes control characters.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import mmap
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

Record = tuple[str, bytes]  # (Kafka key, JSON value)

SUFFIX = ".seg"
SPARE = ".spare"  # mapped ahead of need, holds nothing yet
COMMIT = b"\x1e\n"
# Space a segment file reserves; a flush interval's records normally fit in one, even at the
# highest rates a worker takes, and more files follow when they do not.
FILE_BYTES = 16 * 1024 * 1024


class Segment:
    """Records on disk (one file or a few), deleted when Kafka has acknowledged all of them."""

    __slots__ = ("paths", "left", "_lock")

    def __init__(self, paths: Sequence[Path], count: int):
        self.paths = tuple(paths)
        self.left = count
        self._lock = threading.Lock()

    def acknowledged(self, _metadata: object = None) -> None:
        """A producer callback: one more record of this segment is in Kafka."""
        with self._lock:
            self.left -= 1
            done = self.left == 0
        if done:
            for path in self.paths:
                _unlink(path)


class Journal:
    """One worker's segments in ``folder``; every method but :meth:`append` runs on the flusher thread."""

    def __init__(self, folder: Path, fsync: bool = False):
        self.folder = Path(folder)
        self.fsync = fsync
        self.owner = f"{os.getpid()}-{time.time_ns()}"
        self._lock_fd: int | None = None
        # The open segment: its full files, and the one being filled (created by the first append
        # after a rotation), mapped, with the offset where the next request goes.
        self._filled: list[Path] = []
        self._path: Path | None = None
        self._map: mmap.mmap | None = None
        self._offset = 0
        self._numbers = itertools.count(1)  # file numbers of this worker (next() is atomic)
        self._spare: tuple[Path, mmap.mmap] | None = None  # a file the flusher mapped ahead of need

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
        self._drop_spare()
        keep = self._write_segment(leftover).name if leftover else None
        for path in self.folder.glob(f"{self.owner}-*{SUFFIX}"):
            if path.name != keep:
                _unlink(path)  # partly acknowledged segments: their unacknowledged rest is in ``keep``
        if self._lock_fd is not None:
            _unlink(self.folder / f"{self.owner}.lock")
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ request threads

    def append(self, records: Sequence[Record]) -> None:
        """Copy ``records`` into the open segment; raises OSError (disk full) having copied nothing."""
        data = b"".join(b"%s\t%s\n" % (key.encode(), value) for key, value in records)
        end = self._offset + len(data) + len(COMMIT)
        if self._map is None or end > len(self._map):
            self._next_file(len(data) + len(COMMIT))
            end = len(data) + len(COMMIT)
        start = self._offset
        self._map[start : start + len(data)] = data
        self._map[end - len(COMMIT) : end] = COMMIT  # after the records: a cut-short copy has no commit
        self._offset = end
        if self.fsync:
            page = start - start % mmap.PAGESIZE
            self._map.flush(page, end - page)

    def _next_file(self, need: int) -> None:
        """Close the file being filled and map a new one with room for at least ``need`` bytes."""
        if self._path is not None:
            self._filled.append(self._path)
        self._finish_file()
        spare, self._spare = self._spare, None
        if spare is not None and len(spare[1]) >= need:
            path = spare[0].with_suffix(SUFFIX)
            try:
                spare[0].rename(path)  # a segment from now on
            except OSError:
                self._discard(spare)
                raise
            self._path, self._map = path, spare[1]
        else:
            if spare is not None:
                self._discard(spare)
            self._path, self._map = self._map_new(max(FILE_BYTES, need))
        self._offset = 0

    # ------------------------------------------------------------------ flusher thread

    def make_spare(self) -> tuple[Path, mmap.mmap] | None:
        """Map the next file ahead of need (outside the buffer's lock); None when it cannot."""
        if self._spare is not None:
            return None
        try:
            return self._map_new(FILE_BYTES, SPARE)
        except OSError as error:
            log.warning("cannot prepare a journal file: %s", error)  # a request will try, and get 503
            return None

    def offer_spare(self, spare: tuple[Path, mmap.mmap] | None) -> None:
        """Keep ``spare`` for the next request that needs a file (under the buffer's lock)."""
        if spare is None:
            return
        if self._spare is None:
            self._spare = spare
        else:
            self._discard(spare)

    def _map_new(self, size: int, suffix: str = SUFFIX) -> tuple[Path, mmap.mmap]:
        path = self.folder / f"{self.owner}-{next(self._numbers):08d}{suffix}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        except FileNotFoundError:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            if hasattr(os, "posix_fallocate"):
                # Real blocks now: a full disk fails here, not later as SIGBUS on a copy into a hole.
                os.posix_fallocate(fd, 0, size)
            else:  # macOS: a sparse file
                os.ftruncate(fd, size)
            mapped = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(fd)
            _unlink(path)
            raise
        os.close(fd)  # the mapping keeps the file
        return path, mapped

    def _discard(self, spare: tuple[Path, mmap.mmap]) -> None:
        spare[1].close()
        _unlink(spare[0])

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            self._discard(spare)

    def rotate(self, count: int) -> Segment | None:
        """Close the open segment (it holds the ``count`` records being flushed) and return it.

        Called under the same lock as :meth:`append`, when the flusher takes the buffer.
        """
        paths = self._filled + ([self._path] if self._path is not None else [])
        self._close_segment()
        if not paths or count == 0:
            return None
        return Segment(paths, count)

    # ------------------------------------------------------------------ recovery

    def recover(self) -> list[tuple[Segment, list[Record]]]:
        """Take over the segments of workers that are gone; returns them with their records."""
        owners = {
            _owner_of(path)
            for pattern in (f"*{SUFFIX}", "*.lock", "*.partial", f"*{SPARE}")
            for path in self.folder.glob(pattern)
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
                for path in [*self.folder.glob(f"{owner}-*.partial"), *self.folder.glob(f"{owner}-*{SPARE}")]:
                    _unlink(path)  # a shutdown write cut short (its records are still in the segments), or a spare
                _unlink(lock_path)
            finally:
                os.close(fd)
        return taken

    def _adopt(self, path: Path) -> tuple[Segment, list[Record]] | None:
        mine = self.folder / f"{self.owner}-{next(self._numbers):08d}{SUFFIX}"
        try:
            path.rename(mine)
            records = read_segment(mine)
        except OSError as error:
            log.error("cannot take over journal segment %s: %s", path.name, error)
            return None
        if not records:
            _unlink(mine)
            return None
        log.warning("sending %d emoji that a stopped ingest worker had accepted (%s)", len(records), path.name)
        return Segment([mine], len(records)), records

    # ------------------------------------------------------------------ internals

    def _close_segment(self) -> None:
        self._finish_file()
        self._filled, self._path, self._offset = [], None, 0

    def _finish_file(self) -> None:
        """Unmap the file being filled and give back the reserved space it did not use."""
        if self._map is None:
            return
        self._map.close()
        self._map = None
        if self._path is not None:
            try:
                os.truncate(self._path, self._offset)
            except OSError:
                pass

    def _write_segment(self, records: Iterable[Record]) -> Path:
        final = self.folder / f"{self.owner}-{next(self._numbers):08d}{SUFFIX}"
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = final.with_suffix(".partial")
        with open(partial, "wb") as out:
            out.write(b"".join(b"%s\t%s\n" % (key.encode(), value) for key, value in records) + COMMIT)
            out.flush()
            os.fsync(out.fileno())
        partial.rename(final)
        return final


def _owner_of(path: Path) -> str:
    """``<pid>-<ns>`` from ``<pid>-<ns>.lock`` or ``<pid>-<ns>-<sequence>.seg``."""
    stem = path.name.split(".", 1)[0]
    return stem if path.suffix == ".lock" else stem.rsplit("-", 1)[0]


def read_segment(path: Path) -> list[Record]:
    """The committed records of a segment file: up to its last commit line, before the zeros."""
    data = path.read_bytes()
    data = data.split(b"\x00", 1)[0]
    committed = data.rfind(COMMIT)
    records: list[Record] = []
    for line in data[: max(0, committed)].split(b"\n"):
        key, tab, value = line.partition(b"\t")
        if tab and key and value:
            records.append((key.decode(), value))
    return records


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as error:
        log.error("cannot delete journal file %s: %s", path, error)
