"""ZooKeeper and one Kafka 3.9 broker in ZooKeeper mode (``bin/kafka-legacy``).

The stack of the installs that predate KRaft, for checking EmoStream's Kafka layer against it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from emostream.devstack.broker import require_java
from emostream.devstack.daemon import HOST, ClusterError, Daemon
from emostream.devstack.jvmprocess import start_together
from emostream.settings import ROOT

# Default ports of the command line; the tests pass free ports instead.
LEGACY_ZOOKEEPER_PORT = 2181
LEGACY_KAFKA_PORT = 9492

LEGACY_LOG4J_CONFIG = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.controller=INFO
log4j.logger.org.apache.zookeeper=INFO
"""


@dataclass(frozen=True)
class LegacyKafka:
    """ZooKeeper plus one Kafka 3.9 broker in ZooKeeper mode (the pre-KRaft stack)."""

    home: Path
    zookeeper_port: int = LEGACY_ZOOKEEPER_PORT
    port: int = LEGACY_KAFKA_PORT
    heap: str = "384m"
    jars: Path = ROOT / "build" / "jars" / "legacy"
    host: str = HOST

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def zookeeper_connect(self) -> str:
        return f"{self.host}:{self.zookeeper_port}"

    def _classpath(self) -> str:
        if not any(self.jars.glob("kafka_*-3.*.jar")) or not any(self.jars.glob("zookeeper-*.jar")):
            raise ClusterError(
                f"the Kafka 3.9 and ZooKeeper jars are missing in {self.jars}: run bin/setup-jars legacy"
            )
        return str(self.jars / "*")

    def _java(self, heap: str, main: str, config: Path, *options: str) -> tuple[str, ...]:
        """The command that runs ``main`` with its ``config`` file."""
        return (
            require_java(),
            f"-Xmx{heap}",
            f"-Xms{heap}",
            "-XX:+UseG1GC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
            *options,
            "-cp",
            self._classpath(),
            main,
            str(config),
        )

    def zookeeper(self) -> Daemon:
        home = self.home / "zookeeper"
        return Daemon(
            name="zookeeper",
            home=home,
            command=self._java("128m", "org.apache.zookeeper.server.quorum.QuorumPeerMain", home / "zoo.cfg"),
            ports=(self.zookeeper_port,),
            probe=lambda: four_letter_word(self.host, self.zookeeper_port, "ruok") == "imok",
            host=self.host,
        )

    def broker(self) -> Daemon:
        home = self.home / "kafka"
        return Daemon(
            name="kafka",
            home=home,
            command=self._java(self.heap, "kafka.Kafka", home / "server.properties", f"-Dkafka.logs.dir={home}"),
            ports=(self.port,),
            ready_line="started (kafka.server.KafkaServer)",
            host=self.host,
        )

    def _write_config(self) -> None:
        zookeeper_home = self.home / "zookeeper"
        kafka_home = self.home / "kafka"
        for folder in (zookeeper_home, kafka_home):
            folder.mkdir(parents=True, exist_ok=True)
        (self.home / "log4j.properties").write_text(LEGACY_LOG4J_CONFIG)
        (zookeeper_home / "zoo.cfg").write_text(
            "\n".join(
                [
                    f"dataDir={zookeeper_home / 'data'}",
                    f"clientPort={self.zookeeper_port}",
                    f"clientPortAddress={self.host}",
                    "tickTime=2000",
                    "maxClientCnxns=0",
                    # No Jetty admin server on 8080; the health check uses the ruok command.
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=ruok,srvr,dump",
                    "",
                ]
            )
        )
        (kafka_home / "server.properties").write_text(
            "\n".join(
                [
                    "broker.id=1",
                    f"zookeeper.connect={self.zookeeper_connect}",
                    "zookeeper.connection.timeout.ms=30000",
                    f"listeners=PLAINTEXT://{self.host}:{self.port}",
                    f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                    f"log.dirs={kafka_home / 'data'}",
                    "num.partitions=1",
                    "auto.create.topics.enable=false",
                    "default.replication.factor=1",
                    "min.insync.replicas=1",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.hours=24",
                    "num.network.threads=2",
                    "num.io.threads=4",
                    "",
                ]
            )
        )

    def start(self, timeout: float = 120.0) -> list[str]:
        self._classpath()
        self._write_config()
        started = start_together([self.zookeeper()], timeout)
        return started + start_together([self.broker()], timeout)

    def stop(self, timeout: float = 30.0) -> list[str]:
        # The broker first: it deregisters from ZooKeeper on the way out.
        return [d.name for d in (self.broker(), self.zookeeper()) if d.stop(timeout)]

    def running(self) -> dict[str, int | None]:
        return {d.name: d.pid() for d in (self.zookeeper(), self.broker())}

    def env(self) -> dict[str, str]:
        return {
            "EMOSTREAM_KAFKA_BOOTSTRAP": self.bootstrap,
            "EMOSTREAM_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "EMOSTREAM_REPLICATION_FACTOR": "1",
            "EMOSTREAM_MIN_INSYNC_REPLICAS": "1",
        }


def four_letter_word(host: str, port: int, word: str) -> str:
    """ZooKeeper's health commands: send four letters, read the answer."""
    try:
        with socket.create_connection((host, port), timeout=2) as conn:
            conn.sendall(word.encode())
            chunks = []
            while chunk := conn.recv(1024):
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace").strip()
    except OSError:
        return ""
