"""The fan-out tier as a user runs it: subscriber_manager.py (3 × 3), registration, main publisher.

One topology per module: real broker, real processes, real Socket.IO clients. The
aggregates are written to the aggregate topic directly, as the processor would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import pytest
import requests
import socketio

from emostream.clients.viewer import Viewer
from emostream.settings import Settings
from emostream.wire import TokenClaims, issue_token
from tests.harness.fanout import (
    fanout_settings,
    live_nodes,
    membership,
    publish_aggregates,
    received_windows,
    registration_url,
    rejoin,
    started_viewers,
    wait_until,
    windows,
)
from tests.harness.support import ServiceProcess, wait_http

pytestmark = pytest.mark.integration

CLUSTERS, NODES = 3, 3


@pytest.fixture(scope="module")
def topology(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    settings = fanout_settings(
        base_settings,
        clusters=CLUSTERS,
        subscribers_per_cluster=NODES,
        max_subscribers_per_cluster=NODES,  # no scaling here: see test_fanout_scaling
        subscriber_capacity=100,
    )
    log_dir = tmp_path_factory.mktemp("fanout-topology-logs")
    services = [
        ServiceProcess("subscriber_manager.py", settings, log_dir),
        ServiceProcess("registration_app.py", settings, log_dir),
        ServiceProcess("pubsub_service.py", settings, log_dir),
    ]
    try:
        wait_http(registration_url(settings) + "/healthz", 60, services[1].process)
        wait_http(f"http://127.0.0.1:{settings.pubsub_metrics_port}/healthz", 60, services[2].process)
        wait_until(lambda: len(live_nodes(settings)) == CLUSTERS * NODES, 120, "9 live subscriber nodes")
        wait_until(
            lambda: requests.get(f"http://127.0.0.1:{settings.pubsub_metrics_port}/healthz", timeout=5).ok,
            60,
            "the main publisher to consume",
        )
        yield settings, services
    finally:
        for service in reversed(services):
            service.stop()


def test_the_manager_runs_three_clusters_of_three_nodes_with_a_publisher_each(topology):
    settings, services = topology

    nodes = live_nodes(settings)

    assert sorted(nodes) == [f"c{c}-s{i}" for c in range(CLUSTERS) for i in range(NODES)]
    assert {node["cluster"] for node in nodes.values()} == {0, 1, 2}
    assert len({node["url"] for node in nodes.values()}) == 9
    health = requests.get(f"http://127.0.0.1:{settings.manager_port}/healthz", timeout=5).json()
    assert health["topology_complete"] is True
    manager_log = services[0].log()
    for cluster in range(CLUSTERS):
        assert f"cluster publisher {cluster}: " in manager_log
    for node in nodes.values():
        assert requests.get(node["url"] + "/healthz", timeout=5).json()["subscriber_id"] == node["subscriber_id"]


def test_ninety_viewers_are_balanced_and_each_gets_exactly_its_events_aggregates_in_window_order(topology):
    settings, _ = topology
    events = ["final", "semi-1", "semi-2", "qualifier", "replay", "studio"]

    async def scenario():
        viewers = [Viewer(registration_url(settings), event_id=events[i % len(events)]) for i in range(90)]
        try:
            await asyncio.gather(*(viewer.start(timeout=60) for viewer in viewers))
            per_node = Counter(viewer.subscriber for viewer in viewers)
            # Wait until every node's heartbeat shows its viewers: routing follows heartbeats.
            await asyncio.to_thread(
                wait_until,
                lambda: membership(settings)["connections"] == 90,
                30,
                "90 connections in the membership",
            )
            unwatched = windows("nobody-watches", range(3))
            plan = {event: windows(event, range(1, 6)) for event in events}
            markers = {event: windows(event, [6])[0] for event in events}
            # Interleave events window by window, as the processor emits them.
            publish_aggregates(settings, [plan[event][n] for n in range(5) for event in events] + unwatched)
            await asyncio.gather(*(viewer.wait_for_updates(5, timeout=30) for viewer in viewers))
            # A marker window per event, published now, reaches each viewer after anything extra or foreign.
            publish_aggregates(settings, [markers[event] for event in events])
            await asyncio.gather(
                *(
                    viewer.wait_for(lambda v: markers[v.event_id]["window_start"] in received_windows(v), 30)
                    for viewer in viewers
                )
            )
            return viewers, per_node, plan
        finally:
            await asyncio.gather(*(viewer.close() for viewer in viewers))

    viewers, per_node, plan = asyncio.run(scenario())

    # Balanced: every node has about its tenth. Heartbeats arriving mid-burst can shift one
    # or two viewers (they count connections the balancer also still holds as pending).
    assert sorted(per_node) == sorted(live_nodes(settings))
    assert all(8 <= count <= 12 for count in per_node.values()), per_node
    for viewer in viewers:
        deliveries = list(viewer.deliveries)[:-1]  # the marker last, and nothing after the plan but it
        assert received_windows(viewer)[-1] == windows(viewer.event_id, [6])[0]["window_start"]
        assert [d.aggregate["event_id"] for d in deliveries] == [viewer.event_id] * 5
        assert [d.aggregate["window_start"] for d in deliveries] == [a["window_start"] for a in plan[viewer.event_id]]
        assert [d.aggregate["counts"] for d in deliveries] == [a["counts"] for a in plan[viewer.event_id]]
    metrics = requests.get(f"http://127.0.0.1:{settings.pubsub_metrics_port}/metrics", timeout=5).text
    assert "emostream_pubsub_unrouted_total 3.0" in metrics


async def _connect_error(url: str, auth: dict | None) -> str | None:
    """None when the node accepts the connection, else the refusal it gave."""
    client = socketio.AsyncClient(reconnection=False, handle_sigint=False)
    refusals: list[str] = []
    client.on("connect_error", lambda data: refusals.append(str((data or {}).get("message", data))))
    try:
        await client.connect(url, auth=auth, transports=["websocket"], wait_timeout=10)
    except socketio.exceptions.ConnectionError as error:
        return "; ".join(refusals) or str(error)
    await client.disconnect()
    return None


def test_nodes_refuse_no_token_a_forged_one_an_expired_one_and_one_for_another_node(topology):
    settings, _ = topology
    nodes = live_nodes(settings)
    url = nodes["c0-s0"]["url"]
    soon = int(time.time()) + 60
    valid = issue_token(settings.secret, TokenClaims("v1", "live", "c0-s0", soon))
    forged = issue_token(b"someone-elses-secret", TokenClaims("v1", "live", "c0-s0", soon))
    expired = issue_token(settings.secret, TokenClaims("v1", "live", "c0-s0", int(time.time()) - 1))
    other_node = issue_token(settings.secret, TokenClaims("v1", "live", "c0-s1", soon))

    async def attempts():
        return {
            "valid": await _connect_error(url, {"token": valid}),
            "none": await _connect_error(url, None),
            "empty": await _connect_error(url, {}),
            "forged": await _connect_error(url, {"token": forged}),
            "tampered": await _connect_error(url, {"token": valid[:-2] + "xx"}),
            "expired": await _connect_error(url, {"token": expired}),
            "other node": await _connect_error(url, {"token": other_node}),
        }

    refusals = asyncio.run(attempts())

    assert refusals.pop("valid") is None
    assert "required" in refusals["none"] and "required" in refusals["empty"]
    assert "not valid" in refusals["forged"] and "not valid" in refusals["tampered"]
    assert "expired" in refusals["expired"]
    assert "another subscriber node" in refusals["other node"]
    metrics = requests.get(url + "/metrics", timeout=5).text
    for reason in ("missing", "invalid", "expired", "other_node"):
        assert f'emostream_subscriber_refused_total{{reason="{reason}"}}' in metrics


def test_unregistering_drops_the_connection_and_the_token_is_refused_afterwards(topology):
    settings, _ = topology
    assignment = requests.post(registration_url(settings) + "/register", json={"event_id": "final"}, timeout=5).json()

    async def scenario():
        client = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        dropped = asyncio.Event()
        client.on("disconnect", lambda reason=None: dropped.set())
        await client.connect(assignment["url"], auth={"token": assignment["token"]}, transports=["websocket"])
        # Someone else cannot give this slot back...
        stranger = requests.post(
            registration_url(settings) + "/unregister",
            json={"client_id": "someone-else", "token": assignment["token"]},
            timeout=5,
        )
        # ...the client itself can, and its node then drops the connection.
        own = requests.post(
            registration_url(settings) + "/unregister",
            json={"client_id": assignment["client_id"], "token": assignment["token"]},
            timeout=5,
        )
        await asyncio.wait_for(dropped.wait(), 10)
        refusal = await _connect_error(assignment["url"], {"token": assignment["token"]})
        return stranger, own, refusal

    stranger, own, refusal = asyncio.run(scenario())

    assert stranger.status_code == 403 and "another client" in stranger.json()["error"]
    assert own.status_code == 200
    assert refusal is not None and "unregistered" in refusal


@pytest.mark.faults
def test_a_sigkilled_node_leaves_the_membership_its_viewers_move_and_the_manager_restarts_it(topology):
    settings, _ = topology

    async def scenario():
        async with started_viewers(settings, 27, "final", backoff_initial=0.3) as viewers:
            # Kill the node that serves most of these viewers (earlier tests of the module may
            # have left the load uneven, so a fixed node could hold none of them).
            victim_id = Counter(viewer.subscriber for viewer in viewers).most_common(1)[0][0]
            victim = live_nodes(settings)[victim_id]
            displaced = [viewer for viewer in viewers if viewer.subscriber == victim_id]

            os.kill(victim["pid"], signal.SIGKILL)
            killed_at = time.monotonic()

            def victim_gone():
                node = live_nodes(settings).get(victim_id)
                return node is None or node["pid"] != victim["pid"]

            await asyncio.to_thread(wait_until, victim_gone, 3 * settings.heartbeat_expiry_seconds, "the victim to go")
            gone_after = time.monotonic() - killed_at
            # From now on registration must never answer the dead node.
            fresh = await rejoin(settings, viewers, displaced, fresh=9, timeout=60)
            publish_aggregates(settings, windows("final", [100]))
            await asyncio.gather(
                *(
                    viewer.wait_for(
                        lambda v: received_windows(v)[-1:] == [windows("final", [100])[0]["window_start"]], 30
                    )
                    for viewer in viewers
                )
            )
            restarted = await asyncio.to_thread(
                wait_until,
                lambda: live_nodes(settings).get(victim_id),
                60,
                "the manager to restart the victim",
            )
            return victim, displaced, fresh, gone_after, restarted

    victim, displaced, fresh, gone_after, restarted = asyncio.run(scenario())

    assert gone_after < 3 * settings.heartbeat_expiry_seconds
    for viewer in displaced:
        assert viewer.reconnects >= 1
        assert viewer.assignment["url"] != victim["url"]
    assert all(viewer.assignment["url"] != victim["url"] for viewer in fresh)
    assert restarted["pid"] != victim["pid"] and restarted["url"] != victim["url"]
