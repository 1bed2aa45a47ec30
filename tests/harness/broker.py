"""The test run's Kafka broker: where it listens and keeps its state.

It listens on 127.0.0.1:19092 unless EMOSTREAM_TEST_KAFKA_PORT says otherwise, with its state
under build/test-state/kafka-<port>, so it never touches a broker that ``make run`` started,
nor another test session's.
"""

from __future__ import annotations

import os

from emostream.devstack.broker import BrokerNode
from emostream.settings import ROOT

TEST_STATE = ROOT / "build" / "test-state"
TEST_KAFKA_PORT = int(os.environ.get("EMOSTREAM_TEST_KAFKA_PORT", "19092"))


def broker_node_for_tests(port: int = TEST_KAFKA_PORT) -> BrokerNode:
    return BrokerNode(
        # A folder per port: two test sessions on different ports never share (or wipe) a broker.
        home=TEST_STATE / f"kafka-{port}",
        port=port,
        controller_port=port + 1,
        heap="512m",
        jars=ROOT / "build" / "jars" / "kafka",
    )
