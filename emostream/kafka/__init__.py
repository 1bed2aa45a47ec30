"""The one place that builds Kafka clients and knows EmoStream's topics.

Services ask this module for a producer, a consumer or an admin client; none of
them constructs a Kafka client itself, so security, timeouts and serialization are
configured once. The clients are kafka-python's, except the ingest's producer, which
runs on librdkafka (confluent-kafka) for speed: :class:`BulkProducer`.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
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


class DeliveryFuture:
    """The fate of one record sent through :class:`BulkProducer`.

    librdkafka reports each delivery to a callable; the future is that callable, so a record
    costs one small object. Reports are served by the producer's poller thread as they arrive
    (and by :meth:`BulkProducer.flush`).
    """

    __slots__ = ("is_done", "exception", "_on_ack")

    def __init__(self, on_ack: Any = None) -> None:
        # The acknowledgement callback is fixed before the record is handed over: a report can
        # arrive on the poller thread before send() even returns.
        self.is_done = False
        self.exception: BaseException | None = None
        self._on_ack = on_ack

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def __call__(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.exception = DeliveryError(error)
        elif self._on_ack is not None:
            self._on_ack(None)
        self.is_done = True


class DeliveryError(KafkaError):
    """librdkafka gave up on a record (delivery timeout, purge at shutdown, fatal producer error)."""

    def __init__(self, error: Any):
        super().__init__(str(error))
        self.fatal = bool(getattr(error, "fatal", lambda: False)())


class BulkProducer:
    """A durable producer on librdkafka, for the ingest's hot path.

    kafka-python spends about 27 µs of Python per record, which capped the ingest near
    25,000 emoji/s on two cores; librdkafka needs about 3. Same durability as
    :func:`producer`: idempotent (acks from all in-sync replicas, retries the broker
    de-duplicates), two minutes to deliver, and the Java client's murmur2 partitioner, so a
    user's emoji land on the partition every other client would pick.
    """

    def __init__(self, settings: Settings, client_id: str = "emostream", **overrides: Any):
        from confluent_kafka import Producer

        config: dict[str, Any] = {
            "bootstrap.servers": settings.kafka_bootstrap,
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": 120_000,
            "request.timeout.ms": 15_000,
            "linger.ms": 5,
            "queue.buffering.max.messages": 2_000_000,
            "message.max.bytes": 4 * 1024 * 1024,
            "partitioner": "murmur2_random",
            "reconnect.backoff.max.ms": 2_000,
            "log.connection.close": False,
            "logger": logging.getLogger("emostream.kafka.librdkafka"),
            "error_cb": _log_client_error,
        }
        config.update(overrides)
        self._producer = Producer(config)
        # Serve delivery reports as they arrive, not when the owner next polls: an acknowledgement
        # callback must run as soon as Kafka has the record (the ingest journal deletes on it).
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._serve_reports, name="kafka-delivery-reports", daemon=True)
        self._poller.start()

    def _serve_reports(self) -> None:
        if _green():
            # Under gevent this "thread" is a greenlet: a blocking poll would stall the event loop.
            while not self._closed.is_set():
                self._producer.poll(0)
                time.sleep(0.005)  # gevent's sleep: other greenlets run
        else:
            while not self._closed.is_set():
                self._producer.poll(0.1)

    def send(
        self, topic: str, value: bytes | None = None, key: str | None = None, on_ack: Any = None
    ) -> DeliveryFuture:
        """Queue one record; ``on_ack(None)`` runs once Kafka has it. BufferError: the local queue is full."""
        future = DeliveryFuture(on_ack)
        self._producer.produce(topic, value, key, on_delivery=future)
        return future

    def flush(self, timeout: float | None = None) -> None:
        left = self._producer.flush(-1 if timeout is None else timeout)
        if left:
            raise KafkaTimeoutError(f"{left} records not acknowledged within {timeout} s")

    def close(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` s for acknowledgements, then fail whatever is left."""
        try:
            self.flush(timeout or 0)
        except KafkaTimeoutError:
            pass
        self._closed.set()
        self._poller.join(5)
        self._producer.purge()  # queued and in-flight records: their futures fail now
        self._producer.poll(0)


def bulk_producer(settings: Settings, **overrides: Any) -> BulkProducer:
    return BulkProducer(settings, **overrides)


def _green() -> bool:
    """True when gevent has patched threading (the gunicorn gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("threading"))


def _log_client_error(error: Any) -> None:
    log.warning("Kafka client: %s", error)


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
