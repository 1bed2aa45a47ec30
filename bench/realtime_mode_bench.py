"""What the processor's count would cost in Spark's real-time mode, against the micro-batches it runs in.

    .venv/bin/python bench/realtime_mode_bench.py --python ~/spark43/bin/python
    .venv/bin/python bench/realtime_mode_bench.py --python … --rate 2000 --seconds 300 --measure-from 90

Spark's real-time mode runs a query as long-lived tasks that handle each record as it arrives, so
the fixed work of a micro-batch (planning, scheduling, a state commit, twice a second) happens once
a checkpoint interval instead. A stateful query (our windowed count) needs Spark 4.3 in that mode,
and this project pins Spark 4.2, so the bench runs its processors under another interpreter
(``--python``) whose ``pyspark`` is 4.3 or newer and which has the project's runtime requirements:

    python3 -m venv ~/spark43
    ~/spark43/bin/pip install -r requirements.txt
    ~/spark43/bin/pip install pyspark==4.3.0

The Kafka connector is the one bin/setup-jars fetched for the pinned Spark (the 4.3 connector is
what a real deployment would need).

Both configurations run under that interpreter, one after the other, on the same broker and the
same steady load (``--rate`` emoji/s for ``--seconds``, stamped as ingest would), each on topics of
its own: ``micro-batch`` is the shipped query (``emostream.processor.job.start_query``, 500 ms
trigger); ``real-time`` builds the same transforms (``emostream.processor.transforms``) into a
real-time query. The bench reads each aggregate topic back at the end and checks every window's
last record against what was sent (a window nobody sent to counts as inexact). It prints the
processor's cores (its Python and its driver JVM) from ``--measure-from`` seconds into the load to
its end, the aggregate records written per emoji, and, as its last line:

    realtime: cores_ratio=<real-time/micro-batch> records_per_emoji=<real-time> exact=<windows exact>/<windows>

Kafka is EMOSTREAM_KAFKA_BOOTSTRAP when it is set, else a broker of the bench's own on free ports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from _common import kafka_for_bench, processor_settings, stop_process_group, tree_cpu_seconds
from processor_bench import console_producer, delete_topics, emoji_choice, emoji_lines, say

from emostream import kafka
from emostream.settings import ROOT, Settings

MICRO_BATCH = "micro-batch"
REAL_TIME = "real-time"

# The child: one processor, under the --python interpreter, in this checkout's folder.
WORKER = """
import signal, sys, threading
from emostream.settings import Settings
from emostream.processor.job import observe_counts, start_query
from emostream.processor.spark import session
from emostream.processor.transforms import aggregate, aggregate_records, parse_records, valid_events

mode, checkpoint_seconds = sys.argv[1], sys.argv[2]
settings = Settings.from_env()
spark = session(settings, app_name="emostream-realtime-bench")
if mode == "micro-batch":
    query = start_query(spark, settings)
