"""The processor's running service around its streaming query.

A StreamingQueryListener turns each micro-batch's progress into Prometheus metrics, a
summary log line every few seconds, and work for the dead-letter writer; an
:class:`~emostream.http.OpsServer` answers ``/healthz`` and ``/metrics``; :class:`Processor`
owns the query: built, then ``start()``-ed, and stopped on request.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pyspark.sql.streaming import StreamingQueryListener
from pyspark.sql.streaming.listener import JStreamingQueryListener, QueryProgressEvent

from emostream.http import OK, STARTING, UNAVAILABLE, Health, OpsServer
from emostream.processor import ACCEPTED, COUNTS_OBSERVATION, QUERY_NAME
from emostream.processor.dead_letters import BatchRange, DeadLetterWriter, PositionFile, offsets
from emostream.processor.job import checkpoint, start_query, write_dead_letters
from emostream.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery
    from pyspark.sql.streaming.listener import StreamingQueryProgress

log = logging.getLogger("emostream.processor")

SUMMARY_EVERY_SECONDS = 10.0
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
            "emostream_processor_late_rows", "Emoji dropped because their window had closed (watermark).", registry=r
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
            log.info("first micro-batch %d (%s): %d records", progress.batchId, how, rows)
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


class Processor:
    """The running processor: the streaming query, its listener, the dead-letter writer, /healthz and /metrics.

    Building one starts nothing; :meth:`start` starts the query and the endpoint, :meth:`stop`
    stops them (the checkpoint keeps the query's place for the next start).
    """

    def __init__(self, spark: SparkSession, settings: Settings):
        self.spark = spark
        self.settings = settings
        self.metrics = ProcessorMetrics()
        self.query: StreamingQuery | None = None
        self.ops: OpsServer | None = None
        self.dead_letters = DeadLetterWriter(
            PositionFile(spark, checkpoint(settings, "dead-letters.json")),
            functools.partial(write_dead_letters, spark, settings),
            on_written=self.metrics.dead_letters.inc,
        )
        self.listener = ProgressListener(self.metrics, QUERY_NAME, settings.trigger_ms, self._on_batch)

    def start(self) -> Processor:
        settings = self.settings
        try:
            self.dead_letters.start()
            # Listening before the query starts, so not even its first batch is missed.
            self.spark.streams.addListener(self.listener)
            self.query = start_query(self.spark, settings)
            self.listener.watch(self.query)
            self.ops = OpsServer(
                "processor", settings.ops_host, settings.processor_metrics_port, self.health, self.metrics.registry
            ).start()
        except BaseException:
            self.stop()
            raise
        log.info(
            "counting %s into %s (dead letters: %s); %d s windows, trigger %d ms, watermark %d ms, "
            "checkpoint %s (through %s); /healthz and /metrics on %s:%d",
            settings.emoji_topic,
            settings.aggregate_topic,
            settings.dead_letter_topic,
            settings.window_seconds,
            settings.trigger_ms,
            settings.watermark_ms,
            settings.checkpoint_dir,
            checkpoint_file_system(self.spark, settings.checkpoint_dir),
            settings.ops_host,
            self.ops.port,
        )
        return self

    def _on_batch(self, batch: BatchRange) -> None:
        self.dead_letters.on_batch(batch)
        self.metrics.dead_letter_backlog.set(self.dead_letters.pending)

    def health(self) -> Health:
        """ok while the query runs, unavailable once it has stopped, starting before :meth:`start`."""
        status = self.listener.status
        letters = self.dead_letters
        self.metrics.dead_letter_backlog.set(letters.pending)
        return Health(
            STARTING if self.query is None else OK if status.active else UNAVAILABLE,
            {
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
        """Wait for ``stop`` (a signal) or a failed query; 0 when asked to stop, 1 on failure."""
        while not stop.wait(0.5):
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
        """Stop the query (its checkpoint keeps the place), the dead-letter writer and the endpoint."""
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


def checkpoint_file_system(spark: SparkSession, location: str) -> str:
    """The Hadoop file system class the checkpoint is written through (see emostream.processor.spark)."""
    path = spark._jvm.org.apache.hadoop.fs.Path(location)
    return path.getFileSystem(spark._jsc.hadoopConfiguration()).getClass().getSimpleName()
