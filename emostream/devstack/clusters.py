"""Local clusters for trying EmoStream at scale on one machine.

Three commands, each managing JVM processes whose data, logs and pids live under the
state folder (``state/`` by default):

``kafka``  (``bin/kafka-cluster``) a 3-node KRaft cluster, every node a combined broker
           and controller in its own JVM; topics get replication factor 3 and
           ``min.insync.replicas=2``.
``spark``  (``bin/spark-cluster``) a Spark standalone master and its workers, run with the
           ``spark-class`` launcher of the pyspark installation (pyspark ships no
           ``start-master.sh``).
``legacy`` (``bin/kafka-legacy``) ZooKeeper and one Kafka 3.9 broker in ZooKeeper mode, the
           stack of installs that predate KRaft.

Each has ``start``, ``stop``, ``status`` and ``env``; ``env`` prints the ``export`` lines that
point EmoStream's services at the running cluster.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from emostream.devstack.jvmprocess import JvmProcess, start_together
from emostream.devstack.broker import BrokerNode, KafkaError, _random_cluster_id, require_java
from emostream.settings import ROOT, Settings

log = logging.getLogger("emostream.devstack.clusters")

HOST = "127.0.0.1"

# Default ports of the command-line tools; the tests pass free ports instead.
KAFKA_CLUSTER_BASE_PORT = 9192  # node n listens on base + 100 (n - 1), its controller one above
SPARK_MASTER_PORT = 7077
SPARK_MASTER_UI_PORT = 8080
SPARK_WORKER_UI_PORT = 8081  # worker n uses the next ones
LEGACY_ZOOKEEPER_PORT = 2181
LEGACY_KAFKA_PORT = 9492


class ClusterError(RuntimeError):
    """A problem an operator can act on; the message says what to do."""


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Daemon(JvmProcess):
    """One long-running process with a pid file and a log under ``home``, run from ``home``.

    It runs in a session of its own, so stopping it signals its whole process group:
    a Spark worker's executors go with it.
    """

    error_type = ClusterError
    signal_group = True

    name: str
    home: Path
    command: tuple[str, ...]
    ports: tuple[int, ...]
    ready_line: str | None = None
    probe: Callable[[], bool] | None = field(default=None, compare=False)
    env: Mapping[str, str] = field(default_factory=dict, compare=False)
    host: str = HOST

    @property
    def log_file(self) -> Path:
        return self.home / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    def launch(self) -> tuple[subprocess.Popen, int]:
        self.refuse_taken_ports()
        self.home.mkdir(parents=True, exist_ok=True)
        return self.spawn(self.command, env=self.env, cwd=self.home)


# --------------------------------------------------------------------------- Kafka (KRaft)


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
            replication_factor=self.replication_factor,
            min_insync_replicas=self.min_insync_replicas,
        )

    def env(self) -> dict[str, str]:
        return {
            "EMOSTREAM_KAFKA_BOOTSTRAP": self.bootstrap,
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


# --------------------------------------------------------------------------- Spark standalone


def pyspark_home() -> Path:
    """The pyspark installation, which is a Spark distribution without the sbin scripts."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


