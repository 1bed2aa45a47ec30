"""The Kafka client manager: bytes for kafka-python 3, no flush per emit, control messages."""

from __future__ import annotations

import hashlib
import json

import pytest

from emostream import kafka
from emostream.fanout.ops import fanout_topics
from emostream.fanout.socketio_kafka import DISCONNECT_CLIENT, KafkaClientManager, token_digest
from emostream.settings import Settings


class RecordingProducer:
    def __init__(self):
        self.sent: list[tuple[str, object]] = []
        self.flushes = 0

    def send(self, topic, value=None, key=None):
        self.sent.append((topic, value))

    def flush(self, timeout=None):
        self.flushes += 1


@pytest.fixture
def settings():
    return Settings.from_env(environ={}, clusters=3)


def test_a_write_only_emit_sends_json_bytes_to_the_cluster_channel_without_flushing(settings):
    producer = RecordingProducer()
    manager = KafkaClientManager(settings, kafka.channel_topic(settings, 1), write_only=True, producer=producer)

    for n in range(3):
        manager.emit("emoji_update", {"event_id": "final", "n": n}, namespace="/", room="final")

    assert producer.flushes == 0  # the producer batches; callers flush when they need a guarantee
    assert [topic for topic, _ in producer.sent] == ["emostream_cluster_1_socketio"] * 3
    topic, value = producer.sent[0]
    assert isinstance(value, bytes)  # kafka-python 3 rejects str values
    message = json.loads(value)
    assert message["method"] == "emit" and message["event"] == "emoji_update" and message["room"] == "final"
    assert message["data"] == [{"event_id": "final", "n": 0}]


def test_control_messages_are_handed_to_their_handler_and_library_messages_to_the_library(settings):
    manager = KafkaClientManager(settings, kafka.channel_topic(settings, 0), producer=RecordingProducer())
    seen, emitted = [], []
    manager.control_handlers[DISCONNECT_CLIENT] = seen.append
    manager._handle_emit = emitted.append

    manager._dispatch({"method": DISCONNECT_CLIENT, "client_id": "v1"})
    manager._dispatch(json.dumps({"method": "emit", "event": "emoji_update", "host_id": "another"}).encode())
    manager._dispatch({"method": "emit", "host_id": manager.host_id})  # its own message: already handled
    manager._dispatch(b"not json")
    manager._dispatch({"no": "method"})

    assert [m["client_id"] for m in seen] == ["v1"]
    assert [m["host_id"] for m in emitted] == ["another"]


def test_publish_control_only_takes_emostream_methods(settings):
    producer = RecordingProducer()
    manager = KafkaClientManager(settings, kafka.channel_topic(settings, 0), write_only=True, producer=producer)

    manager.publish_control(DISCONNECT_CLIENT, client_id="v1")
    with pytest.raises(ValueError):
        manager.publish_control("disconnect", sid="x")

    assert json.loads(producer.sent[0][1])["method"] == DISCONNECT_CLIENT


def test_every_cluster_has_its_own_channel_topic_declared_with_the_pipelines_topics(settings):
    channels = {kafka.channel_topic(settings, cluster) for cluster in range(3)}

    assert len(channels) == 3
    assert channels <= {spec.name for spec in kafka.topics(settings)}  # so bin/kafka-create-topics makes them
    assert channels <= {spec.name for spec in fanout_topics(settings)}


def test_token_digests_are_stable_and_tell_tokens_apart():
    assert token_digest("abc") == hashlib.sha256(b"abc").hexdigest()[:32]
    assert token_digest("abd") != token_digest("abc")
