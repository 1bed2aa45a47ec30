"""The processor submitted to a Spark standalone cluster, SIGKILLed under load and restarted.

A master and one worker (emostream.devstack.spark_cluster, started from the pyspark installation)
run the processor's executors; the processor itself is the driver. Killing the driver
ends its application on the cluster; the restarted processor is a new application that
resumes from the checkpoint.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Iterator
from functools import partial

import pytest
import requests

from emostream.devstack.spark_cluster import SparkStandalone
from emostream.settings import Settings
from tests.harness.fault_stack import fault_settings
from tests.harness.faults import (
    TracedCrowd,
    assert_every_acknowledged_emoji_counted_once,
    audit,
    plan_for,
    run_with_fault,
    summary,
)
from tests.harness.stack import Stack, running_stack
from tests.harness.support import ServiceProcess, free_port, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow, pytest.mark.spark]


class ClusterStack(Stack):
    """The stack with the processor as a driver of the Spark standalone cluster."""

    def __init__(self, settings: Settings, log_dir, spark: SparkStandalone):
        super().__init__(settings, log_dir)
        self.spark = spark

    def start_service(self, script: str) -> ServiceProcess:
        if script != "emoji_processor.py":
            return super().start_service(script)
        # What `bin/spark-cluster env` tells a driver on this machine.
        env = {**self.spark.driver_env(), "PYSPARK_PYTHON": sys.executable}
        process = ServiceProcess(script, self.settings, self.log_dir, env=env)
        self.processes[script] = process
        return process


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkStandalone]:
    cluster = SparkStandalone(
        home=tmp_path_factory.mktemp("spark-standalone"),
        port=free_port(),
        ui_port=free_port(),
        worker_ui_ports=(free_port(),),
        worker_cores=2,
        worker_memory="1g",
    )
    try:
        cluster.start(timeout=180)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def cluster_stack(
    base_settings: Settings, spark_cluster: SparkStandalone, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterStack]:
    state = tmp_path_factory.mktemp("processor-cluster-faults")
    settings = fault_settings(base_settings.replace(spark_master=spark_cluster.master_url), state)
    kind = partial(ClusterStack, spark=spark_cluster)
    with running_stack(settings, state, timeout=300, kind=kind) as stack:
        yield stack


def test_counts_stay_exact_when_the_processor_on_a_spark_cluster_is_killed_and_restarted(cluster_stack: ClusterStack):
    stack = cluster_stack
    settings = stack.settings
    crowd = TracedCrowd(plan_for(settings, (stack.ingest_url,), stack.registration_url, duration=24.0), settings)
    health = f"http://127.0.0.1:{settings.processor_metrics_port}/healthz"

    async def kill_and_restart_driver() -> dict:
        killed_at = time.monotonic()
        await asyncio.to_thread(stack.restart, "emoji_processor.py", signal.SIGKILL)
        await asyncio.to_thread(wait_http, health, 180, stack.processes["emoji_processor.py"].process)
        while requests.get(health, timeout=5).status_code != 200:
            await asyncio.sleep(0.5)
        return {"processor_back_after_s": round(time.monotonic() - killed_at, 1)}

    report, outcome = asyncio.run(run_with_fault(crowd, kill_and_restart_driver, after=6.0))
    books = audit(settings, crowd)
    summary("processor killed and restarted (SIGKILL, Spark standalone cluster)", report, books, **outcome)

    assert_every_acknowledged_emoji_counted_once(books, stack.logs())
    assert books["viewer_windows_missing"] == 0
