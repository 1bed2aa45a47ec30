"""A simulated crowd: viewers that register and listen, senders that tap emoji.

The crowd keeps its books (:mod:`emostream.clients.books`) of every emoji the ingest
accepted and of what its viewers received, and compares the two for every finished
window. Probe emoji in an event of the crowd's own measure the delay from a tap to the
first aggregate that counts it (:mod:`emostream.clients.probes`). A viewer that lost its node
comes back with ``since`` and is sent the windows it may have missed again: the books keep
each window's highest total, and the probes time no replayed record.

Every sender sends with its own send credential (``Authorization: Bearer <send_token>``):
a viewer that sends taps in the event it watches, with its registration's credential; a
sender of its own (``senders``) registers once for each event it sends in. A registration
that hands out none (a service older than send credentials) leaves the sender sending
without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from emostream.clients.books import Ledger
from emostream.clients.probes import ProbeLatencies
from emostream.clients.registration import AsyncRegistration, RegistrationError, send_headers
from emostream.clients.report import build_report, progress_line
from emostream.clients.viewer import Viewer
from emostream.wire import now_ms

# Viewers connect this many at a time, so a thousand do not arrive in the same millisecond.
CONNECT_WAVE = 100
# Attempts at one request before its emoji count as given up.
ATTEMPTS = 4
# Windows that ended this long ago are judged for good and their details dropped: no viewer can
# still be waiting for them, and a crowd that runs for hours must not grow with its run.
SETTLE_AFTER_MS = 60_000
# Stopped early (Ctrl-C), the run skips the drain: only windows that ended longer ago than the
# settle time plus this are judged, the others may not be final at the viewers yet.
STOPPED_SLACK_MS = 2_000
# Seconds before a sender whose registration failed registers again.
CREDENTIAL_RETRY = 5.0


@dataclass
class CrowdPlan:
    """What the crowd does; every field is a command-line option of client_simulator.py."""

    ingest_urls: tuple[str, ...]
    registration_url: str
    viewers: int = 20
    senders: int = 0  # 0: the viewers themselves send
    rate: float = 100.0  # emoji per second, all senders together
    duration: float = 30.0  # seconds of sending; 0 runs until interrupted
    events: tuple[str, ...] = ("live",)
    mix: dict[str, float] = field(default_factory=dict)
    batch: int = 1  # emoji per request: 1 uses POST /emoji, more uses POST /emojis
    burst_every: float = 0.0  # seconds between bursts (a wicket, a six); 0: none
    burst_seconds: float = 2.0
    burst_factor: float = 5.0
    probe_interval: float = 0.25  # seconds between latency probes; 0: no probes
    drain: float = 0.0  # seconds to wait for final counts; 0: window + settle time + slack
    concurrency: int = 64
    window_ms: int = 2000
    settle_ms: int = 3000
    seed: int | None = None


def parse_mix(text: str, emoji_types: Sequence[str]) -> dict[str, float]:
    """``"🔥=5,👏=3"`` → weights; unnamed emoji get weight 1 unless the mix names them all."""
    if not text:
        return {e: 1.0 for e in emoji_types}
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition("=")
        if name not in emoji_types:
            raise ValueError(f"{name!r} is not one of the configured emoji {' '.join(emoji_types)}")
        weights[name] = float(weight or 1)
    return weights


# Handed each aggregate a viewer receives, with its arrival time (time.time()) and whether it was
# a replay (sent again on a reconnect, or no newer than the viewer's copy of its window).
OnUpdate = Callable[[dict[str, Any], float | None, bool], None]


class Crowd:
    """One run of a crowd: start the viewers, send at the planned rate, drain, report."""

    def __init__(self, plan: CrowdPlan, viewer_factory: Callable[..., Any] | None = None):
        self.plan = plan
        self.random = random.Random(plan.seed)
        self.run_id = uuid.uuid4().hex[:8]
        self.ledger = Ledger(plan.window_ms)
        self.probes = ProbeLatencies(plan.window_ms)
        self.probe_event = f"probe-{self.run_id}"
        self.viewers: list[Any] = []
        self._viewer_factory = viewer_factory
        self._viewer_session: aiohttp.ClientSession | None = None
        self._stop = asyncio.Event()
        self._sending = False  # while true, refused requests are tried again
        self._started = 0.0
        self._sending_stopped = 0.0
        self.asked = 0  # emoji the plan's rate asked for so far
        self.in_flight_peak = 0
        self._ingest_index = 0
        self._emoji = list(plan.mix)
        self._weights = [plan.mix[e] for e in self._emoji]
        # (user_id, event_id) -> the headers that send as that user in that event, once registered.
        self._credentials: dict[tuple[str, str], asyncio.Future[dict[str, str]]] = {}
        self._credential_failed: dict[tuple[str, str], float] = {}  # -> when to register again (monotonic)

    # ------------------------------------------------------------------ viewers

    def _make_viewer(self, event_id: str, client_id: str, on_update: OnUpdate):
        if self._viewer_factory is not None:
            return self._viewer_factory(self.plan.registration_url, event_id, client_id, on_update)
        return Viewer(
            self.plan.registration_url,
            event_id=event_id,
            client_id=client_id,
            http_session=self._viewer_session,
            on_update=lambda viewer, delivery: on_update(delivery.aggregate, delivery.received_at, delivery.replayed),
            history=0,
            settle_ms=self.plan.settle_ms,
            # The windows a reconnect's since reaches back over; older ones are final where they are.
            windows_kept=math.ceil(self.plan.settle_ms / self.plan.window_ms) + 2,
        )

    async def start_viewers(self) -> None:
        if self._viewer_factory is None:
            self._viewer_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def start(index: int, event_id: str, probe: bool = False) -> None:
            client_id = f"sim-{self.run_id}-{'probe' if probe else index}"
            if not probe:
                self.ledger.viewer_events[client_id] = event_id

            def on_update(aggregate: dict[str, Any], arrived_at: float | None = None, replayed: bool = False) -> None:
                arrived = time.time() if arrived_at is None else arrived_at
                if probe:
                    self.probes.observe(aggregate, arrived, replayed)
                else:
                    self.ledger.update(client_id, aggregate)

            viewer = self._make_viewer(event_id, client_id, on_update)
            self.viewers.append(viewer)
            await viewer.start()

        starts = [start(i, self.plan.events[i % len(self.plan.events)]) for i in range(self.plan.viewers)]
        if self.plan.probe_interval > 0:
            starts.append(start(-1, self.probe_event, probe=True))
        for wave in range(0, len(starts), CONNECT_WAVE):
            if self._stop.is_set():
                for unstarted in starts[wave:]:
                    unstarted.close()  # never awaited: a Ctrl-C while viewers connect ends the run
                return
            await asyncio.gather(*starts[wave : wave + CONNECT_WAVE])

    async def close_viewers(self) -> None:
        await asyncio.gather(*(viewer.close() for viewer in self.viewers), return_exceptions=True)
        if self._viewer_session is not None:
            await self._viewer_session.close()

    # ------------------------------------------------------------------ senders

    def _users(self) -> list[str]:
        count = self.plan.senders or max(1, self.plan.viewers)
        return [f"sim-{self.run_id}-{i}" for i in range(count)]

    def _pick_emoji(self, k: int) -> list[str]:
        return self.random.choices(self._emoji, weights=self._weights, k=k)

    def _rate_now(self, elapsed: float) -> float:
        plan = self.plan
        if plan.burst_every > 0 and elapsed % plan.burst_every >= plan.burst_every - plan.burst_seconds:
            return plan.rate * plan.burst_factor
        return plan.rate

    async def _post(
        self, session: aiohttp.ClientSession, event_id: str, user_ids: list[str], emoji: list[str], books: bool = True
    ) -> int | None:
        """Send one request; return the received_at ingest stamped, or None when refused.

        ``books=False`` keeps latency probes out of the crowd's ledger.
        """
        headers = await self._send_headers(session, user_ids[0], event_id)
        stamp = now_ms()
        items = [
            {"user_id": u, "emoji_type": e, "timestamp": stamp, "event_id": event_id}
            for u, e in zip(user_ids, emoji, strict=True)
        ]
        path, body = ("/emoji", items[0]) if len(items) == 1 else ("/emojis", items)
        if books:
            self.ledger.sent += len(items)
        for attempt in range(ATTEMPTS):
            url = self.plan.ingest_urls[self._ingest_index % len(self.plan.ingest_urls)] + path
            sent_at = time.time()
            try:
                async with session.post(url, json=body, headers=headers) as response:
                    payload = await response.json(content_type=None)
                    if response.status == 202:
                        received_at = payload.get("received_at") if isinstance(payload, dict) else None
                        # Ingest stamps received_at; an older ingest without it gets the midpoint.
                        return int(received_at) if received_at else int((sent_at + time.time()) / 2 * 1000)
                    self.ledger.rejected[str(response.status)] += len(items)
                    if response.status not in (429, 503) or not self._sending:
                        return None
                    retry_after = float(response.headers.get("Retry-After", "1"))
            except (TimeoutError, aiohttp.ClientError, ValueError):
                self.ledger.rejected["connection"] += len(items)
                self._ingest_index += 1  # another ingest instance, if there is one
                if not self._sending:
                    return None
                retry_after = 0.2 * (attempt + 1)
            self.ledger.retried += len(items)
            await asyncio.sleep(retry_after * (0.5 + self.random.random()))
        return None

    async def _send_headers(self, session: aiohttp.ClientSession, user_id: str, event_id: str) -> dict[str, str]:
        """The headers that send as ``user_id`` in ``event_id``; registers once per pair (again
        after ``CREDENTIAL_RETRY`` seconds when registering failed)."""
        key = (user_id, event_id)
        future = self._credentials.get(key)
        if future is None or (future.done() and self._credential_failed.get(key, math.inf) < time.monotonic()):
            future = asyncio.ensure_future(self._credential(session, user_id, event_id))
            self._credentials[key] = future
        return await asyncio.shield(future)

    async def _credential(self, session: aiohttp.ClientSession, user_id: str, event_id: str) -> dict[str, str]:
        for viewer in self.viewers:
            assignment = getattr(viewer, "assignment", None)  # a test's stand-in viewer may have none
            if assignment and assignment.get("client_id") == user_id and assignment.get("event_id") == event_id:
                return viewer.send_headers
        registration = AsyncRegistration(self.plan.registration_url, session)
        for attempt in range(ATTEMPTS):
            try:
                headers = send_headers(await registration.register(event_id, user_id))
                self._credential_failed.pop((user_id, event_id), None)
                return headers
            except RegistrationError as error:
                # Unreachable or refused: send without a credential (an open-mode ingest takes it,
                # a token-mode one answers 401, which the report counts) and register again later.
                if error.status == 0 or not error.retryable or attempt == ATTEMPTS - 1:
                    break
                await asyncio.sleep(0.2 * (attempt + 1))
        self._credential_failed[(user_id, event_id)] = time.monotonic() + CREDENTIAL_RETRY
        return {}

    async def _send(self, session: aiohttp.ClientSession, event_id: str, user_ids: list[str], emoji: list[str]) -> None:
        received_at = await self._post(session, event_id, user_ids, emoji)
        if received_at is not None:
            self.ledger.accept(event_id, emoji, received_at)

    async def run_senders(self) -> None:
        """Send at the planned rate until the duration is up or :meth:`stop`.

        At most ``concurrency`` requests are in flight: when ingest answers more slowly than the
        rate asks, the emoji that would need more are not sent (the report's "unsent") rather
        than queued, so a crowd asked for more than the stack takes neither grows nor sends on
        past its duration. Requests in flight when sending stops are answered (each within the
        client's timeout) and not tried again.
        """
        users = self._users()
        connector = aiohttp.TCPConnector(limit=self.plan.concurrency, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=10)
        tasks: set[asyncio.Task] = set()
        owed = 0.0
        tick = 0.05
        settled_at = time.monotonic()
        self._sending = True
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            probe_task = asyncio.create_task(self._run_probes(session)) if self.plan.probe_interval > 0 else None
            last = time.monotonic()
            try:
                while not self._stop.is_set():
                    now = time.monotonic()
                    elapsed = now - self._started
                    if self.plan.duration and elapsed >= self.plan.duration:
                        break
                    owed += self._rate_now(elapsed) * (now - last)
                    last = now
                    due = int(owed)
                    owed -= due
                    self.asked += due
                    while due > 0 and len(tasks) < self.plan.concurrency:
                        # One sender per request (a request carries one sender's credential); a
                        # viewer taps in the event it watches, a sender of its own in any.
                        sender = self.random.choice(users)
                        event_id = self.ledger.viewer_events.get(sender) or self.random.choice(self.plan.events)
                        size = min(due, self.plan.batch)
                        due -= size
                        chosen = [sender] * size
                        task = asyncio.create_task(self._send(session, event_id, chosen, self._pick_emoji(size)))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    self.in_flight_peak = max(self.in_flight_peak, len(tasks))
                    if now - settled_at >= 5:
                        settled_at = now
                        self.ledger.settle(now_ms() - SETTLE_AFTER_MS, self.plan.events)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), timeout=tick)
            finally:
                self._sending = False
                self._sending_stopped = time.monotonic()
                if probe_task:
                    probe_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await probe_task
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_probes(self, session: aiohttp.ClientSession) -> None:
        user = f"probe-{self.run_id}"
        while True:
            sent_at = time.time()
            received_at = await self._post(session, self.probe_event, [user], [self._emoji[0]], books=False)
            if received_at is not None:
                self.probes.record(received_at, sent_at)
            await asyncio.sleep(self.plan.probe_interval)

    # ------------------------------------------------------------------ the run

    def stop(self) -> None:
        self._stop.set()

    async def run(self, progress: Callable[[str], None] | None = None, every: float = 2.0) -> dict[str, Any]:
        """Start the viewers, send, drain, report; ``progress`` gets a line every ``every`` seconds."""
        await self.start_viewers()
        self._started = time.monotonic()
        reporter = asyncio.create_task(self._progress(progress, every)) if progress else None
        try:
            await self.run_senders()
            await self._drain()
        finally:
            if reporter:
                reporter.cancel()
            await self.close_viewers()
        return self.report()

    async def _drain(self) -> None:
        """Wait for final counts: until every finished window matches, or the drain time is up."""
        drain = self.plan.drain or (self.plan.window_ms + self.plan.settle_ms) / 1000 + 4
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline and not self._stop.is_set():
            books = self.ledger.check(now_ms(), self.plan.events)
            settled = books["windows_exact"] == books["windows_checked"] and not books["viewer_windows_missing"]
            # The newest window may still be open for a moment after the last send.
            if settled and self.ledger.last_received_at + self.plan.window_ms < now_ms():
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=0.5)

    async def _progress(self, write: Callable[[str], None], every: float) -> None:
        while True:
            await asyncio.sleep(every)
            write(self.progress_line())

    def _sending_seconds(self) -> float:
        return max(1e-6, (self._sending_stopped or time.monotonic()) - self._started)

    def progress_line(self) -> str:
        return progress_line(self.ledger, self.probes, self._sending_seconds())

    def report(self) -> dict[str, Any]:
        # Sending has stopped and the drain has waited, so every window that has ended is final;
        # stopped early (Ctrl-C), the run skipped the drain, and only windows that ended a
        # settle time and some delivery time ago can be final yet.
        finished_before = now_ms()
        if self._stop.is_set():
            finished_before -= self.plan.settle_ms + STOPPED_SLACK_MS
        return build_report(
            self.plan.viewers,
            self.plan.events,
            self.ledger,
            self.probes,
            self._sending_seconds(),
            finished_before,
            asked=self.asked,
        )
