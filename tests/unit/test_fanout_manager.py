"""Assignment and scaling logic of the subscriber manager, against a fake launcher."""

from __future__ import annotations

from collections import Counter

import pytest

from emostream.fanout.manager import LoadBalancer, NodeLauncher, NoLiveSubscriber, SubscriberManager
from emostream.fanout.membership import STOPPING, Membership, NodeState, parse_subscriber_id
from emostream.settings import Settings

NOW = 1_700_000_000_000


def put(members: Membership, node_id: str, at: int = NOW, connections: int = 0, capacity: int = 100, **fields):
    cluster = parse_subscriber_id(node_id)[0]
    state = NodeState(node_id, cluster, f"http://n/{node_id}", connections, capacity, at, **fields)
    members.apply(node_id, state.record())


# --------------------------------------------------------------------------- LoadBalancer


def test_a_burst_of_registrations_spreads_evenly_before_any_heartbeat_shows_it():
    members = Membership(expiry_seconds=6)
    for cluster in range(3):
        for index in range(3):
            put(members, f"c{cluster}-s{index}")
    balancer = LoadBalancer(members, grace_seconds=2)

    chosen = Counter(balancer.assign(f"v{i}", "live", now=NOW + i).node.subscriber_id for i in range(90))

    assert sorted(chosen.values()) == [10] * 9


def test_the_least_loaded_node_relative_to_capacity_gets_the_viewer():
    members = Membership(expiry_seconds=6)
    put(members, "c0-s0", connections=50, capacity=100)
    put(members, "c0-s1", connections=150, capacity=1000)
    put(members, "c1-s0", connections=10, capacity=10)

    assert LoadBalancer(members, 2).assign("v", "live", now=NOW).node.subscriber_id == "c0-s1"


def test_dead_and_stopping_nodes_never_get_viewers():
    members = Membership(expiry_seconds=6)
    put(members, "c0-s0", at=NOW - 10_000)  # expired
    put(members, "c0-s1", status=STOPPING)
    put(members, "c0-s2", connections=99)

    chosen = {LoadBalancer(members, 2).assign(f"v{i}", "live", now=NOW).node.subscriber_id for i in range(20)}

    assert chosen == {"c0-s2"}


def test_no_live_node_means_no_assignment():
    members = Membership(expiry_seconds=6)
    put(members, "c0-s0", at=NOW - 10_000)

    with pytest.raises(NoLiveSubscriber):
        LoadBalancer(members, 2).assign("v", "live", now=NOW)


def test_pending_viewers_stop_counting_once_a_later_heartbeat_includes_them():
    members = Membership(expiry_seconds=6)
    put(members, "c0-s0", at=NOW)
    balancer = LoadBalancer(members, grace_seconds=2)
    for i in range(5):
        balancer.assign(f"v{i}", "live", now=NOW + 100)
    assert balancer.pending() == {"c0-s0": 5}

    put(members, "c0-s0", at=NOW + 1000, connections=5)  # within the grace: may not include them yet
    assert balancer.pending() == {"c0-s0": 5}

    put(members, "c0-s0", at=NOW + 2200, connections=5)  # a heartbeat well after: they are in it
    assert balancer.pending() == {}


def test_releasing_or_re_registering_a_client_frees_its_pending_slot():
    members = Membership(expiry_seconds=6)
    put(members, "c0-s0")
    put(members, "c0-s1")
    balancer = LoadBalancer(members, grace_seconds=2)
    first = balancer.assign("a", "live", now=NOW).node.subscriber_id
    balancer.assign("b", "live", now=NOW)

    assert balancer.release("a") is True
    assert balancer.release("a") is False
    assert first not in balancer.pending()

    balancer.assign("b", "live", now=NOW + 1)  # b again: only one slot for b
    assert sum(balancer.pending().values()) == 1


# --------------------------------------------------------------------------- SubscriberManager


