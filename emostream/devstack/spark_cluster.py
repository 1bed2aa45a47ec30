"""A local Spark standalone cluster (``bin/spark-cluster``): a master and its workers.

They run with the ``spark-class`` launcher of the pyspark installation, which ships no
``start-master.sh``, and bind to one address.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from emostream.devstack.broker import require_java
from emostream.devstack.daemon import HOST, ClusterError, Daemon
from emostream.devstack.jvmprocess import start_together

# Default ports of the command line; the tests pass free ports instead.
SPARK_MASTER_PORT = 7077
SPARK_MASTER_UI_PORT = 8080
SPARK_WORKER_UI_PORT = 8081  # worker n uses the next ones


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
