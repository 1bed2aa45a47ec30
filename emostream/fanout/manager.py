"""The subscriber manager: assignment, scaling, and keeping the topology alive.

:class:`LoadBalancer` picks the node a new viewer goes to (registration uses it):
the least-loaded live node, counting the viewers it was just given that have not
shown up in a heartbeat yet, so a burst of registrations spreads instead of
piling onto whichever node looked emptiest two seconds ago.

:class:`SubscriberManager` keeps ``clusters × subscribers_per_cluster`` nodes and
one cluster publisher per cluster running, restarts them when they crash, starts
another node in a cluster when every node there is above ``scale_up_ratio`` of its
capacity, and retires extra nodes that stayed idle for ``scale_down_idle_seconds``.
Processes are started through a :class:`NodeLauncher`; :class:`LocalLauncher`
runs them on this machine, and a cluster deployment replaces it (e.g. with one that
scales a Kubernetes deployment). All it knows of the nodes comes from the
membership topic, so a restarted manager picks up where the last one stopped.
"""

from __future__ import annotations

import abc
import bisect
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from emostream.fanout.membership import Membership, NodeState, parse_subscriber_id, subscriber_id
from emostream.http import STARTING, Health
from emostream.processes import parent_death_signal
from emostream.settings import Settings
from emostream.wire import now_ms

# Named, not __name__: run with python -m, this module is __main__.
log = logging.getLogger("emostream.fanout.manager")

# A launched node that has not heartbeated within this long is treated as hung.
STARTUP_GRACE_SECONDS = 30.0
# A running node silent this long is hung, not merely slow (it is out of the
# membership long before: that is what keeps viewers and aggregates away from it).
HUNG_SILENCE_SECONDS = 60.0
# A node asked to leave that is still running after this long is killed.
LEAVE_TIMEOUT_SECONDS = 30.0


class NoLiveSubscriber(RuntimeError):
    """No subscriber node can take a viewer right now."""


@dataclass(frozen=True)
class Assignment:
    client_id: str
    event_id: str
    node: NodeState
    assigned_at: int  # epoch ms


class LoadBalancer:
    """Least-loaded assignment over the live membership, aware of recent assignments.

    A viewer assigned at ``t`` shows up in its node's heartbeats a little later; until
    a heartbeat at least ``grace`` after ``t`` has arrived, it counts as pending on
    that node. Thread-safe.
    """

    def __init__(self, membership: Membership, grace_seconds: float):
        self.membership = membership
        self.grace_ms = int(grace_seconds * 1000)
        self._pending: dict[str, list[tuple[int, str]]] = {}  # node -> sorted [(assigned_at, client_id)]
        self._client_node: dict[str, tuple[str, int]] = {}  # client -> (node, assigned_at)
        self._lock = threading.Lock()
        self._last_ms = 0

    def _pending_on(self, node: NodeState) -> int:
        entries = self._pending.get(node.subscriber_id)
        if not entries:
            return 0
        # Heartbeats only move forward, so entries this old never count again: drop them.
        threshold = node.heartbeat_at - self.grace_ms
        stale = bisect.bisect_right(entries, (threshold, "\U0010ffff"))
        for _, client_id in entries[:stale]:
            if self._client_node.get(client_id, ("", 0))[0] == node.subscriber_id:
                del self._client_node[client_id]
        del entries[:stale]
        return len(entries)

    def assign(self, client_id: str, event_id: str, now: int | None = None) -> Assignment:
        """Pick the least-loaded live node for the client and count it as pending there."""
        now = now_ms() if now is None else now
        with self._lock:
            live = self.membership.live(now)
            if not live:
                raise NoLiveSubscriber("no subscriber node is available; try again shortly")
            node = min(live, key=lambda n: self._rank(n))
            self._forget(client_id)  # a client re-registering frees its previous slot
            assigned_at = max(now, self._last_ms)  # keep the per-node lists sorted
            self._last_ms = assigned_at
            self._pending.setdefault(node.subscriber_id, []).append((assigned_at, client_id))
            self._client_node[client_id] = (node.subscriber_id, assigned_at)
            return Assignment(client_id, event_id, node, assigned_at)

    def _rank(self, node: NodeState) -> tuple[float, int, str]:
        connections = node.connections + self._pending_on(node)
        load = connections / node.capacity if node.capacity > 0 else float("inf")
        return (load, connections, node.subscriber_id)

    def release(self, client_id: str) -> bool:
        """The client gave its slot back; True when it was still pending."""
        with self._lock:
            return self._forget(client_id)

    def _forget(self, client_id: str) -> bool:
        previous = self._client_node.pop(client_id, None)
        if previous is None:
            return False
        node_id, assigned_at = previous
        entries = self._pending.get(node_id, [])
        index = bisect.bisect_left(entries, (assigned_at, client_id))
        if index < len(entries) and entries[index] == (assigned_at, client_id):
            del entries[index]
        return True

    def pending(self) -> dict[str, int]:
        """Pending viewers per node (for operators)."""
        with self._lock:
            counts = {}
            for node in self.membership.nodes():
                counts[node.subscriber_id] = self._pending_on(node)
            return {node_id: n for node_id, n in counts.items() if n}


