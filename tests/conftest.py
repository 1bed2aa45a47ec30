"""Test fixtures: one real Kafka broker and one SparkSession per test run, each started on first use.

The test broker listens on 127.0.0.1:19092 (EMOSTREAM_TEST_KAFKA_PORT) with its own state
under build/test-state/kafka-<port> (tests/harness/broker.py), so it never touches a broker
that ``make run`` started, nor another test session's. Set EMOSTREAM_TEST_KAFKA_BOOTSTRAP to
test against a cluster that is already running. The SparkSession needs no broker. Tests that ask for ``secured_kafka`` share a second,
SASL_SSL broker on free ports (tests/harness/secured_kafka.py).
Every test that asks for ``settings`` gets topics of its own.
Helpers that tests and benches share live in tests/harness/, never here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from emostream import kafka
from emostream.settings import Settings
from tests.harness.broker import broker_node_for_tests
from tests.harness.secured_kafka import SecuredBroker, start_secured_broker
from tests.harness.settings import isolated_settings, unique_topics


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


@pytest.fixture(scope="session")
def base_settings(kafka_broker: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for tests: nothing from the caller's environment, the test broker, no Spark UI."""
    return isolated_settings(tmp_path_factory.mktemp("state"), kafka_bootstrap=kafka_broker)


@pytest.fixture
def settings(base_settings: Settings, tmp_path: Path) -> Settings:
    """Per-test settings with topics of the test's own, created on the test broker."""
    fresh = unique_topics(base_settings).replace(checkpoint_dir=str(tmp_path / "checkpoint"))
    kafka.ensure_topics(fresh)
    return fresh


@pytest.fixture(scope="session")
def secured_kafka() -> Iterator[SecuredBroker]:
    """The session's second broker, SASL_SSL with SCRAM users and ACLs; started only for the tests that ask."""
    broker = start_secured_broker()
    try:
        yield broker
    finally:
        broker.node.stop()


@pytest.fixture
def secured_settings(secured_kafka: SecuredBroker, tmp_path: Path) -> Settings:
    """Per-test settings on the secured broker, as its admin, with topics and ACLs of the test's own."""
    return secured_kafka.prepare_topics(unique_topics(isolated_settings(tmp_path / "state")))


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):
    """The test run's one SparkSession (local mode, shuffle partitions = cores); it starts no broker."""
    from emostream.processor.spark import session

    spark_session = session(isolated_settings(tmp_path_factory.mktemp("spark")), app_name="emostream-tests")
    yield spark_session
    spark_session.stop()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "logs"
    folder.mkdir()
    return folder
