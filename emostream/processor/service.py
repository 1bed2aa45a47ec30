"""The processor's running service around its streaming query.

A StreamingQueryListener turns each micro-batch's progress into Prometheus metrics, a
summary log line every few seconds, and work for the dead-letter writer; an
:class:`~emostream.http.OpsServer` answers ``/healthz`` and ``/metrics``; :class:`Processor`
owns the query: built, then ``start()``-ed, and stopped on request.

Several processors may run on one checkpoint: the one holding the checkpoint's lock (lock.py)
is active and counts; the others wait as standbys, their SparkSession started and warmed on
made-up emoji, polling the lock. When the active one dies the kernel frees the lock, and a
standby takes it and starts the query from the checkpoint: a second or two, where starting a
new processor took a JVM, a session and cold first batches.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pyspark.sql.streaming import StreamingQueryListener
from pyspark.sql.streaming.listener import JStreamingQueryListener, QueryProgressEvent

from emostream.http import OK, STARTING, UNAVAILABLE, Health, OpsServer
from emostream.processor import ACCEPTED, COUNTS_OBSERVATION, QUERY_NAME
from emostream.processor.dead_letters import BatchRange, DeadLetterWriter, PositionFile, offsets
from emostream.processor.job import checkpoint, query_writer, start_warm_up, warm_up_kafka, write_dead_letters
from emostream.processor.lock import CheckpointLock, lock_path
from emostream.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import DataStreamWriter, StreamingQuery
    from pyspark.sql.streaming.listener import StreamingQueryProgress

log = logging.getLogger("emostream.processor")

SUMMARY_EVERY_SECONDS = 10.0
ACTIVE = "active"
STANDBY = "standby"
LOCK_POLL_SECONDS = 0.1
WARM_UP_BATCHES = 8  # micro-batches with rows before the warm-up query stops
WARM_UP_SECONDS = 120.0  # and at the latest after this long (a cluster may have no cores to give)
KAFKA_WARM_UP_EVERY_SECONDS = 240.0  # within the life of Spark's idle pooled producers
PORT_WAIT_SECONDS = 30.0  # a stopping predecessor may still hold the active port for a moment
BATCH_SECONDS_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class ProcessorMetrics:
    """The processor's Prometheus metrics, on a registry of their own."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.batches = Counter("emostream_processor_batches", "Micro-batches completed.", registry=r)
        self.input_rows = Counter("emostream_processor_input_rows", "Kafka records read.", registry=r)
        self.accepted = Counter("emostream_processor_accepted", "Emoji that passed validation and count.", registry=r)
        self.rejected = Counter(
            "emostream_processor_rejected", "Poison records dropped, by reason.", ["reason"], registry=r
        )
        self.dead_letters = Counter(
            "emostream_processor_dead_letters", "Poison records written to the dead-letter topic.", registry=r
        )
        self.dead_letter_backlog = Gauge(
            "emostream_processor_dead_letter_backlog",
            "Micro-batches the dead-letter writer has yet to follow.",
            registry=r,
        )
        self.aggregates = Counter(
            "emostream_processor_aggregates", "Aggregate records written to the aggregate topic.", registry=r
        )
        self.late_rows = Counter(
            "emostream_processor_late_rows",
            # Spark counts the rows its aggregation dropped after the partial count, not the emoji.
            "Window updates dropped because the watermark had passed their window: a micro-batch's emoji "
            "of one window that came too late count once; any above 0 is acknowledged emoji not counted.",
            registry=r,
        )
        self.last_batch_seconds = Gauge(
            "emostream_processor_last_batch_duration_seconds", "Duration of the last micro-batch.", registry=r
        )
        self.last_batch_rows = Gauge(
            "emostream_processor_last_batch_rows", "Records read by the last micro-batch.", registry=r
        )
        self.batch_seconds = Histogram(
            "emostream_processor_batch_duration_seconds",
            "Micro-batch durations.",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        self.state_rows = Gauge(
            "emostream_processor_state_rows", "Open (event, window) counters held in Spark's state.", registry=r
        )
        self.query_up = Gauge("emostream_processor_query_up", "1 while the streaming query runs.", registry=r)
        self.active = Gauge(
            "emostream_processor_active",
            "1 while this processor holds the checkpoint's lock, 0 as the standby.",
            registry=r,
        )
        self.takeover_seconds = Gauge(
            "emostream_processor_takeover_seconds",
            "From taking the lock as the standby to the first micro-batch of the query.",
            registry=r,
        )


@dataclass
class _Summary:
    """What the query did since the last summary line."""

    batches: int = 0
    rows: int = 0
    slowest_ms: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class QueryStatus:
    active: bool = True
    batch_id: int | None = None
    last_progress_at: float | None = None
    error: str | None = None


class _ProgressAsJson(JStreamingQueryListener):
    """Hands progress reports to Python as one JSON string.

    pyspark builds each report from some forty calls into the JVM, several of them
    resolved by searching the class path, and at a sub-second trigger that showed up
    among the driver JVM's busiest work. One call for the report's JSON is cheap.
    """

    def onQueryProgress(self, jevent: Any) -> None:
        self.pylistener.onQueryProgress(QueryProgressEvent.fromJson(json.loads(jevent.json())))


class JsonProgressListener(StreamingQueryListener):
    """A StreamingQueryListener whose progress events arrive through :class:`_ProgressAsJson`."""

    @property
    def _jlistener(self) -> Any:
        if not hasattr(self, "_jlistenerobj"):
            from pyspark import SparkContext

            wrapper = SparkContext._jvm.PythonStreamingQueryListenerWrapper  # type: ignore[union-attr]
            self._jlistenerobj = wrapper(_ProgressAsJson(self))
        return self._jlistenerobj


class ProgressListener(JsonProgressListener):
    """Metrics, rate-limited progress logs and dead-letter work from the processor's query.

    Spark calls it for every query of the session, so it keeps to the one named
    ``query_name`` (known before the query starts, so not even its first batch is missed).
    """

    def __init__(
        self,
        metrics: ProcessorMetrics,
        query_name: str,
        trigger_ms: int,
        on_batch: Callable[[BatchRange], None],
        summary_every: float = SUMMARY_EVERY_SECONDS,
    ):
        self.metrics = metrics
        self.query_name = query_name
        self.trigger_ms = trigger_ms
        self.on_batch = on_batch
        self.summary_every = summary_every
        self.status = QueryStatus()
        self.query_id: str | None = None
        self._summary = _Summary()

    def watch(self, query: StreamingQuery) -> None:
        self.query_id = str(query.id)
        self.metrics.query_up.set(1)

    def onQueryStarted(self, event: Any) -> None:
        pass

    def onQueryIdle(self, event: Any) -> None:
        pass

    def onQueryProgress(self, event: Any) -> None:
        progress = event.progress
        if progress.name != self.query_name:
            return
        try:
            self._record(progress)
        except Exception:  # a metrics bug must never take the query down with it
            log.exception("could not record the progress of micro-batch %s", progress.batchId)

    def onQueryTerminated(self, event: Any) -> None:
        if str(event.id) != self.query_id:
            return
        self.status.active = False
        self.status.error = event.exception
        self.metrics.query_up.set(0)
        if event.exception:
            log.error("%s failed: %s", self.query_name, event.exception)
        else:
            log.info("%s stopped", self.query_name)

    def _record(self, progress: StreamingQueryProgress) -> None:
        m = self.metrics
        rows = int(progress.numInputRows)
        seconds = progress.batchDuration / 1000
        m.batches.inc()
        m.input_rows.inc(rows)
        m.last_batch_rows.set(rows)
        m.last_batch_seconds.set(seconds)
        m.batch_seconds.observe(seconds)
        counts = progress.observedMetrics.get(COUNTS_OBSERVATION) if progress.observedMetrics else None
        rejected: int | None = 0 if rows == 0 else None
        if counts is not None:
            by_reason = counts.asDict()
            m.accepted.inc(by_reason.pop(ACCEPTED) or 0)
            rejected = 0
            for reason, n in by_reason.items():
                if n:
                    m.rejected.labels(reason).inc(n)
                    rejected += n
        for operator in progress.stateOperators:
            # Update mode writes one record per (event, window) the batch changed.
            m.aggregates.inc(max(operator.numRowsUpdated, 0))
            m.late_rows.inc(max(operator.numRowsDroppedByWatermark, 0))
            m.state_rows.set(operator.numRowsTotal)
        source = progress.sources[0]
        self.on_batch(BatchRange(progress.batchId, offsets(source.startOffset), offsets(source.endOffset), rejected))

        first = self.status.batch_id is None
        self.status.batch_id = progress.batchId
        self.status.last_progress_at = time.time()
        summary = self._summary
        summary.batches += 1
        summary.rows += rows
        summary.slowest_ms = max(summary.slowest_ms, progress.batchDuration)
        elapsed = time.monotonic() - summary.started
        if first:
            how = "resumed from the checkpoint" if progress.batchId > 0 else "fresh checkpoint"
            log.info(
                "first micro-batch %d (%s): %d records in %d ms (%s)",
                progress.batchId,
                how,
                rows,
                progress.batchDuration,
                ", ".join(f"{step} {ms}" for step, ms in sorted(progress.durationMs.items(), key=lambda kv: -kv[1])),
            )
        if elapsed >= self.summary_every:
            self._summary = _Summary()
            log.log(
                logging.WARNING if summary.slowest_ms > self.trigger_ms else logging.INFO,
                "%d micro-batches, %d records (%.0f/s) in the last %.0f s; slowest %d ms (trigger %d ms)",
                summary.batches,
                summary.rows,
                summary.rows / elapsed,
                elapsed,
                summary.slowest_ms,
                self.trigger_ms,
            )


class WarmUp:
    """A standby's warm-up (job.start_warm_up, then job.warm_up_kafka now and then), on a thread of its own.

    The thread leaves the standby's main thread free to take the lock the moment it is free.
    """

    def __init__(self, spark: SparkSession, settings: Settings):
        self.spark = spark
        self.settings = settings
        # Beside the checkpoint, where executors can write too; removed when the warm-up query stops.
        self.location = f"{settings.checkpoint_dir.rstrip('/')}.warm-up-{uuid.uuid4().hex[:8]}"
        self.started = time.monotonic()
        self.batches = 0
        self.done = False
        self._stopped = threading.Event()
        self._query_lock = threading.Lock()
        self.query: StreamingQuery | None = start_warm_up(spark, settings, self.location)
        self._thread = threading.Thread(target=self._run, name="standby-warm-up", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        kafka_warmed_at: float | None = None
        while not self._stopped.wait(0.5):
            if not self.done:
                self._follow_query()
            elif kafka_warmed_at is None or time.monotonic() - kafka_warmed_at > KAFKA_WARM_UP_EVERY_SECONDS:
                kafka_warmed_at = time.monotonic()
                try:
                    warm_up_kafka(self.spark, self.settings)
                except Exception as error:  # the broker may be away; the query will say so if it still is
                    if not self._stopped.is_set():
                        log.warning("warm-up of the Kafka sink: %s", error)

    def _follow_query(self) -> None:
        query = self.query
        if query is None:  # stopped by a takeover
            return
        try:
            progress = query.recentProgress
            self.batches = sum(1 for p in progress if p.numInputRows > 0)
            finished = self.batches >= WARM_UP_BATCHES or not query.isActive
        except Exception as error:
            log.warning("warm-up: %s", error)
            finished = True
        if finished or time.monotonic() - self.started > WARM_UP_SECONDS:
            self._stop_query()
            # A full collection lets the JVM give back the heap the warm-up grew: a standby waits small.
            self.spark._jvm.java.lang.System.gc()
            self.done = True
            log.info(
                "standby warm: %d micro-batches of made-up emoji in %.0f s",
                self.batches,
                time.monotonic() - self.started,
            )

    def _stop_query(self) -> None:
        with self._query_lock:
            query, self.query = self.query, None
        if query is None:
            return
        try:
            query.stop()
        except Exception as error:
            log.debug("stopping the warm-up: %s", error)
        try:
            path = self.spark._jvm.org.apache.hadoop.fs.Path(self.location)
            path.getFileSystem(self.spark._jsc.hadoopConfiguration()).delete(path, True)
        except Exception as error:
            log.debug("removing %s: %s", self.location, error)

    def stop(self) -> None:
        self._stopped.set()
        self._stop_query()


class Processor:
    """The running processor: the streaming query, its listener, the dead-letter writer, /healthz and /metrics.

    Building one starts nothing. :meth:`start` takes the checkpoint's lock and starts the query
    and the endpoint; when another processor holds the lock, it starts as the standby instead
    (warm-up, endpoint on the standby port) and :meth:`run_until` takes over once the lock is
    free. :meth:`stop` stops it all (the checkpoint keeps the query's place for the next start).
    """

    def __init__(self, spark: SparkSession, settings: Settings):
        self.spark = spark
        self.settings = settings
        self.metrics = ProcessorMetrics()
        self.query: StreamingQuery | None = None
        self.ops: OpsServer | None = None
        self.role: str | None = None
        self.lock = CheckpointLock(spark, lock_path(settings))
        self.warm_up: WarmUp | None = None
        self.writer: DataStreamWriter | None = None
        self.standby_since: float | None = None
        self.took_over_at: float | None = None
        self.dead_letters = DeadLetterWriter(
            PositionFile(spark, checkpoint(settings, "dead-letters.json")),
            functools.partial(write_dead_letters, spark, settings),
            on_written=self.metrics.dead_letters.inc,
        )
        self.listener = ProgressListener(self.metrics, QUERY_NAME, settings.trigger_ms, self._on_batch)

    def start(self) -> Processor:
        settings = self.settings
        try:
            if self.lock.try_acquire():
                self._become_active()
            else:
                self.role = STANDBY
                self.standby_since = time.time()
                self.metrics.active.set(0)
                self.ops = self._ops(settings.processor_standby_metrics_port)
                log.info(
                    "standby: %s holds %s; warming up, and taking over when it is free; /healthz and /metrics on %s:%d",
                    _describe_holder(self.lock.holder()),
                    self.lock.path,
                    settings.ops_host,
                    self.ops.port,
                )
                self.warm_up = WarmUp(self.spark, settings)
                self.writer = query_writer(self.spark, settings)
        except BaseException:
            self.stop()
            raise
        return self

    def _become_active(self) -> None:
        settings = self.settings
        self.role = ACTIVE
        self.metrics.active.set(1)
        # Listening before the query starts, so not even its first batch is missed.
        self.spark.streams.addListener(self.listener)
        writer, self.writer = self.writer or query_writer(self.spark, settings), None
        self.query = writer.start()
        self.listener.watch(self.query)
        self.dead_letters.start()  # its first batch reaches it through a queue
        self.ops = self._ops(settings.processor_metrics_port, PORT_WAIT_SECONDS if self.took_over_at else 0.0)
        log.info(
            "counting %s into %s (dead letters: %s); %d s windows, trigger %d ms, watermark %d ms, "
            "checkpoint %s (through %s), lock %s; /healthz and /metrics on %s:%d",
            settings.emoji_topic,
            settings.aggregate_topic,
            settings.dead_letter_topic,
            settings.window_seconds,
            settings.trigger_ms,
            settings.watermark_ms,
            settings.checkpoint_dir,
            checkpoint_file_system(self.spark, settings.checkpoint_dir),
            self.lock.path,
            settings.ops_host,
            self.ops.port,
        )

    def _ops(self, port: int, wait: float = 0.0) -> OpsServer:
        deadline = time.monotonic() + wait
        while True:
            try:
                return OpsServer("processor", self.settings.ops_host, port, self.health, self.metrics.registry).start()
            except OSError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def take_over_if_free(self) -> bool:
        """As the standby: take the lock if it is free, and start counting; True once active."""
        if self.role == ACTIVE:
            return True
        if not self.lock.try_acquire():
            return False
        self.took_over_at = time.time()
        log.warning(
            "took over: the checkpoint's lock was free after %.1f s as the standby; starting the query",
            self.took_over_at - (self.standby_since or self.took_over_at),
        )
        if self.warm_up is not None:
            self.warm_up.stop()
        if self.ops is not None:
            self.ops.stop()
            self.ops = None
        self._become_active()
        return True

    def _on_batch(self, batch: BatchRange) -> None:
        if self.took_over_at is not None and self.listener.status.batch_id is None:
            self.metrics.takeover_seconds.set(time.time() - self.took_over_at)
        self.dead_letters.on_batch(batch)
        self.metrics.dead_letter_backlog.set(self.dead_letters.pending)

    def health(self) -> Health:
        """ok while the query runs or while waiting as a standby; unavailable once the query has stopped."""
        common = {"role": self.role, "pid": os.getpid(), "lock": str(self.lock.path)}
        if self.role == STANDBY:
            warm_up = self.warm_up
            return Health(
                OK,
                common
                | {
                    "standby_since": self.standby_since,
                    "holder": self.lock.holder(),
                    "warm": warm_up is not None and warm_up.done,
                    "warm_up_batches": warm_up.batches if warm_up else 0,
                },
            )
        status = self.listener.status
        letters = self.dead_letters
        self.metrics.dead_letter_backlog.set(letters.pending)
        return Health(
            STARTING if self.query is None else OK if status.active else UNAVAILABLE,
            common
            | {
                "took_over_at": self.took_over_at,
                "query": {
                    "name": self.listener.query_name,
                    "active": status.active,
                    "batch_id": status.batch_id,
                    "last_progress_at": status.last_progress_at,
                    "error": status.error,
                },
                "dead_letters": {"backlog": letters.pending, "written": letters.written, "error": letters.last_error},
            },
        )

    def run_until(self, stop: threading.Event) -> int:
        """Wait for ``stop`` (a signal) or a failed query; 0 when asked to stop, 1 on failure.

        A standby polls the lock meanwhile and takes over when it is free.
        """
        while not stop.wait(LOCK_POLL_SECONDS if self.role == STANDBY else 0.5):
            if self.role == STANDBY:
                self.take_over_if_free()
                continue
            if not self.listener.status.active or not self._active():
                if stop.is_set():
                    break
                log.error("the streaming query has stopped; exiting so that a supervisor restarts the processor")
                return 1
        return 0

    def _active(self) -> bool:
        try:
            return self.query is not None and self.query.isActive
        except Exception:  # the JVM is gone
            return False

    def stop(self) -> None:
        """Stop the query (its checkpoint keeps the place), the dead-letter writer and the endpoint, then free the lock."""
        if self.warm_up is not None:
            self.warm_up.stop()
        if self.query is not None:
            try:
                self.query.stop()
            except Exception as error:  # the JVM may already be shutting down on the same signal
                log.debug("stopping the query: %s", error)
        self.dead_letters.stop()
        try:
            self.spark.streams.removeListener(self.listener)
        except Exception as error:
            log.debug("removing the listener: %s", error)
        if self.ops is not None:
            self.ops.stop()
            self.ops = None
        # Last: a standby may start the query the moment the lock is free.
        self.lock.release()


def _describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another processor"
    return f"processor pid {holder.get('pid')} (JVM pid {holder.get('jvm_pid')}) on {holder.get('host')}"


def checkpoint_file_system(spark: SparkSession, location: str) -> str:
    """The Hadoop file system class the checkpoint is written through (see emostream.processor.spark)."""
    path = spark._jvm.org.apache.hadoop.fs.Path(location)
    return path.getFileSystem(spark._jsc.hadoopConfiguration()).getClass().getSimpleName()
