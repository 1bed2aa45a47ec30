"""The processor's pure transformations: raw Kafka records → events + rejects → aggregates.

Nothing here reads or writes Kafka: every function takes a DataFrame and returns one,
so the same code runs on the streaming source and on a small static DataFrame in tests.
All of it is Spark SQL expressions (no Python UDFs), so it runs inside the JVM at
Spark's speed and on a cluster exactly as on one machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

from emostream.settings import Settings
from emostream.wire import EVENT_ID_RE, USER_ID_RE, java_full_match

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

# The record ingest writes to emoji_topic (EmojiEvent.record()); _corrupt is where
# Spark's JSON reader puts a value it could not read into this shape.
CORRUPT = "_corrupt"
EVENT_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("emoji_type", T.StringType()),
        T.StructField("timestamp", T.LongType()),
        T.StructField("event_id", T.StringType()),
        T.StructField("received_at", T.LongType()),
        T.StructField(CORRUPT, T.StringType()),
    ]
)

# Why a record was rejected. A fixed set of phrases, so they can label metrics.
EMPTY = "empty value"
NOT_UTF8 = "not UTF-8 text"
NOT_JSON_OBJECT = "not a JSON object"
BAD_USER_ID = "user_id is missing or invalid"
BAD_EMOJI_TYPE = "emoji_type is missing or not a string"
UNKNOWN_EMOJI = "unknown emoji_type"
BAD_EVENT_ID = "event_id is missing or invalid"
BAD_TIMESTAMP = "timestamp is missing or not an integer"
BAD_RECEIVED_AT = "received_at is missing or not a positive integer"
REASONS = (
    EMPTY,
    NOT_UTF8,
    NOT_JSON_OBJECT,
    BAD_USER_ID,
    BAD_EMOJI_TYPE,
    UNKNOWN_EMOJI,
    BAD_EVENT_ID,
    BAD_TIMESTAMP,
    BAD_RECEIVED_AT,
)


def emoji_index(settings: Settings, emoji_type: Column) -> Column:
    """1-based position of ``emoji_type`` in the configured set, 0 when unknown.

    Whole-string comparison, so ❤ without its variation selector is not ❤️.
    """
    known = F.array(*[F.lit(emoji) for emoji in settings.emoji_types])
    return F.coalesce(F.array_position(known, emoji_type), F.lit(0))


def parse_records(records: DataFrame, settings: Settings) -> DataFrame:
    """Kafka records (``key``, ``value`` binary) → the event's fields plus ``reason``.

    ``reason`` is null for a good event and one of :data:`REASONS` otherwise; the raw
    ``key``, ``value``, ``topic``, ``partition`` and ``offset`` columns are kept for
    dead letters.
    """
    text = F.col("value").cast("string")
    parsed = records.withColumn("event", F.from_json(text, EVENT_SCHEMA, {"columnNameOfCorruptRecord": CORRUPT}))
    event = F.col("event")
    # The first failed check names the reason; the costly ones only run on records
    # that already failed to parse, so good records pay for none of them.
    reason = (
        F.when(F.col("value").isNull() | (F.length("value") == 0), F.lit(EMPTY))
        .when(event[CORRUPT].isNotNull() & ~F.is_valid_utf8(text), F.lit(NOT_UTF8))
        .when(event.isNull() | (event[CORRUPT].isNotNull() & F.json_object_keys(text).isNull()), F.lit(NOT_JSON_OBJECT))
        .when(event["user_id"].isNull() | ~event["user_id"].rlike(java_full_match(USER_ID_RE)), F.lit(BAD_USER_ID))
        .when(event["emoji_type"].isNull(), F.lit(BAD_EMOJI_TYPE))
        .when(emoji_index(settings, event["emoji_type"]) == 0, F.lit(UNKNOWN_EMOJI))
        .when(event["event_id"].isNull() | ~event["event_id"].rlike(java_full_match(EVENT_ID_RE)), F.lit(BAD_EVENT_ID))
        .when(event["timestamp"].isNull(), F.lit(BAD_TIMESTAMP))
        .when(event["received_at"].isNull() | (event["received_at"] <= 0), F.lit(BAD_RECEIVED_AT))
    )
    return parsed.select(
        "key",
        "value",
        "topic",
        "partition",
        "offset",
        event["user_id"].alias("user_id"),
        event["emoji_type"].alias("emoji_type"),
        event["timestamp"].alias("timestamp"),
        event["event_id"].alias("event_id"),
        event["received_at"].alias("received_at"),
        reason.alias("reason"),
    )


def valid_events(parsed: DataFrame) -> DataFrame:
    """The good events of :func:`parse_records`, in the shape of ``EmojiEvent.record()``."""
    return parsed.where(F.col("reason").isNull()).select(
        "user_id", "emoji_type", "timestamp", "event_id", "received_at"
    )


def rejected_records(parsed: DataFrame) -> DataFrame:
    return parsed.where(F.col("reason").isNotNull())


def aggregate(events: DataFrame, settings: Settings) -> DataFrame:
    """Events → one row per (event_id, window) with every emoji's count in that window.

    Windows are tumbling, ``window_seconds`` long, aligned to the epoch and cut on
    ``received_at``: an emoji at exactly ``window_end`` belongs to the next window.
    On a stream this is a watermarked update-mode aggregation; on a static DataFrame
    the watermark is ignored and the counts are final.

    One groupBy with a conditional count per configured emoji, rather than a count
    per (event_id, window, emoji_type): Spark cannot chain a second aggregation in
    update mode, and a per-emoji row would only show the kinds that changed in a
    micro-batch, not the window's full record. Ten counters per window keep the state
    tiny and the work a single hash aggregation. The price: the state's columns
    follow ``emoji_types``, so changing that set needs a fresh checkpoint.
    """
    emoji = list(settings.emoji_types)
    window_length = f"{settings.window_seconds} seconds"
    timed = (
        events.withColumn("received_time", F.timestamp_millis("received_at"))
        .withColumn("emoji_index", emoji_index(settings, F.col("emoji_type")))
        # An unknown kind would count in total but in no counter; parse_records rejects them.
        .where(F.col("emoji_index") > 0)
        .withWatermark("received_time", f"{settings.watermark_ms} milliseconds")
    )
    if events.sparkSession.conf.get("spark.sql.shuffle.partitions") == "1":
        # With one state store partition, Spark would still shuffle every batch into it: a
        # second stage, its shuffle files and its tasks. One partition before the count meets the
        # state store's distribution as it is, so a batch is one stage of one task.
        timed = timed.coalesce(1)
    counters = [F.count_if(F.col("emoji_index") == i + 1).alias(f"n{i}") for i in range(len(emoji))]
    windowed = timed.groupBy("event_id", F.window("received_time", window_length).alias("window")).agg(
        F.count(F.lit(1)).alias("total"), *counters
    )
    # {emoji: count} without the kinds nobody sent, largest first (as wire.make_aggregate).
    entries = F.filter(
        F.array(*[F.struct(F.lit(e).alias("emoji"), F.col(f"n{i}").alias("count")) for i, e in enumerate(emoji)]),
        lambda entry: entry["count"] > 0,
    )
    by_count_then_emoji = F.array_sort(
        entries,
        lambda left, right: (
            F.when(left["count"] > right["count"], -1)
            .when(left["count"] < right["count"], 1)
            .when(left["emoji"] < right["emoji"], -1)
            .when(left["emoji"] > right["emoji"], 1)
            .otherwise(0)
        ),
    )
    counts = F.map_from_entries(by_count_then_emoji)
    unit = settings.scale_unit
    # The course rule ceil(count / unit): 1..1000 → 1, 1001 → 2, 3785 → 4 (exact below 2**53).
    scaled = F.transform_values(counts, lambda _emoji, count: F.ceil(count / F.lit(unit)))
    return windowed.select(
        "event_id",
        F.unix_millis(F.col("window.start")).alias("window_start"),
        F.unix_millis(F.col("window.end")).alias("window_end"),
        counts.alias("counts"),
        scaled.alias("scaled"),
        "total",
        wall_clock_ms().alias("emitted_at"),
    )


def wall_clock_ms() -> Column:
    """The time a record is built, in epoch milliseconds.

    Not current_timestamp(): on a stream Spark turns that into a literal of the
    micro-batch's start, so every batch generates and compiles its code anew, and the
    JIT compiler stays busy with it. A call to the clock is evaluated per row.
    """
    return F.expr("reflect('java.lang.System', 'currentTimeMillis')").cast("long")


def aggregate_records(aggregates: DataFrame) -> DataFrame:
    """Aggregates → Kafka records: key ``event_id|window_start``, the JSON of wire.make_aggregate."""
    return aggregates.select(
        F.concat_ws("|", "event_id", F.col("window_start").cast("string")).alias("key"),
        F.to_json(F.struct("event_id", "window_start", "window_end", "counts", "scaled", "total", "emitted_at")).alias(
            "value"
        ),
    )


def dead_letter_records(rejected: DataFrame) -> DataFrame:
    """Rejected records → Kafka records for the dead-letter topic, with the reason.

    The original key is kept; the value carries the raw record as text, or as base64
    when it is not UTF-8, and where it came from so an operator can find it.
    """
    text = F.col("value").cast("string")
    utf8 = F.is_valid_utf8(text)
    return rejected.select(
        F.col("key"),
        F.to_json(
            F.struct(
                F.col("reason"),
                F.when(utf8, text).alias("value"),
                F.when(~utf8, F.base64("value")).alias("value_base64"),
                F.col("topic"),
                F.col("partition"),
                F.col("offset"),
                wall_clock_ms().alias("rejected_at"),
            )
        ).alias("value"),
    )
