"""What the viewer-channel tests and the join bench share: a crowd, a watching client, tokens.

:class:`LiveEvent` writes one event's cumulative aggregates to the aggregate topic as the
processor does (the current window's count every tick, and a last late update of the window
before when a new one starts), and remembers the final count of every window it wrote.
:class:`Watcher` is a stock ``socketio.AsyncClient`` that keeps, per window, the last record
it received (a repeated window is an overwrite) and notes any record that arrived after a
newer one of its window.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import socketio
import websocket

from emostream import kafka
from emostream.settings import Settings
from emostream.wire import EMOJI_UPDATE, TokenClaims, issue_token, make_aggregate, now_ms

EMOJI = ("🔥", "👏", "😂", "\u2764\ufe0f")


def node_token(settings: Settings, subscriber_id: str, event_id: str, client_id: str | None = None) -> str:
    """A viewer token for ``subscriber_id`` and ``event_id``, as registration would issue it."""
    client_id = client_id or f"viewer-{random.getrandbits(40):x}"
    return issue_token(settings.secret, TokenClaims(client_id, event_id, subscriber_id, int(time.time()) + 3600))


def version(record: dict[str, Any]) -> tuple[int, int]:
    return record["total"], record.get("emitted_at") or 0


class LiveEvent:
    """One event's audience, as the aggregates the processor would write for it."""

    def __init__(self, settings: Settings, event_id: str, tick: float = 0.5, seed: int = 1):
        self.settings = settings
        self.event_id = event_id
        self.tick = tick
        self.window_ms = settings.window_seconds * 1000
        self._rng = random.Random(seed)
        self._counts: dict[int, dict[str, int]] = {}  # window_start -> counts as last written
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at: int | None = None
        self.records_written = 0

    def start(self) -> LiveEvent:
        self._producer = kafka.producer(self.settings, linger_ms=0)
        self.started_at = now_ms()
        self._thread = threading.Thread(target=self._run, name=f"crowd-{self.event_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop cheering; the last window gets its final record first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self._producer.close(timeout=10)

    def finals(self) -> dict[int, int]:
        """Every window written so far: window_start -> its total as last written."""
        with self._lock:
            return {start: sum(counts.values()) for start, counts in self._counts.items()}

    def final_counts(self) -> dict[int, dict[str, int]]:
        with self._lock:
            return {start: dict(counts) for start, counts in self._counts.items()}

    def _run(self) -> None:
        previous: int | None = None
        while not self._stop.is_set():
            now = now_ms()
            window_start = now // self.window_ms * self.window_ms
            records = []
            with self._lock:
                if previous is not None and previous != window_start:
                    # A late emoji for the window that just ended: its final record comes after the next one opened.
                    self._counts[previous][EMOJI[0]] += 1
                    records.append(self._record(previous, now))
                counts = self._counts.setdefault(window_start, {emoji: 0 for emoji in EMOJI})
                for emoji in EMOJI:
                    counts[emoji] += self._rng.randint(0, 40)
                counts[EMOJI[0]] += 1  # every tick moves the window on
                records.append(self._record(window_start, now))
            self._write(records)
            previous = window_start
            self._stop.wait(self.tick)
        if previous is not None:
            with self._lock:
                self._counts[previous][EMOJI[0]] += 1
                records = [self._record(previous, now_ms())]
            self._write(records)

    def _record(self, window_start: int, now: int) -> dict[str, Any]:
        return make_aggregate(
            self.event_id, window_start, window_start + self.window_ms, self._counts[window_start], emitted_at=now
        )

    def _write(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self._producer.send(
                self.settings.aggregate_topic, key=f"{self.event_id}|{record['window_start']}", value=record
            )
        self._producer.flush(timeout=30)
        self.records_written += len(records)


class Watcher:
    """A viewer on a stock ``socketio.AsyncClient``: its view of the windows and how they arrived."""

    def __init__(self, event_id: str, http_session: Any = None):
        self.event_id = event_id
        self.http_session = http_session  # one aiohttp session for many viewers; else each its own
        self.view: dict[int, dict[str, Any]] = {}
        self.arrivals: list[tuple[float, dict[str, Any]]] = []  # (time.monotonic(), record)
        self.out_of_order: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (held, older one that came after)
        self.foreign: list[dict[str, Any]] = []
        self.connected_at: float | None = None  # time.monotonic() when connect() began
        self.connect_seconds: float | None = None  # how long the handshake took
        self.refusal: str | None = None
        self.client: socketio.AsyncClient | None = None
        self._changed = asyncio.Event()

    def _on_update(self, record: dict[str, Any]) -> None:
        self.arrivals.append((time.monotonic(), record))
        if record.get("event_id") != self.event_id:
            self.foreign.append(record)
            return
        held = self.view.get(record["window_start"])
        if held is not None and version(record) < version(held):
            self.out_of_order.append((held, record))
            return
        self.view[record["window_start"]] = record
        self._changed.set()

    async def connect(
        self,
        url: str,
        token: str,
        since: Any = None,
        transports: tuple[str, ...] = ("websocket",),
        auth: dict[str, Any] | None = None,
    ) -> bool:
        """Connect (again); False with :attr:`refusal` set when the node refuses."""
        await self.disconnect()
        client = socketio.AsyncClient(reconnection=False, handle_sigint=False, http_session=self.http_session)
        refusals: list[str] = []
        client.on(EMOJI_UPDATE, self._on_update)
        client.on(
            "connect_error",
            lambda data=None: refusals.append(str(data.get("message") if isinstance(data, dict) else data)),
        )
        if auth is None:
            auth = {"token": token} if since is None else {"token": token, "since": since}
        self.client = client
        started = time.monotonic()
        try:
            await client.connect(url, auth=auth, transports=list(transports), wait_timeout=15)
        except socketio.exceptions.ConnectionError as error:
            self.client = None
            self.refusal = "; ".join(refusals) or str(error)
            return False
        self.connected_at = started
        self.connect_seconds = time.monotonic() - started
        self.refusal = None
        return True

    async def disconnect(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.disconnect()
            except Exception:
                pass

    async def wait_for(self, predicate: Callable[[Watcher], bool], timeout: float, what: str) -> None:
        async def until() -> None:
            while not predicate(self):
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), 0.5)
                except TimeoutError:
                    pass

        try:
            await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.event_id}: timed out after {timeout:.0f} s waiting for {what}; "
                f"view {sorted((start, r['total']) for start, r in self.view.items())}"
            ) from None

    def totals(self) -> dict[int, int]:
        return {start: record["total"] for start, record in self.view.items()}