class FakeLauncher(NodeLauncher):
    """Records what the manager asks for; tests make nodes heartbeat or die by hand."""

    def __init__(self):
        self.nodes: dict[str, int] = {}  # running node -> pid
        self.pids: dict[str, int] = {}  # every node ever started -> its last pid
        self.publishers: set[int] = set()
        self.started: list[str] = []
        self.stopped: list[tuple[str, bool]] = []
        self.publishers_started: list[int] = []
        self._next_pid = 100

    def start_node(self, subscriber_id, cluster):
        self._next_pid += 1
        self.nodes[subscriber_id] = self.pids[subscriber_id] = self._next_pid
        self.started.append(subscriber_id)

    def stop_node(self, subscriber_id, force=False):
        self.nodes.pop(subscriber_id, None)
        self.stopped.append((subscriber_id, force))

    def node_alive(self, subscriber_id):
        return subscriber_id in self.nodes

    def node_pid(self, subscriber_id):
        return self.pids.get(subscriber_id)

    def start_publisher(self, cluster):
        self.publishers.add(cluster)
        self.publishers_started.append(cluster)

    def publisher_alive(self, cluster):
        return cluster in self.publishers

    def shutdown(self):
        self.nodes.clear()
        self.publishers.clear()


class Clock:
    def __init__(self):
        self.now = NOW

    def __call__(self):
        return self.now


@pytest.fixture
def topology():
    settings = Settings.from_env(
        environ={},
        clusters=2,
        subscribers_per_cluster=2,
        max_subscribers_per_cluster=3,
        subscriber_capacity=10,
        scale_up_ratio=0.8,
        scale_down_idle_seconds=30,
        heartbeat_seconds=1,
        heartbeat_expiry_seconds=3,
    )
    members = Membership(settings.heartbeat_expiry_seconds)
    launcher = FakeLauncher()
    clock = Clock()
    tombstones: list[str] = []
    manager = SubscriberManager(settings, members, launcher, tombstone=tombstones.append, clock=clock)
    return settings, members, launcher, clock, manager, tombstones


def beat(members, launcher, clock, connections=None):
    """Every running node heartbeats now, with the given connections (default 0)."""
    for node_id, pid in launcher.nodes.items():
        put(members, node_id, at=clock.now, connections=(connections or {}).get(node_id, 0), capacity=10, pid=pid)


def test_the_manager_starts_every_initial_node_and_one_publisher_per_cluster(topology):
    settings, members, launcher, clock, manager, _ = topology

    manager.reconcile()

    assert sorted(launcher.started) == ["c0-s0", "c0-s1", "c1-s0", "c1-s1"]
    assert sorted(launcher.publishers_started) == [0, 1]
    beat(members, launcher, clock)
    manager.reconcile()
    assert len(launcher.started) == 4  # nothing more once they are up


def test_a_crashed_initial_node_leaves_the_membership_at_once_and_is_restarted(topology):
    settings, members, launcher, clock, manager, tombstones = topology
    manager.reconcile()
    beat(members, launcher, clock)

    del launcher.nodes["c0-s1"]  # the process died
    clock.now += 100
    manager.reconcile()

    assert tombstones == ["c0-s1"]
    assert launcher.started.count("c0-s1") == 2
    assert members.get("c0-s1") is None


def test_a_crashed_cluster_publisher_is_restarted(topology):
    _, members, launcher, clock, manager, _ = topology
    manager.reconcile()
    launcher.publishers.discard(1)

    manager.reconcile()

    assert launcher.publishers_started.count(1) == 2


def test_a_live_node_run_by_someone_else_is_adopted_not_duplicated(topology):
    _, members, launcher, clock, manager, _ = topology
    put(members, "c0-s0", at=clock.now, capacity=10)

    manager.reconcile()

    assert "c0-s0" not in launcher.started


def test_a_cluster_gets_another_node_when_every_node_is_above_the_threshold(topology):
    _, members, launcher, clock, manager, _ = topology
    manager.reconcile()
    beat(members, launcher, clock, {"c0-s0": 9, "c0-s1": 9, "c1-s0": 9, "c1-s1": 8})

    manager.reconcile()

    assert launcher.started[4:] == ["c0-s2"]  # c1-s1 is at the threshold, not above it


