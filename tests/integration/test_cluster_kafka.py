"""A 3-node KRaft cluster started by bin/kafka-cluster: replication, and a broker crash under load."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from emostream import kafka
from emostream.devstack.kafka_cluster import KafkaCluster
from emostream.settings import ROOT, Settings
from tests.harness.clusters import assert_stop_ends_every_process, parse_exports
from tests.harness.faults import process_gone
from tests.harness.settings import unique_topics
from tests.harness.support import free_port, leader_of, read_topic

pytestmark = pytest.mark.integration

CLI = str(ROOT / "bin" / "kafka-cluster")
# The cluster fences a dead node within seconds (its failover settings); generous for a loaded machine.
FENCED_BOUND_SECONDS = 30.0


def cli_env(settings: Settings) -> dict[str, str]:
    """The caller's environment without its EmoStream settings, plus the test's."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("EMOSTREAM_")}
    return {**inherited, **settings.to_env()}


@dataclass
class Started:
    cluster: KafkaCluster
    exports: dict[str, str]
    settings: Settings
    env: dict[str, str]


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """One cluster for the module, started by the command a user runs."""
    state = tmp_path_factory.mktemp("cluster-state")
    home = state / "kafka-cluster"
    ports = [(free_port(), free_port()) for _ in range(3)]
    settings = unique_topics(Settings.from_env(environ={}, state_dir=str(state), spark_ui=False))
    env = cli_env(settings)
    done = subprocess.run(
        [CLI, "start", "--state", str(home), "--ports", ",".join(f"{c}:{k}" for c, k in ports)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    cluster = KafkaCluster.create(home)
    try:
        assert done.returncode == 0, done.stderr
        exports = parse_exports(done.stdout)
        yield Started(cluster, exports, cluster.settings(settings), env)
    finally:
        cluster.stop(timeout=30, kill=False)


def test_start_prints_the_bootstrap_of_all_three_nodes_and_their_replication(started):
    nodes = started.cluster.nodes

    assert started.exports == {
        "EMOSTREAM_KAFKA_BOOTSTRAP": ",".join(f"127.0.0.1:{node.port}" for node in nodes),
        "EMOSTREAM_REPLICATION_FACTOR": "3",
        "EMOSTREAM_MIN_INSYNC_REPLICAS": "2",
        # The local clusters are plaintext, whatever the shell around them says.
        "EMOSTREAM_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
    }
    pids = [node.pid() for node in nodes]
    assert all(pids) and len(set(pids)) == 3, "every node is its own JVM"


def test_the_three_nodes_are_the_brokers_and_the_controller_quorum(started):
    client = kafka.admin(started.settings)
    try:
        brokers = client.describe_cluster()["brokers"]
    finally:
        client.close()
    assert sorted((b["broker_id"], b["port"]) for b in brokers) == [(n.node_id, n.port) for n in started.cluster.nodes]

    quorum = subprocess.run(
        [str(ROOT / "bin" / "_kafka-tool"), "org.apache.kafka.tools.MetadataQuorumCommand"]
        + ["--bootstrap-server", started.settings.kafka_bootstrap, "describe", "--replication"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert quorum.returncode == 0, quorum.stderr
    voters = {int(line.split()[0]) for line in quorum.stdout.splitlines()[1:] if "Leader" in line or "Follower" in line}
    assert voters == {1, 2, 3}


def test_every_pipeline_topic_has_three_replicas_and_min_insync_replicas_2(started):
    names = [spec.name for spec in kafka.topics(started.settings)]
    client = kafka.admin(started.settings)
    try:
        described = client.describe_topics(names)
    finally:
        client.close()
    configs = kafka.topic_configs(started.settings, names)

    assert sorted(t["name"] for t in described) == sorted(names)
    replicas = {(t["name"], p["partition_index"]): len(p["replica_nodes"]) for t in described for p in t["partitions"]}
    assert set(replicas.values()) == {3}
    min_isr = {name: values["min.insync.replicas"] for name, values in configs.items()}
    assert min_isr == dict.fromkeys(names, "2")


@pytest.mark.faults
def test_every_acknowledged_record_is_read_exactly_once_after_a_broker_is_killed_and_restarted(started):
    settings = unique_topics(started.settings)
    kafka.ensure_topics(settings)
    topic = settings.emoji_topic
    victim = started.cluster.node(leader_of(settings, topic, partition=0))

    load = SteadyLoad(settings, topic)
    load.start()
    try:
        load.wait_for_acks(200)

        pid = victim.pid()
        killed_at = time.monotonic()
        victim.stop(kill=True)  # SIGKILL: no controlled shutdown, no flush
        assert pid is not None and process_gone(pid), "the killed node's JVM is still there"
        _wait_until(
            lambda: all(victim.node_id not in isr for isr in _isrs(settings, topic)),
            "the dead broker left ISR",
            FENCED_BOUND_SECONDS,
        )
        fenced_after = time.monotonic() - killed_at
        load.wait_for_acks(load.acked_count() + 200)  # acks=all keeps working with 2 in-sync replicas

        assert victim.start() is True
        assert victim.pid() not in (None, pid)
        _wait_until(lambda: all(len(isr) == 3 for isr in _isrs(settings, topic)), "the restarted broker caught up")
        load.wait_for_acks(load.acked_count() + 200)
    finally:
        load.stop()
    print(
        f"\nFAULT Kafka node of 3 killed under kafka-python's producer: sent={load.sent} acked={len(load.acked)} "
        f"failed={len(load.failed)} dead node out of ISR after {fenced_after:.1f} s"
    )

    acked = set(load.acked)
    assert load.failed == [], "no send may fail while two of three replicas are up"
    assert len(acked) == load.sent
    records = read_topic(
        settings, topic, until=lambda rs: acked <= {r.value["record_id"] for r in rs}, timeout=90, settle=3
    )
    read = Counter(r.value["record_id"] for r in records)
    assert acked - set(read) == set(), "acknowledged records were lost"
    assert {rid: n for rid, n in read.items() if n > 1} == {}, "records were written twice"
    assert set(read) == acked


def test_stop_ends_every_node_and_status_reports_it(started):
    pids = [node.pid() for node in started.cluster.nodes]

    status = assert_stop_ends_every_process(CLI, ["--state", str(started.cluster.home)], started.env, pids)

    assert status.stderr.count("stopped") == 3


class SteadyLoad:
    """Records with unique ids sent at a steady pace from a thread, with their acks counted."""

    def __init__(self, settings: Settings, topic: str, per_second: float = 200.0):
        self.producer = kafka.producer(settings)
        self.topic = topic
        self.pause = 1.0 / per_second
        self.acked: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.sent = 0
        self.run_id = uuid.uuid4().hex[:8]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            record_id = f"{self.run_id}-{self.sent}"
            try:
                future = self.producer.send(
                    self.topic, key=f"live|user-{self.sent % 97}", value={"record_id": record_id, "seq": self.sent}
                )
            except Exception as error:  # a send the producer refused was never accepted
                self.failed.append((record_id, repr(error)))
            else:
                future.add_callback(lambda _metadata, rid=record_id: self.acked.append(rid))
                future.add_errback(lambda error, rid=record_id: self.failed.append((rid, repr(error))))
            self.sent += 1
            time.sleep(self.pause)

    def acked_count(self) -> int:
        return len(self.acked)

    def wait_for_acks(self, count: int, timeout: float = 120.0) -> None:
        _wait_until(lambda: len(self.acked) >= count, f"{count} acknowledged records", timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.producer.flush(timeout=150)
        self.producer.close(timeout=30)


def _isrs(settings: Settings, topic: str) -> list[list[int]]:
    client = kafka.admin(settings, request_timeout_ms=10_000)
    try:
        (described,) = client.describe_topics([topic])
    finally:
        client.close()
    return [p["isr_nodes"] for p in described["partitions"]]


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # the cluster may not answer while a broker is down
            pass
        time.sleep(0.5)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")
