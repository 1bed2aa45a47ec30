"""Scaling by the subscriber manager: a node is added past the threshold and retired when idle.

Small numbers make it quick: one cluster starting with one node of capacity 4, full
above 50 % (more than 2 viewers), at most two nodes, idle extras retired after 3 s.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from emostream.clients.viewer import Viewer
from emostream.settings import Settings
from tests.harness.fanout import fanout_settings, live_nodes, membership, registration_url, wait_until
from tests.harness.support import ServiceProcess, metric_of, wait_http

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_cluster(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    settings = fanout_settings(
        base_settings,
        clusters=1,
        subscribers_per_cluster=1,
        max_subscribers_per_cluster=2,
        subscriber_capacity=4,
        scale_up_ratio=0.5,
        scale_down_idle_seconds=3.0,
    )
    log_dir = tmp_path_factory.mktemp("fanout-scaling-logs")
    services = [
        ServiceProcess("subscriber_manager.py", settings, log_dir),
        ServiceProcess("registration_app.py", settings, log_dir),
    ]
    try:
        wait_http(registration_url(settings) + "/healthz", 60, services[1].process)
        wait_until(lambda: sorted(live_nodes(settings)) == ["c0-s0"], 90, "the first node")
        yield settings, services
    finally:
        for service in reversed(services):
            service.stop()


def manager_metric(settings: Settings, name: str) -> float:
    return metric_of(f"http://127.0.0.1:{settings.manager_port}/metrics", name)


def test_a_full_cluster_gets_a_new_node_that_takes_new_viewers_and_it_is_retired_when_idle(small_cluster):
    settings, _ = small_cluster

    async def scenario():
        first = [Viewer(registration_url(settings), event_id="live") for _ in range(3)]  # 3 > 50 % of 4
        second: list[Viewer] = []
        try:
            await asyncio.gather(*(viewer.start(timeout=30) for viewer in first))
            new_node = await asyncio.to_thread(
                wait_until, lambda: live_nodes(settings).get("c0-s1"), 60, "a second node"
            )
            second = [Viewer(registration_url(settings), event_id="live") for _ in range(2)]
            for viewer in second:  # one at a time: each sees the other's pending slot
                await viewer.start(timeout=30)
            placement = ([v.subscriber for v in first], [v.subscriber for v in second])
            # The load falls: the new node empties and the first is no longer full.
            await asyncio.gather(*(viewer.close() for viewer in [*second, first.pop()]))
            second = []
            # Idle for scale_down_idle_seconds: retired with a tombstone, not left to expire.
            await asyncio.to_thread(
                wait_until,
                lambda: "c0-s1" not in {n["subscriber_id"] for n in membership(settings)["subscribers"]},
                settings.scale_down_idle_seconds + 30,
                "c0-s1 to be retired",
            )
            survivors = live_nodes(settings)
            return placement, new_node, survivors
        finally:
            await asyncio.gather(*(viewer.close() for viewer in first + second))

    (first_nodes, second_nodes), new_node, survivors = asyncio.run(scenario())

    assert first_nodes == ["c0-s0"] * 3
    assert new_node["cluster"] == 0
    assert second_nodes == ["c0-s1", "c0-s1"]
    assert sorted(survivors) == ["c0-s0"] and survivors["c0-s0"]["connections"] == 2
    assert manager_metric(settings, "emostream_manager_scale_ups_total") == 1
    assert manager_metric(settings, "emostream_manager_scale_downs_total") == 1


def test_the_last_node_of_a_cluster_is_never_retired_even_when_idle(small_cluster):
    settings, _ = small_cluster
    wait_until(lambda: live_nodes(settings).get("c0-s0", {}).get("connections") == 0, 30, "an idle cluster")

    time.sleep(2 * settings.scale_down_idle_seconds)  # twice the idle time that retires an extra node
    # Proof the manager looked at the idle cluster after that time: two more of its reconcile steps.
    steps = manager_metric(settings, "emostream_manager_reconciles_total")
    wait_until(
        lambda: manager_metric(settings, "emostream_manager_reconciles_total") >= steps + 2,
        30,
        "two reconcile steps after the idle time",
    )

    assert sorted(live_nodes(settings)) == ["c0-s0"]
    assert manager_metric(settings, "emostream_manager_scale_downs_total") == 1
