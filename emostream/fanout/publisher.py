"""The main publisher and the cluster publishers: the top of the fan-out hierarchy.

Main publisher: reads ``aggregated_emoji_topic`` in a consumer group, checks each
aggregate, and routes it only to the clusters that have viewers of its event (from
the membership), by producing to their cluster topics. It commits its offsets after
the routed records are on the broker, so a restart resumes where it stopped (a
record may be routed twice after a crash; aggregates are cumulative per window, so
a repeat is harmless downstream).

Cluster publisher (one per cluster): reads its cluster topic and emits each
aggregate to the room of its event through a write-only Socket.IO client manager,
whose channel every subscriber node of the cluster listens on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from emostream import kafka
from emostream.fanout.membership import Membership, MembershipWatcher
from emostream.fanout.socketio_kafka import NAMESPACE, KafkaClientManager
from emostream.http import STARTING, Health
from emostream.kafka.topic_specs import cluster_publisher_group, main_publisher_group
from emostream.settings import Settings
from emostream.wire import EMOJI_UPDATE, InvalidMessage, aggregate_key, now_ms, validate_aggregate

# Named, not __name__: run with python -m, this module is __main__.
log = logging.getLogger("emostream.fanout.publisher")

MAX_RECORDS = 2000
# A crashed main publisher's partition moves to its replacement (or a standby) after this
# long; kafka-python's default of 45 s would leave viewers without updates for that long.
# After an outage, a cluster publisher skips what was routed longer ago than this: viewers
# want the crowd's mood now, not a minute of old windows in a burst.
STALE_MS = 60_000
GROUP_SESSION = dict(session_timeout_ms=10_000, heartbeat_interval_ms=2_000)
# While Kafka is away: how long to wait before trying again, and how often to say so.
OUTAGE_PAUSE = 0.5
OUTAGE_WARNING_EVERY = 10.0
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def main_group_id(settings: Settings) -> str:
    return main_publisher_group(settings)


def cluster_group_id(settings: Settings, cluster: int) -> str:
    return cluster_publisher_group(settings, cluster)


class RoutingTable:
    """Event → clusters with live viewers of it, rebuilt when the membership changes.

    Heartbeats change the membership a few times a second while aggregates can arrive
    by the thousand, so the table is built once per change (and at least every
    ``refresh_ms``, since nodes also die by silence) instead of once per aggregate.
    """

    def __init__(self, membership: Membership, refresh_ms: int = 250):
        self.membership = membership
        self.refresh_ms = refresh_ms
        self._version = -1
        self._built_at = 0
        self._table: dict[str, frozenset[int]] = {}

    def clusters(self, event_id: str, now: int | None = None) -> frozenset[int]:
        """The clusters that should receive an aggregate of ``event_id``."""
        now = now_ms() if now is None else now
        if self._version != self.membership.version or now - self._built_at >= self.refresh_ms:
            self._rebuild(now)
        return self._table.get(event_id, frozenset())

    def _rebuild(self, now: int) -> None:
        version = self.membership.version
        nodes = self.membership.nodes()
        # Liveness counts silence only while Kafka answered (Membership.quiet_ms): the aggregates
        # that arrive as Kafka comes back go where the viewers were, not nowhere, while the
        # nodes' heartbeats come back one by one.
        table: dict[str, set[int]] = {}
        for node in (node for node in nodes if self.membership.is_alive(node, now)):
            for event_id, viewers in node.events.items():
                if viewers > 0:
                    table.setdefault(event_id, set()).add(node.cluster)
        self._table = {event_id: frozenset(clusters) for event_id, clusters in table.items()}
        self._version, self._built_at = version, now


class _Loop:
    """A consume loop that stops on request and reports its health."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._last_warning = -OUTAGE_WARNING_EVERY
        self.running = False  # true once the consumer owns its partitions, positioned

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _consume(self, consumer: Any, handle: Callable[[Any], None], flush: Callable[[], None]) -> None:
        """Poll, handle each record, flush what was produced, then commit: at-least-once.

        Kafka gone for a while (every broker restarting) is a pause, not the end: a poll that
        finds no broker is tried again, and a batch whose output Kafka did not acknowledge is
        handled again until it does (a repeat is an overwrite downstream), so its offsets are
        committed only once its output is on the broker.
        """
        while not self.stopping:
            try:
                batch = kafka.poll(consumer, kafka.LONG_POLL_MS)
            except kafka.KafkaError as error:
                self._wait_out(error, "reading")
                continue
            if not self.running and consumer.assignment():
                for partition in consumer.assignment():
                    consumer.position(partition)  # resolve the reset now, before we say "ready"
                self.running = True
                log.info("consuming %s", ", ".join(sorted(str(p) for p in consumer.assignment())))
            if not batch:
                continue
            while True:
                try:
                    for records in batch.values():
                        for record in records:
                            handle(record)
                    flush()
                    break
                except kafka.KafkaError as error:
                    self._wait_out(error, "writing")
                    if self.stopping:
                        return  # uncommitted: the next owner handles this batch
            try:
                kafka.commit(consumer)  # only after what was produced is on the broker
            except kafka.CommitFailed as error:  # a rebalance took the partition: its new owner repeats
                log.warning("commit failed (%s); the next owner re-reads this batch", error)
            except kafka.KafkaError as error:  # the next commit covers this batch
                self._wait_out(error, "committing")

    def _wait_out(self, error: kafka.KafkaError, doing: str) -> None:
        """Pause after a Kafka error that may pass; raise one that will not."""
        if not error.retriable:
            raise error
        now = time.monotonic()
        if now - self._last_warning >= OUTAGE_WARNING_EVERY:
            self._last_warning = now
            log.warning("Kafka unavailable while %s (%s); trying again", doing, error)
        self._stop.wait(OUTAGE_PAUSE)


