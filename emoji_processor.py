"""The emoji processor: emoji per event in 2-second windows, with Spark Structured Streaming.

    emoji_topic ─► parse and validate ─► count per (event_id, window) ─► aggregated_emoji_topic
                          └─► poison records, with the reason ─► emoji_dead_letter_topic

Run it with ``python3 emoji_processor.py`` (Spark in local mode inside this process) or
``bin/spark-submit emoji_processor.py``; ``EMOSTREAM_SPARK_MASTER`` names a cluster.
SIGTERM or Ctrl-C stops it; the checkpoint folder keeps its place for the next start.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from emostream import logs
from emostream.processor.transforms import (
    REASONS,
    aggregate,
    aggregate_records,
    dead_letter_records,
    parse_records,
    rejected_records,
    valid_events,
)
from emostream.processor.dead_letters import batch_job
from emostream.processor.service import ACCEPTED, COUNTS_OBSERVATION, Processor
from emostream.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger("emostream.processor")

QUERY_NAME = "emostream-aggregates"


def start_query(spark: SparkSession, settings: Settings) -> StreamingQuery:
    """Source → parse → aggregate → sink."""
    records = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("subscribe", settings.emoji_topic)
        # A first start counts everything ingest accepted; later starts resume from the checkpoint.
        .option("startingOffsets", "earliest")
        # Records that retention deleted before we read them are gone either way: log, do not stop.
        .option("failOnDataLoss", "false")
        .options(**max_offsets(settings))
        # The connector asks the broker for the partition's offset range after every poll: with
        # the consumer's 500 records a poll, those round trips held catch-up to 139,000 emoji/s.
        .option("kafka.max.poll.records", "20000")
        .option("kafka.max.partition.fetch.bytes", str(4 * 1024 * 1024))
        # After its last poll a task's consumer has a fetch waiting at the broker for new records,
        # and the broker answers a connection's requests in order: the next batch's offset-range
        # request waited behind it until ingest's next flush, or 500 ms. The source reads only
        # ranges it knows exist, so it never needs a fetch that waits.
        .option("kafka.fetch.max.wait.ms", "0")
        .load()
    )

    parsed = parse_records(records, settings)
    # Poison is only counted here; emostream.processor.dead_letters writes it out (see there why).
    counted = parsed.observe(
        COUNTS_OBSERVATION,
        F.count_if(F.col("reason").isNull()).alias(ACCEPTED),
        *[F.count_if(F.col("reason") == reason).alias(reason) for reason in REASONS],
    )

    aggregates = aggregate(valid_events(counted), settings)

    # Update mode: each micro-batch rewrites the windows it changed with their counts so
    # far, so viewers see a window fill up; the key makes a replayed record an overwrite.
    return (
        aggregate_records(aggregates)
        .writeStream.queryName(QUERY_NAME)
        .format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("topic", settings.aggregate_topic)
        .option("checkpointLocation", checkpoint(settings, "aggregates"))
        .outputMode("update")
        .trigger(processingTime=f"{settings.trigger_ms} milliseconds")
        .start()
    )


def dead_letters_of(records: DataFrame, settings: Settings) -> DataFrame:
    """The dead-letter records among raw Kafka records: the same parse, the rejected side."""
    return dead_letter_records(rejected_records(parse_records(records, settings)))


def max_offsets(settings: Settings) -> dict[str, str]:
    if settings.max_offsets_per_trigger > 0:
        return {"maxOffsetsPerTrigger": str(settings.max_offsets_per_trigger)}
    return {}


def checkpoint(settings: Settings, name: str) -> str:
    # A string join, not a Path: on a cluster the folder is a URL such as hdfs://...
    return f"{settings.checkpoint_dir.rstrip('/')}/{name}"


def create_processor(spark: SparkSession, settings: Settings) -> Processor:
    """The processor service: the query running, dead letters followed, /healthz and /metrics served."""
    return Processor(
        spark,
        settings,
        query_name=QUERY_NAME,
        start_query=lambda: start_query(spark, settings),
        write_dead_letters=batch_job(spark, settings, lambda records: dead_letters_of(records, settings)),
        dead_letter_position=checkpoint(settings, "dead-letters.json"),
    )


def main() -> int:
    settings = Settings.from_env()
    logs.configure(settings)
    from emostream.processor.spark import session

    spark = session(settings)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("%s: stopping; the checkpoint keeps the place for the next start", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    processor = create_processor(spark, settings)
    try:
        code = processor.run_until(stop)
    finally:
        processor.stop()
        try:
            spark.stop()
        except Exception as error:  # the JVM got the same signal and may be gone already
            log.debug("stopping Spark: %s", error)
    log.info("processor stopped")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
