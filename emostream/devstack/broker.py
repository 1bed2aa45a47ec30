"""A local Apache Kafka broker in KRaft mode, run as a plain JVM process.

``python -m emostream.devstack.broker start|stop|status`` manages one combined
broker+controller node whose data, log and pid live under the state folder. The
jars come from ``bin/setup-jars``. Only the standard library is used here so that
the broker can be managed before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from emostream.devstack import broker_security
from emostream.devstack.broker_security import BrokerSecurity, SecuritySetupError
from emostream.devstack.jvmprocess import JvmProcess
from emostream.devstack.jvmprocess import pid_alive as pid_alive  # re-exported: callers import it from here
from emostream.devstack.jvmprocess import port_in_use as port_in_use
from emostream.settings import Settings

log = logging.getLogger("emostream.devstack.broker")

READY_LINE = "Kafka Server started"

LOG4J2_CONFIG = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class BrokerError(RuntimeError):
    """A problem an operator can act on; the message says what to do."""


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise BrokerError(
            "java was not found on PATH: install a Java 17 runtime (Debian: apt-get install openjdk-17-jre-headless)"
        )
    return java


@dataclass(frozen=True)
class BrokerNode(JvmProcess):
    """One KRaft node (broker and controller in one JVM).

    ``quorum`` lists ``id@host:controller_port`` of every controller; a single node
    with an empty quorum formats itself as a standalone controller.
    """

    ready_line = READY_LINE
    error_type = BrokerError
    taken_port_advice = "stop that process, or set EMOSTREAM_KAFKA_BOOTSTRAP to use the Kafka already listening there"

    home: Path
    port: int = 9092
    controller_port: int = 9093
    node_id: int = 1
    host: str = "127.0.0.1"
    heap: str = "512m"
    jars: Path = Path("build/jars/kafka")
    quorum: tuple[str, ...] = ()
    cluster_id: str | None = None
    default_replication: int = 1
    min_insync: int = 1
    # A SASL_SSL client listener, TLS files and SCRAM users under ``home`` (made on the first start).
    secured: bool = False
    extra_properties: tuple[str, ...] = ()  # ``name=value`` lines after the defaults (a cluster's failover timing)

    @property
    def name(self) -> str:
        return f"Kafka node {self.node_id}"

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, self.controller_port)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    def security(self) -> BrokerSecurity:
        """The TLS files and SCRAM users of a secured node, made on first use."""
        try:
            return broker_security.prepare(self.home, self.host)
        except SecuritySetupError as error:
            raise BrokerError(str(error)) from None

    def classpath(self) -> str:
        if not self.jars.is_dir() or not any(self.jars.glob("kafka_*.jar")):
            raise BrokerError(f"Kafka jars are missing in {self.jars}: run bin/setup-jars first")
        return str(self.jars / "*")

    def _properties(self) -> str:
        voters = ",".join(self.quorum) or f"{self.node_id}@{self.host}:{self.controller_port}"
        bootstrap_controllers = ",".join(v.split("@", 1)[1] for v in voters.split(","))
        rf = self.default_replication
        if self.secured:
            listeners = broker_security.listener_properties(self.security(), self.host, self.port, self.controller_port)
        else:
            listeners = [
                f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            ]
        return "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={self.node_id}",
                f"controller.quorum.bootstrap.servers={bootstrap_controllers}",
                *listeners,
                f"log.dirs={self.data_dir}",
                "num.partitions=1",
                "auto.create.topics.enable=false",
                f"default.replication.factor={rf}",
                f"min.insync.replicas={self.min_insync}",
                f"offsets.topic.replication.factor={rf}",
                f"transaction.state.log.replication.factor={rf}",
                f"transaction.state.log.min.isr={self.min_insync}",
                f"share.coordinator.state.topic.replication.factor={rf}",
                f"share.coordinator.state.topic.min.isr={self.min_insync}",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.hours=24",
                "log.segment.bytes=268435456",
                "num.network.threads=2",
                "num.io.threads=4",
                *self.extra_properties,
                "",
            ]
        )

    def _java(self, main: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        command = [
            require_java(),
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp",
            self.classpath(),
            main,
            *args,
        ]
        return subprocess.run(command, capture_output=True, text=True, **kwargs)

    def _format(self) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = self.cluster_id or _random_cluster_id()
        # "--cluster-id=": a base64 id may start with "-", which would read as an option.
        args = ["format", f"--cluster-id={cluster_id}", "-c", str(self.config_file), "--ignore-formatted"]
        if self.quorum:
            args += ["--initial-controllers", ",".join(_with_directory_ids(self.quorum, cluster_id))]
        else:
            args += ["--standalone"]
        if self.secured:
            args += broker_security.scram_arguments(self.security())
        done = self._java("kafka.tools.StorageTool", *args, timeout=120)
        if done.returncode != 0:
            # The output may echo the SCRAM arguments: say what failed without the passwords.
            detail = "" if self.secured else f":\n{done.stdout}{done.stderr}"
            raise BrokerError(f"formatting Kafka storage in {self.data_dir} failed (exit {done.returncode}){detail}")
        log.info("formatted Kafka storage in %s (cluster %s)", self.data_dir, cluster_id)

    def launch(self) -> tuple[subprocess.Popen, int]:
        """Start the JVM without waiting for it; return it and where its part of the log begins.

        The nodes of a multi-node quorum are launched together and then waited for, because
        none of them finishes starting before a majority of the controllers is up.
        """
        self.refuse_taken_ports()
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "log4j2.properties").write_text(LOG4J2_CONFIG)
        if self.secured:
            broker_security.write_private(self.config_file, self._properties())  # it holds the admin's password
        else:
            self.config_file.write_text(self._properties())
        self._format()
        return self.spawn(
            [
                require_java(),
                f"-Xmx{self.heap}",
                f"-Xms{self.heap}",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.home}",
                "-cp",
                self.classpath(),
                "kafka.Kafka",
                str(self.config_file),
            ]
        )


def _random_cluster_id() -> str:
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _with_directory_ids(quorum: tuple[str, ...], cluster_id: str) -> list[str]:
    """``id@host:port`` → ``id@host:port:directory-id``, with ids stable per cluster."""
    import base64

    out = []
    for voter in quorum:
        directory = uuid.uuid5(uuid.NAMESPACE_URL, f"{cluster_id}/{voter}")
        out.append(f"{voter}:{base64.urlsafe_b64encode(directory.bytes).decode().rstrip('=')}")
    return out


def local_node(settings: Settings) -> BrokerNode:
    """The single local broker described by the settings."""
    return BrokerNode(
        home=settings.local_kafka_home,
        secured=settings.kafka_secured,
        port=settings.kafka_local_port,
        controller_port=settings.kafka_local_controller_port,
        heap=settings.kafka_heap,
        jars=Path(settings.jars_dir) / "kafka",
    )


def _other_broker_hint(settings: Settings) -> str:
    """A note when the local broker of the other security protocol runs (each has its own folder)."""
    other = settings.replace(kafka_security_protocol="PLAINTEXT" if settings.kafka_secured else "SASL_SSL")
    if not local_node(other).is_running():
        return ""
    return f" (the {other.kafka_security_protocol} one does: stop it with EMOSTREAM_KAFKA_SECURITY_PROTOCOL={other.kafka_security_protocol})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emostream.devstack.broker", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings.from_env()
    node = local_node(settings)
    try:
        if args.command == "start":
            if not settings.kafka_is_local:
                log.info(
                    "EMOSTREAM_KAFKA_BOOTSTRAP=%s points elsewhere; not starting a local broker",
                    settings.kafka_bootstrap,
                )
                return 0
            started = node.start()
            log.info("Kafka %s on %s", "started" if started else "is already running", node.bootstrap)
            if node.secured:
                security = node.security()
                log.info(
                    "SASL_SSL: clients trust %s; each service's SCRAM user and password are in %s",
                    security.ca_file,
                    security.credentials_file,
                )
        elif args.command == "stop":
            if not node.stop():
                log.info("Kafka is not running%s", _other_broker_hint(settings))
        else:
            pid = node.pid()
            log.info(f"Kafka running, pid {pid}, {node.bootstrap}" if pid else "Kafka is not running")
            return 0 if pid else 1
    except BrokerError as error:
        log.error("error: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
