"""Every topic EmoStream uses: its name, partitions and configuration, and their creation.

``bin/kafka-create-topics`` (``python -m emostream.kafka``) creates :func:`topics`; services
that must not wait for an operator create the ones they use with :func:`ensure_topics`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError as KafkaPythonError
from kafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError

from emostream.kafka.clients import wait_for_admin
from emostream.kafka.errors import KafkaTimeout
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
        # Revoked send credentials, keyed event_id|client_id: compaction keeps each client's latest.
        # A record matters until the credentials it covers expire, so it is kept a token lifetime
        # at least (plus a day's margin for a clock or a lifetime changed later).
        TopicSpec(
            settings.revocation_topic,
            1,
            isr
            + (
                ("cleanup.policy", "compact,delete"),
                ("retention.ms", str((settings.token_ttl_seconds + 86_400) * 1000)),
                ("min.compaction.lag.ms", "0"),
                ("segment.ms", "3600000"),
            ),
        ),
        # Main publisher -> cluster publisher: what was routed to each cluster.
        *(
            TopicSpec(cluster_topic(settings, cluster), 1, isr + (("retention.ms", "3600000"),))
            for cluster in range(settings.clusters)
        ),
        # Cluster publisher -> its subscriber nodes (the Socket.IO channel): live messages only.
        *(
            TopicSpec(channel_topic(settings, cluster), 1, isr + (("retention.ms", "600000"),))
            for cluster in range(settings.clusters)
        ),
    ]


# Consumer groups: Spark's source and batch reads take group ids under the processor's prefix
# (the jobs set it), each cluster publisher its own id under the other.
PROCESSOR_GROUP_PREFIX = "emostream-processor"
CLUSTER_PUBLISHER_GROUP_PREFIX = "emostream-cluster-publisher."


def main_publisher_group(settings: Settings) -> str:
    return f"emostream-main-publisher.{settings.aggregate_topic}"


def cluster_publisher_group(settings: Settings, cluster: int) -> str:
    return f"{CLUSTER_PUBLISHER_GROUP_PREFIX}{cluster_topic(settings, cluster)}"


def cluster_topic(settings: Settings, cluster: int) -> str:
    """The topic the main publisher routes ``cluster``'s aggregates to."""
    return f"{settings.cluster_topic_prefix}{cluster}"


def channel_topic(settings: Settings, cluster: int) -> str:
    """The Socket.IO channel of ``cluster``: cluster publisher -> its subscriber nodes."""
    return f"{cluster_topic(settings, cluster)}_socketio"


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec] | None = None, timeout: float = 60.0) -> list[str]:
    """Create the topics that do not exist yet and wait until they have leaders; return the names created.

    On a secured cluster only the admin may create topics, and a service sees only the topics
    its ACLs name: a topic it may not create is left to the admin (``bin/kafka-create-topics``).
    """
    specs = list(topics(settings) if specs is None else specs)
    client = wait_for_admin(settings, timeout)
    try:
        existing = set(client.list_topics())
        created = []
        not_ours = []
        for spec in specs:
            if spec.name in existing:
                continue
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
                pass  # another service created it first
            except TopicAuthorizationFailedError:
                not_ours.append(spec.name)
        if not_ours:
            log.debug("not allowed to create or see %s: topics of the admin", ", ".join(not_ours))
        _wait_for_leaders(client, [spec.name for spec in specs if spec.name not in not_ours], timeout)
        return created
    finally:
        client.close()


def _wait_for_leaders(client: KafkaAdminClient, names: list[str], timeout: float) -> None:
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
        except KafkaPythonError:
            pass  # a just-created topic is not described yet
        if time.monotonic() > deadline:
            raise KafkaTimeout(f"topics {names} have no leaders after {timeout:.0f} s")
        time.sleep(0.2)
