"""The main publisher's routing table: aggregates go only where the event has live viewers."""

from __future__ import annotations

from emostream.fanout.membership import STOPPING, Membership, NodeState
from emostream.fanout.publisher import RoutingTable

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

    # c0-s0 goes silent: once expired it drops out within one refresh, with no record arriving.
    assert routes.clusters("final", now=NOW + 6000) == {0}
    assert routes.clusters("final", now=NOW + 6300) == set()