@dataclass(frozen=True)
class SparkStandalone:
    """A Spark standalone master and its workers, all bound to one address."""

    home: Path
    port: int = SPARK_MASTER_PORT
    ui_port: int = SPARK_MASTER_UI_PORT
    worker_ui_ports: tuple[int, ...] = (SPARK_WORKER_UI_PORT,)
    worker_cores: int = 2
    worker_memory: str = "1g"
    daemon_memory: str = "256m"
    host: str = HOST

    @property
    def master_url(self) -> str:
        return f"spark://{self.host}:{self.port}"

    def _daemon_env(self) -> dict[str, str]:
        spark_home = pyspark_home()
        return {
            "SPARK_HOME": str(spark_home),
            # Binds the RPC endpoints, the web UIs and the executors to this address only.
            "SPARK_LOCAL_IP": self.host,
            "SPARK_DAEMON_MEMORY": self.daemon_memory,
            "SPARK_LOG_DIR": str(self.home),
            "SPARK_CONF_DIR": str(self.home / "conf"),
        }

    def _spark_class(self) -> str:
        require_java()
        launcher = pyspark_home() / "bin" / "spark-class"
        if not launcher.exists():
            raise ClusterError(f"{launcher} is missing: is pyspark installed (bin/setup)?")
        return str(launcher)

    def master(self) -> Daemon:
        return Daemon(
            name="spark-master",
            home=self.home / "master",
            command=(
                self._spark_class(),
                "org.apache.spark.deploy.master.Master",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--webui-port",
                str(self.ui_port),
            ),
            ports=(self.port, self.ui_port),
            ready_line="I have been elected leader!",
            env=self._daemon_env(),
            host=self.host,
        )

    def workers(self) -> list[Daemon]:
        workers = []
        for n, ui_port in enumerate(self.worker_ui_ports, start=1):
            home = self.home / f"worker-{n}"
            workers.append(
                Daemon(
                    name=f"spark-worker-{n}",
                    home=home,
                    command=(
                        self._spark_class(),
                        "org.apache.spark.deploy.worker.Worker",
                        "--host",
                        self.host,
                        "--webui-port",
                        str(ui_port),
                        "--cores",
                        str(self.worker_cores),
                        "--memory",
                        self.worker_memory,
                        "--work-dir",
                        str(home / "work"),
                        self.master_url,
                    ),
                    ports=(ui_port,),
                    ready_line="Successfully registered with master",
                    env=self._daemon_env(),
                    host=self.host,
                )
            )
        return workers

    def driver_env(self) -> dict[str, str]:
        """What a driver on this machine (the processor) needs to use the cluster."""
        return {
            "EMOSTREAM_SPARK_MASTER": self.master_url,
            # The executors connect back to the driver: it must listen where they can reach it.
            "SPARK_LOCAL_IP": self.host,
            # Python workers on the executors need pyspark: use the driver's interpreter.
            "PYSPARK_PYTHON": sys.executable,
        }

    def start(self, timeout: float = 120.0) -> list[str]:
        (self.home / "conf").mkdir(parents=True, exist_ok=True)
        (self.home / "conf" / "log4j2.properties").write_text(SPARK_LOG4J2_CONFIG)
        # The master's REST submission server (port 6066) runs anything it is sent; the
        # processor submits in client mode and does not need it.
        (self.home / "conf" / "spark-defaults.conf").write_text("spark.master.rest.enabled false\n")
        started = start_together([self.master()], timeout)
        return started + start_together(self.workers(), timeout)

    def stop(self, timeout: float = 30.0) -> list[str]:
        stopped = [w.name for w in self.workers() if w.stop(timeout)]
        master = self.master()
        if master.stop(timeout):
            stopped.append(master.name)
        return stopped

    def running(self) -> dict[str, int | None]:
        return {d.name: d.pid() for d in [self.master(), *self.workers()]}


SPARK_LOG4J2_CONFIG = """\
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.jetty.name = org.sparkproject.jetty
logger.jetty.level = warn
"""


# --------------------------------------------------------------------------- Kafka 3.9 + ZooKeeper

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


# --------------------------------------------------------------------------- command line


def _layout(requested: SparkStandalone | LegacyKafka, command: str) -> SparkStandalone | LegacyKafka:
    """The layout to act on: the one the last start saved, unless a start begins afresh.

    Saving it means ``stop``, ``status`` and ``env`` need none of the ports given to ``start``.
    """
    layout_file = requested.home / "layout.json"
    saved = None
    if layout_file.exists():
        values = json.loads(layout_file.read_text())
        kinds = {f.name: f.type for f in fields(requested)}
        for name, value in values.items():
            if "Path" in str(kinds.get(name)):
                values[name] = Path(value)
            elif isinstance(value, list):
                values[name] = tuple(value)
        saved = type(requested)(**values)
    if command != "start":
        return saved or requested
    if saved is not None and any(saved.running().values()):
        if saved != requested:
            log.info("already running with the layout saved in %s; its ports win", layout_file)
        return saved
    requested.home.mkdir(parents=True, exist_ok=True)
    values = {f.name: getattr(requested, f.name) for f in fields(requested)}
    layout_file.write_text(json.dumps(values, default=str, indent=2) + "\n")
    return requested


def _started_note(started: list[str]) -> str:
    return "started " + ", ".join(started) if started else "all were already running"


