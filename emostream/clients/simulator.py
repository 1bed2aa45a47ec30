"""A simulated crowd: viewers that register and listen, senders that tap emoji, and the books.

The simulator keeps a ledger of every emoji the ingest accepted, by event and by window
(ingest answers with the ``received_at`` it stamped, which is what windows are cut on),
and compares it with the final count of each finished window that its viewers received.
Probe emoji in a dedicated event measure the end-to-end delay from a tap to the first
aggregate that counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from emostream.settings import Settings
from emostream.wire import now_ms

log = logging.getLogger("emostream.clients.simulator")


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
    drain: float = 0.0  # seconds to wait for final counts; 0: window + watermark + slack
    concurrency: int = 64
    window_ms: int = 2000
    watermark_ms: int = 3000
    seed: int | None = None


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def window_of(received_at: int, window_ms: int) -> int:
    return received_at - received_at % window_ms


class Ledger:
    """What was sent and accepted, per (event, window_start), and what viewers got back."""

    def __init__(self, window_ms: int):
        self.window_ms = window_ms
        self.sent = 0
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.retried = 0
        self.accepted_by_window: Counter[tuple[str, int]] = Counter()
        self.accepted_by_emoji: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
        # viewer id → (event, window) → highest total seen (records are cumulative)
        self.final_by_viewer: dict[str, dict[tuple[str, int], dict[str, Any]]] = defaultdict(dict)
        self.viewer_events: dict[str, str] = {}
        self.aggregates_received = 0
        self.last_received_at = 0

    def accept(self, event_id: str, emoji: Sequence[str], received_at: int) -> None:
        key = (event_id, window_of(received_at, self.window_ms))
        self.accepted += len(emoji)
        self.accepted_by_window[key] += len(emoji)
        self.accepted_by_emoji[key].update(emoji)
        self.last_received_at = max(self.last_received_at, received_at)

    def update(self, viewer_id: str, aggregate: dict[str, Any]) -> None:
        self.aggregates_received += 1
        key = (aggregate["event_id"], aggregate["window_start"])
        seen = self.final_by_viewer[viewer_id]
        if key not in seen or aggregate["total"] >= seen[key]["total"]:
            seen[key] = aggregate

    def check(self, finished_before: int, events: Sequence[str]) -> dict[str, Any]:
        """Compare every finished window of the crowd's events with what viewers received."""
        windows = sorted(
            k for k in self.accepted_by_window if k[0] in events and k[1] + self.window_ms <= finished_before
        )
        exact = lost = extra = 0
        mismatches: list[dict[str, Any]] = []
        viewers_missing = 0
        scaled_wrong = 0
        for key in windows:
            event_id, window_start = key
            sent = self.accepted_by_window[key]
            watchers = [v for v, e in self.viewer_events.items() if e == event_id]
            finals = [self.final_by_viewer[v].get(key) for v in watchers]
            got = max((f["total"] for f in finals if f), default=0)
            viewers_missing += sum(1 for f in finals if f is None or f["total"] != got)
            for final in finals:
                if final and any(final["scaled"].get(e) != math.ceil(n / 1000) for e, n in final["counts"].items()):
                    scaled_wrong += 1
            if got == sent and all(f and f["counts"] == dict(self.accepted_by_emoji[key]) for f in finals):
                exact += 1
            else:
                lost += max(0, sent - got)
                extra += max(0, got - sent)
                if len(mismatches) < 10:
                    mismatches.append(
                        {"event_id": event_id, "window_start": window_start, "accepted": sent, "final": got}
                    )
        return {
            "windows_checked": len(windows),
            "windows_exact": exact,
            "emoji_lost": lost,
            "emoji_extra": extra,
            "viewer_windows_missing": viewers_missing,
            "scaled_wrong": scaled_wrong,
            "mismatches": mismatches,
        }


# Where a probe's time goes, from the clocks it passes (one machine, or synchronised clocks):
# tap → ingest's received_at stamp → the processor's emitted_at on the aggregate → the viewer.
STAGES = ("tap to ingest", "ingest to aggregate", "aggregate to viewer")


