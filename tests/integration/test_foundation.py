"""The foundation: a real KRaft broker, kafka-python against it, Spark's Kafka connector."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid

import pytest

from emostream import kafka
from emostream.devstack.broker import BrokerError, BrokerNode, pid_alive
from emostream.fanout.membership import MembershipWatcher
from emostream.settings import ROOT
from tests.harness.fanout import wait_until
from tests.harness.support import free_port, read_topic

pytestmark = pytest.mark.integration


def test_records_produced_to_emoji_topic_come_back_with_keys_and_values(settings):
    producer = kafka.producer(settings)
    sent = [(f"live|user-{i}", {"user_id": f"user-{i}", "emoji_type": "🔥", "n": i}) for i in range(50)]
    for key, value in sent:
        producer.send(settings.emoji_topic, key=key, value=value)
    producer.flush(timeout=30)
    producer.close()

    records = read_topic(settings, settings.emoji_topic, until=len(sent))

    assert sorted((r.key, json.dumps(r.value, sort_keys=True)) for r in records) == sorted(
        (k, json.dumps(v, sort_keys=True)) for k, v in sent
    )


def test_ensure_topics_is_idempotent_and_creates_the_configured_partitions(settings):
    assert kafka.ensure_topics(settings) == []
    client = kafka.admin(settings)
    try:
        described = {t["name"]: t for t in client.describe_topics([settings.emoji_topic])}
    finally:
        client.close()
    assert len(described[settings.emoji_topic]["partitions"]) == settings.emoji_partitions


def test_every_declared_topic_channels_included_is_created_with_its_configuration(settings):
    specs = kafka.topics(settings)
    assert {kafka.channel_topic(settings, cluster) for cluster in range(settings.clusters)} <= {s.name for s in specs}

    configs = kafka.topic_configs(settings, [spec.name for spec in specs])

    for spec in specs:
        assert dict(spec.config).items() <= configs[spec.name].items(), spec.name


def test_a_consumer_assigned_at_the_end_reads_only_what_is_written_afterwards(settings):
    topic = settings.aggregate_topic
    producer = kafka.producer(settings)
    producer.send(topic, key="k", value={"n": 0})
    producer.flush(timeout=30)
    consumer = kafka.consumer(settings)
    try:
        assigned = kafka.assign_at_end(consumer, topic)
        producer.send(topic, key="k", value={"n": 1})
        producer.flush(timeout=30)
        values = []
        for _ in range(50):
            for records in consumer.poll(timeout_ms=200).values():
                values += [record.value["n"] for record in records]
            if values:
                break
    finally:
        consumer.close()
        producer.close()

    assert [(p.topic, p.partition) for p in assigned] == [(topic, 0)]
    assert values == [1]
    assert kafka.end_offsets(settings, topic) == {0: 2}


def test_a_topic_that_does_not_exist_is_the_layers_topic_not_found(settings):
    consumer = kafka.consumer(settings)
    try:
        with pytest.raises(kafka.TopicNotFound, match="has no partitions"):
            kafka.partitions(consumer, f"no_such_topic.{uuid.uuid4().hex}", timeout=0.5)
    finally:
        consumer.close()


@pytest.mark.spark
def test_spark_reads_emoji_topic_through_the_kafka_connector(settings, spark):
    producer = kafka.producer(settings)
    for i in range(20):
        producer.send(settings.emoji_topic, key=f"k{i}", value={"i": i})
    producer.flush(timeout=30)
    producer.close()

    rows = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("subscribe", settings.emoji_topic)
        .option("startingOffsets", "earliest")
        .load()
        .selectExpr("CAST(key AS STRING) AS key", "CAST(value AS STRING) AS value")
        .collect()
    )

    assert sorted((row.key, json.loads(row.value)["i"]) for row in rows) == sorted((f"k{i}", i) for i in range(20))


def test_console_consumer_prints_produced_records_from_the_beginning(settings):
    producer = kafka.producer(settings)
    values = [{"probe": uuid.uuid4().hex} for _ in range(3)]
    for value in values:
        producer.send(settings.aggregate_topic, key="k", value=value)
    producer.flush(timeout=30)
    producer.close()

    done = subprocess.run(
        [
            str(ROOT / "bin" / "kafka-console-consumer"),
            "--bootstrap-server",
            settings.kafka_bootstrap,
            "--topic",
            settings.aggregate_topic,
            "--from-beginning",
            "--max-messages",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert printed == values


def test_kafka_topics_tool_defaults_to_the_configured_bootstrap(settings):
    env = {**os.environ, "EMOSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}
    done = subprocess.run(
        [str(ROOT / "bin" / "kafka-topics"), "--list"], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert settings.emoji_topic in done.stdout.split()


@pytest.fixture
def spare_node(tmp_path):
    port = free_port()
    controller_port = free_port()
    while controller_port == port:  # two free ports in a row may be the same one
        controller_port = free_port()
    node = BrokerNode(
        home=tmp_path / "kafka",
        port=port,
        controller_port=controller_port,
        heap="256m",
        jars=ROOT / "build" / "jars" / "kafka",
    )
    yield node
    node.stop(kill=True)


def test_starting_the_broker_twice_is_harmless_and_stopping_leaves_no_process(spare_node):
    assert spare_node.start() is True
    pid = spare_node.pid()
    assert pid is not None

    assert spare_node.start() is False
    assert spare_node.pid() == pid

    assert spare_node.stop() is True
    assert not pid_alive(pid)
    assert not spare_node.pid_file.exists()
    assert spare_node.stop() is False


def test_a_membership_watcher_hears_a_quiet_topic_through_its_broker_and_not_while_the_broker_is_away(
    spare_node, settings
):
    # No node beats: only the watcher's own asking tells a quiet topic from a broker that is away.
    assert spare_node.start() is True
    settings = settings.replace(kafka_bootstrap=spare_node.bootstrap)
    kafka.ensure_topics(settings)
    watcher = MembershipWatcher(settings).start()
    try:
        assert watcher.wait_ready(60.0)
        first = watcher.membership.heard_at
        assert first is not None
        wait_until(lambda: watcher.membership.heard_at >= first + 2000, 30.0, "the watcher to hear the topic again")

        spare_node.stop(kill=True)
        stopped_at = time.time() * 1000
        time.sleep(5.0)  # the silence itself is what is under test: nothing to wait for
        assert watcher.membership.heard_at <= stopped_at

        assert spare_node.start() is True
        wait_until(lambda: watcher.membership.heard_at > stopped_at + 5000, 90.0, "the watcher to hear the broker back")
    finally:
        watcher.stop()


def test_start_refuses_with_a_clear_message_when_the_port_is_taken(spare_node):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", spare_node.port))
        squatter.listen()
        with pytest.raises(BrokerError, match=f"port 127.0.0.1:{spare_node.port} is taken by another process"):
            spare_node.start()
    assert spare_node.pid() is None
