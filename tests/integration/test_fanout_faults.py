"""Faults of the fan-out tier without a manager to notice them: only heartbeats and Kafka offsets.

One cluster of two nodes started by hand (as an operator or another orchestrator
would), with registration, the main publisher and the cluster publisher. A node
killed here is only found dead by its heartbeats expiring, the path a crashed
machine takes in a real deployment.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from emostream.settings import Settings
from tests.harness.fanout import (
    all_connected,
    event_in_heartbeats,
    fanout_settings,
    live_nodes,
    membership,
    publish_aggregates,
    received_windows,
    registration_url,
    rejoin,
    served_by,
    started_viewers,
    wait_until,
    windows,
)
from tests.harness.support import ServiceProcess, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def start_node(settings: Settings, log_dir: Path, node_id: str) -> ServiceProcess:
    return ServiceProcess("subscriber_service.py", settings, log_dir, "--id", node_id, "--cluster", "0", "--port", "0")


def start_main_publisher(settings: Settings, log_dir: Path) -> ServiceProcess:
    return ServiceProcess("pubsub_service.py", settings, log_dir)


def wait_publisher(settings: Settings, service: ServiceProcess) -> None:
    wait_until(
        lambda: wait_http(f"http://127.0.0.1:{settings.pubsub_metrics_port}/healthz", 60, service.process).ok,
        60,
        "the main publisher to own its partition",
    )


@pytest.fixture(scope="module")
def cluster(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    settings = fanout_settings(base_settings, clusters=1, subscribers_per_cluster=2, subscriber_capacity=100)
    log_dir = tmp_path_factory.mktemp("fanout-fault-logs")
    services = {
        "registration": ServiceProcess("registration_app.py", settings, log_dir),
        "pubsub": start_main_publisher(settings, log_dir),
        "cluster-publisher": ServiceProcess("pubsub_service.py", settings, log_dir, "--cluster", "0"),
        "c0-s0": start_node(settings, log_dir, "c0-s0"),
        "c0-s1": start_node(settings, log_dir, "c0-s1"),
    }
    try:
        wait_http(registration_url(settings) + "/healthz", 60, services["registration"].process)
        wait_until(lambda: sorted(live_nodes(settings)) == ["c0-s0", "c0-s1"], 90, "both nodes live")
        wait_publisher(settings, services["pubsub"])
        yield settings, services, log_dir
    finally:
        for service in reversed(list(services.values())):
            service.stop()


def test_a_sigkilled_node_drops_out_when_its_heartbeats_expire_and_its_viewers_move_to_the_survivor(cluster):
    settings, services, log_dir = cluster

    async def scenario():
        async with started_viewers(settings, 10, "final", backoff_initial=0.3) as viewers:
            displaced = served_by(viewers, "c0-s1")

            services["c0-s1"].kill()  # SIGKILL: no goodbye, no tombstone
            # Only expiry can tell; bounded by a few heartbeat periods past the expiry.
            bound = settings.heartbeat_expiry_seconds + 4 * settings.heartbeat_seconds
            await asyncio.to_thread(wait_until, lambda: "c0-s1" not in live_nodes(settings), bound, "c0-s1 to expire")
            listed = {node["subscriber_id"]: node for node in membership(settings)["subscribers"]}
            fresh = await rejoin(settings, viewers, displaced, fresh=5, timeout=30)
            publish_aggregates(settings, windows("final", [1]))
            await asyncio.gather(*(viewer.wait_for_updates(1, timeout=30) for viewer in viewers))
            return listed, displaced, fresh

    listed, displaced, fresh = asyncio.run(scenario())

    assert listed["c0-s1"]["alive"] is False  # expired, still on record for operators
    assert all(viewer.subscriber == "c0-s0" and viewer.reconnects >= 1 for viewer in displaced)
    assert all(viewer.subscriber == "c0-s0" for viewer in fresh)

    services["c0-s1"] = start_node(settings, log_dir, "c0-s1")  # back for the next test
    wait_until(lambda: "c0-s1" in live_nodes(settings), 60, "c0-s1 back")


def test_a_node_stopped_cleanly_leaves_the_membership_at_once_and_hands_its_viewers_back(cluster):
    settings, services, _ = cluster

    async def scenario():
        async with started_viewers(settings, 8, "final", backoff_initial=0.3) as viewers:
            handed_back = served_by(viewers, "c0-s1")

            services["c0-s1"].stop()  # SIGTERM
            # A tombstone, not an expiry: the node is gone from the record entirely, well
            # before its last heartbeat could have expired.
            await asyncio.to_thread(
                wait_until,
                lambda: "c0-s1" not in {n["subscriber_id"] for n in membership(settings)["subscribers"]},
                settings.heartbeat_expiry_seconds,
                "c0-s1's tombstone",
            )
            await all_connected(handed_back, 60)
            return handed_back

    handed_back = asyncio.run(scenario())

    assert all(viewer.subscriber == "c0-s0" and viewer.reconnects == 1 for viewer in handed_back)
    assert "subscriber c0-s1 stopped" in services["c0-s1"].log_path.read_text()


def test_the_main_publisher_resumes_from_its_committed_offsets_after_a_restart(cluster):
    settings, services, log_dir = cluster
    event = "resume"
    starts = {n: windows(event, [n])[0]["window_start"] for n in range(1, 9)}

    async def scenario():
        async with started_viewers(settings, 1, event, timeout=30) as (viewer,):
            await event_in_heartbeats(settings, event)
            publish_aggregates(settings, windows(event, range(1, 4)))
            await viewer.wait_for_updates(3, timeout=30)

            services["pubsub"].stop()  # SIGTERM: a clean stop, everything routed is committed
            publish_aggregates(settings, windows(event, range(4, 7)))  # while it is down
            services["pubsub"] = start_main_publisher(settings, log_dir)
            await viewer.wait_for_updates(6, timeout=60)

            services["pubsub"].kill()  # SIGKILL: at most its last batch is routed again
            publish_aggregates(settings, windows(event, range(7, 9)))
            services["pubsub"] = start_main_publisher(settings, log_dir)
            await viewer.wait_for(lambda v: starts[8] in received_windows(v), 60)
            # A marker published now reaches the viewer after anything the restart replays.
            publish_aggregates(settings, windows(event, [9]))
            await viewer.wait_for(lambda v: marker in received_windows(v), 60)
            return received_windows(viewer)

    marker = windows(event, [9])[0]["window_start"]
    received = asyncio.run(scenario())

    assert received[-1] == marker
    received = received[:-1]
    assert received[:6] == [starts[n] for n in range(1, 7)]  # nothing lost, nothing repeated
    assert received[-2:] == [starts[7], starts[8]]
    assert set(received[6:]) <= {starts[n] for n in range(4, 9)}  # a repeat of the last batch at most


def test_a_restarted_cluster_publisher_resumes_from_its_committed_offsets(cluster):
    settings, services, log_dir = cluster
    event = "relay"
    starts = [windows(event, [n])[0]["window_start"] for n in range(1, 5)]

    async def scenario():
        async with started_viewers(settings, 1, event, timeout=30) as (viewer,):
            await event_in_heartbeats(settings, event)
            publish_aggregates(settings, windows(event, [1, 2]))
            await viewer.wait_for_updates(2, timeout=30)

            services["cluster-publisher"].stop()
            publish_aggregates(settings, windows(event, [3, 4]))  # routed to the cluster topic meanwhile
            services["cluster-publisher"] = ServiceProcess("pubsub_service.py", settings, log_dir, "--cluster", "0")
            await viewer.wait_for_updates(4, timeout=60)
            # A marker published now reaches the viewer after anything a replay from the beginning would send.
            publish_aggregates(settings, windows(event, [5]))
            await viewer.wait_for(lambda v: marker in received_windows(v), 60)
            return received_windows(viewer)

    marker = windows(event, [5])[0]["window_start"]
    assert asyncio.run(scenario()) == [*starts, marker]
