"""What a subscriber node remembers of each event: the latest aggregate of every recent window.

Aggregates are cumulative per window (key ``event_id|window_start``): the last record of a
window is its count, and a record with a higher ``total`` (then a later ``emitted_at``)
replaces an earlier one. :class:`ViewerHistory` keeps, per event, the newest record of each
window that started within the horizon (``EMOSTREAM_VIEWER_HISTORY_SECONDS``), so a viewer
that joins or comes back can be sent the windows it missed.

Bounded: per event at most ``max_windows`` windows and ``max_bytes`` of records (their
JSON size; the oldest windows go first), and at most ``max_events`` events besides those
this node's own viewers watch (the least recently updated unwatched event goes first). The
events a node's viewers watch are never dropped: there are at most as many as viewers.
Records are held as their compact JSON, not as the decoded dict (several times its size
in Python objects), and decoded again only to be sent to joining viewers.

A horizon of 0 turns the history off: nothing is held and viewers get live records only.

Besides the records, each event carries what the node knows about their completeness:

* ``complete_from``: every window starting at or after it is held with its latest record
  (set after a read-back of the topic, moved forward when a window is dropped);
* ``routed``: a live record of the event has reached this node since its viewers of the
  event last went from none to some, so the cluster's publisher routes the event here.

The store is not thread-safe by itself: callers hold :attr:`ViewerHistory.lock` around a
change and the sends that must be ordered with it (see :mod:`emostream.fanout.catchup`).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from emostream.wire import aggregate_version as version
from emostream.wire import now_ms

# Beyond JavaScript's safe integers nothing is an epoch millisecond a client could mean.
MAX_SAFE_INTEGER = 2**53 - 1


class InvalidSince(ValueError):
    """A ``since`` in the Socket.IO auth that is not epoch milliseconds; ``str()`` says why."""


def parse_since(auth: Any) -> int | None:
    """The ``since`` a viewer put in its auth payload, None when it put none.

    Any integer is accepted (one outside the horizon is clamped later); anything else, or
    an integer no clock could produce, is refused.
    """
    if not isinstance(auth, dict):
        return None
    since = auth.get("since")
    if since is None:
        return None
    if isinstance(since, bool) or not isinstance(since, int):
        raise InvalidSince(
            "since must be an integer: the window_start (epoch milliseconds) of the oldest window to send again"
        )
    if abs(since) > MAX_SAFE_INTEGER:
        raise InvalidSince("since is not epoch milliseconds: it is beyond 2^53")
    return since


def encode(record: dict[str, Any]) -> bytes:
    """A record as the history holds it: compact JSON."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def record_size(record: dict[str, Any]) -> int:
    """The bytes a record counts for against ``max_bytes``: its JSON length."""
    return len(encode(record))


class EventHistory:
    """One event's windows (newest record each) and what the node knows about their completeness."""

    __slots__ = ("windows", "bytes", "complete_from", "routed", "generation", "dropped")

    def __init__(self) -> None:
        self.windows: dict[int, tuple[tuple[int, int], bytes]] = {}  # window_start -> (version, JSON) of the latest
        self.bytes = 0
        self.complete_from: int | None = None
        self.routed = False
        self.generation = 0  # bumped when the node's viewers of the event go from none to some
        self.dropped: int | None = None  # newest window dropped for room since the last read-back began


