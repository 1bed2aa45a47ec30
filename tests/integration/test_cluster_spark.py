"""A Spark standalone cluster started by bin/spark-cluster runs a Kafka job on its executors.

The job runs in a child process (``python -m tests.integration.test_cluster_spark TOPIC``)
with the driver environment ``bin/spark-cluster env`` prints: the test run's own local
SparkSession stays untouched, and the child is configured exactly as the processor would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from emostream import kafka
from emostream.devstack.spark_cluster import SparkStandalone
from emostream.settings import ROOT, Settings
from tests.harness.clusters import assert_stop_ends_every_process, parse_exports
from tests.harness.support import free_port

pytestmark = [pytest.mark.integration, pytest.mark.spark]

CLI = str(ROOT / "bin" / "spark-cluster")
RESULT_PREFIX = "RESULT "


@dataclass
class Started:
    cluster: SparkStandalone
    args: list[str]
    exports: dict[str, str]
    env: dict[str, str]


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    home = tmp_path_factory.mktemp("spark-cluster")
    cluster = SparkStandalone(
        home=home,
        port=free_port(),
        ui_port=free_port(),
        worker_ui_ports=(free_port(),),
        worker_cores=1,
        worker_memory="1g",
    )
    args = [
        "--state",
        str(home),
        "--port",
        str(cluster.port),
        "--ui-port",
        str(cluster.ui_port),
        "--worker-ui-port",
        str(cluster.worker_ui_ports[0]),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMOSTREAM_", "SPARK_", "PYSPARK_"))}
    done = subprocess.run(
        [CLI, "start", *args, "--worker-cores", "1", "--worker-memory", "1g"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    try:
        assert done.returncode == 0, done.stderr
        yield Started(cluster, args, parse_exports(done.stdout), env)
    finally:
        cluster.stop()


def test_start_prints_the_master_url_and_the_driver_environment(started):
    assert started.exports == {
        "EMOSTREAM_SPARK_MASTER": f"spark://127.0.0.1:{started.cluster.port}",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
    }
    assert all(started.cluster.running().values())


def test_a_kafka_batch_job_runs_on_the_cluster_executors_with_the_connector_jars(started, settings, tmp_path):
    producer = kafka.producer(settings)
    for i in range(20):
        producer.send(settings.emoji_topic, key=f"k{i}", value={"i": i})
    producer.flush(timeout=30)
    producer.close()

    child_env = {
        **started.env,
        **settings.to_env(),
        **started.exports,
        "SPARK_EXECUTOR_MEMORY": "512m",  # half of what the worker offers, as the guide suggests for small workers
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.test_cluster_spark", settings.emoji_topic],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env,
    )

    assert done.returncode == 0, done.stderr[-5000:]
    result = json.loads(
        next(line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX))[len(RESULT_PREFIX) :]
    )
    assert result["master"] == started.exports["EMOSTREAM_SPARK_MASTER"]
    assert result["executors"] >= 1
    # Read by the connector on an executor, then doubled by a Python worker there.
    assert sorted(map(tuple, result["rows"])) == sorted((f"k{i}", 2 * i) for i in range(20))
    fetched = {jar.name for jar in (started.cluster.home / "worker-1" / "work").glob("app-*/*/*.jar")}
    assert any(name.startswith("spark-sql-kafka-0-10") for name in fetched), fetched


def test_stop_ends_the_master_and_the_worker(started):
    pids = list(started.cluster.running().values())

    assert_stop_ends_every_process(CLI, started.args, started.env, pids)


def run_job(topic: str) -> None:
    """The child: a batch read of ``topic`` through Spark's Kafka connector, on the configured master."""
    from emostream.processor.spark import session

    settings = Settings.from_env()
    spark = session(settings, app_name="emostream-cluster-test")
    try:
        records = (
            spark.read.format("kafka")
            .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
            .option("subscribe", topic)
            .option("startingOffsets", "earliest")
            .load()
            .selectExpr("CAST(key AS STRING) AS key", "CAST(value AS STRING) AS value")
        )
        doubled = records.rdd.map(lambda row: (row.key, 2 * json.loads(row.value)["i"])).collect()
        context = spark.sparkContext
        result = {
            "master": context.master,
            "executors": context._jsc.sc().getExecutorIds().size(),
            "rows": doubled,
        }
        sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    finally:
        spark.stop()


if __name__ == "__main__":
    run_job(sys.argv[1])