class MainPublisher(_Loop):
    """Aggregates in, per-cluster topics out, only where someone watches."""

    def __init__(self, settings: Settings, membership: MembershipWatcher | None = None):
        super().__init__()
        self.settings = settings
        self.watcher = membership or MembershipWatcher(settings)
        self.registry = CollectorRegistry()
        self.m_consumed = Counter(
            "emostream_pubsub_aggregates", "Aggregates read from the aggregate topic.", registry=self.registry
        )
        self.m_invalid = Counter(
            "emostream_pubsub_invalid", "Records dropped because they are not aggregates.", registry=self.registry
        )
        self.m_unrouted = Counter(
            "emostream_pubsub_unrouted", "Aggregates no cluster had viewers for.", registry=self.registry
        )
        routed = Counter(
            "emostream_pubsub_routed", "Aggregates sent to a cluster.", ["cluster"], registry=self.registry
        )
        self.m_routed = [routed.labels(str(cluster)) for cluster in range(settings.clusters)]
        self.cluster_topics = [kafka.cluster_topic(settings, cluster) for cluster in range(settings.clusters)]
        self.routes = RoutingTable(self.watcher.membership)
        self.m_lag = Histogram(
            "emostream_pubsub_lag_seconds",
            "From the aggregate's emitted_at to its routing.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        Gauge("emostream_pubsub_live_nodes", "Live subscriber nodes.", registry=self.registry).set_function(
            lambda: len(self.watcher.membership.live())
        )

    def health(self) -> Health:
        ready = self.watcher.ready and self.running
        return Health.of(ready, STARTING, membership_ready=self.watcher.ready, consuming=self.running)

    def run(self) -> None:
        """Consume until :meth:`request_stop`; commit what was routed; close."""
        if not self.watcher.ready:
            if not self.watcher.started:
                self.watcher.start()
            # Routing on half a membership would drop aggregates that have viewers.
            while not self.watcher.wait_ready(1.0):
                if self.stopping:
                    return
                log.info("waiting for the membership to load")
        consumer = kafka.consumer(
            self.settings,
            group_id=main_group_id(self.settings),
            enable_auto_commit=False,
            # First start: live aggregates only, not a day of history to viewers.
            auto_offset_reset="latest",
            max_poll_records=MAX_RECORDS,
            fetch_max_wait_ms=kafka.LONG_FETCH_WAIT_MS,
            **GROUP_SESSION,
        )
        # Join the group only once the topic's metadata is known: a member that joins
        # before can be handed an empty assignment and keep it until the next rebalance.
        kafka.partitions(consumer, self.settings.aggregate_topic, timeout=60)
        consumer.subscribe([self.settings.aggregate_topic])
        producer = kafka.producer(self.settings, linger_ms=1)
        log.info("main publisher routing %s (group %s)", self.settings.aggregate_topic, main_group_id(self.settings))
        try:
            self._consume(consumer, lambda record: self._route(producer, record), lambda: kafka.flush(producer, 30))
        finally:
            self.running = False
            try:
                producer.flush(timeout=10)
                consumer.close(autocommit=False, timeout_ms=5000)  # committed after the last batch
            finally:
                producer.close(timeout=5)
            log.info("main publisher stopped")

    def _route(self, producer: Any, record: Any) -> None:
        self.m_consumed.inc()
        aggregate = _valid_aggregate(record, self.m_invalid)
        if aggregate is None:
            return
        clusters = self.routes.clusters(aggregate["event_id"])
        if not clusters:
            self.m_unrouted.inc()
            return
        routed_at = now_ms()
        if isinstance(aggregate.get("emitted_at"), int):
            self.m_lag.observe(max(0, routed_at - aggregate["emitted_at"]) / 1000)
        # routed_at lets anyone downstream measure the fan-out delay. Serialized once for all clusters.
        message = json.dumps(aggregate | {"routed_at": routed_at}, ensure_ascii=False, separators=(",", ":")).encode()
        key = aggregate_key(aggregate["event_id"], aggregate["window_start"])
        for cluster in sorted(clusters):
            if cluster >= self.settings.clusters:
                continue  # a node from a bigger topology still heartbeating
            with kafka.translate_errors():
                producer.send(self.cluster_topics[cluster], key=key, value=message)
            self.m_routed[cluster].inc()