# --------------------------------------------------------------------------- launching


class NodeLauncher(abc.ABC):
    """Starts and stops subscriber nodes and cluster publishers (processes, pods, ...)."""

    @abc.abstractmethod
    def start_node(self, subscriber_id: str, cluster: int) -> None:
        """Start a node with this id in this cluster."""

    @abc.abstractmethod
    def stop_node(self, subscriber_id: str, force: bool = False) -> None:
        """Ask the node to leave (it drains its viewers); ``force`` kills it."""

    @abc.abstractmethod
    def node_alive(self, subscriber_id: str) -> bool:
        """Whether the node this launcher started is still running."""

    @abc.abstractmethod
    def node_pid(self, subscriber_id: str) -> int | None:
        """The process id of a node this launcher started, when it has one."""

    @abc.abstractmethod
    def start_publisher(self, cluster: int) -> None:
        """Start the cluster publisher of ``cluster``."""

    @abc.abstractmethod
    def publisher_alive(self, cluster: int) -> bool:
        """Whether the cluster publisher of ``cluster`` is running."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop everything this launcher started."""


class LocalLauncher(NodeLauncher):
    """Runs subscriber nodes and cluster publishers as child processes of this interpreter.

    They are the ``emostream.fanout.node`` and ``emostream.fanout.publisher --cluster N``
    modules run with ``python -m``, in the manager's working directory.

    Children share the manager's output and get SIGTERM if the manager dies, so no
    orphan keeps a port or a heartbeat. Node ports follow ``subscriber_base_port``
    (cluster-major); base port 0 lets every node pick a free port.
    """

    def __init__(self, settings: Settings, python: str = sys.executable):
        self.settings = settings
        self.python = python
        self._nodes: dict[str, subprocess.Popen] = {}
        self._publishers: dict[int, subprocess.Popen] = {}
        self._leaving: list[tuple[subprocess.Popen, float]] = []  # asked to stop, since (monotonic)
        self._preexec = parent_death_signal()

    def node_port(self, subscriber_id: str) -> int:
        base = self.settings.subscriber_base_port
        cluster, index = parse_subscriber_id(subscriber_id)
        if base == 0 or index >= self.settings.max_subscribers_per_cluster:
            return 0
        return base + cluster * self.settings.max_subscribers_per_cluster + index

    def _spawn(self, module: str, *args: str) -> subprocess.Popen:
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen([self.python, "-m", module, *args], env=env, preexec_fn=self._preexec)

    def start_node(self, subscriber_id: str, cluster: int) -> None:
        port = self.node_port(subscriber_id)
        args = ("--id", subscriber_id, "--cluster", str(cluster), "--port", str(port))
        self._nodes[subscriber_id] = self._spawn("emostream.fanout.node", *args)
        log.info("started subscriber %s (pid %d)", subscriber_id, self._nodes[subscriber_id].pid)

    def stop_node(self, subscriber_id: str, force: bool = False) -> None:
        process = self._nodes.pop(subscriber_id, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if force else signal.SIGTERM)
        self._leaving.append((process, time.monotonic()))

    def node_alive(self, subscriber_id: str) -> bool:
        self._reap()
        process = self._nodes.get(subscriber_id)
        return process is not None and process.poll() is None

    def node_pid(self, subscriber_id: str) -> int | None:
        process = self._nodes.get(subscriber_id)
        return None if process is None else process.pid

    def start_publisher(self, cluster: int) -> None:
        self._publishers[cluster] = self._spawn("emostream.fanout.publisher", "--cluster", str(cluster))
        log.info("started cluster publisher %d (pid %d)", cluster, self._publishers[cluster].pid)

    def publisher_alive(self, cluster: int) -> bool:
        process = self._publishers.get(cluster)
        return process is not None and process.poll() is None

    def _reap(self) -> None:
        """Collect nodes that left; kill one that takes far too long to drain."""
        still = []
        for process, since in self._leaving:
            if process.poll() is not None:
                continue
            if time.monotonic() - since > LEAVE_TIMEOUT_SECONDS:
                log.warning("pid %d did not stop within %.0f s; killing it", process.pid, LEAVE_TIMEOUT_SECONDS)
                process.kill()
            still.append((process, since))
        self._leaving = still

    def shutdown(self, timeout: float = 15.0) -> None:
        processes = [*self._nodes.values(), *self._publishers.values(), *(p for p, _ in self._leaving)]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in time; killing it", process.pid)
                process.kill()
                process.wait(5)
        self._nodes.clear()
        self._publishers.clear()
        self._leaving.clear()