class Probes:
    """Latency probes: sequential taps of one user in a dedicated event."""

    def __init__(self, window_ms: int):
        self.window_ms = window_ms
        self.sent: dict[int, list[tuple[int, float]]] = defaultdict(list)  # window → [(received_at, sent_at)]
        self.latencies_ms: list[float] = []
        self.stages_ms: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self._answered: dict[int, int] = defaultdict(int)  # window → probes already measured

    def record(self, received_at: int, sent_at: float) -> None:
        self.sent[window_of(received_at, self.window_ms)].append((received_at, sent_at))

    def observe(self, aggregate: dict[str, Any], arrived_at: float) -> None:
        window = aggregate["window_start"]
        probes = sorted(self.sent.get(window, ()))
        counted = min(aggregate["total"], len(probes))
        emitted_at = aggregate.get("emitted_at")
        for received_at, sent_at in probes[self._answered[window] : counted]:
            self.latencies_ms.append((arrived_at - sent_at) * 1000)
            if isinstance(emitted_at, int):
                for stage, ms in zip(
                    STAGES,
                    (received_at - sent_at * 1000, emitted_at - received_at, arrived_at * 1000 - emitted_at),
                    strict=True,
                ):
                    self.stages_ms[stage].append(ms)
        self._answered[window] = max(self._answered[window], counted)


