"""The processor's pure transformations on small static DataFrames (one SparkSession per run)."""

from __future__ import annotations

import base64
import json
import random
from collections import Counter

import pytest

from emostream.processor import transforms as aggregation
from emostream.settings import Settings
from emostream.wire import EmojiEvent, aggregate_key, make_aggregate, now_ms, validate_aggregate

pytestmark = pytest.mark.spark

# A window boundary: a multiple of 2 s (and of 5 s) since the epoch.
T0 = 1_795_730_000_000
FIRE, CLAP, LAUGH, HEART = "🔥", "👏", "😂", "\u2764\ufe0f"
RECORD_SCHEMA = "key binary, value binary, topic string, partition int, offset long"


@pytest.fixture(scope="module")
def config() -> Settings:
    return Settings.from_env(environ={})


def event(emoji: str, received_at: int, event_id: str = "final", user_id: str = "viewer-1") -> dict:
    return EmojiEvent(user_id, emoji, received_at - 40, event_id, received_at).record()


def raw_records(spark, values: list[bytes | None]):
    rows = [(f"k{i}".encode(), value, "emoji_topic", i % 4, i) for i, value in enumerate(values)]
    return spark.createDataFrame(rows, RECORD_SCHEMA)


def encoded(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode()


def run_pipeline(spark, config: Settings, records: list[dict]) -> dict[str, dict]:
    """Raw JSON records → parse → aggregate → Kafka records, as {key: aggregate}."""
    parsed = aggregation.parse_records(raw_records(spark, [encoded(r) for r in records]), config)
    aggregates = aggregation.aggregate(aggregation.valid_events(parsed), config)
    rows = aggregation.aggregate_records(aggregates).collect()
    return {row.key: json.loads(row.value) for row in rows}


def counts_by_key(aggregates: dict[str, dict]) -> dict[str, dict[str, int]]:
    return {key: value["counts"] for key, value in aggregates.items()}


def test_an_emoji_at_exactly_window_end_belongs_to_the_next_window(spark, config):
    records = [event(FIRE, T0), event(FIRE, T0 + 1999), event(CLAP, T0 + 2000), event(CLAP, T0 + 3999)]

    aggregates = run_pipeline(spark, config, records)

    assert counts_by_key(aggregates) == {f"final|{T0}": {FIRE: 2}, f"final|{T0 + 2000}": {CLAP: 2}}
    assert aggregates[f"final|{T0}"]["window_end"] == T0 + 2000
    assert aggregates[f"final|{T0 + 2000}"]["window_start"] == T0 + 2000


def test_windows_are_epoch_aligned_and_as_long_as_configured(spark, config):
    five_seconds = config.replace(window_seconds=5)
    records = [event(FIRE, T0 + 4999), event(FIRE, T0 + 5000), event(FIRE, T0 + 7000)]

    aggregates = run_pipeline(spark, five_seconds, records)

    assert {(a["window_start"], a["window_end"], a["total"]) for a in aggregates.values()} == {
        (T0, T0 + 5000, 1),
        (T0 + 5000, T0 + 10_000, 2),
    }


def test_counts_several_events_and_emoji_kinds_in_several_windows_at_once(spark, config):
    rng = random.Random(4)
    kinds = [FIRE, CLAP, LAUGH, HEART, "🏏"]
    records = [
        event(rng.choice(kinds), T0 + rng.randrange(0, 6000), rng.choice(["final", "semi", "toss"]), f"v{i}")
        for i in range(600)
    ]
    expected: dict[str, Counter] = {}
    for r in records:
        window_start = r["received_at"] - r["received_at"] % 2000
        expected.setdefault(aggregate_key(r["event_id"], window_start), Counter())[r["emoji_type"]] += 1

    aggregates = run_pipeline(spark, config, records)

    assert counts_by_key(aggregates) == {key: dict(counter) for key, counter in expected.items()}
    assert len(aggregates) == 9
    assert all(a["total"] == sum(a["counts"].values()) for a in aggregates.values())


def test_scaled_counts_are_the_ceiling_of_count_over_1000(spark, config):
    sizes = {FIRE: 1, CLAP: 1000, LAUGH: 1001, HEART: 3785}
    records = [event(emoji, T0 + i % 2000, user_id=f"v{i}") for emoji, n in sizes.items() for i in range(n)]

    (aggregate,) = run_pipeline(spark, config, records).values()

    assert aggregate["counts"] == sizes
    assert aggregate["scaled"] == {FIRE: 1, CLAP: 1, LAUGH: 2, HEART: 4}
    assert aggregate["total"] == 5787


def test_scaled_counts_follow_the_configured_unit(spark, config):
    records = [event(FIRE, T0, user_id=f"v{i}") for i in range(11)]

    (aggregate,) = run_pipeline(spark, config.replace(scale_unit=10), records).values()

    assert aggregate["scaled"] == {FIRE: 2}


def test_aggregate_records_are_exactly_the_wire_format(spark, config):
    records = [event(CLAP, T0 + 5)] * 2 + [event(HEART, T0 + 7)] * 3 + [event(FIRE, T0 + 9)] * 2
    before = now_ms()

    aggregates = aggregation.aggregate_records(
        aggregation.aggregate(
            aggregation.valid_events(
                aggregation.parse_records(raw_records(spark, [encoded(r) for r in records]), config)
            ),
            config,
        )
    ).collect()

    (row,) = aggregates
    value = json.loads(row.value)
    expected = make_aggregate("final", T0, T0 + 2000, {CLAP: 2, HEART: 3, FIRE: 2}, emitted_at=value["emitted_at"])
    assert row.key == aggregate_key("final", T0) == f"final|{T0}"
    # Same fields, same order, same counts order (largest first, then by emoji).
    assert row.value == json.dumps(expected, ensure_ascii=False, separators=(",", ":"))
    assert validate_aggregate(value) == expected
    assert before - 60_000 <= value["emitted_at"] <= now_ms() + 1000


def test_good_records_parse_into_the_events_ingest_wrote(spark, config):
    records = [event(FIRE, T0, "final", "viewer-1"), event(HEART, T0 + 1, "semi-2", "fan@home:3")]

    parsed = aggregation.parse_records(raw_records(spark, [encoded(r) for r in records]), config)

    assert [row.asDict() for row in aggregation.valid_events(parsed).orderBy("received_at").collect()] == records
    assert aggregation.rejected_records(parsed).count() == 0


POISON = {
    b"": aggregation.EMPTY,
    None: aggregation.EMPTY,
    b"\xff\xfe not text": aggregation.NOT_UTF8,
    b"not json": aggregation.NOT_JSON_OBJECT,
    b'{"user_id": "v1", "emoji_type": "\xf0\x9f\x94\xa5"': aggregation.NOT_JSON_OBJECT,
    b"[1, 2]": aggregation.NOT_JSON_OBJECT,
    b"42": aggregation.NOT_JSON_OBJECT,
    b'{"emoji_type": "x", "timestamp": 1, "event_id": "final", "received_at": 1}': aggregation.BAD_USER_ID,
    b'{"user_id": "has space", "emoji_type": "x", "timestamp": 1, "event_id": "f", "received_at": 1}': (
        aggregation.BAD_USER_ID
    ),
    b'{"user_id": "v1", "timestamp": 1, "event_id": "final", "received_at": 1}': aggregation.BAD_EMOJI_TYPE,
    b'{"user_id": "v1", "emoji_type": "\xf0\x9f\x8d\x95", "timestamp": 1, "event_id": "f", "received_at": 1}': (
        aggregation.UNKNOWN_EMOJI
    ),
    # ❤ without its variation selector is another string than the configured ❤️.
    b'{"user_id": "v1", "emoji_type": "\xe2\x9d\xa4", "timestamp": 1, "event_id": "f", "received_at": 1}': (
        aggregation.UNKNOWN_EMOJI
    ),
    b'{"user_id": "v1", "emoji_type": "\xf0\x9f\x94\xa5", "timestamp": 1, "received_at": 1}': aggregation.BAD_EVENT_ID,
    b'{"user_id": "v1", "emoji_type": "\xf0\x9f\x94\xa5", "timestamp": 1, "event_id": "a|b", "received_at": 1}': (
        aggregation.BAD_EVENT_ID
    ),
    # Java's "$" also matches before a final newline: ids are matched whole.
    b'{"user_id": "v1\\n", "emoji_type": "\xf0\x9f\x94\xa5", "timestamp": 1, "event_id": "f", "received_at": 1}': (
        aggregation.BAD_USER_ID
    ),
    b'{"user_id": "v1", "emoji_type": "\xf0\x9f\x94\xa5", "timestamp": 1, "event_id": "f\\n", "received_at": 1}': (
        aggregation.BAD_EVENT_ID
    ),
    b'{"user_id": "v1", "emoji_type": "\xf0\x9f\x94\xa5", "timestamp": "soon", "event_id": "f", "received_at": 1}': (
        aggregation.BAD_TIMESTAMP
    ),
    b'{"user_id": "v1", "emoji_type": "\xf0\x9f\x94\xa5", "timestamp": 1, "event_id": "f"}': aggregation.BAD_RECEIVED_AT,
    b'{"user_id": "v1", "emoji_type": "\xf0\x9f\x94\xa5", "timestamp": 1, "event_id": "f", "received_at": 1.5}': (
        aggregation.BAD_RECEIVED_AT
    ),
    b'{"user_id": "v1", "emoji_type": "\xf0\x9f\x94\xa5", "timestamp": 1, "event_id": "f", "received_at": -5}': (
        aggregation.BAD_RECEIVED_AT
    ),
}


def test_poison_records_are_rejected_with_the_reason_and_good_ones_kept(spark, config):
    good = encoded(event(FIRE, T0))
    values = [good, *POISON, good]

    parsed = aggregation.parse_records(raw_records(spark, values), config)

    rows = aggregation.rejected_records(parsed).collect()
    reasons = {(bytes(row.value) if row.value is not None else None): row.reason for row in rows}
    assert reasons == POISON
    assert aggregation.valid_events(parsed).count() == 2
    assert set(POISON.values()) <= set(aggregation.REASONS)


def test_dead_letters_carry_the_reason_the_raw_value_and_where_it_came_from(spark, config):
    values = [b"not json", b"\xff\xfe not text", encoded(event(FIRE, T0))]

    rejected = aggregation.rejected_records(aggregation.parse_records(raw_records(spark, values), config))
    letters = [(row.key, json.loads(row.value)) for row in aggregation.dead_letter_records(rejected).collect()]

    by_offset = {letter["offset"]: (key, letter) for key, letter in letters}
    assert sorted(by_offset) == [0, 1]
    key, text = by_offset[0]
    assert bytes(key) == b"k0"
    assert text["reason"] == aggregation.NOT_JSON_OBJECT
    assert text["value"] == "not json"
    assert (text["topic"], text["partition"]) == ("emoji_topic", 0)
    assert isinstance(text["rejected_at"], int)
    _, binary = by_offset[1]
    assert binary["reason"] == aggregation.NOT_UTF8
    assert "value" not in binary
    assert base64.b64decode(binary["value_base64"]) == b"\xff\xfe not text"
