"""kafka-python clients with EmoStream's configuration, and the few consumer moves the services make.

The producer, consumer and admin client built here are kafka-python's own objects; the
helpers below take the place of the calls that would need its types (partitions, offsets)
or its exceptions (a failed commit), and raise :mod:`emostream.kafka.errors`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError as KafkaPythonError

from emostream.kafka.codecs import JsonValues, TextKeys
from emostream.kafka.errors import KafkaError, KafkaUnavailable, TopicNotFound, translate_errors
from emostream.kafka.security import kafka_python_options
from emostream.settings import Settings

# Partition: one partition of one topic, as the consumer names it. Callers pass these back to
# the consumer and the helpers here, and read ``.topic`` and ``.partition`` at most.
Partition = TopicPartition

# A long-lived follower of a topic (a publisher's input, a node's channel, the membership and
# revocation topics) fetches with a long wait and polls with a long timeout. The broker answers
# a waiting fetch as soon as a record arrives and the poll returns with it, so neither delays a
# record; short ones made every idle client ask again several times a second, each round in
# kafka-python's Python code, and that was most of what the idle services spent.
LONG_FETCH_WAIT_MS = 5_000
LONG_POLL_MS = 1_000


def producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A durable JSON producer: acks from all in-sync replicas, idempotent retries."""
    config: dict[str, Any] = dict(
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        client_id="emostream",
        acks="all",
        enable_idempotence=True,
        retries=2**31 - 1,
        delivery_timeout_ms=120_000,
        request_timeout_ms=15_000,
        max_in_flight_requests_per_connection=5,
        linger_ms=5,
        batch_size=256 * 1024,
        max_request_size=4 * 1024 * 1024,
        compression_type=None,
        max_block_ms=10_000,
        reconnect_backoff_max_ms=2_000,
        allow_auto_create_topics=False,
        key_serializer=TextKeys(),
        value_serializer=JsonValues(),
        **kafka_python_options(settings),
    )
    config.update(overrides)
    return KafkaProducer(**config)


def consumer(settings: Settings, *topic_names: str, group_id: str | None = None, **overrides: Any) -> KafkaConsumer:
    """A JSON consumer; values that are not JSON arrive as raw bytes."""
    config: dict[str, Any] = dict(
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        client_id="emostream",
        group_id=group_id,
        auto_offset_reset="latest",
        enable_auto_commit=group_id is not None,
        value_deserializer=JsonValues(),
        key_deserializer=TextKeys(),
        reconnect_backoff_max_ms=2_000,
        **kafka_python_options(settings),
    )
    config.update(overrides)
    return KafkaConsumer(*topic_names, **config)


def admin(settings: Settings, **overrides: Any) -> KafkaAdminClient:
    config: dict[str, Any] = dict(
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        client_id="emostream-admin",
        request_timeout_ms=30_000,
        **kafka_python_options(settings),
    )
    config.update(overrides)
    return KafkaAdminClient(**config)


def wait_for_admin(settings: Settings, timeout: float = 60.0) -> KafkaAdminClient:
    """An admin client, retrying until the cluster answers; :class:`KafkaUnavailable` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin(settings)
        except KafkaPythonError as error:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(
                    f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout:.0f} s"
                ) from error
            time.sleep(0.5)


# ---------------------------------------------------------------------- consumer moves


def partitions(consumer: KafkaConsumer, topic: str, timeout: float = 30.0) -> list[Partition]:
    """Every partition of ``topic``, waiting for its metadata (a just-created topic has none yet).

    Raises :class:`TopicNotFound` when the topic has no partitions after ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        with translate_errors():
            numbers = consumer.partitions_for_topic(topic)
        if numbers:
            return [TopicPartition(topic, number) for number in sorted(numbers)]
        if time.monotonic() > deadline:
            raise TopicNotFound(f"topic {topic} has no partitions after {timeout:.0f} s")
        time.sleep(0.2)


def assign_at_end(consumer: KafkaConsumer, topic: str, timeout: float = 10.0) -> list[Partition]:
    """Take every partition of ``topic`` (no group), positioned after its last record.

    The positions are resolved now, not on the first poll, so every record written after
    this call returns is read.
    """
    assigned = partitions(consumer, topic, timeout)
    with translate_errors():
        consumer.assign(assigned)
        consumer.seek_to_end(*assigned)
        for partition in assigned:
            consumer.position(partition)
    return assigned


def assign_at_beginning(consumer: KafkaConsumer, topic: str, timeout: float = 30.0) -> dict[Partition, int]:
    """Take every partition of ``topic`` (no group) from its first record.

    Returns the partitions' end offsets at this moment: :func:`caught_up` tells when the
    consumer has read what the topic held when it started.
    """
    assigned = partitions(consumer, topic, timeout)
    with translate_errors():
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        return dict(consumer.end_offsets(assigned))


def caught_up(consumer: KafkaConsumer, offsets: Mapping[Partition, int]) -> bool:
    """True once the consumer's position is at or past ``offsets`` on every partition."""
    with translate_errors():
        return all(consumer.position(partition) >= offset for partition, offset in offsets.items())


def answers(consumer: KafkaConsumer, timeout_ms: int = 1_000) -> bool:
    """Whether the brokers of the consumer's partitions answer (their end offsets) within ``timeout_ms``.

    A follower whose poll comes back empty cannot tell a quiet topic from a broker that is away:
    this asks. A consumer with no partitions has no broker to ask, and gets False.
    """
    assigned = list(consumer.assignment())
    if not assigned:
        return False
    try:
        with translate_errors():
            consumer.end_offsets(assigned, timeout_ms=timeout_ms)
    except KafkaError:
        return False
    return True


def poll(consumer: KafkaConsumer, timeout_ms: int) -> dict[Partition, list[Any]]:
    """The consumer's next records by partition, raising the layer's errors.

    kafka-python answers a poll with no brokers at all (every one restarting) not with an
    empty batch but with a connection error from its group coordinator lookup:
    :class:`KafkaUnavailable` here, which a service's loop waits out.
    """
    with translate_errors():
        return consumer.poll(timeout_ms=timeout_ms)


def flush(producer: KafkaProducer, timeout: float) -> None:
    """Wait until everything sent so far is acknowledged; :class:`KafkaTimeout` when that takes longer."""
    with translate_errors():
        producer.flush(timeout=timeout)


def commit(consumer: KafkaConsumer) -> None:
    """Commit the consumed offsets; :class:`CommitFailed` when a rebalance took the partitions."""
    with translate_errors():
        consumer.commit()


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The next offset of every partition of ``topic``, by partition number."""
    probe = consumer(settings)
    try:
        with translate_errors():
            ends = probe.end_offsets(partitions(probe, topic))
        return {partition.partition: offset for partition, offset in ends.items()}
    finally:
        probe.close()


def topic_configs(settings: Settings, names: Iterable[str]) -> dict[str, dict[str, str]]:
    """The configuration of each topic as the brokers report it: ``{topic: {key: value}}``."""
    client = admin(settings)
    try:
        with translate_errors():
            described = client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in names])
    finally:
        client.close()
    return {
        name: {key: entry["value"] for key, entry in entries.items()} for name, entries in described["topic"].items()
    }
