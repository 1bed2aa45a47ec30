"""The one place that builds Kafka clients and knows EmoStream's topics.

Services ask this package for a producer, a consumer or an admin client; none of them
constructs a Kafka client itself, so security, timeouts and serialization are configured
once. The clients are kafka-python's (:mod:`.clients`), except the ingest's producer,
which runs on librdkafka for speed (:mod:`.bulk`). Neither library shows through: the
helpers here take the place of their types, and their exceptions arrive as this
package's own (:mod:`.errors`). :mod:`.topic_specs` declares every topic the project uses;
``python -m emostream.kafka`` creates them.
"""

from emostream.kafka.bulk import BulkProducer, DeliveryFuture, ingest_producer
from emostream.kafka.clients import (
    LONG_FETCH_WAIT_MS,
    LONG_POLL_MS,
    Partition,
    admin,
    answers,
    assign_at_beginning,
    assign_at_end,
    caught_up,
    commit,
    consumer,
    end_offsets,
    flush,
    partitions,
    poll,
    producer,
    topic_configs,
    wait_for_admin,
)
from emostream.kafka.codecs import JsonValues, TextKeys
from emostream.kafka.errors import (
    AuthenticationFailed,
    CommitFailed,
    DeliveryError,
    KafkaError,
    KafkaTimeout,
    KafkaUnavailable,
    NotAuthorized,
    QueueFull,
    TopicNotFound,
    retriable,
    translate_errors,
)
from emostream.kafka.topic_specs import TopicSpec, channel_topic, cluster_topic, ensure_topics, topics

__all__ = [
    "AuthenticationFailed",
    "BulkProducer",
    "CommitFailed",
    "DeliveryError",
    "DeliveryFuture",
    "JsonValues",
    "KafkaError",
    "KafkaTimeout",
    "KafkaUnavailable",
    "LONG_FETCH_WAIT_MS",
    "LONG_POLL_MS",
    "NotAuthorized",
    "Partition",
    "QueueFull",
    "TextKeys",
    "TopicNotFound",
    "TopicSpec",
    "admin",
    "answers",
    "assign_at_beginning",
    "assign_at_end",
    "caught_up",
    "channel_topic",
    "cluster_topic",
    "commit",
    "consumer",
    "end_offsets",
    "flush",
    "ensure_topics",
    "ingest_producer",
    "partitions",
    "poll",
    "producer",
    "retriable",
    "topic_configs",
    "topics",
    "translate_errors",
    "wait_for_admin",
]