class ViewerHistory:
    """Per-event history of the aggregates that pass through a node; see the module docstring."""

    def __init__(
        self,
        window_ms: int,
        horizon_ms: int,
        max_windows: int,
        max_bytes: int,
        max_events: int,
        watched: Callable[[str], bool] = lambda event_id: False,
        clock: Callable[[], int] = now_ms,
    ):
        if window_ms <= 0 or horizon_ms < 0:
            raise ValueError("the window must be positive and the horizon not negative")
        self.window_ms = window_ms
        self.horizon_ms = horizon_ms
        self.max_windows = max(1, max_windows)
        self.max_bytes = max_bytes
        self.max_events = max_events
        self.watched = watched
        self.clock = clock
        self.lock = threading.RLock()
        self.bytes = 0
        self._events: OrderedDict[str, EventHistory] = OrderedDict()  # least recently updated first

    # ----------------------------------------------------------------- time

    def window_of(self, moment_ms: int) -> int:
        """The start of the window that holds ``moment_ms``."""
        return moment_ms // self.window_ms * self.window_ms

    def horizon_start(self, now: int | None = None) -> int:
        """The oldest window a viewer is sent: the one that held ``now`` minus the horizon."""
        return self.window_of((self.clock() if now is None else now) - self.horizon_ms)

    def start_for(self, since: int | None, now: int | None = None) -> int:
        """The first window to send a viewer that asked for ``since`` (None: a plain join).

        Older than the horizon is clamped to it; in the future (a client clock running
        ahead) to the current window; inside a window, to that window's start.
        """
        now = self.clock() if now is None else now
        horizon = self.horizon_start(now)
        if since is None:
            return horizon
        return self.window_of(min(max(since, horizon), now))

    # ----------------------------------------------------------------- records

    def offer(self, record: dict[str, Any], live: bool = False) -> bool:
        """Take ``record`` if it is newer than the one held for its window.

        Returns whether viewers should be sent it: True when it is newer, or when it is
        not held at all (outside the horizon, or no room), False when the node already
        holds this record or a newer one for its window. ``live``: it came through the
        cluster's channel (the event is routed here).
        """
        if not self.horizon_ms:
            return True
        event_id = record["event_id"]
        window_start = record["window_start"]
        now = self.clock()
        entry = self._events.get(event_id)
        if entry is None:
            if window_start < self.horizon_start(now):
                return True
            entry = self._admit(event_id)
            if entry is None:
                return True
        if live:
            entry.routed = True
        held = entry.windows.get(window_start)
        offered = version(record)
        if held is not None and offered <= held[0]:
            return False
        if held is None and window_start < self.horizon_start(now):
            return True  # too old to keep; nothing held to compare it with
        encoded = encode(record)
        growth = len(encoded) - (0 if held is None else len(held[1]))
        entry.bytes += growth
        self.bytes += growth
        entry.windows[window_start] = (offered, encoded)
        self._events.move_to_end(event_id)
        self._trim(entry, now)
        return True

    def since(self, event_id: str, start: int) -> list[dict[str, Any]]:
        """The held records of ``event_id`` whose window starts at or after ``start``, oldest first."""
        entry = self._events.get(event_id)
        if entry is None:
            return []
        return [
            json.loads(entry.windows[window_start][1])
            for window_start in sorted(entry.windows)
            if window_start >= start
        ]

    # ----------------------------------------------------------------- completeness

    def covers(self, event_id: str, start: int) -> bool:
        """True when every window of ``event_id`` from ``start`` on is held with its latest record."""
        if not self.horizon_ms:
            return True  # nothing to send: no history kept
        entry = self._events.get(event_id)
        return entry is not None and entry.complete_from is not None and entry.complete_from <= start

    def begin_readback(self, event_id: str) -> int:
        """A read-back of ``event_id`` is about to take the topic's end; returns the token for :meth:`mark_complete`."""
        entry = self._events.get(event_id) or self._admit(event_id, force=True)
        assert entry is not None
        entry.dropped = None
        return entry.generation

    def mark_complete(self, event_id: str, start: int, generation: int) -> bool:
        """A read-back from ``start`` to the topic's end was merged, and live records follow it.

        Not when the node's viewers of the event went away and came back meanwhile
        (``generation`` changed: routing may have paused). A window dropped for room
        since the read-back began leaves a hole: completeness starts after it.
        """
        entry = self._events.get(event_id)
        if entry is None or entry.generation != generation:
            return False
        complete_from = max(start, self.horizon_start())
        if entry.dropped is not None:
            complete_from = max(complete_from, entry.dropped + self.window_ms)
        entry.complete_from = complete_from
        return True

    def routed(self, event_id: str) -> bool:
        entry = self._events.get(event_id)
        return entry is not None and entry.routed

    def watch_started(self, event_id: str) -> None:
        """The node's first viewer of ``event_id`` arrived: nothing it holds is known complete any more.

        Until then the cluster may not have routed the event here, so the records held can
        have gaps; and routing may start only now.
        """
        entry = self._events.get(event_id)
        if entry is not None:
            entry.complete_from = None
            entry.routed = False
            entry.generation += 1

    # ----------------------------------------------------------------- bounds

    @property
    def events(self) -> int:
        return len(self._events)

    def _admit(self, event_id: str, force: bool = False) -> EventHistory | None:
        if len(self._events) >= self.max_events and not force:
            victim = next((held for held in self._events if not self.watched(held)), None)
            if victim is None:
                if not self.watched(event_id):
                    return None  # every event held has viewers here; they come first
            else:
                self._drop_event(victim)
        entry = EventHistory()
        self._events[event_id] = entry
        return entry

    def _drop_event(self, event_id: str) -> None:
        entry = self._events.pop(event_id)
        self.bytes -= entry.bytes

    def _trim(self, entry: EventHistory, now: int) -> None:
        horizon = self.horizon_start(now)
        while entry.windows:
            oldest = min(entry.windows)
            if oldest >= horizon and len(entry.windows) <= self.max_windows and entry.bytes <= self.max_bytes:
                return
            if len(entry.windows) == 1 and oldest >= horizon:
                return  # one record larger than the byte cap: keep the newest window anyway
            size = len(entry.windows.pop(oldest)[1])
            entry.bytes -= size
            self.bytes -= size
            if oldest >= horizon:  # pushed out by a cap, not aged out
                entry.dropped = oldest if entry.dropped is None else max(entry.dropped, oldest)
            if entry.complete_from is not None and entry.complete_from <= oldest:
                entry.complete_from = oldest + self.window_ms

    def prune(self, now: int | None = None) -> None:
        """Drop windows past the horizon, and events left with none that no viewer here watches."""
        now = self.clock() if now is None else now
        for event_id in list(self._events):
            entry = self._events[event_id]
            self._trim(entry, now)
            if not entry.windows and not self.watched(event_id):
                self._drop_event(event_id)
