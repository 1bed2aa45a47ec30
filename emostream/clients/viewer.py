"""A viewer of a live event, as an asyncio client: register, connect, receive, recover.

::

    async with Viewer("http://127.0.0.1:5001", event_id="final") as viewer:
        await viewer.wait_for_updates(3, timeout=10)
        for delivery in viewer.deliveries:
            print(delivery.aggregate["window_start"], delivery.delay_ms())

A :class:`Viewer` registers (``POST /register``), connects Socket.IO to the node it
was given with its token, and records every ``emoji_update`` with its receive time
(or hands it to ``on_update``). When it loses its node without asking to (the node
died, stopped, or refused the token), it registers again and connects wherever it
is sent, after an exponential backoff with full jitter, so a node's viewers do not
come back all at once. :meth:`close` disconnects and gives the slot back.

What it holds of its event is :attr:`Viewer.windows`, the newest record of each recent
window: records are cumulative per window, so a repeated window is an overwrite (the higher
``total``, then the later ``emitted_at``). Every time it connects again it asks the node for
the windows it may not hold final (``auth={"token", "since"}``, see :meth:`Viewer.since`),
and the node sends them before its live updates. Those come back as deliveries marked
``replayed`` (the rule is in :mod:`emostream.clients.probes`): they update the windows but
are never timed.

Thousands of viewers can share one process and one ``aiohttp.ClientSession``
(pass ``http_session``); the load generators and end-to-end tests do.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import socketio

from emostream.clients.probes import sent_before
from emostream.clients.registration import AsyncRegistration, RegistrationError, send_headers
from emostream.settings import Settings
from emostream.wire import EMOJI_UPDATE, aggregate_version, now_ms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One ``emoji_update`` as this viewer received it."""

    aggregate: dict[str, Any]
    received_at: float  # time.time() at arrival
    subscriber: str | None  # the node it came through
    replayed: bool = False  # no newer than the window held, or routed before the connection opened

    def delay_ms(self, since: str = "routed_at") -> float | None:
        """Milliseconds from a timestamp in the aggregate (e.g. ``routed_at``, ``emitted_at``) to arrival.

        None for a replayed record: it waited for the viewer, its arrival times nothing.
        """
        if self.replayed:
            return None
        stamp = self.aggregate.get(since)
        if not isinstance(stamp, (int, float)):
            return None
        return self.received_at * 1000 - stamp


def backoff_delays(initial: float, maximum: float, rng: random.Random | None = None) -> Iterator[float]:
    """Full-jitter exponential backoff: the n-th delay is uniform in [0, min(maximum, initial·2ⁿ)].

    The jitter is what spreads the viewers of a dead node over time instead of
    sending them all to registration in the same instant.
    """
    rng = rng or random.Random()
    ceiling = initial
    while True:
        yield rng.uniform(0, ceiling)
        ceiling = min(maximum, ceiling * 2)