class Crowd:
    def __init__(self, plan: CrowdPlan, viewer_factory=None):
        self.plan = plan
        self.random = random.Random(plan.seed)
        self.run_id = uuid.uuid4().hex[:8]
        self.ledger = Ledger(plan.window_ms)
        self.probes = Probes(plan.window_ms)
        self.probe_event = f"probe-{self.run_id}"
        self.viewers: list[Any] = []
        self._viewer_factory = viewer_factory
        self._viewer_session: aiohttp.ClientSession | None = None
        self._stop = asyncio.Event()
        self._started = 0.0
        self._sending_stopped = 0.0
        self._ingest_index = 0
        emoji = list(plan.mix) or []
        self._emoji = emoji
        self._weights = [plan.mix[e] for e in emoji]

    # ------------------------------------------------------------------ viewers

    def _make_viewer(self, event_id: str, client_id: str, on_update):
        if self._viewer_factory is not None:
            return self._viewer_factory(self.plan.registration_url, event_id, client_id, on_update)
        from emostream.clients.viewer import Viewer

        return Viewer(
            self.plan.registration_url,
            event_id=event_id,
            client_id=client_id,
            http_session=self._viewer_session,
            on_update=lambda viewer, delivery: on_update(delivery.aggregate, delivery.received_at),
            history=0,
        )

    async def start_viewers(self) -> None:
        if self._viewer_factory is None:
            self._viewer_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def start(index: int, event_id: str, probe: bool = False) -> None:
            client_id = f"sim-{self.run_id}-{'probe' if probe else index}"
            if not probe:
                self.ledger.viewer_events[client_id] = event_id

            def on_update(aggregate: dict[str, Any], arrived_at: float | None = None) -> None:
                arrived = time.time() if arrived_at is None else arrived_at
                if probe:
                    self.probes.observe(aggregate, arrived)
                else:
                    self.ledger.update(client_id, aggregate)

            viewer = self._make_viewer(event_id, client_id, on_update)
            self.viewers.append(viewer)
            await viewer.start()

        starts = [start(i, self.plan.events[i % len(self.plan.events)]) for i in range(self.plan.viewers)]
        if self.plan.probe_interval > 0:
            starts.append(start(-1, self.probe_event, probe=True))
        # Connect in waves so a thousand viewers do not arrive in the same millisecond.
        for wave in range(0, len(starts), 100):
            await asyncio.gather(*starts[wave : wave + 100])

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
        stamp = now_ms()
        items = [
            {"user_id": u, "emoji_type": e, "timestamp": stamp, "event_id": event_id}
            for u, e in zip(user_ids, emoji, strict=True)
        ]
        path, body = ("/emoji", items[0]) if len(items) == 1 else ("/emojis", items)
        if books:
            self.ledger.sent += len(items)
        for attempt in range(4):
            url = self.plan.ingest_urls[self._ingest_index % len(self.plan.ingest_urls)] + path
            sent_at = time.time()
            try:
                async with session.post(url, json=body) as response:
                    payload = await response.json(content_type=None)
                    if response.status == 202:
                        received_at = payload.get("received_at") if isinstance(payload, dict) else None
                        # Ingest stamps received_at; an older ingest without it gets the midpoint.
                        return int(received_at) if received_at else int((sent_at + time.time()) / 2 * 1000)
                    self.ledger.rejected[str(response.status)] += len(items)
                    if response.status not in (429, 503) or self._stop.is_set():
                        return None
                    retry_after = float(response.headers.get("Retry-After", "1"))
            except (TimeoutError, aiohttp.ClientError, ValueError):
                self.ledger.rejected["connection"] += len(items)
                self._ingest_index += 1  # another ingest instance, if there is one
                retry_after = 0.2 * (attempt + 1)
            self.ledger.retried += len(items)
            await asyncio.sleep(retry_after * (0.5 + self.random.random()))
        return None

    async def _send(self, session, semaphore, event_id, user_ids, emoji) -> None:
        async with semaphore:
            received_at = await self._post(session, event_id, user_ids, emoji)
        if received_at is not None:
            self.ledger.accept(event_id, emoji, received_at)

    async def run_senders(self) -> None:
        users = self._users()
        semaphore = asyncio.Semaphore(self.plan.concurrency)
        connector = aiohttp.TCPConnector(limit=self.plan.concurrency, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=10)
        tasks: set[asyncio.Task] = set()
        owed = 0.0
        tick = 0.05
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            probe_task = asyncio.create_task(self._run_probes(session)) if self.plan.probe_interval > 0 else None
            last = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                elapsed = now - self._started
                if self.plan.duration and elapsed >= self.plan.duration:
                    break
                owed += self._rate_now(elapsed) * (now - last)
                last = now
                due = int(owed)
                owed -= due
                while due > 0:
                    event_id = self.random.choice(self.plan.events)
                    size = min(due, self.plan.batch)
                    due -= size
                    chosen = [self.random.choice(users) for _ in range(size)]
                    task = asyncio.create_task(self._send(session, semaphore, event_id, chosen, self._pick_emoji(size)))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.sleep(tick)
            self._sending_stopped = time.monotonic()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if probe_task:
                probe_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe_task

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

    async def run(self, progress=None) -> dict[str, Any]:
        await self.start_viewers()
        self._started = time.monotonic()
        reporter = asyncio.create_task(self._progress(progress)) if progress else None
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
        drain = self.plan.drain or (self.plan.window_ms + self.plan.watermark_ms) / 1000 + 4
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline and not self._stop.is_set():
            books = self.ledger.check(now_ms(), self.plan.events)
            settled = books["windows_exact"] == books["windows_checked"] and not books["viewer_windows_missing"]
            # The newest window may still be open for a moment after the last send.
            if settled and self.ledger.last_received_at + self.plan.window_ms < now_ms():
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=0.5)

    async def _progress(self, write) -> None:
        while True:
            await asyncio.sleep(2)
            write(self.progress_line())

    def progress_line(self) -> str:
        elapsed = max(1e-6, (self._sending_stopped or time.monotonic()) - self._started)
        p50 = percentile(self.probes.latencies_ms, 50)
        return (
            f"sent {self.ledger.sent:>8}  accepted {self.ledger.accepted:>8}  rejected {sum(self.ledger.rejected.values()):>6}"
            f"  {self.ledger.accepted / elapsed:8.0f} emoji/s  aggregates {self.ledger.aggregates_received:>7}"
            f"  latency p50 {'-' if p50 is None else f'{p50:.0f} ms'}"
        )

    def report(self) -> dict[str, Any]:
        sending = max(1e-6, (self._sending_stopped or time.monotonic()) - self._started)
        # Sending has stopped and the drain has waited, so every window that has ended is final.
        finished_before = now_ms()
        latencies = self.probes.latencies_ms
        return {
            "viewers": self.plan.viewers,
            "events": list(self.plan.events),
            "sending_seconds": round(sending, 2),
            "emoji_sent": self.ledger.sent,
            "emoji_accepted": self.ledger.accepted,
            "emoji_rejected": dict(self.ledger.rejected),  # refused attempts, by status
            "emoji_given_up": self.ledger.sent - self.ledger.accepted,
            "emoji_retried": self.ledger.retried,
            "accepted_per_second": round(self.ledger.accepted / sending, 1),
            "aggregates_received": self.ledger.aggregates_received,
            "latency_ms": {
                "probes": len(latencies),
                "p50": _round(percentile(latencies, 50)),
                "p95": _round(percentile(latencies, 95)),
                "p99": _round(percentile(latencies, 99)),
                # p50 of each stage (they need not add up to the p50 of the whole)
                "stages_p50": {stage: _round(percentile(ms, 50)) for stage, ms in self.probes.stages_ms.items()},
            },
            **self.ledger.check(finished_before, self.plan.events),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def format_report(report: dict[str, Any]) -> str:
    latency = report["latency_ms"]
    rows = [
        ("viewers", report["viewers"]),
        ("events", ", ".join(report["events"])),
        ("sending time", f"{report['sending_seconds']} s"),
        ("emoji sent", report["emoji_sent"]),
        ("emoji accepted", f"{report['emoji_accepted']}  ({report['accepted_per_second']}/s)"),
        ("attempts refused", ", ".join(f"{k}: {v}" for k, v in report["emoji_rejected"].items()) or "0"),
        ("emoji given up", report["emoji_given_up"]),
        ("aggregates received", report["aggregates_received"]),
        (
            "latency p50 / p95 / p99",
            f"{latency['p50']} / {latency['p95']} / {latency['p99']} ms  ({latency['probes']} probes)",
        ),
        (
            "latency stages, p50",
            " / ".join(f"{stage} {ms} ms" for stage, ms in latency.get("stages_p50", {}).items()) or "-",
        ),
        ("windows checked", report["windows_checked"]),
        ("windows exact", report["windows_exact"]),
        ("emoji lost", report["emoji_lost"]),
        ("emoji counted twice", report["emoji_extra"]),
        ("viewer windows missing", report["viewer_windows_missing"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


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


def classic(
    settings: Settings,
    ingest_url: str,
    registration_url: str,
    clients: int = 5,
    emoji_each: int = 20,
    interval: float = 0.5,
) -> dict[str, Any]:
    """The original behaviour: a handful of threaded clients, each registering and sending 20 emoji."""
    import threading

    import requests

    results: Counter[str] = Counter()
    lock = threading.Lock()

    def client(index: int) -> None:
        with requests.Session() as http:
            client_id = f"classic-{uuid.uuid4().hex[:6]}-{index}"
            registration = http.post(f"{registration_url}/register", json={"client_id": client_id}, timeout=10)
            with lock:
                results["registered" if registration.status_code == 200 else "registration_failed"] += 1
            for _ in range(emoji_each):
                emoji = random.choice(settings.emoji_types)
                body = {"user_id": client_id, "emoji_type": emoji, "timestamp": now_ms()}
                try:
                    status = http.post(f"{ingest_url}/emoji", json=body, timeout=10).status_code
                except requests.RequestException:
                    status = "connection"
                with lock:
                    results["accepted" if status == 202 else f"rejected_{status}"] += 1
                time.sleep(interval)
            if registration.status_code == 200:
                token = registration.json().get("token")
                http.post(f"{registration_url}/unregister", json={"client_id": client_id, "token": token}, timeout=10)

    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return dict(results)


def dump(report: dict[str, Any]) -> str:
    return json.dumps(report, ensure_ascii=False, indent=2)


def write_progress(line: str) -> None:
    sys.stderr.write("\r" + line)
    sys.stderr.flush()
