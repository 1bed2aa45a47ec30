"""Latency probes: a prober's taps, and the first aggregate that counts each one.

A probe taps into an event of its own and waits for the aggregate of the tap's window.
Records are cumulative per window, so a record whose count has grown past the taps
already timed counts the next ones, in the order they were sent; a repeated record
counts nothing new. :class:`ProbeLedger` keeps that ledger for both probers: the
simulator's probe viewer (:class:`ProbeLatencies`) and the dashboard's synthetic viewer
(:class:`emostream.webui.probe.LatencyProbe`).

A node sends a viewer that connects the windows it may have missed before its live
updates, so not every record that arrives came live. The rule every latency measure of the
clients follows (the Python viewer's delays, both probers, the viewer page's own delay):
**a record is timed only if it is newer than the copy its viewer holds of its window and
was routed (else emitted) at or after the moment its connection opened; any other record
is a replay.** A replay still updates what the viewer holds and still counts the taps in
it (so a later record does not time them from the wrong record), but times nothing.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Any

from emostream.clients.books import window_of

# Where a probe's time goes, from the clocks it passes (one machine, or synchronised clocks):
# tap → ingest's received_at stamp → the processor's emitted_at on the aggregate → the viewer.
STAGES = ("tap to ingest", "ingest to aggregate", "aggregate to viewer")


@dataclass(frozen=True, order=True)
class Tap:
    """One accepted probe tap."""

    sent_at: float  # seconds, on the prober's own clock
    received_at: int | None = None  # ingest's stamp (epoch ms), when the prober learnt it


def sent_before(aggregate: Any, opened_at_ms: int | None) -> bool:
    """Whether a record was routed (else emitted) before a connection opened at ``opened_at_ms``.

    Such a record reached the viewer from the node's history or a read-back of the topic,
    having waited for the viewer; its arrival says nothing about the pipeline's delay.
    """
    if opened_at_ms is None or not isinstance(aggregate, dict):
        return False
    stamp = aggregate.get("routed_at", aggregate.get("emitted_at"))
    return isinstance(stamp, int) and not isinstance(stamp, bool) and stamp < opened_at_ms


class ProbeLedger:
    """Probe taps by window, each handed out once: to the first aggregate that counts it.

    ``event_id`` ignores aggregates of other events; ``emoji`` counts only that emoji of
    a record (else its total); ``keep_ms`` forgets windows that much older than the
    newest tap, for a prober that runs for as long as the stack does. Thread-safe.
    """

    def __init__(
        self,
        *,
        event_id: str | None = None,
        emoji: str | None = None,
        keep_ms: int | None = None,
    ):
        self.event_id = event_id
        self.emoji = emoji
        self.keep_ms = keep_ms
        self._taps: dict[int, list[Tap]] = {}  # window_start → taps in the order sent
        self._counted: dict[int, int] = {}  # window_start → taps already handed out
        self._lock = threading.Lock()

    def record(self, window_start: int, tap: Tap) -> None:
        """Remember an accepted tap that ingest counts in ``window_start``."""
        with self._lock:
            bisect.insort(self._taps.setdefault(window_start, []), tap)
            if self.keep_ms is not None:
                for old in [w for w in self._taps if w < window_start - self.keep_ms]:
                    del self._taps[old]
                    self._counted.pop(old, None)

    def counted(self, aggregate: Any) -> list[Tap]:
        """The taps this aggregate record counts for the first time."""
        if not isinstance(aggregate, dict):
            return []
        if self.event_id is not None and aggregate.get("event_id") != self.event_id:
            return []
        window = aggregate.get("window_start")
        if self.emoji is None:
            count = aggregate.get("total", 0)
        else:
            counts = aggregate.get("counts")
            count = counts.get(self.emoji, 0) if isinstance(counts, dict) else 0
        with self._lock:
            taps = self._taps.get(window, [])
            already = self._counted.get(window, 0)
            fresh = taps[already : min(int(count), len(taps))]
            if fresh:
                self._counted[window] = already + len(fresh)
        return fresh


class ProbeLatencies:
    """The simulator's probe timings: tap → viewer, and that split into :data:`STAGES`.

    Times are wall-clock (``time.time()`` seconds) so that they compare with the
    ``received_at`` and ``emitted_at`` stamps of the services.
    """

    def __init__(self, window_ms: int):
        self.window_ms = window_ms
        self.ledger = ProbeLedger()
        self.latencies_ms: list[float] = []
        self.stages_ms: dict[str, list[float]] = {stage: [] for stage in STAGES}

    def record(self, received_at: int, sent_at: float) -> None:
        self.ledger.record(window_of(received_at, self.window_ms), Tap(sent_at, received_at))

    def observe(self, aggregate: dict[str, Any], arrived_at: float, replayed: bool = False) -> None:
        """Time the taps this record counts first; a replayed record takes them off the ledger untimed."""
        counted = self.ledger.counted(aggregate)
        if replayed:
            return
        emitted_at = aggregate.get("emitted_at")
        for tap in counted:
            self.latencies_ms.append((arrived_at - tap.sent_at) * 1000)
            if isinstance(emitted_at, int) and tap.received_at is not None:
                stages = (
                    tap.received_at - tap.sent_at * 1000,
                    emitted_at - tap.received_at,
                    arrived_at * 1000 - emitted_at,
                )
                for stage, ms in zip(STAGES, stages, strict=True):
                    self.stages_ms[stage].append(ms)
