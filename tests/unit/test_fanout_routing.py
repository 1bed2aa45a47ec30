"""The main publisher's routing table (aggregates go only where the event has live viewers) and the
publishers' loop through a Kafka outage."""

from __future__ import annotations

from typing import Any

import kafka.errors as kafka_python_errors
import pytest

from emostream import kafka
from emostream.fanout.membership import STOPPING, Membership, NodeState
from emostream.fanout.publisher import RoutingTable, _Loop

NOW = 1_700_000_000_000


def beat(members: Membership, node_id: str, cluster: int, events: dict[str, int], at: int = NOW, **fields):
    members.apply(
        node_id,
        NodeState(node_id, cluster, "http://n", sum(events.values()), 100, at, events=events, **fields).record(),
    )


def test_an_event_is_routed_to_the_clusters_with_live_viewers_of_it_only():
    members = Membership(expiry_seconds=6)
    beat(members, "c0-s0", 0, {"final": 3, "semi": 1})
    beat(members, "c0-s1", 0, {"final": 2})
    beat(members, "c2-s0", 2, {"final": 1, "ghost": 0})
    routes = RoutingTable(members)

    assert routes.clusters("final", now=NOW) == {0, 2}
    assert routes.clusters("semi", now=NOW) == {0}
    assert routes.clusters("ghost", now=NOW) == set()  # a room that emptied
    assert routes.clusters("nobody", now=NOW) == set()


def test_the_table_follows_heartbeats_stops_and_silence():
    members = Membership(expiry_seconds=6)
    beat(members, "c0-s0", 0, {"final": 1})
    routes = RoutingTable(members, refresh_ms=250)
    assert routes.clusters("final", now=NOW) == {0}

    beat(members, "c1-s0", 1, {"final": 4}, at=NOW + 10)  # a new heartbeat: rebuilt at once
    assert routes.clusters("final", now=NOW + 10) == {0, 1}

    beat(members, "c1-s0", 1, {"final": 4}, at=NOW + 20, status=STOPPING)
    assert routes.clusters("final", now=NOW + 20) == {0}

    # c0-s0 goes silent while c2-s0 keeps beating: once expired it drops out within one refresh.
    beat(members, "c2-s0", 2, {"semi": 1}, at=NOW + 6000)
    assert routes.clusters("final", now=NOW + 6000) == {0}
    beat(members, "c2-s0", 2, {"semi": 1}, at=NOW + 6300)
    assert routes.clusters("final", now=NOW + 6300) == set()


def test_while_kafka_is_away_the_last_view_stands_and_after_it_each_node_has_an_expiry_to_beat_again():
    # No heartbeat reaches the publisher while Kafka is away, and the first aggregates after the
    # outage may arrive before any. They go where the viewers were, not nowhere.
    members = Membership(expiry_seconds=6)
    beat(members, "c0-s0", 0, {"final": 1})
    beat(members, "c1-s0", 1, {"final": 2}, at=NOW - 2000)
    members.heard(NOW)
    routes = RoutingTable(members, refresh_ms=250)

    assert routes.clusters("final", now=NOW + 30_000) == {0, 1}
    # Back: c0-s0 beats at once; c1-s0 comes back on a slower back-off, or never.
    members.heard(NOW + 30_000)
    beat(members, "c0-s0", 0, {"final": 1}, at=NOW + 30_100)
    assert routes.clusters("final", now=NOW + 30_100) == {0, 1}
    for at in (NOW + 32_000, NOW + 33_900):
        members.heard(at)
        beat(members, "c0-s0", 0, {"final": 1}, at=at)
        assert routes.clusters("final", now=at) == {0, 1}  # 2 s quiet before, under 4 s since
    members.heard(NOW + 34_200)
    beat(members, "c0-s0", 0, {"final": 1}, at=NOW + 34_200)
    assert routes.clusters("final", now=NOW + 34_200) == {0}  # 6.2 s quiet while Kafka answered


def test_heartbeats_buffered_through_an_outage_do_not_make_the_nodes_read_after_them_look_dead():
    # A node's producer keeps the beats it could not send and delivers them all when Kafka is
    # back, stamped across the outage, before the other nodes' first beats are read.
    members = Membership(expiry_seconds=6)
    beat(members, "c0-s0", 0, {"final": 1})
    beat(members, "c1-s0", 1, {"final": 2})
    members.heard(NOW)
    routes = RoutingTable(members, refresh_ms=250)
    back = NOW + 66_000
    for stamped in range(NOW + 2000, back, 2000):
        beat(members, "c0-s0", 0, {"final": 1}, at=stamped)
    members.heard(back)
    assert routes.clusters("final", now=back + 500) == {0, 1}


def test_an_outage_does_not_bring_back_a_node_that_was_already_dead():
    members = Membership(expiry_seconds=6)
    beat(members, "c1-s0", 1, {"final": 2}, at=NOW - 20_000)  # silent while c0-s0 beat
    beat(members, "c0-s0", 0, {"final": 1})
    members.heard(NOW)
    routes = RoutingTable(members, refresh_ms=250)
    assert routes.clusters("final", now=NOW) == {0}
    assert routes.clusters("final", now=NOW + 30_000) == {0}  # Kafka away

    members.heard(NOW + 30_000)
    beat(members, "c0-s0", 0, {"final": 1}, at=NOW + 30_000)
    assert routes.clusters("final", now=NOW + 30_000) == {0}


class _Consumer:
    """A consumer whose polls play a script: a kafka-python error to raise, or a batch to return."""

    def __init__(self, script: list[Any], loop: _Loop):
        self.script = script
        self.loop = loop
        self.commits = 0

    def poll(self, timeout_ms: int) -> dict:
        if not self.script:
            self.loop.request_stop()
            return {}
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def assignment(self) -> set:
        return set()

    def commit(self) -> None:
        self.commits += 1


def test_the_publishers_loop_waits_out_kafka_away_and_commits_a_batch_only_once_its_output_is_acknowledged(
    monkeypatch,
):
    monkeypatch.setattr("emostream.fanout.publisher.OUTAGE_PAUSE", 0.0)
    loop = _Loop()
    consumer = _Consumer(
        [
            kafka_python_errors.KafkaConnectionError("111 ECONNREFUSED"),  # no broker at all
            {"p0": ["a", "b"]},
        ],
        loop,
    )
    handled: list[str] = []
    flushes = iter([kafka_python_errors.KafkaTimeoutError("flush"), None])

    def flush() -> None:
        outcome = next(flushes)
        if outcome is not None:
            with kafka.translate_errors():
                raise outcome
        assert consumer.commits == 0  # nothing committed before the batch's output is on the broker

    loop._consume(consumer, handled.append, flush)

    # The poll that found no broker was tried again; the batch whose flush timed out was handled
    # again, then committed once.
    assert handled == ["a", "b", "a", "b"]
    assert consumer.commits == 1


def test_the_publishers_loop_stops_on_a_kafka_error_that_will_not_pass():
    loop = _Loop()
    consumer = _Consumer([kafka_python_errors.TopicAuthorizationFailedError("denied")], loop)
    with pytest.raises(kafka.NotAuthorized):
        loop._consume(consumer, lambda record: None, lambda: None)
