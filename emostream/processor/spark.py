"""The SparkSession of the processor, with Spark's Kafka connector on its classpath.

With a local master the driver logs through the project's log4j2 file (log4j2.properties
beside this module); a cluster's driver keeps the logging Spark is configured with there.

``python -m emostream.processor.spark`` prints the connector jars as a comma-separated list
for ``spark-submit --jars``; ``python -m emostream.processor.spark --submit-args MASTER`` prints
every argument ``bin/spark-submit`` adds, one per line.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

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


# Hadoop's local file system runs chmod and readlink as programs when its native library is
# missing, and pyspark ships none: every micro-batch spawned a process from the driver JVM for
# each of its checkpoint files (offset log, commit log, a state delta per shuffle partition),
# a visible share of each batch and of a core. In local mode with a local checkpoint,
# the processor uses EmoStream's ForklessLocalFileSystem (jvm/src/main/java), which sets
# permissions in-process, and Spark's FileSystem-based checkpoint manager, whose renames do not
# read links; a rename on a local disk is atomic either way. On a cluster nothing changes: the
# executors may not have the class, and checkpoints there live on HDFS or an object store.
FORKLESS_FILE_SYSTEM = "io.emostream.hadoop.ForklessLocalFileSystem"
FILE_SYSTEM_CHECKPOINTS = "org.apache.spark.sql.execution.streaming.checkpointing.FileSystemBasedCheckpointFileManager"


def own_jar(settings: Settings) -> Path:
    """EmoStream's Java classes, compiled by bin/setup-jars."""
    return Path(settings.jars_dir) / "emostream" / "emostream-jvm.jar"


def local_checkpoint_conf(settings: Settings, master: str) -> dict[str, str]:
    """Spark settings that write a local-mode query's checkpoint without forking; {} elsewhere."""
    # local and local[N]: executors in the driver's JVM (local-cluster runs JVMs of their own).
    in_driver = re.fullmatch(r"local(\[[^\]]*\])?", master) is not None
    if not in_driver or urlparse(settings.checkpoint_dir).scheme not in ("", "file"):
        return {}
    jar = own_jar(settings)
    if not jar.is_file():
        raise RuntimeError(f"EmoStream's Java classes are missing ({jar}): run bin/setup-jars first")
    return {
        "spark.driver.extraClassPath": str(jar),
        "spark.hadoop.fs.file.impl": FORKLESS_FILE_SYSTEM,
        "spark.sql.streaming.checkpointFileManagerClass": FILE_SYSTEM_CHECKPOINTS,
    }


LOG4J2_FILE = Path(__file__).with_name("log4j2.properties")
# A local driver shares its cores with the services beside it, and what it keeps between batches
# is small (a few windows of counts), so a stop-the-world young collection is short. G1, the JVM's
# own choice on two cores or more, spends CPU beside every batch (its concurrent threads, its write
# barriers); the serial collector does not (README, Measured). Half the heap young, so that what a
# batch allocates dies young instead of filling the old generation, whose collections stop the
# world for a batch's length.
LOCAL_DRIVER_GC = "-XX:+UseSerialGC -XX:NewRatio=1"
CHOOSES_A_GC = re.compile(r"-XX:\+Use\w+GC\b")


def local_driver_conf(master: str, collector: str = LOCAL_DRIVER_GC) -> dict[str, str]:
    """The driver JVM's options for a local master: the project's log4j2 file, and ``collector``.

    On a cluster the driver keeps the log4j2 configuration and the JVM options Spark has there
    (SPARK_CONF_DIR).
    """
    if not master.startswith("local"):
        return {}
    # A file URI: a space in a path would split the option in two.
    options = f"-Dlog4j2.configurationFile={LOG4J2_FILE.as_uri()}"
    return {"spark.driver.extraJavaOptions": f"{options} {collector}" if collector else options}


def submit_args(settings: Settings, master: str) -> list[str]:
    """What bin/spark-submit adds to its command line for ``master``: the jars and the conf above."""
    args = ["--jars", ",".join(str(j) for j in connector_jars(settings))]
    for key, value in (local_checkpoint_conf(settings, master) | local_driver_conf(master)).items():
        args += ["--conf", f"{key}={value}"]
    return args


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
        conf = local_checkpoint_conf(settings, settings.spark_master) | local_driver_conf(settings.spark_master)
        for key, value in conf.items():
            builder = builder.config(key, value)
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
    for key, value in extra_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if not launched_by_spark_submit():
        leave_sigterm_to_python(spark)
    return spark


def extra_conf(settings: Settings) -> dict[str, str]:
    """``EMOSTREAM_SPARK_CONF``'s pairs; driver options are added to the project's own, not put in their place."""
    conf: dict[str, str] = {}
    for pair in settings.spark_conf:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise SystemExit(f"EMOSTREAM_SPARK_CONF: {pair!r} is not key=value")
        conf[key.strip()] = value.strip()
    options = "spark.driver.extraJavaOptions"
    if options in conf and not launched_by_spark_submit():
        # The JVM refuses to start with two collectors: one named here takes the project's place.
        collector = "" if CHOOSES_A_GC.search(conf[options]) else LOCAL_DRIVER_GC
        own = local_driver_conf(settings.spark_master, collector).get(options)
        conf[options] = f"{own} {conf[options]}" if own else conf[options]
    return conf


def leave_sigterm_to_python(spark: SparkSession) -> None:
    """Make the driver JVM that pyspark started ignore SIGTERM, as pyspark makes it ignore SIGINT.

    A SIGTERM sent to the whole process group (a service manager, the tests) would otherwise
    run the JVM's shutdown hooks while Python is stopping the query through it, and Python's
    calls would fail mid-stop. Python stops the query, then Spark; the JVM exits when Python
    does (it watches its stdin), so nothing outlives the service.
    """
    jvm = spark._jvm
    jvm.sun.misc.Signal.handle(jvm.sun.misc.Signal("TERM"), jvm.sun.misc.SignalHandler.SIG_IGN)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--submit-args"] and len(sys.argv) == 3:
        sys.stdout.write("".join(arg + "\n" for arg in submit_args(Settings.from_env(), sys.argv[2])))
    else:
        sys.stdout.write(",".join(str(j) for j in connector_jars(Settings.from_env())) + "\n")