class ClusterPublisher(_Loop):
    """One cluster's topic in, Socket.IO emits to its nodes out."""

    def __init__(self, settings: Settings, cluster: int):
        super().__init__()
        if not 0 <= cluster < settings.clusters:
            raise ValueError(f"cluster {cluster} is not in 0..{settings.clusters - 1}")
        self.settings = settings
        self.cluster = cluster
        self.topic = kafka.cluster_topic(settings, cluster)
        self.registry = CollectorRegistry()
        self.m_forwarded = Counter(
            "emostream_cluster_publisher_forwarded",
            "Aggregates handed to the cluster's subscriber nodes.",
            ["cluster"],
            registry=self.registry,
        ).labels(str(cluster))
        self.m_stale = Counter(
            "emostream_cluster_publisher_stale",
            f"Aggregates dropped because they were routed more than {STALE_MS // 1000} s ago.",
            ["cluster"],
            registry=self.registry,
        ).labels(str(cluster))
        self.m_invalid = Counter(
            "emostream_cluster_publisher_invalid",
            "Records dropped because they are not aggregates.",
            ["cluster"],
            registry=self.registry,
        ).labels(str(cluster))

    def health(self) -> Health:
        return Health.of(self.running, STARTING, cluster=self.cluster, consuming=self.running)

    def run(self) -> None:
        consumer = kafka.consumer(
            self.settings,
            group_id=cluster_group_id(self.settings, self.cluster),
            enable_auto_commit=False,
            # First start: everything routed so far (the main publisher may have started
            # first); STALE_MS keeps a long-gone backlog away from viewers.
            auto_offset_reset="earliest",
            max_poll_records=MAX_RECORDS,
            fetch_max_wait_ms=kafka.LONG_FETCH_WAIT_MS,
        )
        # One publisher per cluster: it takes its topic's partitions itself. The group id
        # only keeps its committed offsets; no membership, so no rebalance can starve it.
        consumer.assign(kafka.partitions(consumer, self.topic, timeout=60))
        channel = KafkaClientManager(self.settings, kafka.channel_topic(self.settings, self.cluster), write_only=True)
        log.info("cluster publisher %d: %s -> %s", self.cluster, self.topic, channel.channel)
        try:
            self._consume(consumer, lambda record: self._forward(channel, record), lambda: channel.flush(timeout=30))
        finally:
            self.running = False
            try:
                channel.close()
                consumer.close(autocommit=False, timeout_ms=5000)
            finally:
                log.info("cluster publisher %d stopped", self.cluster)

    def _forward(self, channel: KafkaClientManager, record: Any) -> None:
        aggregate = _valid_aggregate(record, self.m_invalid)
        if aggregate is None:
            return
        routed_at = aggregate.get("routed_at")
        if isinstance(routed_at, int) and now_ms() - routed_at > STALE_MS:
            self.m_stale.inc()
            return
        # The room of an event holds exactly its viewers, on every node of the cluster.
        channel.emit(EMOJI_UPDATE, aggregate, namespace=NAMESPACE, room=aggregate["event_id"])
        self.m_forwarded.inc()