# --------------------------------------------------------------------------- the manager


class SubscriberManager:
    """Reconciles the running nodes with the configured topology and the load."""

    def __init__(
        self,
        settings: Settings,
        membership: Membership,
        launcher: NodeLauncher,
        tombstone: Callable[[str], None] | None = None,
        clock: Callable[[], int] = now_ms,
    ):
        self.settings = settings
        self.membership = membership
        self.launcher = launcher
        self.tombstone = tombstone
        self.clock = clock
        self._launched: dict[str, int] = {}  # subscriber_id -> launched_at (ms), nodes we run
        self._ever_launched: set[str] = set()
        self._publishers_started: set[int] = set()
        self._idle_since: dict[str, int] = {}
        self._at_maximum: set[int] = set()
        self._stop = threading.Event()
        self.running = False
        self.registry = CollectorRegistry()
        self.m_scale_ups = Counter(
            "emostream_manager_scale_ups",
            "Nodes started because a cluster was full.",
            ["cluster"],
            registry=self.registry,
        )
        self.m_scale_downs = Counter(
            "emostream_manager_scale_downs", "Idle extra nodes retired.", ["cluster"], registry=self.registry
        )
        self.m_reconciles = Counter(
            "emostream_manager_reconciles",
            "Reconcile steps done (each decides on scaling and restarts).",
            registry=self.registry,
        )
        self.m_restarts = Counter(
            "emostream_manager_restarts",
            "Nodes and publishers restarted after they died.",
            ["kind"],
            registry=self.registry,
        )
        live_nodes = Gauge(
            "emostream_manager_live_nodes", "Live subscriber nodes.", ["cluster"], registry=self.registry
        )
        for cluster in range(settings.clusters):
            live_nodes.labels(str(cluster)).set_function(
                lambda cluster=cluster: sum(1 for n in self.membership.live() if n.cluster == cluster)
            )

    # ----------------------------------------------------------------- one step

    def reconcile(self) -> None:
        """Look at the membership and the processes once, and act."""
        now = self.clock()
        self._reap_dead(now)
        self._keep_publishers()
        live = {node.subscriber_id: node for node in self.membership.live(now)}
        for cluster in range(self.settings.clusters):
            self._keep_initial_nodes(cluster, live, now)
            members = [node for node in live.values() if node.cluster == cluster]
            self._scale_up(cluster, members, live, now)
            self._scale_down(cluster, members, now)

    def _reap_dead(self, now: int) -> None:
        for node_id in list(self._launched):
            if self.launcher.node_alive(node_id):
                if self._hung(node_id, now):
                    self.launcher.stop_node(node_id, force=True)
                    self._forget(node_id, pid=None)
                continue
            log.warning("subscriber %s exited", node_id)
            self._forget(node_id, pid=self.launcher.node_pid(node_id))

    def _hung(self, node_id: str, now: int) -> bool:
        """A process that never came up, or has said nothing for far longer than an overload explains.

        A late heartbeat alone is not enough: a node starved of CPU misses a few, and
        killing it would throw all its viewers onto the others, which are just as busy.
        """
        record = self.membership.get(node_id)
        pid = self.launcher.node_pid(node_id)
        if record is None or (pid is not None and record.pid not in (None, pid)):
            silent_ms, limit_s = now - self._launched[node_id], STARTUP_GRACE_SECONDS  # not heard from yet
        else:
            # Silence while Kafka answered: a Kafka outage silences every node and proves nothing.
            silent_ms, limit_s = self.membership.quiet_ms(record, now), HUNG_SILENCE_SECONDS
        if silent_ms <= limit_s * 1000:
            return False
        log.warning("subscriber %s has been running silent for %.0f s; killing it", node_id, silent_ms / 1000)
        return True

    def _forget(self, node_id: str, pid: int | None) -> None:
        """Drop a dead node at once instead of waiting for its heartbeat to expire."""
        self._launched.pop(node_id, None)
        self._idle_since.pop(node_id, None)
        record = self.membership.get(node_id)
        if record is not None and (pid is None or record.pid in (None, pid)):
            self.membership.remove(node_id)
            if self.tombstone is not None:
                self.tombstone(node_id)

    def _keep_publishers(self) -> None:
        for cluster in range(self.settings.clusters):
            if not self.launcher.publisher_alive(cluster):
                if cluster in self._publishers_started:
                    log.warning("cluster publisher %d died; restarting it", cluster)
                    self.m_restarts.labels("publisher").inc()
                self.launcher.start_publisher(cluster)
                self._publishers_started.add(cluster)

    def _keep_initial_nodes(self, cluster: int, live: dict[str, NodeState], now: int) -> None:
        for index in range(self.settings.subscribers_per_cluster):
            node_id = subscriber_id(cluster, index)
            # A live node someone else runs (another manager, an operator) is adopted, not duplicated.
            if node_id in self._launched or node_id in live:
                continue
            if node_id in self._ever_launched:
                log.warning("restarting subscriber %s", node_id)
                self.m_restarts.labels("subscriber").inc()
            self._launch(node_id, cluster, now)

    def _launch(self, node_id: str, cluster: int, now: int) -> None:
        self.launcher.start_node(node_id, cluster)
        self._launched[node_id] = now
        self._ever_launched.add(node_id)

    def _starting(self, cluster: int, live: dict[str, NodeState]) -> list[str]:
        return [
            node_id for node_id in self._launched if parse_subscriber_id(node_id)[0] == cluster and node_id not in live
        ]

    def _full(self, node: NodeState) -> bool:
        return node.connections > self.settings.scale_up_ratio * node.capacity

    def _scale_up(self, cluster: int, members: list[NodeState], live: dict[str, NodeState], now: int) -> None:
        if not members or self._starting(cluster, live):
            return  # wait for the node on its way before judging again
        if not all(self._full(node) for node in members):
            self._at_maximum.discard(cluster)
            return
        if len(members) >= self.settings.max_subscribers_per_cluster:
            if cluster not in self._at_maximum:  # once per episode, not every step
                log.warning("cluster %d is full and at its maximum of %d nodes", cluster, len(members))
                self._at_maximum.add(cluster)
            return
        self._at_maximum.discard(cluster)
        taken = {parse_subscriber_id(n)[1] for n in [*self._launched, *live] if parse_subscriber_id(n)[0] == cluster}
        index = next(i for i in range(len(taken) + 1) if i not in taken)
        node_id = subscriber_id(cluster, index)
        load = ", ".join(f"{n.subscriber_id} {n.connections}/{n.capacity}" for n in members)
        log.info(
            "cluster %d is above %.0f%% everywhere (%s); starting %s",
            cluster,
            self.settings.scale_up_ratio * 100,
            load,
            node_id,
        )
        self.m_scale_ups.labels(str(cluster)).inc()
        self._launch(node_id, cluster, now)

    def _scale_down(self, cluster: int, members: list[NodeState], now: int) -> None:
        extras = sorted(
            (n for n in members if n.subscriber_id in self._launched and self._is_extra(n)),
            key=lambda n: parse_subscriber_id(n.subscriber_id)[1],
            reverse=True,
        )
        for node in extras:
            if node.connections == 0:
                self._idle_since.setdefault(node.subscriber_id, now)
            else:
                self._idle_since.pop(node.subscriber_id, None)
        if len(members) <= self.settings.subscribers_per_cluster:
            return
        idle_ms = self.settings.scale_down_idle_seconds * 1000
        for node in extras:
            since = self._idle_since.get(node.subscriber_id)
            if since is None or now - since < idle_ms:
                continue
            others = [n for n in members if n.subscriber_id != node.subscriber_id]
            if all(self._full(n) for n in others):
                return  # it is the only room left; retiring it would start another at once
            log.info("retiring %s: idle for %.0f s", node.subscriber_id, (now - since) / 1000)
            self.launcher.stop_node(node.subscriber_id)
            self._launched.pop(node.subscriber_id, None)
            self._idle_since.pop(node.subscriber_id, None)
            self.m_scale_downs.labels(str(cluster)).inc()
            return  # one at a time; the next step sees the new membership

    def _is_extra(self, node: NodeState) -> bool:
        return parse_subscriber_id(node.subscriber_id)[1] >= self.settings.subscribers_per_cluster

    # ----------------------------------------------------------------- running

    def health(self) -> Health:
        live = self.membership.live()
        expected = self.settings.clusters * self.settings.subscribers_per_cluster
        return Health.of(
            self.running,
            STARTING,
            live_nodes=len(live),
            expected_nodes=expected,
            topology_complete=len(live) >= expected,
            managed_nodes=sorted(self._launched),
        )

    def request_stop(self) -> None:
        self._stop.set()

    def run(self, interval: float | None = None) -> None:
        """Reconcile until :meth:`request_stop`."""
        interval = interval if interval is not None else min(1.0, max(0.1, self.settings.heartbeat_seconds / 2))
        self.running = True
        try:
            while not self._stop.is_set():
                try:
                    self.reconcile()
                    self.m_reconciles.inc()
                except Exception:  # one bad step must not leave the topology unmanaged
                    log.exception("reconcile failed")
                self._stop.wait(interval)
        finally:
            self.running = False