def test_no_second_scale_up_while_the_new_node_is_on_its_way_nor_beyond_the_maximum(topology):
    _, members, launcher, clock, manager, _ = topology
    manager.reconcile()
    full = {"c0-s0": 9, "c0-s1": 9}
    beat(members, launcher, clock, full)
    manager.reconcile()
    manager.reconcile()  # c0-s2 started but not heartbeating yet
    assert launcher.started.count("c0-s2") == 1

    clock.now += 500
    beat(members, launcher, clock, full | {"c0-s2": 9})
    manager.reconcile()

    assert [n for n in launcher.started if n.startswith("c0-")] == ["c0-s0", "c0-s1", "c0-s2"]


def test_an_extra_node_idle_for_the_idle_period_is_retired_but_never_the_minimum(topology):
    settings, members, launcher, clock, manager, _ = topology
    manager.reconcile()
    beat(members, launcher, clock, {"c0-s0": 9, "c0-s1": 9})
    manager.reconcile()  # starts c0-s2
    clock.now += 500
    beat(members, launcher, clock, {"c0-s0": 5, "c0-s1": 5})  # load fell; c0-s2 idle from here
    manager.reconcile()

    clock.now += int(settings.scale_down_idle_seconds * 1000) - 1000
    beat(members, launcher, clock, {"c0-s0": 5, "c0-s1": 5})
    manager.reconcile()
    assert launcher.stopped == []

    clock.now += 2000
    beat(members, launcher, clock, {"c0-s0": 5, "c0-s1": 5})
    manager.reconcile()
    assert launcher.stopped == [("c0-s2", False)]

    clock.now += int(settings.scale_down_idle_seconds * 1000) * 2
    beat(members, launcher, clock)  # everything idle for long
    manager.reconcile()
    assert launcher.stopped == [("c0-s2", False)]  # the initial nodes stay


def test_an_idle_extra_node_is_kept_when_the_others_are_full(topology):
    settings, members, launcher, clock, manager, _ = topology
    manager.reconcile()
    beat(members, launcher, clock, {"c0-s0": 9, "c0-s1": 9})
    manager.reconcile()  # starts c0-s2
    for _ in range(3):
        clock.now += int(settings.scale_down_idle_seconds * 1000)
        beat(members, launcher, clock, {"c0-s0": 9, "c0-s1": 9})
        manager.reconcile()

    assert launcher.stopped == []


def test_a_node_that_runs_but_never_heartbeats_is_killed_and_restarted(topology):
    _, members, launcher, clock, manager, _ = topology
    manager.reconcile()
    clock.now += 31_000  # past the startup grace without a heartbeat

    manager.reconcile()
    assert ("c0-s0", True) in launcher.stopped
    manager.reconcile()
    assert launcher.started.count("c0-s0") == 2


def test_a_node_whose_heartbeats_are_late_is_left_alone_until_it_is_clearly_hung(topology):
    settings, members, launcher, clock, manager, _ = topology
    manager.reconcile()
    beat(members, launcher, clock)
    pid = launcher.nodes["c0-s0"]

    clock.now += 20_000  # far past the expiry: out of the membership, but maybe just starved of CPU
    manager.reconcile()
    assert launcher.nodes.get("c0-s0") == pid and launcher.stopped == []

    clock.now += 45_000  # over a minute of silence: hung
    manager.reconcile()
    assert ("c0-s0", True) in launcher.stopped


def test_no_node_is_killed_as_hung_for_the_silence_of_a_kafka_outage(topology):
    settings, members, launcher, clock, manager, _ = topology
    manager.reconcile()
    beat(members, launcher, clock)
    members.heard(clock.now)
    pids = dict(launcher.nodes)

    clock.now += 90_000  # every broker away for a minute and a half: no heartbeat can arrive
    manager.reconcile()
    members.heard(clock.now)  # back
    clock.now += 1_000
    manager.reconcile()
    assert launcher.nodes == pids and launcher.stopped == []
