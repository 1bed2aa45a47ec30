"""A local Kafka cluster of three KRaft nodes (``bin/kafka-cluster``).

Every node is a combined broker and controller in its own JVM; topics get replication
factor 3 and ``min.insync.replicas=2``, so one node may be down and writes with
``acks=all`` still succeed.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from emostream.devstack.broker import BrokerNode, _random_cluster_id
from emostream.devstack.daemon import HOST, ClusterError
from emostream.devstack.jvmprocess import start_together
from emostream.settings import ROOT, Settings

# Default ports of the command line; the tests pass free ports instead.
KAFKA_CLUSTER_BASE_PORT = 9192  # node n listens on base + 100 (n - 1), its controller one above

# How fast the cluster gives up on a node that died without a controlled shutdown. Until the
# controller fences it, the partitions it led have no leader and every partition it followed
# waits for it in the in-sync set (acks=all), so writes stall everywhere; Kafka's default session
# outlasts both the processor's watermark and what ingest holds before it refuses emoji. Frequent
# heartbeats and a short session fence a dead node quickly while a live one on a loaded machine
# can still miss several heartbeats; a live node fenced by mistake registers again. The quorum's
# timeouts bound the time to replace a dead active controller (docs/deployment.md).
FAILOVER_PROPERTIES = (
    "broker.heartbeat.interval.ms=500",
    "broker.session.timeout.ms=3000",
    "controller.quorum.fetch.timeout.ms=1500",
    "controller.quorum.election.timeout.ms=500",
)


@dataclass(frozen=True)
class KafkaCluster:
    """Combined broker+controller nodes, one JVM each, forming one KRaft quorum.

    The layout (ports, cluster id) is written to ``home/cluster.json`` the first time, because
    the controller quorum remembers its voters' addresses in its log.
    """

    home: Path
    ports: tuple[tuple[int, int], ...]
    cluster_id: str
    heap: str = "384m"
    jars: Path = ROOT / "build" / "jars" / "kafka"
    host: str = HOST

    @classmethod
    def create(
        cls,
        home: Path,
        ports: Sequence[tuple[int, int]] | None = None,
        heap: str | None = None,
        jars: Path | None = None,
    ) -> KafkaCluster:
        """The cluster in ``home``: the saved layout if there is one, else a new one with ``ports``."""
        layout_file = Path(home) / "cluster.json"
        jars = Path(jars) if jars is not None else ROOT / "build" / "jars" / "kafka"
        if layout_file.exists():
            layout = json.loads(layout_file.read_text())
            saved = tuple((client, controller) for client, controller in layout["ports"])
            if ports is not None and tuple(tuple(p) for p in ports) != saved:
                raise ClusterError(
                    f"the cluster in {home} was created with ports {_format_ports(saved)}; use those, or stop it "
                    f"and remove {home} to start a new one"
                )
            return cls(Path(home), saved, layout["cluster_id"], heap or layout.get("heap") or "384m", jars)
        if ports is None:
            ports = default_kafka_ports(3)
        if len(ports) < 1:
            raise ClusterError("a Kafka cluster needs at least one node")
        heap = heap or "384m"
        cluster = cls(Path(home), tuple((int(c), int(k)) for c, k in ports), _random_cluster_id(), heap, jars)
        cluster.home.mkdir(parents=True, exist_ok=True)
        layout_file.write_text(
            json.dumps({"cluster_id": cluster.cluster_id, "ports": cluster.ports, "heap": heap}, indent=2) + "\n"
        )
        return cluster

    @property
    def quorum(self) -> tuple[str, ...]:
        return tuple(f"{n}@{self.host}:{controller}" for n, (_, controller) in enumerate(self.ports, start=1))

    @property
    def nodes(self) -> tuple[BrokerNode, ...]:
        return tuple(self.node(n) for n in range(1, len(self.ports) + 1))

    def node(self, node_id: int) -> BrokerNode:
        """Node ``node_id`` (1-based)."""
        if not 1 <= node_id <= len(self.ports):
            raise ClusterError(f"there is no node {node_id}: the cluster has nodes 1 to {len(self.ports)}")
        client, controller = self.ports[node_id - 1]
        return BrokerNode(
            home=self.home / f"node-{node_id}",
            port=client,
            controller_port=controller,
            node_id=node_id,
            host=self.host,
            heap=self.heap,
            jars=self.jars,
            quorum=self.quorum,
            cluster_id=self.cluster_id,
            default_replication=self.replication_factor,
            min_insync=self.min_insync_replicas,
            extra_properties=FAILOVER_PROPERTIES,
        )

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def replication_factor(self) -> int:
        return min(3, len(self.ports))

    @property
    def min_insync_replicas(self) -> int:
        # One replica may be down and writes with acks=all still succeed.
        return max(1, self.replication_factor - 1)

    def settings(self, settings: Settings) -> Settings:
        """``settings`` pointed at this cluster, with its replication."""
        return settings.replace(
            kafka_bootstrap=self.bootstrap,
            kafka_security_protocol="PLAINTEXT",
            replication_factor=self.replication_factor,
            min_insync_replicas=self.min_insync_replicas,
        )

    def env(self) -> dict[str, str]:
        return {
            "EMOSTREAM_KAFKA_BOOTSTRAP": self.bootstrap,
            "EMOSTREAM_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "EMOSTREAM_REPLICATION_FACTOR": str(self.replication_factor),
            "EMOSTREAM_MIN_INSYNC_REPLICAS": str(self.min_insync_replicas),
        }

    def start(self, timeout: float = 120.0) -> list[str]:
        """Start every node that is not running (together: none is ready before a quorum is)."""
        return start_together(self.nodes, timeout)

    def stop(self, timeout: float = 60.0, kill: bool = False) -> list[int]:
        """Stop every node; return the ids of those that were running.

        All get SIGTERM at once: stopped one by one, the last node would wait for a
        controller majority that is already gone before it shuts down.
        """
        running = [(node, node.pid()) for node in self.nodes]
        running = [(node, pid) for node, pid in running if pid is not None]
        for node, pid in running:
            node.send_signal(pid, signal.SIGKILL if kill else signal.SIGTERM)
        for node, _ in running:
            node.stop(timeout=timeout, kill=kill)
        return [node.node_id for node, _ in running]

    def running(self) -> dict[int, int | None]:
        return {node.node_id: node.pid() for node in self.nodes}


def default_kafka_ports(nodes: int, base: int = KAFKA_CLUSTER_BASE_PORT) -> list[tuple[int, int]]:
    return [(base + 100 * n, base + 100 * n + 1) for n in range(nodes)]


def _format_ports(ports: Iterable[tuple[int, int]]) -> str:
    return ",".join(f"{client}:{controller}" for client, controller in ports)