class RawEngineIO:
    """A viewer speaking Engine.IO v4 over ``websocket-client`` by hand, as a non-Python client would."""

    def __init__(self, node_url: str, origin: str | None = None, suppress_origin: bool = False):
        ws_url = node_url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        options: dict[str, Any] = {"timeout": 10, "suppress_origin": suppress_origin}
        if origin is not None:
            options["origin"] = origin
        # By default websocket-client sends Origin: http://<host:port>, the node's own origin.
        self.ws = websocket.create_connection(ws_url, **options)
        opening = self.ws.recv()
        if not (isinstance(opening, str) and opening.startswith("0{")):
            raise AssertionError(f"not an Engine.IO open packet: {opening!r}")

    def connect(self, auth: dict[str, Any]) -> str:
        """Send the Socket.IO CONNECT with ``auth``; the node's answer packet."""
        self.ws.send("40" + json.dumps(auth))
        return self.next_packet()

    def next_update(self) -> dict[str, Any]:
        """The next ``emoji_update`` (answering the server's pings meanwhile)."""
        while True:
            packet = self.next_packet()
            if packet.startswith("42"):
                name, record = json.loads(packet[2:])
                if name == EMOJI_UPDATE:
                    return record

    def next_packet(self) -> str:
        """The next Socket.IO packet from the node, as text (answering Engine.IO pings meanwhile)."""
        while True:
            packet = self.ws.recv()
            if packet == "2":  # Engine.IO ping: answer, or the server drops us
                self.ws.send("3")
                continue
            return packet

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
