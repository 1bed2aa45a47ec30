"""EmoStream's Kafka layer against a Kafka 3.9 broker in ZooKeeper mode (bin/kafka-legacy).

Installs that predate KRaft run this stack. The module starts ZooKeeper and the broker
with the command a user runs (which resolves the jars on first use) and drives them with
emostream.kafka's producer, consumer, admin client and ensure_topics.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from emostream import kafka
from emostream.devstack.legacy_kafka import LegacyKafka, four_letter_word
from emostream.settings import ROOT, Settings
from tests.harness.clusters import assert_stop_ends_every_process
from tests.harness.settings import unique_topics
from tests.harness.support import free_port, read_topic

pytestmark = pytest.mark.integration

CLI = str(ROOT / "bin" / "kafka-legacy")


@dataclass
class Started:
    stack: LegacyKafka
    args: list[str]
    stdout: str
    settings: Settings
    env: dict[str, str]


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    state = tmp_path_factory.mktemp("legacy-state")
    stack = LegacyKafka(home=state / "kafka-legacy", zookeeper_port=free_port(), port=free_port())
    args = ["--state", str(stack.home), "--zookeeper-port", str(stack.zookeeper_port), "--port", str(stack.port)]
    settings = unique_topics(Settings.from_env(environ={}, state_dir=str(state), kafka_bootstrap=stack.bootstrap))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOSTREAM_")} | settings.to_env()
    done = subprocess.run([CLI, "start", *args], capture_output=True, text=True, timeout=600, env=env)
    try:
        assert done.returncode == 0, done.stderr
        yield Started(stack, args, done.stdout, settings, env)
    finally:
        stack.stop()


def test_the_broker_is_kafka_3_9_registered_in_zookeeper(started):
    assert f"export EMOSTREAM_KAFKA_BOOTSTRAP={started.stack.bootstrap}" in started.stdout.splitlines()
    # ZooKeeper's session dump lists the ephemeral znodes: the broker registration and the controller.
    dump = four_letter_word("127.0.0.1", started.stack.zookeeper_port, "dump")
    assert "/brokers/ids/1" in dump
    assert "/controller" in dump
    assert any((ROOT / "build" / "jars" / "legacy").glob("kafka_2.13-3.9.*.jar"))
    assert "Kafka version: 3.9." in (started.stack.home / "kafka" / "kafka.log").read_text()


def test_start_created_every_pipeline_topic_and_ensure_topics_is_idempotent(started):
    client = kafka.admin(started.settings)
    try:
        described = {t["name"]: t for t in client.describe_topics([s.name for s in kafka.topics(started.settings)])}
    finally:
        client.close()

    assert {name: len(t["partitions"]) for name, t in described.items()} == {
        spec.name: spec.partitions for spec in kafka.topics(started.settings)
    }
    assert kafka.ensure_topics(started.settings) == []


def test_produced_records_come_back_with_their_keys_and_values(started):
    settings = started.settings
    sent = [(f"live|user-{i}", {"user_id": f"user-{i}", "emoji_type": "🔥", "n": i}) for i in range(50)]
    producer = kafka.producer(settings)
    for key, value in sent:
        producer.send(settings.emoji_topic, key=key, value=value)
    producer.flush(timeout=30)
    producer.close()

    records = read_topic(settings, settings.emoji_topic, until=lambda rs: len(rs) >= len(sent), settle=1)

    assert sorted((r.key, r.value["n"]) for r in records) == sorted((k, v["n"]) for k, v in sent)
    assert {r.value["emoji_type"] for r in records} == {"🔥"}


def test_a_consumer_group_resumes_from_its_committed_offsets(started):
    settings = started.settings
    topic = settings.aggregate_topic
    group = f"legacy-test-{uuid.uuid4().hex[:8]}"
    producer = kafka.producer(settings)
    for i in range(10):
        producer.send(topic, key=f"live|{i}", value={"batch": 1, "i": i})
    producer.flush(timeout=30)

    first = _consume_group(settings, topic, group, wanted=10)
    for i in range(5):
        producer.send(topic, key=f"live|{i}", value={"batch": 2, "i": i})
    producer.flush(timeout=30)
    producer.close()
    second = _consume_group(settings, topic, group, wanted=5)

    assert sorted(v["i"] for v in first) == list(range(10))
    assert [v["batch"] for v in second] == [2] * 5, "the group starts after what it committed"


def _consume_group(settings: Settings, topic: str, group: str, wanted: int) -> list[dict]:
    consumer = kafka.consumer(settings, topic, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False)
    values: list[dict] = []
    try:
        for _ in range(150):
            for records in consumer.poll(timeout_ms=200).values():
                values.extend(r.value for r in records)
            if len(values) >= wanted:
                break
        consumer.commit()
    finally:
        consumer.close()
    return values


def test_stop_ends_zookeeper_and_the_broker(started):
    pids = list(started.stack.running().values())

    assert_stop_ends_every_process(CLI, started.args, started.env, pids)
