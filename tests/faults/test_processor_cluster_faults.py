"""The processor on a Spark standalone cluster, SIGKILLed under load while a standby waits.

A master and one worker (emostream.devstack.spark_cluster, started from the pyspark installation)
run the executors of two drivers: the active processor and its warm standby, each a Spark
application of its own with one core, so that the standby keeps an executor ready. Killing
the active driver ends its application; the standby takes the checkpoint's lock and resumes
the query from the checkpoint on the executor it already has.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from functools import partial

import pytest

from emostream.devstack.spark_cluster import SparkStandalone
from emostream.settings import Settings
from tests.harness.fault_stack import fault_settings
from tests.harness.faults import (
    TracedCrowd,
    assert_every_acknowledged_emoji_counted_once,
    assert_processor_recovered,
    audit,
    plan_for,
    run_killing_the_active_processor,
    summary,
    warm_standby,
)
from tests.harness.stack import Stack, running_stack
from tests.harness.support import free_port

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow, pytest.mark.spark]


class ClusterStack(Stack):
    """The stack with the processor as a driver of the Spark standalone cluster."""

    def __init__(self, settings: Settings, log_dir, spark: SparkStandalone):
        super().__init__(settings, log_dir)
        self.spark = spark

    def service_env(self, script: str) -> dict[str, str] | None:
        if script != "emoji_processor.py":
            return None
        # What `bin/spark-cluster env` tells a driver on this machine.
        return {**self.spark.driver_env(), "PYSPARK_PYTHON": sys.executable}


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
    # One core and half the worker's memory for each driver's application: the standby's too.
    cluster = base_settings.replace(
        spark_master=spark_cluster.master_url, spark_conf=("spark.cores.max=1", "spark.executor.memory=512m")
    )
    settings = fault_settings(cluster, state)
    kind = partial(ClusterStack, spark=spark_cluster)
    with running_stack(settings, state, timeout=300, kind=kind) as stack:
        yield stack


def test_the_standby_driver_counts_again_within_10_s_of_a_sigkill_on_a_spark_cluster(cluster_stack: ClusterStack):
    stack = cluster_stack
    settings = stack.settings
    with warm_standby(stack, 300):
        crowd = TracedCrowd(plan_for(settings, (stack.ingest_url,), stack.registration_url, duration=24.0), settings)
        report, outcome = run_killing_the_active_processor(stack, crowd, after=6.0)
        books = audit(settings, crowd)
        summary(
            "processor killed (SIGKILL, Spark standalone cluster), warm standby took over", report, books, **outcome
        )

        assert_every_acknowledged_emoji_counted_once(books, stack.logs())
        assert_processor_recovered(outcome, books, report)