else:
    records = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("subscribe", settings.emoji_topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    aggregates = aggregate(valid_events(observe_counts(parse_records(records, settings))), settings)
    query = (
        aggregate_records(aggregates)
        .writeStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("topic", settings.aggregate_topic)
        .option("checkpointLocation", settings.checkpoint_dir + "/aggregates")
        .outputMode("update")
        .trigger(realTime=checkpoint_seconds + " seconds")
        .start()
    )
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
while not stop.wait(0.5) and query.isActive:
    pass
error = query.exception()
query.stop()
spark.stop()
sys.exit(1 if error else 0)
"""


class Load:
    """``rate`` emoji a second through Kafka's console producer, flushed every 500 ms as ingest does,
    and the counts they make per (event, window, emoji)."""

    def __init__(self, settings: Settings, rate: int):
        self.settings, self.rate = settings, rate
        self.sent = 0
        self.expected: dict[tuple[str, int], Counter] = {}

    def run(self, seconds: float) -> None:
        producer = console_producer(self.settings)
        assert producer.stdin is not None
        window_ms = self.settings.window_seconds * 1000
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.5 - time.time() % 0.5)
            now_ms = int(time.time() * 1000)
            first, due = self.sent, self.rate // 2
            producer.stdin.write(emoji_lines(self.settings, 10**9 + first, due, lambda _i, at=now_ms: at).encode())
            producer.stdin.flush()
            window = now_ms // window_ms * window_ms
            for i in range(10**9 + first, 10**9 + first + due):
                event_id, _user, kind = emoji_choice(self.settings, i)
                self.expected.setdefault((event_id, window), Counter())[kind] += 1
            self.sent += due
        producer.stdin.close()
        producer.wait(60)


def final_aggregates(settings: Settings, timeout: float = 120.0) -> tuple[dict[tuple[str, int], dict], int]:
    """The last aggregate of each window in ``aggregate_topic``, and how many records it holds."""
    consumer = kafka.consumer(settings)
    last: dict[tuple[str, int], dict] = {}
    count = 0
    try:
        ends = kafka.assign_at_beginning(consumer, settings.aggregate_topic)
        deadline = time.monotonic() + timeout
        while not kafka.caught_up(consumer, ends) and time.monotonic() < deadline:
            for records in kafka.poll(consumer, 1000).values():
                for record in records:
                    count += 1
                    last[(record.value["event_id"], record.value["window_start"])] = record.value
    finally:
        consumer.close()
    return last, count


def run(mode: str, base: Settings, args: argparse.Namespace, scratch: Path, created: list[Settings]) -> dict:
    tag = f"bench-{mode}-{uuid.uuid4().hex[:6]}"
    settings = processor_settings(base, tag, scratch)
    if mode == REAL_TIME:
        # Every stage's tasks run at once for the whole interval: 2 readers and 2 counters here. The
        # mode's operator allowlist has no coalesce, so the count keeps its shuffle.
        settings = settings.replace(spark_master="local[4]", shuffle_partitions=2)
    kafka.ensure_topics(settings)
    created.append(settings)
    (scratch / tag).mkdir(parents=True)
    log_path = scratch / tag / "processor.log"
    with open(log_path, "wb") as log_file:
        child = subprocess.Popen(
            [args.python, "-c", WORKER, mode, str(args.checkpoint_seconds)],
            env={**os.environ, **settings.to_env()},
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    result: dict = {"mode": mode}
    try:
        time.sleep(args.startup_seconds)
        if child.poll() is not None:
            raise RuntimeError(f"the {mode} processor exited with {child.returncode}; see {log_path}")
        load = Load(settings, args.rate)
        say(f"[{mode}] {args.rate:,} emoji/s for {args.seconds:.0f} s")
        with contextlib.ExitStack() as measuring:
            sender = threading.Thread(target=load.run, args=(args.seconds,), daemon=True)
            sender.start()
            measuring.callback(sender.join)
            time.sleep(args.measure_from)
            cpu_from, at = tree_cpu_seconds(child.pid), time.monotonic()
            sender.join()
            result["cores"] = (tree_cpu_seconds(child.pid) - cpu_from) / (time.monotonic() - at)
        if child.poll() is not None:
            raise RuntimeError(f"the {mode} processor exited with {child.returncode}; see {log_path}")
        # The last emoji counted: the micro-batch needs a trigger, real-time a moment.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            last, _ = final_aggregates(settings)
            if sum(value["total"] for value in last.values()) >= load.sent:
                break
            time.sleep(2)
        last, records = final_aggregates(settings)
        exact = sum(1 for key, counts in load.expected.items() if key in last and last[key]["counts"] == dict(counts))
        windows = len(load.expected.keys() | last.keys())
        result |= {"sent": load.sent, "records": records, "windows": windows, "exact": exact}
    finally:
        stop_process_group(child)
    if args.keep:
        say(f"[{mode}] log: {log_path}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", required=True, help="an interpreter whose pyspark is 4.3 or newer")
    parser.add_argument("--rate", type=int, default=2000, help="emoji per second (default 2,000)")
    parser.add_argument("--seconds", type=float, default=300.0, help="length of the load (default 300)")
    parser.add_argument("--measure-from", type=float, default=90.0, help="seconds into the load to start measuring")
    parser.add_argument("--startup-seconds", type=float, default=30.0, help="the processor's start, unloaded")
    parser.add_argument("--checkpoint-seconds", type=int, default=300, help="real-time mode's batch (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the processors' logs")
    args = parser.parse_args()
    if args.measure_from >= args.seconds:
        parser.error("--measure-from must be inside --seconds")
    version = subprocess.run(
        [args.python, "-c", "import pyspark; print(pyspark.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    if tuple(int(part) for part in version.split(".")[:2] if part.isdigit()) < (4, 3):
        parser.error(f"{args.python} has pyspark {version or 'missing'}; real-time mode counts from Spark 4.3")

    scratch = Path(tempfile.mkdtemp(prefix="emostream-realtime-bench-"))
    load_before = Path("/proc/loadavg").read_text().split()[0]
    created: list[Settings] = []
    results = []
    try:
        with kafka_for_bench(None, scratch, kill=True) as bootstrap:
            base = Settings.from_env(kafka_bootstrap=bootstrap)
            try:
                for mode in (MICRO_BATCH, REAL_TIME):
                    results.append(run(mode, base, args, scratch, created))
            finally:
                delete_topics(created)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(f"pyspark {version}; load average {load_before} → {Path('/proc/loadavg').read_text().split()[0]}")
    print(f"{args.rate:,} emoji/s for {args.seconds:.0f} s; cores from {args.measure_from:.0f} s to the end")
    print()
    print("| mode | cores | emoji sent | aggregate records | records per emoji | windows exact |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        print(
            f"| {r['mode']} | {r['cores']:.3f} | {r['sent']:,} | {r['records']:,} "
            f"| {r['records'] / r['sent']:.3f} | {r['exact']}/{r['windows']} |"
        )
    micro, real = results
    print()
    print(
        f"realtime: cores_ratio={real['cores'] / micro['cores']:.2f} records_per_emoji={real['records'] / real['sent']:.2f}"
        f" exact={micro['exact'] + real['exact']}/{micro['windows'] + real['windows']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
