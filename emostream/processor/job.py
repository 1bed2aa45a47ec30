"""The processor's Spark jobs: Kafka at the edges, the transforms of transforms.py between.

    emoji_topic ─► parse and validate ─► count per (event_id, window) ─► aggregated_emoji_topic
                          └─► poison records, with the reason ─► emoji_dead_letter_topic

The streaming query writes the aggregates and only counts its rejects; the dead-letter
batch job reads again the offset ranges that had any and writes them (see dead_letters.py).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from emostream.kafka.security import spark_kafka_options
from emostream.kafka.topic_specs import PROCESSOR_GROUP_PREFIX
from emostream.processor import ACCEPTED, COUNTS_OBSERVATION, QUERY_NAME, WARM_UP_QUERY_NAME
from emostream.processor.transforms import (
    REASONS,
    aggregate,
    aggregate_records,
    dead_letter_records,
    parse_records,
    rejected_records,
    valid_events,
)
from emostream.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import DataStreamWriter, StreamingQuery

    from emostream.processor.dead_letters import Offsets

log = logging.getLogger("emostream.processor.dead_letters")


def start_query(spark: SparkSession, settings: Settings) -> StreamingQuery:
    """Source → parse → aggregate → sink, as a streaming query named :data:`QUERY_NAME`."""
    return query_writer(spark, settings).start()


def query_writer(spark: SparkSession, settings: Settings) -> DataStreamWriter:
    """The query of :func:`start_query`, built but not started (a standby builds it while it waits)."""
    records = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .options(**spark_kafka_options(settings))
        # Group ids under the prefix the processor's ACL names (a secured cluster allows no other).
        .option("groupIdPrefix", PROCESSOR_GROUP_PREFIX)
        .option("subscribe", settings.emoji_topic)
        # A first start counts everything ingest accepted; later starts resume from the checkpoint.
        .option("startingOffsets", "earliest")
        # Records that retention deleted before we read them are gone either way: log, do not stop.
        .option("failOnDataLoss", "false")
        .options(**max_offsets(settings))
        # The connector asks the broker for the partition's offset range after every poll: with
        # the consumer's default of 500 records a poll, those round trips, not the counting,
        # set how fast a backlog was read.
        .option("kafka.max.poll.records", "20000")
        .option("kafka.max.partition.fetch.bytes", str(4 * 1024 * 1024))
        # After its last poll a task's consumer has a fetch waiting at the broker for new records,
        # and the broker answers a connection's requests in order: the next batch's offset-range
        # request waited behind it until ingest's next flush. The source reads only ranges it
        # knows exist, so it never needs a fetch that waits.
        .option("kafka.fetch.max.wait.ms", "0")
        .load()
    )

    parsed = parse_records(records, settings)
    # Poison is only counted here; write_dead_letters writes it out (dead_letters.py says why).
    aggregates = aggregate(valid_events(observe_counts(parsed)), settings)

    # Update mode: each micro-batch rewrites the windows it changed with their counts so
    # far, so viewers see a window fill up; the key makes a replayed record an overwrite.
    return (
        aggregate_records(aggregates)
        .writeStream.queryName(QUERY_NAME)
        .format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .options(**spark_kafka_options(settings))
        .option("topic", settings.aggregate_topic)
        .option("checkpointLocation", checkpoint(settings, "aggregates"))
        .outputMode("update")
        .trigger(processingTime=f"{settings.trigger_ms} milliseconds")
    )


def observe_counts(parsed: DataFrame) -> DataFrame:
    """``parsed`` with its accepted and rejected counts reported in each micro-batch's progress."""
    return parsed.observe(
        COUNTS_OBSERVATION,
        F.count_if(F.col("reason").isNull()).alias(ACCEPTED),
        *[F.count_if(F.col("reason") == reason).alias(reason) for reason in REASONS],
    )


