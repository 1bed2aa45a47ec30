"""State on join and recovery: what a subscriber node sends a viewer before its live updates.

When a node admits a viewer it works out the first window to send: the ``since`` of the
viewer's auth (clamped to the horizon, ``EMOSTREAM_VIEWER_HISTORY_SECONDS``, and to the
current window), or the horizon for a plain join. If the node's history of the event is
known complete from that window on it sends the held records at once, oldest first, and
puts the viewer in the event's room, where live records reach it. If not (the node's
first viewer of the event, or the history is too short), it first reads the event back
from ``aggregated_emoji_topic``.

Ordering: a viewer never receives an older record of a window after a newer one.
Every send passes through the history (:class:`~emostream.fanout.history.ViewerHistory`)
under its lock:

* a live record from the cluster's channel is offered to the history and delivered to the
  room only if it is newer than the one held for its window (or not held at all);
* a record read back is offered the same way and, when newer, emitted to the room;
* a joiner is sent the held records and enters the room in one locked step.

So what the room receives for a window is the succession of versions the history held,
and versions only grow; a joiner gets the version held at that step and, from the room,
only newer ones after it. A live record older than one read back (the read-back reads
the topic's head, the live path lags behind it) is dropped, not delivered out of order.
Under gevent none of these steps yields, so the lock is never contended; it keeps the
argument true if the node ever runs on real threads.

Read-back, bounded: one reader seeks the aggregate topic to the horizon (minus a margin
for clock skew between the processor and this node) by timestamp, takes the end offsets
at that moment and reads to them, keeping only the newest record per window of the events
it was asked for; values of other events are never decoded. It stops at
``EMOSTREAM_VIEWER_READBACK_MAX_RECORDS`` records or ``..._MAX_SECONDS`` seconds, and then
serves what it found without calling the history complete. The reader's consumer is kept
between read-backs (opening one costs a bootstrap); a failed one is replaced.

Single flight: one read-back runs at a time per node. Every viewer whose event is being
read waits for that read-back; viewers of other events (or that come once it has passed
the end) wait for the next one, which reads all their events in one pass. A node death
that sends thousands of viewers here costs one or two reads of the topic, not thousands.
Waiters are sent their windows together, each record encoded once per group.

The bridge: when a node's first viewer of an event arrives, the cluster's publisher may
start routing the event here only after the read-back took its end offsets; a record
written in between would reach neither. So the reader follows the topic past its end
until it reads a record that also arrived live (the topic has one partition and the main
publisher routes in its order, so everything after that record comes live), or for at
most ``BRIDGE_SECONDS``. Viewers are not kept waiting for this: they were sent their
windows at the end offsets, and what the bridge finds reaches them through the room.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from emostream.fanout.history import ViewerHistory, version
from emostream.kafka.readback import StoredRecord, TopicReadBack
from emostream.settings import Settings
from emostream.wire import EMOJI_UPDATE, InvalidMessage, validate_aggregate

log = logging.getLogger(__name__)

NAMESPACE = "/"
# Records of a window are written after it starts by the processor's clock; read from this much
# earlier by ours.
READBACK_SKEW_MS = 5_000
# How long a reader follows the topic past its end offsets for the live stream to overlap it.
BRIDGE_SECONDS = 5.0
# After a read-back that failed or stopped at a bound, viewers of the event are served what the
# node holds for this long instead of reading again.
RETRY_SECONDS = 10.0
# Live and read records remembered per event while bridging (a few seconds of one event's records).
BRIDGE_MEMORY = 1024
# A connect handler that has not finished when the history would be sent: look again this often.
PENDING_CONNECT_RETRY_SECONDS = 0.01
PENDING_CONNECT_TRIES = 500
PRUNE_SECONDS = 5.0
# Short polls while following, so viewers waiting for the next read-back do not wait on this one.
FOLLOW_POLL_MS = 50


@dataclass(frozen=True, slots=True)
class Arrival:
    """A viewer admitted and not yet sent its history: its Socket.IO sid, event and first window."""

    sid: str
    event_id: str
    start: int
    tries: int = 0


def identity(record: dict[str, Any]) -> tuple[int, int, Any]:
    """What tells one record of an event from another: the same window, count and emit time."""
    return record["window_start"], record["total"], record.get("emitted_at")


class Bridge:
    """Events whose live stream may have started after the read-back took the topic's end.

    An event leaves :attr:`open` once a record was both read back and received live.
    """

    def __init__(self, events: set[str]):
        self.open = set(events)
        self._read: dict[str, set[tuple]] = {event_id: set() for event_id in events}
        self._live: dict[str, set[tuple]] = {event_id: set() for event_id in events}

    def read(self, record: dict[str, Any]) -> None:
        self._see(record, self._read, self._live)

    def live(self, record: dict[str, Any]) -> None:
        self._see(record, self._live, self._read)

    def _see(self, record: dict[str, Any], mine: dict[str, set[tuple]], theirs: dict[str, set[tuple]]) -> None:
        event_id = record["event_id"]
        if event_id not in self.open:
            return
        seen = identity(record)
        if seen in theirs[event_id]:
            self.open.discard(event_id)
        elif len(mine[event_id]) < BRIDGE_MEMORY:
            mine[event_id].add(seen)


def routed_aggregate(message: dict[str, Any]) -> dict[str, Any] | None:
    """The aggregate a channel emit carries to an event's room, or None for any other message."""
    if message.get("event") != EMOJI_UPDATE or (message.get("namespace") or NAMESPACE) != NAMESPACE:
        return None
    data = message.get("data")
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    room = message.get("room")
    if not isinstance(data, dict) or not isinstance(room, str) or data.get("event_id") != room:
        return None
    for name in ("window_start", "total"):
        if not isinstance(data.get(name), int) or isinstance(data.get(name), bool):
            return None
    return data


