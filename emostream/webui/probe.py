"""The dashboard's end-to-end latency: a synthetic viewer that taps and times the whole pipeline.

It runs only while someone has the dashboard open, the way an operator's black-box
probe would, and keeps its taps in the clients' probe ledger
(:class:`emostream.clients.probes.ProbeLedger`).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import requests

from emostream.clients.probes import ProbeLedger, Tap, sent_before
from emostream.clients.registration import Registration, RegistrationError, send_headers
from emostream.settings import Settings
from emostream.webui.services import short_error
from emostream.wire import EMOJI_UPDATE, now_ms

log = logging.getLogger(__name__)

PROBE_EVENT_ID = "emostream-probe"
PROBE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10, 15, 20, 30, 60)
# A tap whose window is this much older than the newest one will not be counted any more.
KEEP_TAPS_MS = 30_000


class LatencyHistogram:
    """Cumulative latency buckets in the shape the dashboard's ``histogram`` returns (thread-safe)."""

    def __init__(self, buckets: Iterable[float] = PROBE_BUCKETS):
        self.bounds = sorted(buckets)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(self.bounds, seconds)
        with self._lock:
            self._counts[index] += 1
            self._sum += seconds

    def snapshot(self) -> dict[str, Any] | None:
        with self._lock:
            counts, observed_sum = list(self._counts), self._sum
        if not any(counts):
            return None
        cumulative = list(itertools.accumulate(counts))
        buckets = [[bound, float(n)] for bound, n in zip(self.bounds, cumulative, strict=False)]
        buckets.append([None, float(cumulative[-1])])
        return {"buckets": buckets, "sum": observed_sum, "count": float(cumulative[-1])}


class LatencyProbe:
    """A synthetic viewer that times the whole pipeline while someone watches the dashboard.

    Like the viewer page, it registers for an event of its own, connects to the node it is
    given, taps twice a window into the ingest and times each tap until a node pushes the
    window that counts it. Taps go well inside a window, so a clock estimate a few
    milliseconds off never puts one in the wrong window. It stops after
    ``idle_seconds`` without a dashboard request, so an unwatched stack carries no probe.
    What the node sends from before a connection opened (its history of the event) is a
    replay and times nothing (the rule is in :mod:`emostream.clients.probes`).
    """

    def __init__(
        self,
        settings: Settings,
        ingest_url: str,
        registration_url: str,
        idle_seconds: float = 30.0,
    ):
        self.settings = settings
        self.ingest_url = ingest_url.rstrip("/")
        self.registration = Registration(registration_url, timeout=5)
        self._send_headers: dict[str, str] = {}
        self.idle_seconds = idle_seconds
        self.client_id = f"dashboard-probe-{os.getpid()}"
        self.emoji = settings.emoji_types[0]
        self.window_ms = settings.window_seconds * 1000
        self.histogram = LatencyHistogram()
        self.taps = ProbeLedger(event_id=PROBE_EVENT_ID, emoji=self.emoji, keep_ms=KEEP_TAPS_MS)
        self.state = "idle"
        self.last_latency: float | None = None
        self.opened_at: int | None = None  # epoch ms: when the current connection opened
        self._wanted_at = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def wanted(self) -> None:
        """Note that someone looks at the dashboard; start the probe when it is not running."""
        with self._lock:
            self._wanted_at = time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="latency-probe", daemon=True)
                self._thread.start()

    def status(self) -> dict[str, Any]:
        return {"event_id": PROBE_EVENT_ID, "state": self.state, "last_seconds": self.last_latency}

    def _watched(self) -> bool:
        return time.monotonic() - self._wanted_at < self.idle_seconds

    def _run(self) -> None:
        failures = 0
        while self._watched():
            try:
                self._session()
                failures = 0
            except Exception as error:  # the stack may be starting or a node may be gone: retry
                failures += 1
                self.state = f"retrying: {_describe(error)}"
                log.debug("latency probe: %s", error)
            time.sleep(min(10.0, 0.5 * 2 ** min(failures, 5)))
        self.state = "idle"

    def _session(self) -> None:
        import socketio  # only the dashboard's probe needs the client

        assignment = self.registration.register(PROBE_EVENT_ID, self.client_id)
        self._send_headers = send_headers(assignment)
        # websocket-client sends an Origin header of the node's own address, which the node's
        # CORS list refuses: without suppress_origin the client silently stays on long-polling.
        client = socketio.Client(reconnection=False, websocket_extra_options={"suppress_origin": True})
        client.on(EMOJI_UPDATE, lambda aggregate: self.on_update(aggregate, time.monotonic()))
        client.on("connect", self._opened)
        self._opened()  # until the node accepts it: when it was asked for
        client.connect(assignment["url"], auth={"token": assignment["token"]}, transports=["websocket"], wait_timeout=5)
        self.state = f"tap → viewer via {assignment['subscriber']}"
        try:
            while self._watched() and client.connected:
                self._sleep_to_mid_window()
                if client.connected:
                    self._tap()
        finally:
            client.disconnect()
            try:
                self.registration.unregister(assignment, timeout=2)
            except RegistrationError as error:
                log.debug("latency probe: giving its slot back failed: %s", error)
        if self._watched():
            raise RuntimeError(f"lost {assignment['subscriber']}")

    def _sleep_to_mid_window(self) -> None:
        # Taps at a quarter and three quarters of each window: two a window, far from its edges.
        quarter = self.window_ms / 4
        position = now_ms() % self.window_ms
        target = quarter if position < quarter else 3 * quarter if position < 3 * quarter else self.window_ms + quarter
        time.sleep((target - position) / 1000)

    def _tap(self) -> None:
        sent = time.monotonic()
        stamped = now_ms()
        event = {"user_id": self.client_id, "emoji_type": self.emoji, "timestamp": stamped, "event_id": PROBE_EVENT_ID}
        answer = requests.post(f"{self.ingest_url}/emoji", json=event, headers=self._send_headers, timeout=5)
        if answer.status_code != 202:
            self.state = f"ingest answered {answer.status_code}"
            return
        # The tap is well inside its window, so its send time names the window ingest puts it in.
        self.record_tap(stamped - stamped % self.window_ms, sent)

    def record_tap(self, window_start: int, sent_at: float) -> None:
        """Remember an accepted tap of ``window_start``, sent at ``sent_at`` (monotonic seconds)."""
        self.taps.record(window_start, Tap(sent_at))

    def _opened(self) -> None:
        self.opened_at = now_ms()

    def on_update(self, aggregate: Any, arrived: float) -> None:
        """Time the taps that this aggregate counts for the first time, unless it is a replay."""
        counted = self.taps.counted(aggregate)
        if sent_before(aggregate, self.opened_at):
            return  # sent from the node's history: the taps it counts are taken, untimed
        for tap in counted:
            self.last_latency = arrived - tap.sent_at
            self.histogram.observe(arrived - tap.sent_at)


def _describe(error: Exception) -> str:
    if isinstance(error, RegistrationError):
        return "registration not reachable" if error.status == 0 else f"registration answered {error}"
    if isinstance(error, requests.RequestException):
        return short_error(error)
    return str(error) or type(error).__name__
