"""Who the live subscriber nodes are, rebuilt from their heartbeats.

Every node writes a heartbeat to the compacted membership topic (key = subscriber_id)
every ``heartbeat_seconds`` and a tombstone when it stops cleanly. Whoever needs the
membership (registration, the manager, the main publisher) reads that topic from the
beginning, so a restarted service knows the nodes at once: Kafka is the only truth.
A node silent for longer than ``heartbeat_expiry_seconds`` is dead; silence counts only while
the topic answered its reader: while Kafka is away no heartbeat can arrive, and the last view
stands (see :meth:`Membership.quiet_ms`).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from emostream import kafka
from emostream.settings import Settings
from emostream.wire import InvalidMessage, now_ms

log = logging.getLogger(__name__)

SUBSCRIBER_ID_RE = re.compile(r"c([0-9]{1,4})-s([0-9]{1,4})")
UP = "up"
STOPPING = "stopping"
# A watcher that read nothing for this long asks the brokers whether the topic still answers.
PROBE_QUIET_MS = 1_000


def subscriber_id(cluster: int, index: int) -> str:
    """The id of the ``index``-th node of ``cluster``, e.g. ``c0-s1``."""
    return f"c{cluster}-s{index}"


def parse_subscriber_id(value: str) -> tuple[int, int]:
    """``(cluster, index)`` of an id like ``c0-s1``; ValueError for anything else."""
    match = SUBSCRIBER_ID_RE.fullmatch(value)
    if not match:
        raise ValueError(f"subscriber id {value!r} is not like c0-s1")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class NodeState:
    """One subscriber node as its last heartbeat describes it."""

    subscriber_id: str
    cluster: int
    url: str
    connections: int
    capacity: int
    heartbeat_at: int  # epoch ms, node clock
    status: str = UP
    events: Mapping[str, int] = field(default_factory=dict)
    started_at: int = 0
    pid: int | None = None

    @property
    def load(self) -> float:
        return self.connections / self.capacity if self.capacity > 0 else float("inf")

    def record(self) -> dict[str, Any]:
        """The heartbeat as written to the membership topic."""
        return {
            "subscriber_id": self.subscriber_id,
            "cluster": self.cluster,
            "url": self.url,
            "connections": self.connections,
            "capacity": self.capacity,
            "events": dict(self.events),
            "heartbeat_at": self.heartbeat_at,
            "started_at": self.started_at,
            "status": self.status,
            "pid": self.pid,
        }

    @classmethod
    def from_record(cls, value: Any) -> NodeState:
        """Parse a heartbeat; :class:`InvalidMessage` when it breaks the format."""
        if not isinstance(value, Mapping):
            raise InvalidMessage("a heartbeat must be a JSON object")
        try:
            events = value.get("events") or {}
            if not isinstance(events, Mapping):
                raise InvalidMessage("heartbeat events must be an object")
            state = cls(
                subscriber_id=str(value["subscriber_id"]),
                cluster=_int(value["cluster"]),
                url=str(value["url"]),
                connections=_int(value["connections"]),
                capacity=_int(value["capacity"]),
                heartbeat_at=_int(value["heartbeat_at"]),
                status=str(value.get("status", UP)),
                events={str(event): _int(count) for event, count in events.items()},
                started_at=_int(value.get("started_at", 0)),
                pid=None if value.get("pid") is None else _int(value["pid"]),
            )
        except KeyError as missing:
            raise InvalidMessage(f"heartbeat is missing {missing}") from None
        return state


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMessage(f"{value!r} is not an integer")
    return value


class Membership:
    """The latest heartbeat of every node, and which of them are alive.

    Thread-safe; ``now`` arguments (epoch ms) let tests and callers pin the clock.
    """

    def __init__(self, expiry_seconds: float):
        self.expiry_ms = int(expiry_seconds * 1000)
        self._nodes: dict[str, NodeState] = {}
        self._lock = threading.Lock()
        self.version = 0  # bumps on every change, so callers can cache derived views
        # Our clock: when the topic last answered its reader (None: nobody says, e.g. in a test),
        # and the last spells it did not, each longer than the half expiry the watcher allows.
        self.unheard_after_ms = self.expiry_ms // 2
        self._heard_at: int | None = None
        self._outages: deque[tuple[int, int]] = deque(maxlen=8)

    def apply(self, key: str | None, value: Any) -> NodeState | None:
        """Apply one record of the membership topic; a tombstone removes the node."""
        if not key:
            return None
        if value is None:
            with self._lock:
                removed = self._nodes.pop(key, None)
                self.version += 1
            if removed is not None:
                log.info("subscriber %s left the membership", key)
            return None
        try:
            state = NodeState.from_record(value)
        except InvalidMessage as error:
            log.warning("ignoring a bad heartbeat for %s: %s", key, error)
            return None
        if state.subscriber_id != key:
            log.warning("ignoring a heartbeat keyed %s that names %s", key, state.subscriber_id)
            return None
        with self._lock:
            previous = self._nodes.get(key)
            # A late duplicate must not roll a node back in time.
            if previous is not None and previous.heartbeat_at > state.heartbeat_at:
                return previous
            self._nodes[key] = state
            self.version += 1
        if previous is None or previous.status != state.status or previous.pid != state.pid:
            log.info("subscriber %s is %s at %s (pid %s)", key, state.status, state.url, state.pid)
        return state

    def remove(self, subscriber_id: str) -> None:
        self.apply(subscriber_id, None)

    def get(self, subscriber_id: str) -> NodeState | None:
        with self._lock:
            return self._nodes.get(subscriber_id)

    def nodes(self) -> list[NodeState]:
        """Every node with a heartbeat on record, alive or not, by id."""
        with self._lock:
            return sorted(self._nodes.values(), key=_order)

    @property
    def heard_at(self) -> int | None:
        """When (epoch ms) the topic last answered its reader; None before any word of it."""
        with self._lock:
            return self._heard_at

    def heard(self, at: int | None = None) -> None:
        """The topic answered its reader at ``at`` (records read, or its brokers asked)."""
        at = now_ms() if at is None else at
        with self._lock:
            if self._heard_at is not None and at - self._heard_at > self.unheard_after_ms:
                self._outages.append((self._heard_at, at))
                log.info("the membership topic answers again after %.1f s", (at - self._heard_at) / 1000)
            self._heard_at = at if self._heard_at is None else max(self._heard_at, at)

    def quiet_ms(self, node: NodeState, now: int | None = None) -> int:
        """How long ``node`` has been silent while the membership topic answered.

        A whole-topic silence (Kafka away) is no news of any node: while it lasts every node is
        judged as of the last answer, and afterwards the silence does not count, so each node
        has a whole expiry from Kafka's return to be heard again (each reconnects on its own
        back-off). Without a watcher's word (:meth:`heard` never called) this is the clock's age
        of the heartbeat.
        """
        now = now_ms() if now is None else now
        with self._lock:
            heard_at, outages = self._heard_at, tuple(self._outages)
        until = heard_at if heard_at is not None and now - heard_at > self.unheard_after_ms else now
        quiet = until - node.heartbeat_at
        for start, end in outages:
            quiet -= max(0, min(end, until) - max(start, node.heartbeat_at))
        return quiet

    def is_alive(self, node: NodeState, now: int | None = None) -> bool:
        """Heard from within the expiry (:meth:`quiet_ms`) and not stopping."""
        return node.status == UP and self.quiet_ms(node, now) <= self.expiry_ms

    def live(self, now: int | None = None) -> list[NodeState]:
        """The nodes that may take viewers now."""
        now = now_ms() if now is None else now
        return [node for node in self.nodes() if self.is_alive(node, now)]


def _order(node: NodeState) -> tuple[int, int, str]:
    try:
        cluster, index = parse_subscriber_id(node.subscriber_id)
    except ValueError:
        return (node.cluster, 1 << 30, node.subscriber_id)
    return (cluster, index, node.subscriber_id)


class MembershipWatcher:
    """Keeps a :class:`Membership` up to date from the membership topic, in a background thread.

    It reads the topic from the beginning; ``ready`` turns true once it has caught up
    with the end of the topic as it was at start, so a freshly started service never
    acts on half a membership.
    """

    def __init__(
        self,
        settings: Settings,
        membership: Membership | None = None,
        on_change: Callable[[str, NodeState | None], None] | None = None,
    ):
        self.settings = settings
        self.membership = membership or Membership(settings.heartbeat_expiry_seconds)
        self.on_change = on_change
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> MembershipWatcher:
        self._thread = threading.Thread(target=self._run, name="membership-watcher", daemon=True)
        self._thread.start()
        return self

    def wait_ready(self, timeout: float = 30.0) -> bool:
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with kafka.translate_errors():
                    self._follow()
            except kafka.KafkaError as error:  # the broker went away: start over from the beginning
                log.warning("membership consumer failed (%s); reconnecting", error)
                self._stop.wait(1.0)
            except Exception as error:  # a bug: keep the thread alive but say it loudly
                self.error = error
                log.exception("membership watcher crashed; restarting it")
                self._stop.wait(1.0)

    def _follow(self) -> None:
        topic = self.settings.membership_topic
        consumer = kafka.consumer(
            self.settings, group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=kafka.LONG_FETCH_WAIT_MS
        )
        try:
            backlog_end = kafka.assign_at_beginning(consumer, topic)
            self.membership.heard()
            while not self._stop.is_set():
                # Before a poll too: an empty topic is loaded at once, not after a long poll.
                if not self._ready.is_set() and kafka.caught_up(consumer, backlog_end):
                    self._ready.set()
                    log.info("membership loaded: %d node(s) on record", len(self.membership.nodes()))
                batch = kafka.poll(consumer, kafka.LONG_POLL_MS)
                for records in batch.values():
                    for record in records:
                        state = self.membership.apply(record.key, record.value)
                        if self.on_change is not None:
                            self.on_change(record.key, state)
                # Nodes beat every few seconds: a longer quiet spell may be Kafka away, so ask.
                quiet_for = now_ms() - (self.membership.heard_at or 0)
                if batch or (quiet_for >= PROBE_QUIET_MS and kafka.answers(consumer)):
                    self.membership.heard()
        finally:
            consumer.close()


def summary(nodes: Iterable[NodeState], membership: Membership, now: int | None = None) -> dict[str, Any]:
    """The operator's view of the membership: every node, with liveness and load per cluster."""
    now = now_ms() if now is None else now
    listed = []
    clusters: dict[int, dict[str, Any]] = {}
    for node in nodes:
        alive = membership.is_alive(node, now)
        listed.append(
            node.record() | {"alive": alive, "load": round(node.load, 4), "last_seen_ms": now - node.heartbeat_at}
        )
        cluster = clusters.setdefault(node.cluster, {"nodes": 0, "live_nodes": 0, "connections": 0, "capacity": 0})
        cluster["nodes"] += 1
        if alive:
            cluster["live_nodes"] += 1
            cluster["connections"] += node.connections
            cluster["capacity"] += node.capacity
    return {
        "subscribers": listed,
        "clusters": {str(c): clusters[c] for c in sorted(clusters)},
        "live_nodes": sum(c["live_nodes"] for c in clusters.values()),
        "connections": sum(c["connections"] for c in clusters.values()),
    }