def _exports(env: Mapping[str, str]) -> str:
    return "".join(f"export {name}={value}\n" for name, value in env.items())


def _create_topics(settings: Settings) -> None:
    from emostream import kafka

    logging.getLogger("kafka").setLevel(logging.WARNING)
    created = kafka.ensure_topics(settings)
    log.info(
        "topics on %s: %d created, %d already there (replication factor %d, min.insync.replicas %d)",
        settings.kafka_bootstrap,
        len(created),
        len(kafka.topics(settings)) - len(created),
        settings.replication_factor,
        settings.min_insync_replicas,
    )


def _parse_ports(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        return [(int(client), int(controller)) for client, controller in pairs]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not CLIENT:CONTROLLER[,CLIENT:CONTROLLER...]") from None


def _kafka_command(args: argparse.Namespace, settings: Settings) -> int:
    home = Path(args.state or Path(settings.state_dir) / "kafka-cluster")
    ports = args.ports
    if ports is None and (args.nodes or args.base_port):
        ports = default_kafka_ports(args.nodes or 3, args.base_port or KAFKA_CLUSTER_BASE_PORT)
    if (args.command != "start" or args.node) and not (home / "cluster.json").exists():
        log.info("there is no Kafka cluster in %s%s", home, "; start the whole cluster first" if args.node else "")
        return 0 if args.command == "stop" else 1
    cluster = KafkaCluster.create(home, ports, heap=args.heap, jars=Path(settings.jars_dir) / "kafka")
    if args.command == "start":
        targets = [cluster.node(args.node)] if args.node else list(cluster.nodes)
        started = start_together(targets, args.timeout)
        log.info("Kafka cluster up (%s): %s", _started_note(started), cluster.bootstrap)
        if not args.no_topics and not args.node:
            _create_topics(cluster.settings(settings))
        sys.stdout.write(_exports(cluster.env()))
    elif args.command == "stop":
        if args.node:
            stopped = [args.node] if cluster.node(args.node).stop(kill=args.kill) else []
        else:
            stopped = cluster.stop(kill=args.kill)
        log.info("stopped Kafka node(s) %s", ", ".join(map(str, stopped)) if stopped else "none: none was running")
    elif args.command == "status":
        pids = cluster.running()
        for node in cluster.nodes:
            pid = pids[node.node_id]
            state = f"running, pid {pid}" if pid else "stopped"
            log.info("node %d  %-16s controller :%d  %s", node.node_id, node.bootstrap, node.controller_port, state)
        return 0 if all(pids.values()) else 1
    else:
        sys.stdout.write(_exports(cluster.env()))
    return 0


def _spark_command(args: argparse.Namespace, settings: Settings) -> int:
    workers = max(1, args.workers)
    requested = SparkStandalone(
        home=Path(args.state or Path(settings.state_dir) / "spark-cluster"),
        port=args.port,
        ui_port=args.ui_port,
        worker_ui_ports=tuple(args.worker_ui_port + n for n in range(workers)),
        worker_cores=args.worker_cores,
        worker_memory=args.worker_memory,
        daemon_memory=args.daemon_memory,
    )
    cluster = _layout(requested, args.command)
    return _daemons_command(
        args,
        cluster,
        "Spark standalone",
        f"master {cluster.master_url}, web UI http://{cluster.host}:{cluster.ui_port}",
        cluster.driver_env(),
    )


def _legacy_command(args: argparse.Namespace, settings: Settings) -> int:
    requested = LegacyKafka(
        home=Path(args.state or Path(settings.state_dir) / "kafka-legacy"),
        zookeeper_port=args.zookeeper_port,
        port=args.port,
        heap=args.heap or "384m",
        jars=Path(settings.jars_dir) / "legacy",
    )
    stack = _layout(requested, args.command)
    single_replica = settings.replace(kafka_bootstrap=stack.bootstrap, replication_factor=1, min_insync_replicas=1)
    return _daemons_command(
        args,
        stack,
        "Kafka 3.9 (ZooKeeper mode)",
        f"{stack.bootstrap}, ZooKeeper {stack.zookeeper_connect}",
        stack.env(),
        after_start=None if args.no_topics else lambda: _create_topics(single_replica),
    )


def _daemons_command(
    args: argparse.Namespace,
    stack: SparkStandalone | LegacyKafka,
    title: str,
    where: str,
    exports: Mapping[str, str],
    after_start: Callable[[], None] | None = None,
) -> int:
    """``start``, ``stop``, ``status`` or ``env`` of a stack of daemons (Spark standalone, legacy Kafka)."""
    if args.command == "start":
        started = stack.start(args.timeout)
        log.info("%s up (%s): %s", title, _started_note(started), where)
        if after_start is not None:
            after_start()
        sys.stdout.write(_exports(exports))
    elif args.command == "stop":
        stopped = stack.stop()
        log.info("stopped %s", ", ".join(stopped) if stopped else "nothing: nothing was running")
    elif args.command == "status":
        pids = stack.running()
        width = max(map(len, pids)) + 2
        for name, pid in pids.items():
            log.info("%-*s %s", width, name, f"running, pid {pid}" if pid else "stopped")
        return 0 if all(pids.values()) else 1
    else:
        sys.stdout.write(_exports(exports))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="localcluster", description=__doc__.splitlines()[0])
    kinds = root.add_subparsers(dest="kind", required=True)

    kafka = _add_kind(kinds, "kafka", "a 3-node KRaft cluster (bin/kafka-cluster)", "kafka-cluster")
    kafka.add_argument("--nodes", type=int, default=0, help="nodes of a new cluster (default 3)")
    kafka.add_argument(
        "--base-port",
        type=int,
        default=0,
        help=f"client port of node 1 of a new cluster (default {KAFKA_CLUSTER_BASE_PORT})",
    )
    kafka.add_argument("--ports", type=_parse_ports, help="CLIENT:CONTROLLER ports of each node of a new cluster")
    kafka.add_argument("--heap", help="JVM heap of each node (default 384m)")
    kafka.add_argument("--node", type=int, help="start or stop only this node (1-based)")
    kafka.add_argument("--kill", action="store_true", help="stop with SIGKILL, as a crash would")
    kafka.add_argument("--no-topics", action="store_true", help="do not create EmoStream's topics")

    spark = _add_kind(kinds, "spark", "a Spark standalone master and workers (bin/spark-cluster)", "spark-cluster")
    spark.add_argument("--port", type=int, default=SPARK_MASTER_PORT, help="master port")
    spark.add_argument("--ui-port", type=int, default=SPARK_MASTER_UI_PORT, help="master web UI port")
    spark.add_argument(
        "--worker-ui-port", type=int, default=SPARK_WORKER_UI_PORT, help="web UI port of worker 1 (others follow)"
    )
    spark.add_argument("--workers", type=int, default=1)
    spark.add_argument("--worker-cores", type=int, default=os.cpu_count() or 2)
    spark.add_argument("--worker-memory", default="1g", help="memory a worker offers to executors")
    spark.add_argument("--daemon-memory", default="256m", help="heap of the master and worker JVMs")

    legacy = _add_kind(kinds, "legacy", "ZooKeeper and a Kafka 3.9 broker (bin/kafka-legacy)", "kafka-legacy")
    legacy.add_argument("--zookeeper-port", type=int, default=LEGACY_ZOOKEEPER_PORT)
    legacy.add_argument("--port", type=int, default=LEGACY_KAFKA_PORT, help="broker port")
    legacy.add_argument("--heap", help="JVM heap of the broker (default 384m)")
    legacy.add_argument("--no-topics", action="store_true", help="do not create EmoStream's topics")
    return root


def _add_kind(kinds: argparse._SubParsersAction, kind: str, about: str, folder: str) -> argparse.ArgumentParser:
    """The subcommand of one kind of cluster, with the options every kind has."""
    sub = kinds.add_parser(kind, help=about)
    sub.add_argument("command", choices=["start", "stop", "status", "env"])
    sub.add_argument("--state", help=f"state folder (default: $EMOSTREAM_STATE_DIR/{folder})")
    sub.add_argument("--timeout", type=float, default=120.0, help="seconds a start waits for readiness (default 120)")
    return sub


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings.from_env()
    commands = {"kafka": _kafka_command, "spark": _spark_command, "legacy": _legacy_command}
    try:
        return commands[args.kind](args, settings)
    except (KafkaError, ClusterError) as error:
        log.error("error: %s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
