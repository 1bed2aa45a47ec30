"""The one place that builds Kafka clients and knows EmoStream's topics.

Services ask this module for a producer, a consumer or an admin client; none of
them constructs a kafka-python client itself, so security, timeouts and
serialization are configured once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.serializer import Deserializer, Serializer

from emostream.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: tuple[tuple[str, str], ...] = ()


def topics(settings: Settings) -> list[TopicSpec]:
    """Every topic of the pipeline, with its partitions and configuration."""
    isr = (("min.insync.replicas", str(settings.min_insync_replicas)),)
    cluster_topics = [
        TopicSpec(cluster_topic(settings, cluster), 1, isr + (("retention.ms", "3600000"),))
        for cluster in range(settings.clusters)
    ]
    return [
        TopicSpec(settings.emoji_topic, settings.emoji_partitions, isr),
        # Aggregates are keyed event_id|window_start and cumulative: compaction keeps the last.
        TopicSpec(
            settings.aggregate_topic,
            1,
            isr + (("cleanup.policy", "compact,delete"), ("retention.ms", "86400000")),
        ),
        TopicSpec(settings.dead_letter_topic, 1, isr),
        TopicSpec(
            settings.membership_topic,
            1,
            isr + (("cleanup.policy", "compact"), ("min.compaction.lag.ms", "0"), ("segment.ms", "600000")),
        ),
        *cluster_topics,
    ]


def cluster_topic(settings: Settings, cluster: int) -> str:
    return f"{settings.cluster_topic_prefix}{cluster}"


class JsonValues(Serializer, Deserializer):
    """JSON values; bytes pass through, and undecodable input comes back as raw bytes."""

    def serialize(self, topic: str, headers: Any, data: Any) -> bytes | None:
        if data is None or isinstance(data, bytes):
            return data
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()

    def deserialize(self, topic: str, headers: Any, data: bytes | None) -> Any:
        if data is None:
            return None
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return data


class TextKeys(Serializer, Deserializer):
    """UTF-8 string keys."""

    def serialize(self, topic: str, headers: Any, data: Any) -> bytes | None:
        if data is None or isinstance(data, bytes):
            return data
        return str(data).encode()

    def deserialize(self, topic: str, headers: Any, data: bytes | None) -> str | None:
        return None if data is None else data.decode(errors="replace")


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
    )
    config.update(overrides)
    return KafkaConsumer(*topic_names, **config)


def admin(settings: Settings, **overrides: Any) -> KafkaAdminClient:
    config: dict[str, Any] = dict(
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        client_id="emostream-admin",
        request_timeout_ms=30_000,
    )
    config.update(overrides)
    return KafkaAdminClient(**config)


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec] | None = None, timeout: float = 60.0) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    specs = list(topics(settings) if specs is None else specs)
    client = wait_for_admin(settings, timeout)
    try:
        existing = set(client.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        created = []
        for spec in missing:
            new_topic = NewTopic(
                name=spec.name,
                num_partitions=spec.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=dict(spec.config),
            )
            try:
                client.create_topics([new_topic])
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
        _wait_for_metadata(client, [spec.name for spec in specs], timeout)
        return created
    finally:
        client.close()


def _wait_for_metadata(client: KafkaAdminClient, names: list[str], timeout: float) -> None:
    """Wait until every partition of the topics has a leader."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            described = client.describe_topics(names)
            if all(
                not topic.get("error_code")
                and topic["partitions"]
                and all(p["leader_id"] >= 0 for p in topic["partitions"])
                for topic in described
            ):
                return
        except KafkaError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {names} have no leaders after {timeout:.0f} s")
        time.sleep(0.2)


def wait_for_admin(settings: Settings, timeout: float = 60.0) -> KafkaAdminClient:
    """An admin client, retrying until the cluster answers or the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin(settings)
        except KafkaError as error:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout:.0f} s"
                ) from error
            time.sleep(0.5)


def main() -> int:
    """``python -m emostream.kafka``: create the pipeline's topics (idempotent)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    settings = Settings.from_env()
    created = ensure_topics(settings)
    for spec in topics(settings):
        state = "created" if spec.name in created else "exists"
        log.info("topic %-28s %2d partition(s)  %s", spec.name, spec.partitions, state)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