class CatchUp:
    """Sends admitted viewers their event's recent windows, reading them back when the node lacks them."""

    def __init__(
        self,
        settings: Settings,
        server: Any,
        history: ViewerHistory,
        registry: CollectorRegistry,
        subscriber_id: str,
    ):
        self.settings = settings
        self.server = server  # the python-socketio Server
        self.history = history
        self.lock = history.lock
        self._flights = threading.Lock()
        self._arrivals: list[Arrival] = []
        self._woken = threading.Event()
        self._worker: Any = None
        self._scanner: Any = None
        self._pending: dict[str, list[Arrival]] = {}
        self._running: dict[str, list[Arrival]] | None = None
        self._carry: set[str] = set()
        self._bridge: Bridge | None = None
        self._retry_at: dict[str, float] = {}
        self._reader: TopicReadBack | None = None  # kept between read-backs; only the scan loop uses it
        self._closed = False
        self._metrics(registry, subscriber_id)

    def _metrics(self, registry: CollectorRegistry, subscriber_id: str) -> None:
        labels = {"subscriber": subscriber_id}
        Gauge(
            "emostream_subscriber_history_events",
            "Events whose recent windows this node holds.",
            labels.keys(),
            registry=registry,
        ).labels(**labels).set_function(lambda: self.history.events)
        Gauge(
            "emostream_subscriber_history_bytes",
            "Bytes (as JSON) of the records the history holds.",
            labels.keys(),
            registry=registry,
        ).labels(**labels).set_function(lambda: self.history.bytes)
        self.m_sent = Counter(
            "emostream_subscriber_history_sent",
            "Records sent to viewers on joining, before live ones.",
            registry=registry,
        )
        self.m_repeats = Counter(
            "emostream_subscriber_live_repeats",
            "Live records not delivered: the node had already sent that version or a newer one.",
            registry=registry,
        )
        self.m_readbacks = Counter(
            "emostream_subscriber_readbacks", "Read-backs of the aggregate topic run.", registry=registry
        )
        waits = Counter(
            "emostream_subscriber_readback_waits",
            "Viewers that waited for a read-back: the first of its event in it (started) or a later one (shared).",
            ["flight"],
            registry=registry,
        )
        self.m_started, self.m_shared = waits.labels("started"), waits.labels("shared")
        self.m_read = Counter(
            "emostream_subscriber_readback_records", "Records read back from the aggregate topic.", registry=registry
        )
        self.m_incomplete = Counter(
            "emostream_subscriber_readback_incomplete",
            "Read-backs that stopped before the topic's end: at a bound, or on an error.",
            ["reason"],
            registry=registry,
        )
        self.m_seconds = Histogram(
            "emostream_subscriber_readback_seconds",
            "From a read-back's start to its waiting viewers being sent their windows.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )

    # ----------------------------------------------------------------- the live path

    def gate(self, message: dict[str, Any], deliver: Any) -> None:
        """The channel's emit to a room: delivered only when it brings viewers something newer."""
        record = routed_aggregate(message)
        if record is None:
            deliver(message)
            return
        with self.lock:
            fresh = self.history.offer(record, live=True)
            bridge = self._bridge
            if bridge is not None:
                bridge.live(record)
            if fresh:
                deliver(message)
            else:
                self.m_repeats.inc()

    # ----------------------------------------------------------------- joining

    def watch_started(self, event_id: str) -> None:
        """The node's first viewer of ``event_id`` arrived (see ViewerHistory.watch_started)."""
        with self.lock:
            self.history.watch_started(event_id)

    def admit(self, sid: str, event_id: str, since: int | None) -> None:
        """Send ``sid`` its event's windows from ``since`` (None: the horizon), then live ones.

        Called from the connect handler: the sending happens after it returns, once the
        client has its CONNECT answer.
        """
        self._arrivals.append(Arrival(sid, event_id, self.history.start_for(since)))
        if self._worker is None:
            self._worker = self.server.start_background_task(self._serve_arrivals)
        self._woken.set()

    def _serve_arrivals(self) -> None:
        last_prune = time.monotonic()
        while not self._closed:
            self._woken.wait(1.0)
            self._woken.clear()
            if time.monotonic() - last_prune > PRUNE_SECONDS:
                last_prune = time.monotonic()
                with self.lock:
                    self.history.prune()
                for event_id, until in list(self._retry_at.items()):
                    if until <= last_prune:
                        del self._retry_at[event_id]
            if not self._arrivals:
                continue
            # The connect handlers that queued these send their CONNECT answers first.
            self.server.sleep(0)
            arrivals, self._arrivals = self._arrivals, []
            try:
                self._place(arrivals)
            except Exception:
                log.exception("sending the history to %d viewer(s) failed", len(arrivals))

    def _place(self, arrivals: list[Arrival]) -> None:
        manager = self.server.manager
        ready: dict[str, list[Arrival]] = {}
        later: list[Arrival] = []
        for arrival in arrivals:
            if not manager.is_connected(arrival.sid, NAMESPACE):
                if manager.is_pre_connected(arrival.sid, NAMESPACE) and arrival.tries < PENDING_CONNECT_TRIES:
                    later.append(replace(arrival, tries=arrival.tries + 1))
                continue  # gone already
            if self._needs_readback(arrival):
                self._wait_for_readback(arrival)
            else:
                ready.setdefault(arrival.event_id, []).append(arrival)
        with self.lock:
            for event_id, group in ready.items():
                self._send_history(event_id, group)
        if later:
            self.server.sleep(PENDING_CONNECT_RETRY_SECONDS)
            self._arrivals.extend(later)
            self._woken.set()

    def _needs_readback(self, arrival: Arrival) -> bool:
        if self.history.covers(arrival.event_id, arrival.start):
            return False
        return self._retry_at.get(arrival.event_id, 0.0) <= time.monotonic()

    def _send_history(self, event_id: str, group: list[Arrival]) -> None:
        """Send each viewer of ``group`` the held windows from its start, then put it in the room.

        The caller holds the lock: no record of the event is offered between the sends
        and the entry into the room (see the module docstring).
        """
        manager = self.server.manager
        by_start: dict[int, list[str]] = {}
        for arrival in group:
            if manager.is_connected(arrival.sid, NAMESPACE):
                by_start.setdefault(arrival.start, []).append(arrival.sid)
        for start, sids in sorted(by_start.items()):
            records = self.history.since(event_id, start)
            for record in records:
                # One encoding for the whole group; ignore_queue: to this node's clients only.
                self.server.emit(EMOJI_UPDATE, record, to=sids, namespace=NAMESPACE, ignore_queue=True)
            self.m_sent.inc(len(records) * len(sids))
            for sid in sids:
                self.server.enter_room(sid, event_id, namespace=NAMESPACE)

    # ----------------------------------------------------------------- read-back

    def _wait_for_readback(self, arrival: Arrival) -> None:
        event_id = arrival.event_id
        with self._flights:
            running = self._running
            if running is not None and event_id in running:
                running[event_id].append(arrival)
                self.m_shared.inc()
            elif event_id in self._pending:
                self._pending[event_id].append(arrival)
                self.m_shared.inc()
            else:
                self._pending[event_id] = [arrival]
                self.m_started.inc()
            if self._scanner is None:
                self._scanner = self.server.start_background_task(self._scan_loop)

    def _scan_loop(self) -> None:
        try:
            while not self._closed:
                with self._flights:
                    if not self._pending:
                        self._carry = set()
                        self._scanner = None
                        return
                    batch, self._pending = self._pending, {}
                    for event_id in self._carry:
                        batch.setdefault(event_id, [])
                    self._carry = set()
                    self._running = batch
                self._scan(batch)
        except Exception:
            log.exception("the read-back loop failed")
        with self._flights:
            self._scanner = None
            self._running = None
        if self._closed:
            self._drop_reader()

    def _scan(self, batch: dict[str, list[Arrival]]) -> None:
        """One read of the topic for every event of ``batch``; its waiters are sent their windows at the end."""
        started = time.monotonic()
        events = set(batch)
        from_ms = self.history.horizon_start()
        latest: dict[tuple[str, int], dict[str, Any]] = {}
        bridge: Bridge | None = None
        generations: dict[str, int] = {}
        outcome = "complete"
        read = 0
        self.m_readbacks.inc()
        try:
            deadline = started + self.settings.viewer_readback_max_seconds
            if self._reader is None:
                self._reader = TopicReadBack(
                    self.settings,
                    self.settings.aggregate_topic,
                    metadata_timeout=self.settings.viewer_readback_max_seconds,
                )
            reader = self._reader
            reader.rewind(from_ms - READBACK_SKEW_MS, timeout=max(0.1, deadline - time.monotonic()))
            with self.lock:
                generations = {event_id: self.history.begin_readback(event_id) for event_id in events}
                bridge = Bridge({event_id for event_id in events if not self.history.routed(event_id)})
                self._bridge = bridge
            while not reader.caught_up:
                if read >= self.settings.viewer_readback_max_records or time.monotonic() >= deadline:
                    outcome = "bound"
                    break
                stored = reader.poll(200)
                read += len(stored)
                for found in self._aggregates(stored, events, from_ms):
                    key = (found["event_id"], found["window_start"])
                    if key not in latest or version(found) > version(latest[key]):
                        latest[key] = found
                    bridge.read(found)
                self.server.sleep(0)  # decoding is CPU: let the viewers' traffic through between batches
        except Exception as error:
            outcome = "error"
            log.warning("reading back %s for %s failed: %s", self.settings.aggregate_topic, sorted(events), error)
            self._drop_reader()
        self.m_read.inc(read)
        with self.lock:
            for record in sorted(latest.values(), key=lambda record: record["window_start"]):
                self._merge(record)
            if outcome == "complete":
                for event_id in events:
                    self.history.mark_complete(event_id, from_ms, generations[event_id])
        if outcome != "complete":
            self.m_incomplete.labels(outcome).inc()
            for event_id in events:
                self._retry_at[event_id] = time.monotonic() + RETRY_SECONDS
            if outcome == "bound":
                log.warning(
                    "read-back for %s stopped after %d records and %.1f s; serving what it found",
                    sorted(events),
                    read,
                    time.monotonic() - started,
                )
        with self._flights:
            waiters, self._running = self._running or {}, None
        with self.lock:
            for event_id, group in waiters.items():
                self._send_history(event_id, group)
        self.m_seconds.observe(time.monotonic() - started)
        log.debug(
            "read back %d records for %s in %.3f s (%s)", read, sorted(events), time.monotonic() - started, outcome
        )
        try:
            if self._reader is not None and bridge is not None and outcome == "complete":
                self._follow(self._reader, bridge, events, from_ms)
        finally:
            self._bridge = None

    def _drop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def _follow(self, reader: TopicReadBack, bridge: Bridge, events: set[str], from_ms: int) -> None:
        """Read past the end until every bridged event's live stream overlaps the read-back."""
        deadline = time.monotonic() + BRIDGE_SECONDS
        while bridge.open and time.monotonic() < deadline and not self._pending and not self._closed:
            try:
                stored = reader.poll(FOLLOW_POLL_MS)
            except Exception as error:
                log.warning("following %s failed: %s", self.settings.aggregate_topic, error)
                self._drop_reader()
                return
            for found in self._aggregates(stored, events, from_ms):
                with self.lock:
                    self._merge(found)
                bridge.read(found)
        if bridge.open and self._pending:
            # Cut short by viewers of other events: the next read-back goes on bridging these.
            with self._flights:
                self._carry |= bridge.open

    def _merge(self, record: dict[str, Any]) -> None:
        """Offer a record read back; viewers in the room get it when it is newer. The caller holds the lock."""
        if self.history.offer(record):
            self.server.emit(EMOJI_UPDATE, record, room=record["event_id"], namespace=NAMESPACE, ignore_queue=True)

    @staticmethod
    def _aggregates(stored: list[StoredRecord], events: set[str], from_ms: int) -> list[dict[str, Any]]:
        """The aggregates among ``stored`` of ``events`` whose window starts at ``from_ms`` or later.

        The key (``event_id|window_start``) decides; only the values of wanted keys are decoded.
        """
        found = []
        for record in stored:
            if not record.key or record.value is None:
                continue
            event_id, _, window = record.key.rpartition("|")
            if event_id not in events:
                continue
            try:
                window_start = int(window)
                if window_start < from_ms:
                    continue
                aggregate = validate_aggregate(json.loads(record.value))
            except (ValueError, InvalidMessage):
                continue
            if aggregate["event_id"] == event_id and aggregate["window_start"] == window_start:
                found.append(aggregate)
        return found

    def close(self) -> None:
        self._closed = True
        self._woken.set()
        if self._scanner is None:
            self._drop_reader()
