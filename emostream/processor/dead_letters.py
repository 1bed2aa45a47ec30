"""Dead letters without reading the stream twice.

A streaming query has one sink, and Spark runs only one stateful aggregation per
update-mode query, so the aggregate query cannot also write its rejects. A second
streaming query would read and parse every record again, a large share of the processor's
work, for the few records that are poison. Instead the aggregate query only counts its
rejects (``Dataset.observe``), and this writer reads again just the offset ranges of the
micro-batches that had any, with the batch job of emostream.processor.job, and writes
their rejects with the reason. A batch without poison costs nothing here.

Every poison record is written at least once: the writer saves how far it has
written (Kafka offsets) in the checkpoint folder, and after a crash it also reads
the range between that position and where the aggregate query resumes.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("emostream.processor.dead_letters")

Offsets = dict[str, dict[str, int]]  # {topic: {partition: offset}}, as Spark's progress reports them
SAVE_EVERY_SECONDS = 10.0
RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class BatchRange:
    """What the aggregate query read in one micro-batch, and how many of those records it rejected."""

    batch_id: int
    start: Offsets | None  # None: the topic's earliest offsets (the query's first batch)
    end: Offsets
    rejected: int | None  # None: unknown, so the range must be read


def offsets(text: str | None) -> Offsets | None:
    """Offsets from a progress report's JSON; None for a first batch ("None": pyspark's str of null)."""
    try:
        parsed = json.loads(text) if text else None
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        return None
    return {topic: {str(p): int(o) for p, o in parts.items()} for topic, parts in parsed.items()}


class PositionFile:
    """A small JSON file in the checkpoint folder, through Hadoop's file system (local, HDFS, S3...)."""

    def __init__(self, spark: SparkSession, location: str):
        jvm = spark._jvm
        self._jvm = jvm
        self._gateway = spark.sparkContext._gateway
        self._conf = spark._jsc.hadoopConfiguration()
        self._path = jvm.org.apache.hadoop.fs.Path(location)
        self._fs = self._path.getFileSystem(self._conf)

    def read(self) -> Any:
        if not self._fs.exists(self._path):
            return None
        stream = self._fs.open(self._path)
        try:
            return json.loads(self._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
        except json.JSONDecodeError:
            log.warning("%s is not JSON; following dead letters from the start again", self._path.toString())
            return None
        finally:
            stream.close()

    def write(self, value: Any) -> None:
        """Write a temporary file and rename it over the old one, so a crash leaves one or the other."""
        jvm = self._jvm
        temporary = jvm.org.apache.hadoop.fs.Path(self._path.toString() + ".tmp")
        stream = self._fs.create(temporary, True)
        try:
            stream.write(bytearray(json.dumps(value).encode()))
        finally:
            stream.close()
        if self._fs.getScheme() == "file":
            # rename(2) replaces the old file atomically; FileContext's rename would first run
            # readlink as a program on each path (see emostream.processor.spark).
            if not self._fs.rename(temporary, self._path):
                raise OSError(f"could not rename {temporary.toString()} to {self._path.toString()}")
            return
        context = jvm.org.apache.hadoop.fs.FileContext.getFileContext(self._path.toUri(), self._conf)
        overwrite = self._gateway.new_array(jvm.org.apache.hadoop.fs.Options.Rename, 1)
        overwrite[0] = jvm.org.apache.hadoop.fs.Options.Rename.OVERWRITE
        context.rename(temporary, self._path, overwrite)


class DeadLetterWriter:
    """Follows the aggregate query's micro-batches and writes the rejects of those that had any.

    ``write_range(start, end)`` is the Spark batch job (read, parse, write rejects);
    it runs on a thread of its own, in batch order, never inside Spark's listener.
    :meth:`start` reads the saved position and starts that thread.
    """

    def __init__(
        self,
        position_file: PositionFile,
        write_range: Callable[[Offsets | None, Offsets], int],
        on_written: Callable[[int], None] = lambda n: None,
    ):
        self._position_file = position_file
        self._write_range = write_range
        self._on_written = on_written
        self.position: Offsets | None = None
        self.written = 0
        self.last_error: str | None = None
        self._saved_at = time.monotonic()
        self._unsaved = False
        self._batches: queue.Queue[BatchRange | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dead-letters", daemon=True)

    def start(self) -> DeadLetterWriter:
        saved = self._position_file.read()
        self.position = saved["written_through"] if saved else None
        self._thread.start()
        return self

    @property
    def pending(self) -> int:
        return self._batches.qsize()

    def on_batch(self, batch: BatchRange) -> None:
        """Called for every completed micro-batch of the aggregate query, in order."""
        self._batches.put(batch)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued if it is quick; what is not written is read again after a restart."""
        if not self._thread.is_alive():
            return
        self._batches.put(None)
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join(1.0)

    def _run(self) -> None:
        while True:
            batch = self._batches.get()
            if batch is None:
                break
            # Take everything queued, so a backlog of batches becomes one read.
            batches = [batch]
            while not self._batches.empty():
                following = self._batches.get()
                if following is None:
                    self._batches.put(None)
                    break
                batches.append(following)
            self._follow(batches)
        self._save()

    def _follow(self, batches: list[BatchRange]) -> None:
        # A batch needs reading when it had rejects, when its count is unknown, or when it does
        # not start where we are (the batches between were never seen: a crash). One read covers
        # everything from the first such batch through the last.
        through: BatchRange | None = None
        read_from = position = self.position
        for batch in batches:
            if batch.rejected != 0 or batch.start != position:
                if through is None:
                    read_from = position
                through = batch
            position = batch.end
        while through is not None:
            if self._stop.is_set():
                return  # not written: the saved position stays before it, so a restart reads it again
            try:
                written = self._write_range(read_from, through.end)
                self.written += written
                self._on_written(written)
                self.last_error = None
                break
            except Exception as error:  # Kafka or Spark trouble: keep the place and try again
                self.last_error = str(error)
                log.warning("could not write dead letters up to batch %d, retrying: %s", through.batch_id, error)
                if self._stop.wait(RETRY_SECONDS):
                    return
        self.position = position
        self._unsaved = True
        if through is not None or time.monotonic() - self._saved_at >= SAVE_EVERY_SECONDS:
            self._save()

    def _save(self) -> None:
        if not self._unsaved:
            return
        try:
            self._position_file.write({"written_through": self.position})
            self._unsaved = False
            self._saved_at = time.monotonic()
        except Exception as error:  # the next batch saves again; a restart re-reads a little more
            log.warning("could not save the dead-letter position: %s", error)