def serve(settings: Settings, cluster: int | None = None, metrics_port: int | None = None) -> None:
    """Run the main publisher (``cluster=None``) or one cluster publisher until SIGTERM/SIGINT.

    The main publisher serves /healthz and /metrics on ``pubsub_metrics_port`` unless
    ``metrics_port`` says otherwise; a cluster publisher only when given a port (0 = any).
    """
    import signal

    from emostream.fanout.ops import ensure_fanout_topics
    from emostream.http import OpsServer

    ensure_fanout_topics(settings)
    if cluster is None:
        publisher: MainPublisher | ClusterPublisher = MainPublisher(settings)
        name = "pubsub"
        port = settings.pubsub_metrics_port if metrics_port is None else metrics_port
    else:
        publisher = ClusterPublisher(settings, cluster)
        name = f"cluster-publisher-{cluster}"
        port = metrics_port
    ops = None
    if port is not None:
        ops = OpsServer(name, settings.ops_host, port, publisher.health, publisher.registry).start()
        log.info("%s serves /healthz and /metrics at %s", name, ops.url)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: publisher.request_stop())
    try:
        publisher.run()
    finally:
        if ops is not None:
            ops.stop()


def _valid_aggregate(record: Any, invalid: Any) -> dict[str, Any] | None:
    """The aggregate a Kafka record carries, or None (counted in ``invalid`` and logged) if it is not one."""
    try:
        return validate_aggregate(record.value)
    except InvalidMessage as error:
        invalid.inc()
        log.warning("dropping record at offset %d of %s: %s", record.offset, record.topic, error)
        return None


def main(argv: list[str] | None = None) -> int:
    """``emostream-publisher``: the main publisher; ``--cluster N``: the cluster publisher of cluster N."""
    import argparse

    from emostream import logs

    parser = argparse.ArgumentParser(description="EmoStream main publisher, or one cluster publisher")
    parser.add_argument("--cluster", type=int, default=None, help="run the cluster publisher of this cluster")
    parser.add_argument("--metrics-port", type=int, default=None, help="port of /healthz and /metrics (0 = any)")
    args = parser.parse_args(argv)

    settings = Settings.from_env().for_kafka_service("publisher" if args.cluster is None else "cluster-publisher")
    logs.configure(settings)
    serve(settings, args.cluster, args.metrics_port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
