"""Test fixtures: one real Kafka broker and one SparkSession per test run.

The test broker listens on 127.0.0.1:19092 (EMOSTREAM_TEST_KAFKA_PORT) with its own state
under build/test-state/kafka-<port>, so it never touches a broker that ``make run`` started,
nor another test session's. Set EMOSTREAM_TEST_KAFKA_BOOTSTRAP to test against a cluster
that is already running.
Every test that asks for ``settings`` gets topics of its own.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from emostream import kafka
from emostream.devstack.broker import BrokerNode
from emostream.settings import ROOT, Settings

TEST_STATE = ROOT / "build" / "test-state"
TEST_KAFKA_PORT = int(os.environ.get("EMOSTREAM_TEST_KAFKA_PORT", "19092"))


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    """Bootstrap address of the test run's broker, started here unless one is given."""
    external = os.environ.get("EMOSTREAM_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    node = broker_node_for_tests()
    if not node.is_running():
        shutil.rmtree(node.home, ignore_errors=True)  # every run starts from empty topics
    started = node.start()
    try:
        yield node.bootstrap
    finally:
        if started:
            node.stop()


def broker_node_for_tests() -> BrokerNode:
    return BrokerNode(
        # A folder per port: two test sessions on different ports never share (or wipe) a broker.
        home=TEST_STATE / f"kafka-{TEST_KAFKA_PORT}",
        port=TEST_KAFKA_PORT,
        controller_port=TEST_KAFKA_PORT + 1,
        heap="512m",
        jars=ROOT / "build" / "jars" / "kafka",
    )


@pytest.fixture(scope="session")
def base_settings(kafka_broker: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for tests: nothing from the caller's environment, the test broker, no Spark UI."""
    state = tmp_path_factory.mktemp("state")
    return Settings.from_env(
        environ={},
        kafka_bootstrap=kafka_broker,
        state_dir=str(state),
        checkpoint_dir=str(state / "checkpoints"),
        spark_ui=False,
        token_secret="test-secret-" + uuid.uuid4().hex,
    )


def unique_topics(settings: Settings, tag: str | None = None) -> Settings:
    """The same settings with topic names no other test uses."""
    tag = tag or uuid.uuid4().hex[:10]
    return settings.replace(
        emoji_topic=f"emoji_topic.{tag}",
        aggregate_topic=f"aggregated_emoji_topic.{tag}",
        dead_letter_topic=f"emoji_dead_letter_topic.{tag}",
        membership_topic=f"emostream_subscribers.{tag}",
        cluster_topic_prefix=f"emostream_cluster.{tag}.",
    )


@pytest.fixture
def settings(base_settings: Settings, tmp_path: Path) -> Settings:
    """Per-test settings with topics of the test's own, created on the test broker."""
    fresh = unique_topics(base_settings).replace(checkpoint_dir=str(tmp_path / "checkpoint"))
    kafka.ensure_topics(fresh)
    return fresh


@pytest.fixture(scope="session")
def spark(base_settings: Settings):
    """The test run's one SparkSession (local mode, shuffle partitions = cores)."""
    from emostream.processor.spark import session

    spark_session = session(base_settings, app_name="emostream-tests")
    yield spark_session
    spark_session.stop()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "logs"
    folder.mkdir()
    return folder
