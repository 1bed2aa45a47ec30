"""The SparkSession of the processor, with Spark's Kafka connector on its classpath.

``python -m emostream.spark`` prints the connector jars as a comma-separated list
for ``spark-submit --jars``.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from emostream.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_VERSION_SUFFIX = re.compile(r"-\d[^-]*(?:-[^-]*)?\.jar$")


def _artifact(jar_name: str) -> str:
    """``kafka-clients-3.9.2.jar`` → ``kafka-clients``."""
    return _VERSION_SUFFIX.sub("", jar_name)


def pyspark_jars_dir() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def connector_jars(settings: Settings) -> list[Path]:
    """The Kafka connector and those of its dependencies that pyspark does not bundle."""
    folder = Path(settings.jars_dir) / "spark"
    jars = sorted(folder.glob("*.jar"))
    if not any(j.name.startswith("spark-sql-kafka") for j in jars):
        raise RuntimeError(f"Spark's Kafka connector is missing in {folder}: run bin/setup-jars first")
    bundled = {_artifact(j.name) for j in pyspark_jars_dir().glob("*.jar")}
    return [j for j in jars if _artifact(j.name) not in bundled]


def launched_by_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands its gateway to Python."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def session(settings: Settings, app_name: str = "emostream-processor") -> SparkSession:
    """The processor's session: local[*] by default, or the configured master.

    Under spark-submit, the master and jars given on its command line win; only
    settings it left unset are applied here.
    """
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if not launched_by_spark_submit():
        jars = ",".join(str(j) for j in connector_jars(settings))
        builder = (
            builder.master(settings.spark_master)
            .config("spark.jars", jars)
            .config("spark.driver.memory", settings.spark_driver_memory)
            .config("spark.ui.enabled", str(settings.spark_ui).lower())
        )
        if settings.spark_master.startswith("local"):
            # Nothing outside this machine needs to reach a local driver, nor its web UI, which
            # Spark binds to SPARK_LOCAL_IP (all interfaces when unset).
            builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        builder.config("spark.sql.shuffle.partitions", str(settings.effective_shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.streaming.stopGracefullyOnShutdown", "true")
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # progress bars garble a service's log
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


if __name__ == "__main__":
    sys.stdout.write(",".join(str(j) for j in connector_jars(Settings.from_env())) + "\n")
