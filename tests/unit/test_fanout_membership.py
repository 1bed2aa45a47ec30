"""Membership from heartbeats: parsing, liveness, tombstones, routing by event."""

from __future__ import annotations

import pytest

from emostream.fanout.membership import (
    STOPPING,
    Membership,
    NodeState,
    parse_subscriber_id,
    subscriber_id,
    summary,
)
from emostream.wire import InvalidMessage

NOW = 1_700_000_000_000


def heartbeat(node_id: str = "c0-s0", at: int = NOW, **fields) -> dict:
    cluster = parse_subscriber_id(node_id)[0]
    record = NodeState(node_id, cluster, f"http://127.0.0.1:{6000 + cluster}", 0, 100, at).record()
    return record | fields


def test_heartbeat_record_round_trips_through_the_wire_format():
    state = NodeState("c1-s2", 1, "http://h:1", 7, 100, NOW, events={"final": 5, "live": 2}, started_at=NOW - 5, pid=9)

    assert NodeState.from_record(state.record()) == state


@pytest.mark.parametrize(
    "broken",
    [
        None,
        [],
        "c0-s0",
        {"subscriber_id": "c0-s0"},
        heartbeat() | {"connections": "7"},
        heartbeat() | {"heartbeat_at": True},
        heartbeat() | {"events": ["live"]},
    ],
)
def test_a_malformed_heartbeat_is_refused(broken):
    with pytest.raises(InvalidMessage):
        NodeState.from_record(broken)


def test_malformed_or_mis_keyed_heartbeats_do_not_enter_the_membership():
    members = Membership(expiry_seconds=6)
    members.apply("c0-s0", {"garbage": True})
    members.apply("c0-s1", heartbeat("c0-s0"))

    assert members.nodes() == []


def test_a_node_is_alive_until_its_heartbeat_is_older_than_the_expiry():
    members = Membership(expiry_seconds=6)
    members.apply("c0-s0", heartbeat("c0-s0", at=NOW))

    assert [n.subscriber_id for n in members.live(now=NOW + 6000)] == ["c0-s0"]
    assert members.live(now=NOW + 6001) == []
    assert [n.subscriber_id for n in members.nodes()] == ["c0-s0"]  # still on record for operators


def test_a_lone_node_silent_while_kafka_answers_dies_by_the_clock():
    # The watcher hears the topic (its brokers answer) while the only node says nothing.
    members = Membership(expiry_seconds=6)
    members.apply("c0-s0", heartbeat("c0-s0", at=NOW))
    for at in range(NOW, NOW + 7001, 1000):
        members.heard(at)

    assert members.quiet_ms(members.get("c0-s0"), now=NOW + 7000) == 7000
    assert members.live(now=NOW + 7000) == []


def test_silence_counts_only_while_the_topic_answers():
    members = Membership(expiry_seconds=6)
    members.apply("c0-s0", heartbeat("c0-s0", at=NOW - 1000))
    members.heard(NOW)
    node = members.get("c0-s0")

    assert members.quiet_ms(node, now=NOW + 2000) == 3000  # unheard for less than half the expiry
    assert members.quiet_ms(node, now=NOW + 60_000) == 1000  # Kafka away: judged as of its last answer
    members.heard(NOW + 60_000)
    members.heard(NOW + 62_000)
    assert members.quiet_ms(node, now=NOW + 64_000) == 5000  # the minute away does not count
    members.heard(NOW + 65_000)
    assert members.live(now=NOW + 65_500) == []


def test_a_stopping_node_is_not_alive_and_a_tombstone_removes_it():
    members = Membership(expiry_seconds=6)
    members.apply("c0-s0", heartbeat("c0-s0"))
    members.apply("c0-s1", heartbeat("c0-s1"))

    members.apply("c0-s0", heartbeat("c0-s0", at=NOW + 1, status=STOPPING))
    members.apply("c0-s1", None)

    assert members.live(now=NOW + 2) == []
    assert [n.subscriber_id for n in members.nodes()] == ["c0-s0"]


def test_an_older_heartbeat_arriving_late_does_not_roll_a_node_back():
    members = Membership(expiry_seconds=6)
    members.apply("c0-s0", heartbeat("c0-s0", at=NOW + 1000, connections=5))
    members.apply("c0-s0", heartbeat("c0-s0", at=NOW, connections=1))

    assert members.get("c0-s0").connections == 5


def test_nodes_are_listed_in_cluster_then_index_order():
    members = Membership(expiry_seconds=6)
    for node_id in ["c1-s10", "c0-s2", "c1-s2", "c0-s0"]:
        members.apply(node_id, heartbeat(node_id))

    assert [n.subscriber_id for n in members.nodes()] == ["c0-s0", "c0-s2", "c1-s2", "c1-s10"]


def test_summary_counts_only_live_nodes_towards_load():
    members = Membership(expiry_seconds=6)
    members.apply("c0-s0", heartbeat("c0-s0", connections=10))
    members.apply("c0-s1", heartbeat("c0-s1", at=NOW - 60_000, connections=50))

    view = summary(members.nodes(), members, now=NOW)

    assert view["live_nodes"] == 1
    assert view["connections"] == 10
    assert view["clusters"]["0"] == {"nodes": 2, "live_nodes": 1, "connections": 10, "capacity": 100}
    assert [(n["subscriber_id"], n["alive"]) for n in view["subscribers"]] == [("c0-s0", True), ("c0-s1", False)]


def test_subscriber_ids_name_cluster_and_index():
    assert subscriber_id(2, 5) == "c2-s5"
    assert parse_subscriber_id("c2-s5") == (2, 5)
    for bad in ["c2", "x2-s5", "c-1-s0", "c2-s5 "]:
        with pytest.raises(ValueError):
            parse_subscriber_id(bad)