def start_warm_up(spark: SparkSession, settings: Settings, location: str) -> StreamingQuery:
    """The aggregate query's transforms over made-up emoji, into no sink: a standby's warm-up.

    Spark's rate source stands in for Kafka so that every batch has rows, and the same parse,
    windowed count and record building run in micro-batches with a state store of their own
    (at ``location``): the classes, generated code and JIT-compiled paths the real query needs
    are ready when the standby takes over. Nothing is written anywhere.
    """
    kinds = F.array(*[F.lit(emoji) for emoji in settings.emoji_types])
    made_up = spark.readStream.format("rate").option("rowsPerSecond", "200").load()
    now = F.unix_millis("timestamp")
    records = made_up.select(
        F.lit(None).cast("binary").alias("key"),
        F.to_json(
            F.struct(
                F.concat(F.lit("warm-up-"), F.col("value").cast("string")).alias("user_id"),
                F.element_at(kinds, (F.col("value") % len(settings.emoji_types) + 1).cast("int")).alias("emoji_type"),
                now.alias("timestamp"),
                F.lit("warm-up").alias("event_id"),
                now.alias("received_at"),
            )
        )
        .cast("binary")
        .alias("value"),
        F.lit(settings.emoji_topic).alias("topic"),
        F.lit(0).alias("partition"),
        F.col("value").alias("offset"),
    )
    aggregates = aggregate(valid_events(observe_counts(parse_records(records, settings))), settings)
    return (
        aggregate_records(aggregates)
        .writeStream.queryName(WARM_UP_QUERY_NAME)
        .format("noop")
        .option("checkpointLocation", location)
        .outputMode("update")
        .trigger(processingTime=f"{settings.trigger_ms} milliseconds")
        .start()
    )


def warm_up_kafka(spark: SparkSession, settings: Settings) -> None:
    """Write no records to the aggregate topic, as the query would: a standby's warm-up of the sink.

    Connects a producer with the sink's own configuration, which Spark keeps in its producer
    pool for the query to reuse while it is fresh.
    """
    (
        spark.range(1)
        .where("id < 0")
        .selectExpr("CAST(NULL AS STRING) AS key", "CAST(NULL AS STRING) AS value")
        .write.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("topic", settings.aggregate_topic)
        .save()
    )


def dead_letters_of(records: DataFrame, settings: Settings) -> DataFrame:
    """The dead-letter records among raw Kafka records: the query's parse, the rejected side."""
    return dead_letter_records(rejected_records(parse_records(records, settings)))


def write_dead_letters(spark: SparkSession, settings: Settings, start: Offsets | None, end: Offsets) -> int:
    """A Spark batch job: the rejects among ``[start, end)`` of ``emoji_topic`` to the dead-letter topic.

    ``start`` None means the topic's earliest offsets. Returns how many it wrote.
    """
    partitions = {topic: sorted(int(p) for p in parts) for topic, parts in end.items()}
    # Spark wants every assigned partition in startingOffsets; -2 is the earliest offset.
    first = {
        topic: {str(p): min((start or {}).get(topic, {}).get(str(p), -2), end[topic][str(p)]) for p in parts}
        for topic, parts in partitions.items()
    }
    records = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .options(**spark_kafka_options(settings))
        .option("groupIdPrefix", PROCESSOR_GROUP_PREFIX)
        .option("assign", json.dumps(partitions))
        .option("startingOffsets", json.dumps(first))
        .option("endingOffsets", json.dumps(end))
        .option("failOnDataLoss", "false")
        .load()
    )
    # Poison is rare: one pass over the range keeps just the rejects in memory to count and write them.
    letters = dead_letters_of(records, settings).persist()
    try:
        written = letters.count()
        if written:
            (
                letters.write.format("kafka")
                .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
                .options(**spark_kafka_options(settings))
                .option("topic", settings.dead_letter_topic)
                .save()
            )
            log.info("wrote %d dead letter(s) to %s", written, settings.dead_letter_topic)
    finally:
        letters.unpersist()
    return written


def max_offsets(settings: Settings) -> dict[str, str]:
    if settings.max_offsets_per_trigger > 0:
        return {"maxOffsetsPerTrigger": str(settings.max_offsets_per_trigger)}
    return {}


def checkpoint(settings: Settings, name: str) -> str:
    # A string join, not a Path: on a cluster the folder is a URL such as hdfs://...
    return f"{settings.checkpoint_dir.rstrip('/')}/{name}"
