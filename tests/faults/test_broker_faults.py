"""One Kafka broker of three SIGKILLed under load, and later restarted.

The whole stack runs against a 3-node KRaft cluster of its own (emostream.devstack.kafka_cluster,
every node a broker and a controller in its own JVM), with every topic at replication
factor 3 and ``min.insync.replicas=2``: with one node gone, writes with ``acks=all``
still succeed and the crowd should notice nothing but a pause.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from emostream import kafka
from emostream.devstack.kafka_cluster import KafkaCluster
from emostream.settings import Settings
from tests.harness.fault_stack import fault_settings
from tests.harness.faults import (
    TracedCrowd,
    assert_every_acknowledged_emoji_counted_once,
    audit,
    plan_for,
    run_with_fault,
    summary,
)
from tests.harness.stack import Stack, running_stack
from tests.harness.support import free_port, leader_of

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

DOWN_SECONDS = 10.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    home = tmp_path_factory.mktemp("broker-faults") / "kafka-cluster"
    cluster = KafkaCluster.create(home, ports=[(free_port(), free_port()) for _ in range(3)], heap="320m")
    try:
        cluster.start(timeout=240)
        yield cluster
    finally:
        cluster.stop(timeout=30, kill=True)


@pytest.fixture(scope="module")
def cluster_stack(
    base_settings: Settings, cluster: KafkaCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("broker-faults-stack")
    settings = fault_settings(cluster.settings(base_settings), state)
    assert (settings.replication_factor, settings.min_insync_replicas) == (3, 2)
    with running_stack(settings, state, timeout=240) as stack:
        yield stack


def test_one_broker_of_three_killed_and_restarted_loses_and_repeats_nothing(
    cluster: KafkaCluster, cluster_stack: Stack
):
    stack = cluster_stack
    settings = stack.settings
    crowd = TracedCrowd(plan_for(settings, (stack.ingest_url,), stack.registration_url, duration=30.0), settings)
    victim = cluster.node(leader_of(settings, settings.emoji_topic))

    async def kill_and_restart_broker() -> dict:
        killed_at = time.monotonic()
        await asyncio.to_thread(victim.stop, 30.0, True)  # SIGKILL: no controlled shutdown
        await asyncio.sleep(DOWN_SECONDS)
        await asyncio.to_thread(victim.start, 120.0)
        back_at = time.monotonic()
        await asyncio.to_thread(_wait_until_fully_replicated, settings, 180.0)
        return {
            "broker_killed": victim.node_id,
            "broker_down_s": round(back_at - killed_at, 1),
            "replicas_in_sync_again_after_restart_s": round(time.monotonic() - back_at, 1),
        }

    report, outcome = asyncio.run(run_with_fault(crowd, kill_and_restart_broker, after=6.0))
    books = audit(settings, crowd)
    summary("Kafka broker 1 of 3 killed (SIGKILL) and restarted", report, books, **outcome)

    assert_every_acknowledged_emoji_counted_once(books, stack.logs())
    assert books["viewer_windows_missing"] == 0


def _wait_until_fully_replicated(settings: Settings, timeout: float) -> None:
    names = [spec.name for spec in kafka.topics(settings)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client = kafka.admin(settings, request_timeout_ms=10_000)
            try:
                described = client.describe_topics(names)
            finally:
                client.close()
            if all(len(p["isr_nodes"]) == 3 for topic in described for p in topic["partitions"]):
                return
        except Exception:  # the cluster may not answer every request while it recovers
            pass
        time.sleep(1.0)
    raise AssertionError(f"replicas were not all in sync {timeout:.0f} s after the broker came back")