def serve(settings: Settings) -> None:
    """``python3 subscriber_manager.py``: bring up clusters × subscribers and keep them alive."""
    from emostream import kafka
    from emostream.fanout.membership import MembershipWatcher
    from emostream.fanout.ops import ensure_fanout_topics, raise_open_files_limit
    from emostream.http import OpsServer

    raise_open_files_limit()
    ensure_fanout_topics(settings)
    watcher = MembershipWatcher(settings).start()
    if not watcher.wait_ready(60):
        raise SystemExit(f"could not read the membership topic {settings.membership_topic} within 60 s")
    producer = kafka.producer(settings, linger_ms=0)

    def tombstone(node_id: str) -> None:
        producer.send(settings.membership_topic, key=node_id, value=None)
        producer.flush(timeout=10)

    launcher = LocalLauncher(settings)
    manager = SubscriberManager(settings, watcher.membership, launcher, tombstone=tombstone)
    ops = OpsServer("subscriber-manager", settings.ops_host, settings.manager_port, manager.health, manager.registry)
    ops.start()
    log.info(
        "subscriber manager: %d cluster(s) x %d node(s); /healthz and /metrics at %s",
        settings.clusters,
        settings.subscribers_per_cluster,
        ops.url,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: manager.request_stop())
    try:
        manager.run()
    finally:
        log.info("stopping the topology")
        launcher.shutdown()
        producer.close(timeout=5)
        watcher.stop()
        ops.stop()


def main(argv: list[str] | None = None) -> int:
    """``emostream-manager``: bring up the topology and keep it alive until SIGTERM or Ctrl-C."""
    import argparse

    from emostream import logs

    argparse.ArgumentParser(
        description="EmoStream subscriber manager: clusters x subscriber nodes and a cluster publisher each, "
        "restarted when they die, scaled with the load"
    ).parse_args(argv)
    settings = Settings.from_env().for_kafka_service("manager")
    logs.configure(settings)
    serve(settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
