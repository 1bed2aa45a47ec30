"""The processor as a program: ``python3 emoji_processor.py``, ``bin/spark-submit emoji_processor.py``
or ``emostream-processor``. SIGTERM or Ctrl-C stops it; the checkpoint keeps its place.

Started while another processor counts on the same checkpoint, it waits as that one's standby
and takes over when it dies (service.py).
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import threading
import time
import warnings
from typing import TYPE_CHECKING

from emostream import logs
from emostream.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from emostream.processor.service import Processor

log = logging.getLogger("emostream.processor")

STANDBY_SETTLE_SECONDS = 20.0


def main(argv: list[str] | None = None) -> int:
    """Run the processor until a signal (0) or until its query fails (1)."""
    parser = argparse.ArgumentParser(
        description="EmoStream processor: emoji_topic counted in 2-second windows into aggregated_emoji_topic.",
        epilog="Settings come from EMOSTREAM_* variables (the README lists them); EMOSTREAM_SPARK_MASTER names a cluster.",
    )
    parser.parse_args(argv)
    settings = Settings.from_env().for_kafka_service("processor")
    logs.configure(settings)

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        if not stop.is_set():
            log.info("%s: stopping; the checkpoint keeps the place for the next start", signal.Signals(signum).name)
        stop.set()

    def take_signals() -> None:
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    # Spark only now: --help and a bad setting answer without starting a JVM.
    from emostream.processor.service import STANDBY, Processor
    from emostream.processor.spark import session

    take_signals()
    let_a_takeover_settle(settings, stop)
    if stop.is_set():
        log.info("processor stopped")
        return 0
    try:
        spark = session(settings)
    except KeyboardInterrupt:  # Ctrl-C while pyspark's own SIGINT handler was in place (see below)
        request_stop(signal.SIGINT, None)
        log.info("processor stopped")
        return 0
    # pyspark's SparkContext installs a SIGINT handler that cancels every job and raises
    # KeyboardInterrupt wherever the main thread is; the processor stops its query instead.
    take_signals()
    processor = Processor(spark, settings)
    try:
        code = 0 if stop.is_set() else processor.start().run_until(stop)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        port, name = (
            (settings.processor_standby_metrics_port, "EMOSTREAM_PROCESSOR_STANDBY_METRICS_PORT")
            if processor.role == STANDBY
            else (settings.processor_metrics_port, "EMOSTREAM_PROCESSOR_METRICS_PORT")
        )
        log.error("port %d of /healthz and /metrics is taken (%s)", port, name)
        code = 1
    finally:
        stop_spark(spark, processor)
    log.info("processor stopped")
    return code


def let_a_takeover_settle(settings: Settings, stop: threading.Event) -> None:
    """Start as the standby only once the active processor has counted for a while.

    A supervisor restarts a killed processor within seconds, just as its standby takes over: a
    new driver JVM and its warm-up would then take the CPU from the new active processor's first
    micro-batches, the very ones that end the outage.
    """
    from emostream.processor.lock import held_by_another, lock_path

    holder = held_by_another(lock_path(settings))
    if holder is None:
        return
    wait = STANDBY_SETTLE_SECONDS - (time.time() - float(holder.get("since") or 0))
    if wait > 0:
        log.info(
            "the active processor took the lock %.0f s ago: starting as its standby in %.0f s",
            time.time() - holder["since"],
            wait,
        )
        stop.wait(wait)


def stop_spark(spark: SparkSession, processor: Processor) -> None:
    """Stop the processor, then Spark, without Spark's account of the micro-batch this interrupts.

    Stopping the query cancels the batch it is running, and Spark logs what that cancels
    (aborted writes, killed tasks) for a while after; that is the stop itself, not news.
    Under spark-submit the JVM may be exiting on the same signal already.
    """
    try:
        spark.sparkContext.setLogLevel("OFF")
    except Exception as error:
        log.debug("quieting Spark: %s", error)
    processor.stop()
    with warnings.catch_warnings():
        # pyspark warns when the JVM is gone already ("Unable to cleanly shutdown Spark JVM process").
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            spark.stop()
        except Exception as error:
            log.debug("stopping Spark: %s", error)
