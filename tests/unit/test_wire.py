"""The wire formats: emoji event validation, the aggregate, the viewer token."""

import json

import pytest

from emostream.wire import (
    InvalidMessage,
    TokenClaims,
    aggregate_key,
    issue_token,
    make_aggregate,
    parse_timestamp,
    scaled_count,
    validate_aggregate,
    validate_event,
    verify_token,
)

EMOJI = ("🔥", "👏", "\u2764\ufe0f")
NOW = 1_800_000_000_000


def event(**fields):
    base = {"user_id": "u1", "emoji_type": "🔥", "timestamp": NOW}
    base.update(fields)
    return validate_event(base, EMOJI, received_at=NOW + 5, skew_ms=300_000)


def test_a_valid_event_is_stamped_and_defaults_to_the_live_event():
    accepted = event()
    assert accepted.record() == {
        "user_id": "u1",
        "emoji_type": "🔥",
        "timestamp": NOW,
        "event_id": "live",
        "received_at": NOW + 5,
    }
    assert accepted.key == "live|u1"


@pytest.mark.parametrize("emoji_type", ["🔥", "\u2764\ufe0f", 'say "hi"', "back\\slash", "tab\there"])
def test_the_record_written_to_kafka_is_the_json_of_the_record(emoji_type):
    accepted = validate_event(
        {"user_id": "a.b:c@d-e_1", "emoji_type": emoji_type, "timestamp": NOW, "event_id": "match-7.b_2"},
        (emoji_type,),
        received_at=NOW + 5,
        skew_ms=300_000,
    )
    assert json.loads(accepted.record_json()) == accepted.record()
    assert accepted.record_json() == json.dumps(accepted.record(), ensure_ascii=False, separators=(",", ":")).encode()


def test_heart_is_compared_as_a_whole_string():
    assert event(emoji_type="\u2764\ufe0f").emoji_type == "\u2764\ufe0f"
    with pytest.raises(InvalidMessage, match="emoji_type must be one of"):
        event(emoji_type="\u2764")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"user_id": ""}, "user_id"),
        ({"user_id": "x" * 65}, "user_id"),
        ({"user_id": "a b"}, "user_id"),
        ({"user_id": 7}, "user_id"),
        ({"emoji_type": "💩"}, "emoji_type"),
        ({"event_id": "a|b"}, "event_id"),
        ({"timestamp": True}, "boolean"),
        ({"timestamp": "yesterday"}, "ISO-8601"),
        ({"timestamp": NOW - 301_000}, "away from server time"),
        ({"timestamp": [1]}, "timestamp must be"),
    ],
)
def test_bad_fields_are_refused_with_what_is_wrong(fields, message):
    with pytest.raises(InvalidMessage, match=message):
        event(**fields)


def test_missing_fields_are_named():
    with pytest.raises(InvalidMessage, match="missing field\\(s\\): user_id, timestamp"):
        validate_event({"emoji_type": "🔥"}, EMOJI, NOW, 1000)


def test_iso_timestamps_are_read_as_utc_milliseconds():
    assert parse_timestamp("2027-01-15T08:00:00Z") == 1_800_000_000_000
    assert parse_timestamp("2027-01-15T09:00:00.250+01:00") == 1_800_000_000_250
    assert parse_timestamp("2027-01-15T08:00:00") == 1_800_000_000_000  # no zone: UTC
    assert event(timestamp="2027-01-15T08:00:00Z").timestamp == NOW


@pytest.mark.parametrize(("count", "scaled"), [(0, 0), (1, 1), (999, 1), (1000, 1), (1001, 2), (3785, 4), (4000, 4)])
def test_scaling_rule_counts_every_started_thousand_as_one(count, scaled):
    assert scaled_count(count) == scaled


def test_an_aggregate_carries_counts_scaled_and_total():
    aggregate = make_aggregate("final", 2000, 4000, {"🔥": 3785, "👏": 1, "😂": 0}, emitted_at=4100)
    assert aggregate == {
        "event_id": "final",
        "window_start": 2000,
        "window_end": 4000,
        "counts": {"🔥": 3785, "👏": 1},
        "scaled": {"🔥": 4, "👏": 1},
        "total": 3786,
        "emitted_at": 4100,
    }
    assert validate_aggregate(aggregate) == aggregate
    assert aggregate_key("final", 2000) == "final|2000"


def test_an_aggregate_without_a_window_is_refused():
    with pytest.raises(InvalidMessage, match="window_start"):
        validate_aggregate({"event_id": "e", "counts": {}, "total": 0, "window_end": 2})


SECRET = b"k" * 32


def claims(**changes):
    base = {"client_id": "c1", "event_id": "final", "subscriber_id": "c0-s1", "expires_at": 2_000_000_000}
    base.update(changes)
    return TokenClaims(**base)


def test_a_token_names_client_event_and_node():
    token = issue_token(SECRET, claims())
    assert verify_token(SECRET, token, "c0-s1", now=1_900_000_000) == claims()


def test_a_forged_token_is_refused():
    token = issue_token(b"another secret", claims())
    with pytest.raises(InvalidMessage, match="not valid"):
        verify_token(SECRET, token, "c0-s1", now=1_900_000_000)
    tampered = issue_token(SECRET, claims())[:-2] + "AA"
    with pytest.raises(InvalidMessage, match="not valid"):
        verify_token(SECRET, tampered, "c0-s1", now=1_900_000_000)


def test_an_expired_token_is_refused():
    with pytest.raises(InvalidMessage, match="expired"):
        verify_token(SECRET, issue_token(SECRET, claims(expires_at=100)), "c0-s1", now=101)


def test_a_token_for_another_node_is_refused():
    with pytest.raises(InvalidMessage, match="another subscriber node"):
        verify_token(SECRET, issue_token(SECRET, claims()), "c1-s0", now=1_900_000_000)


@pytest.mark.parametrize("garbage", [None, "", 42, "x" * 2000, "not.a.token"])
def test_garbage_tokens_are_refused(garbage):
    with pytest.raises(InvalidMessage):
        verify_token(SECRET, garbage, "c0-s1")


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\t", "\x00", " "])
def test_ids_with_a_trailing_newline_or_control_character_are_refused(suffix):
    with pytest.raises(InvalidMessage, match="user_id"):
        event(user_id="u-1" + suffix)
    with pytest.raises(InvalidMessage, match="event_id"):
        event(event_id="final" + suffix)
    with pytest.raises(InvalidMessage, match="event_id"):
        validate_aggregate(make_aggregate("final", 0, 2000, {"🔥": 1}) | {"event_id": "final" + suffix})
