"""What replication costs a producer: one broker (RF 1) against the 3-node cluster (RF 3).

    .venv/bin/python bench/cluster_bench.py                     # 100 k records, 2 k/s for 10 s
    .venv/bin/python bench/cluster_bench.py --records 300000 --rate 5000 --seconds 20

Each configuration gets brokers of its own (free ports, a temporary folder, 384 MB heaps),
stopped when it is measured:

``single``       one KRaft node, replication factor 1: the same-run baseline
``cluster``      three KRaft nodes (bin/kafka-cluster's layout), RF 3, min.insync.replicas 2
``cluster-1`` the same cluster with one node killed (SIGKILL) before measuring: writes
                 go on with two in-sync replicas

and is measured with EmoStream's own producer (``emostream.kafka.producer``: acks=all,
idempotent), sending emoji records like ingest's to a 4-partition topic:
 1. ``burst``: N records as fast as the producer takes them, then flush; records/s;
 2. ``paced``: R records/s for S seconds; the time from send to acknowledgement per record.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from emostream import kafka
from emostream.devstack.broker import BrokerNode
from emostream.devstack.kafka_cluster import KafkaCluster
from emostream.settings import Settings
from tests.harness.support import free_port

EMOJI = ("🔥", "👏", "😂", "😮")


@dataclass
class Result:
    name: str
    burst_per_second: float
    paced_sent: int
    paced_acked: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def record(i: int, now: int) -> tuple[str, dict]:
    user = f"user-{i % 5000}"
    return f"final|{user}", {
        "user_id": user,
        "emoji_type": EMOJI[i % len(EMOJI)],
        "timestamp": now,
        "event_id": "final",
        "received_at": now,
    }


def measure(name: str, settings: Settings, records: int, rate: int, seconds: float) -> Result:
    print(f"measuring {name} on {settings.kafka_bootstrap}", file=sys.stderr, flush=True)
    kafka.ensure_topics(
        settings,
        [kafka.TopicSpec(settings.emoji_topic, 4, (("min.insync.replicas", str(settings.min_insync_replicas)),))],
    )
    producer = kafka.producer(settings)
    try:
        # Warm up connections and metadata so the burst measures sending only.
        for i in range(1000):
            producer.send(settings.emoji_topic, *record(i, 0))
        producer.flush(timeout=60)

        now = int(time.time() * 1000)
        started = time.perf_counter()
        for i in range(records):
            key, value = record(i, now)
            producer.send(settings.emoji_topic, key=key, value=value)
        producer.flush(timeout=300)
        burst = records / (time.perf_counter() - started)

        latencies: list[float] = []
        lock = threading.Lock()

        def acked(sent_at: float) -> Callable[[object], None]:
            def callback(_metadata: object) -> None:
                with lock:
                    latencies.append((time.perf_counter() - sent_at) * 1000)

            return callback

        total = int(rate * seconds)
        begin = time.perf_counter()
        for i in range(total):
            due = begin + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            key, value = record(i, int(time.time() * 1000))
            producer.send(settings.emoji_topic, key=key, value=value).add_callback(acked(time.perf_counter()))
        producer.flush(timeout=300)
    finally:
        producer.close(timeout=30)
    ordered = sorted(latencies)
    return Result(
        name,
        burst,
        total,
        len(ordered),
        statistics.median(ordered),
        ordered[int(0.99 * (len(ordered) - 1))],
        ordered[-1],
    )


def base_settings(tag: str) -> Settings:
    return Settings.from_env(environ={}, emoji_topic=f"bench_emoji_{tag}_{int(time.time())}")


def run_single(folder: Path, args: argparse.Namespace) -> Result:
    node = BrokerNode(home=folder / "single", port=free_port(), controller_port=free_port(), heap="384m")
    node.start()
    try:
        return measure(
            "single",
            base_settings("single").replace(kafka_bootstrap=node.bootstrap),
            args.records,
            args.rate,
            args.seconds,
        )
    finally:
        node.stop()


def run_cluster(folder: Path, args: argparse.Namespace, kill_one: bool) -> Result:
    name = "cluster-1" if kill_one else "cluster"
    cluster = KafkaCluster.create(folder / name, [(free_port(), free_port()) for _ in range(3)])
    cluster.start()
    try:
        settings = cluster.settings(base_settings(name.replace("-", "_")))
        if kill_one:
            kafka.ensure_topics(settings, [kafka.TopicSpec(settings.emoji_topic, 4, (("min.insync.replicas", "2"),))])
            cluster.node(3).stop(kill=True)
            wait_for_isr_without(settings, 3)
        return measure(name, settings, args.records, args.rate, args.seconds)
    finally:
        cluster.stop()


def wait_for_isr_without(settings: Settings, node_id: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with kafka.translate_errors():
                client = kafka.admin(settings)
                try:
                    (topic,) = client.describe_topics([settings.emoji_topic])
                finally:
                    client.close()
        except kafka.KafkaError:  # the admin client may have picked the dead node
            topic = {"partitions": [{"isr_nodes": [node_id], "leader_id": -1}]}
        if all(node_id not in p["isr_nodes"] and p["leader_id"] >= 0 for p in topic["partitions"]):
            return
        time.sleep(0.5)
    raise TimeoutError(f"node {node_id} is still in the ISR after {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="records of the burst")
    parser.add_argument("--rate", type=int, default=2000, help="records per second of the paced run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the paced run")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="emostream-cluster-bench-") as tmp:
        folder = Path(tmp)
        results.append(run_single(folder, args))
        results.append(run_cluster(folder, args, kill_one=False))
        results.append(run_cluster(folder, args, kill_one=True))

    baseline = results[0].burst_per_second
    print(f"\nburst: {args.records:,} records; paced: {args.rate:,}/s for {args.seconds:.0f} s; acks=all, idempotent\n")
    print(
        f"{'config':<11} {'burst rec/s':>12} {'vs single':>10} {'paced acked':>12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    for r in results:
        print(
            f"{r.name:<11} {r.burst_per_second:>12,.0f} {r.burst_per_second / baseline:>9.2f}x "
            f"{r.paced_acked:>5,}/{r.paced_sent:<6,} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.max_ms:>8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