class Viewer:
    """One viewer: registration, a Socket.IO connection, and what it received.

    ``settle_ms`` is how long after its end a window's count is final when nothing fails (by
    default ``EMOSTREAM_SETTLE_MS``); ``windows_kept`` bounds :attr:`windows` to the newest
    windows, enough for a viewer to know what it holds of a reconnection's replay.
    """

    def __init__(
        self,
        registration_url: str,
        event_id: str = "live",
        client_id: str | None = None,
        *,
        http_session: aiohttp.ClientSession | None = None,
        on_update: Callable[[Viewer, Delivery], None] | None = None,
        history: int | None = 10_000,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        connect_timeout: float = 10.0,
        transports: tuple[str, ...] = ("websocket",),
        rng: random.Random | None = None,
        settle_ms: int | None = None,
        windows_kept: int = 64,
    ):
        self.registration_url = registration_url.rstrip("/")
        self.event_id = event_id
        self.client_id = client_id
        self.on_update = on_update
        self.deliveries: collections.deque[Delivery] = collections.deque(maxlen=history)
        self.received = 0  # every update, replays included
        self.replayed = 0  # updates that were replays
        self.windows: dict[int, dict[str, Any]] = {}  # window_start → the newest record held
        self.settle_ms = Settings.from_env().settle_ms if settle_ms is None else settle_ms
        self.windows_kept = max(1, windows_kept)
        self.assignment: dict[str, Any] | None = None
        self.registrations = 0
        self.reconnects = 0
        self.subscribers_seen: list[str] = []
        self.last_error: str | None = None
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.transports = transports
        self._rng = rng or random.Random()
        self._session = http_session
        self._own_session = http_session is None
        self._registration: AsyncRegistration | None = None
        self._client: socketio.AsyncClient | None = None
        self._connected = asyncio.Event()
        self._update = asyncio.Event()
        self._recovery: asyncio.Task | None = None
        self._closing = False

    # ----------------------------------------------------------------- public

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def subscriber(self) -> str | None:
        return None if self.assignment is None else self.assignment["subscriber"]

    @property
    def send_headers(self) -> dict[str, str]:
        """The headers that send emoji as this viewer in its event (none before it registered, or
        when registration handed out no send credential)."""
        return {} if self.assignment is None else send_headers(self.assignment)

    async def start(self, timeout: float | None = None) -> Viewer:
        """Register and connect, retrying with backoff; return once connected."""
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._registration = AsyncRegistration(self.registration_url, self._session)
        await asyncio.wait_for(self._establish(), timeout)
        return self

    async def close(self) -> None:
        """Disconnect and give the slot back (best effort: registration may be gone)."""
        self._closing = True
        if self._recovery is not None and not self._recovery.done():
            self._recovery.cancel()
        client, self._client = self._client, None
        self._connected.clear()
        if client is not None:
            await _quietly(client.disconnect())
        if self.assignment is not None and self._registration is not None:
            try:
                await self._registration.unregister(self.assignment)
            except (TimeoutError, RegistrationError) as error:
                log.debug("unregistering %s failed: %s", self.client_id, error)
        if self._own_session and self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> Viewer:
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def wait_for(self, predicate: Callable[[Viewer], bool], timeout: float) -> None:
        """Wait until ``predicate(self)`` holds, re-checking on every delivery and connect."""

        async def until() -> None:
            while not predicate(self):
                self._update.clear()
                await self._update.wait()

        await asyncio.wait_for(until(), timeout)

    async def wait_for_updates(self, count: int, timeout: float) -> None:
        """Wait until ``count`` updates have arrived in total (replays included)."""
        await self.wait_for(lambda viewer: viewer.received >= count, timeout)

    def since(self) -> int | None:
        """The ``since`` to connect with: the window_start of the oldest window that may not be final here.

        A window's count settles within ``settle_ms`` of its end, so when the newest window held
        is N, a window that ended up to ``settle_ms`` before N may still change: ask again from
        ⌈settle / window⌉ windows before N, and one more (a late record of an older window can be
        written in the processor's batch after N's). A correction after a Kafka outage, up to the
        processor's watermark, reaches a connected viewer live like any update.
        None when nothing is held: the node then sends its history of the event.
        """
        if not self.windows:
            return None
        newest = self.windows[max(self.windows)]
        window_ms = newest["window_end"] - newest["window_start"]
        return newest["window_start"] - (-(-self.settle_ms // window_ms) + 1) * window_ms

    def _hold(self, aggregate: Any) -> bool:
        """Keep the record if it is newer than the held copy of its window; whether it was."""
        if not _is_window_record(aggregate):
            return False
        start = aggregate["window_start"]
        held = self.windows.get(start)
        if held is not None:
            if aggregate_version(aggregate) <= aggregate_version(held):
                return False  # a repeat: records are cumulative per window
        elif len(self.windows) >= self.windows_kept and start < min(self.windows):
            return False  # older than every window kept: final long ago
        self.windows[start] = aggregate
        if len(self.windows) > self.windows_kept:
            del self.windows[min(self.windows)]
        return True

    # ----------------------------------------------------------------- registration

    async def _register(self) -> dict[str, Any]:
        assert self._registration is not None, "start() first"
        assignment = await self._registration.register(self.event_id, self.client_id)
        self.client_id = assignment["client_id"]
        self.assignment = assignment
        self.registrations += 1
        return assignment

    # ----------------------------------------------------------------- connection

    async def _establish(self, wait_first: bool = False) -> None:
        """Register and connect until it works; back off with jitter between attempts."""
        delays = backoff_delays(self.backoff_initial, self.backoff_max, self._rng)
        if wait_first:
            await asyncio.sleep(next(delays))
        while not self._closing:
            try:
                assignment = await self._register()
                await self._connect(assignment)
                return
            except RegistrationError as error:
                if not error.retryable:
                    raise  # a 4xx is our mistake; retrying cannot fix it
                self.last_error = str(error)
            except (TimeoutError, socketio.exceptions.ConnectionError, aiohttp.ClientError, OSError) as error:
                self.last_error = str(error) or type(error).__name__
            await asyncio.sleep(next(delays))

    async def _connect(self, assignment: dict[str, Any]) -> None:
        client = socketio.AsyncClient(reconnection=False, handle_sigint=False, http_session=self._session)
        subscriber = assignment["subscriber"]
        # When this connection opened (epoch ms): the node accepted it; until then, when it was asked for.
        opened_at = [now_ms()]

        def on_open() -> None:
            opened_at[0] = now_ms()

        def on_update(aggregate: Any) -> None:
            newer = self._hold(aggregate)
            replayed = not newer or sent_before(aggregate, opened_at[0])
            delivery = Delivery(aggregate, time.time(), subscriber, replayed)
            self.deliveries.append(delivery)
            self.received += 1
            self.replayed += replayed
            self._update.set()
            if self.on_update is not None:
                self.on_update(self, delivery)

        def on_disconnect(reason: Any = None) -> None:
            if client is not self._client:
                return  # an old connection going away
            self._connected.clear()
            self._update.set()
            if not self._closing and (self._recovery is None or self._recovery.done()):
                log.debug("viewer %s lost %s (%s); recovering", self.client_id, subscriber, reason)
                self._recovery = asyncio.ensure_future(self._recover())

        refusal: list[str] = []

        def on_connect_error(data: Any = None) -> None:
            # The node's reason for refusing, e.g. "the token has expired".
            refusal.append(str(data.get("message", data) if isinstance(data, dict) else data))

        client.on(EMOJI_UPDATE, on_update)
        client.on("connect", on_open)
        client.on("disconnect", on_disconnect)
        client.on("connect_error", on_connect_error)
        self._client = client
        auth: dict[str, Any] = {"token": assignment["token"]}
        since = self.since()
        if since is not None:
            auth["since"] = since  # the node sends every window from it before the live ones
        try:
            await client.connect(
                assignment["url"],
                auth=auth,
                transports=list(self.transports),
                wait_timeout=self.connect_timeout,
            )
        except socketio.exceptions.ConnectionError as error:
            self._client = None
            await _quietly(client.disconnect())
            if refusal:
                raise socketio.exceptions.ConnectionError(f"{subscriber} refused: {refusal[-1]}") from error
            raise
        except BaseException:
            self._client = None
            await _quietly(client.disconnect())
            raise
        if self._closing:  # close() ran while connecting
            await _quietly(client.disconnect())
            return
        self.subscribers_seen.append(subscriber)
        self._connected.set()
        self._update.set()

    async def _recover(self) -> None:
        try:
            # The first attempt waits a jittered moment too: that spreads a dead node's viewers.
            await self._establish(wait_first=True)
        except RegistrationError as error:
            self.last_error = str(error)
            log.warning("viewer %s gave up recovering: %s", self.client_id, error)
            return
        if self.connected:
            self.reconnects += 1


def _is_window_record(aggregate: Any) -> bool:
    """An aggregate whose window and version can be read (the node only sends such ones)."""
    if not isinstance(aggregate, dict):
        return False
    numbers = [aggregate.get(name) for name in ("window_start", "window_end", "total")]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        return False
    return numbers[1] > numbers[0]


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:  # tearing down a connection that is already gone
        log.debug("ignored an error while disconnecting", exc_info=True)
