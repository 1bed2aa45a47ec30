"""Which Spark settings the processor adds for its checkpoints, by master and checkpoint folder."""

from pathlib import Path

import pytest

from emostream.processor import spark
from emostream.settings import Settings


@pytest.fixture
def jars(tmp_path: Path) -> Path:
    """A jar folder holding EmoStream's jar and a stand-in for the Kafka connector."""
    for jar in ("emostream/emostream-jvm.jar", "spark/spark-sql-kafka-0-10_2.13-4.2.0.jar"):
        (tmp_path / jar).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / jar).write_bytes(b"")
    return tmp_path


def settings(jars: Path, checkpoint_dir: str) -> Settings:
    return Settings.from_env(environ={}, jars_dir=str(jars), checkpoint_dir=checkpoint_dir)


@pytest.mark.parametrize("master", ["local", "local[*]", "local[2]", "local[4,3]"])
@pytest.mark.parametrize("checkpoint_dir", ["/var/lib/emostream/checkpoints", "file:///var/lib/emostream/checkpoints"])
def test_local_mode_with_a_local_checkpoint_writes_it_in_process(jars, master, checkpoint_dir):
    conf = spark.local_checkpoint_conf(settings(jars, checkpoint_dir), master)
    assert conf == {
        "spark.driver.extraClassPath": str(jars / "emostream" / "emostream-jvm.jar"),
        "spark.hadoop.fs.file.impl": "io.emostream.hadoop.ForklessLocalFileSystem",
        "spark.sql.streaming.checkpointFileManagerClass": spark.FILE_SYSTEM_CHECKPOINTS,
    }


@pytest.mark.parametrize(
    ("master", "checkpoint_dir"),
    [
        ("spark://spark-master:7077", "/var/lib/emostream/checkpoints"),  # executors may lack the class
        ("local-cluster[2,1,1024]", "/var/lib/emostream/checkpoints"),  # executors in JVMs of their own
        ("local[2]", "hdfs://namenode:8020/emostream/checkpoints"),
        ("local[*]", "s3a://bucket/emostream/checkpoints"),
    ],
)
def test_clusters_and_remote_checkpoints_keep_sparks_own_file_handling(jars, master, checkpoint_dir):
    assert spark.local_checkpoint_conf(settings(jars, checkpoint_dir), master) == {}


def test_a_missing_jar_is_a_clear_error_in_local_mode(jars):
    (jars / "emostream" / "emostream-jvm.jar").unlink()
    with pytest.raises(RuntimeError, match="run bin/setup-jars"):
        spark.local_checkpoint_conf(settings(jars, "/tmp/checkpoints"), "local[*]")


def test_spark_submit_gets_the_connector_and_in_local_mode_the_checkpoint_and_logging_settings(jars, monkeypatch):
    monkeypatch.setattr(spark, "pyspark_jars_dir", lambda: jars / "none")
    local = spark.submit_args(settings(jars, "/tmp/checkpoints"), "local[*]")
    assert local[:2] == ["--jars", str(jars / "spark" / "spark-sql-kafka-0-10_2.13-4.2.0.jar")]
    conf = spark.local_checkpoint_conf(settings(jars, "/tmp/checkpoints"), "local[*]") | spark.local_driver_conf(
        "local[*]"
    )
    assert local[2:] == [arg for key, value in conf.items() for arg in ("--conf", f"{key}={value}")]
    assert spark.submit_args(settings(jars, "/tmp/checkpoints"), "spark://spark-master:7077") == local[:2]


@pytest.mark.parametrize("master", ["local", "local[*]", "local[2]", "local-cluster[2,1,1024]"])
def test_a_local_driver_logs_through_the_projects_log4j2_file_and_collects_with_the_serial_collector(master):
    options = spark.local_driver_conf(master)["spark.driver.extraJavaOptions"]
    assert options == f"-Dlog4j2.configurationFile={spark.LOG4J2_FILE.as_uri()} -XX:+UseSerialGC -XX:NewRatio=1"
    assert spark.LOG4J2_FILE.is_file()


def test_a_cluster_driver_keeps_the_logging_spark_has_there():
    assert spark.local_driver_conf("spark://spark-master:7077") == {}


def test_extra_spark_settings_apply_and_driver_options_add_to_the_projects_own():
    settings = Settings.from_env(
        environ={
            "EMOSTREAM_SPARK_CONF": "spark.sql.streaming.noDataMicroBatches.enabled=false,"
            "spark.driver.extraJavaOptions=-XX:+UseParallelGC"
        }
    )
    conf = spark.extra_conf(settings)

    assert conf["spark.sql.streaming.noDataMicroBatches.enabled"] == "false"
    options = conf["spark.driver.extraJavaOptions"]
    # The collector chosen takes the place of the project's: a JVM given two does not start.
    assert options == f"-Dlog4j2.configurationFile={spark.LOG4J2_FILE.as_uri()} -XX:+UseParallelGC"


def test_extra_driver_options_without_a_collector_keep_the_projects_collector():
    settings = Settings.from_env(environ={"EMOSTREAM_SPARK_CONF": "spark.driver.extraJavaOptions=-Xss4m"})
    options = spark.extra_conf(settings)["spark.driver.extraJavaOptions"]
    assert options == f"-Dlog4j2.configurationFile={spark.LOG4J2_FILE.as_uri()} -XX:+UseSerialGC -XX:NewRatio=1 -Xss4m"


def test_a_malformed_extra_spark_setting_stops_with_its_text():
    settings = Settings.from_env(environ={"EMOSTREAM_SPARK_CONF": "spark.ui.enabled"})
    with pytest.raises(SystemExit, match="'spark.ui.enabled' is not key=value"):
        spark.extra_conf(settings)


@pytest.mark.spark
def test_the_local_driver_jvm_collects_with_the_serial_collector(request):
    session = request.getfixturevalue("spark")  # the fixture's name is this module's too
    beans = session._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
    # The serial collector's two: "Copy" (young) and "MarkSweepCompact" (old); G1's are "G1 ...".
    assert sorted(bean.getName() for bean in beans) == ["Copy", "MarkSweepCompact"]
