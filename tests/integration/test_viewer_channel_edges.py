"""The viewer channel at its edges: every stock client and transport, late joiners, reconnects, bad `since`.

Real broker, real services: registration, the main publisher, one cluster publisher per
cluster and one subscriber node in each of two clusters, every one its own process. The
aggregates are written to the aggregate topic as the processor writes them (cumulative per
window, the current window every half second, a late update of the window before), and
reach the viewers through the main and cluster publishers. The clients are the stock ones:
python-socketio's ``Client`` and ``AsyncClient``, and ``websocket-client`` speaking Engine.IO;
and the project's own :class:`~emostream.clients.viewer.Viewer`, which registers and comes back
by itself.
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import socketio
import websocket

from emostream.clients.viewer import Viewer
from emostream.settings import Settings
from emostream.wire import EMOJI_UPDATE, aggregate_version, make_aggregate, now_ms
from tests.harness.fanout import fanout_settings, live_nodes, publish_aggregates, registration_url, wait_until
from tests.harness.faults import wait_for_topic_metadata
from tests.harness.support import ServiceProcess, metric_of, wait_http
from tests.harness.viewer_channel import LiveEvent, RawEngineIO, Watcher, node_token

pytestmark = pytest.mark.integration

NODES = {"c0-s0": 0, "c1-s0": 1}
WINDOW_MS = 2000


class EdgeStack:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.services: dict[str, ServiceProcess] = {}

    def url(self, node_id: str) -> str:
        return live_nodes(self.settings)[node_id]["url"]

    def metric(self, node_id: str, name: str, **labels: str) -> float:
        return metric_of(self.url(node_id) + "/metrics", name, 0.0, **labels)

    def token(self, node_id: str, event_id: str) -> str:
        return node_token(self.settings, node_id, event_id)

    def wait_connections(self, expected: dict[str, int]) -> None:
        """Wait until the nodes' heartbeats count these connections: registration balances by them."""
        wait_until(
            lambda: {node: live_nodes(self.settings)[node]["connections"] for node in expected} == expected,
            30,
            f"connections {expected} in the heartbeats",
        )

    def wait_routed(self, node_id: str, *event_ids: str) -> None:
        """Wait until the node's heartbeat lists the events: the main publisher routes by heartbeats."""
        wait_until(
            lambda: all(live_nodes(self.settings)[node_id]["events"].get(event_id) for event_id in event_ids),
            30,
            f"{event_ids} in the heartbeat of {node_id}",
        )


@pytest.fixture(scope="module")
def stack(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeStack]:
    settings = fanout_settings(
        base_settings, clusters=2, subscribers_per_cluster=1, max_subscribers_per_cluster=1, subscriber_capacity=1000
    )
    wait_for_topic_metadata(settings)
    log_dir = tmp_path_factory.mktemp("viewer-channel-logs")
    edge = EdgeStack(settings)
    edge.services["registration"] = ServiceProcess("registration_app.py", settings, log_dir)
    edge.services["publisher"] = ServiceProcess("pubsub_service.py", settings, log_dir)
    for cluster in range(settings.clusters):
        edge.services[f"cluster-publisher-{cluster}"] = ServiceProcess(
            "pubsub_service.py", settings, log_dir, "--cluster", str(cluster)
        )
    for node_id, cluster in NODES.items():
        edge.services[node_id] = ServiceProcess(
            "subscriber_service.py", settings, log_dir, "--id", node_id, "--cluster", str(cluster), "--port", "0"
        )
    try:
        wait_http(registration_url(settings) + "/healthz", 60, edge.services["registration"].process)
        wait_until(lambda: sorted(live_nodes(settings)) == sorted(NODES), 90, "both subscriber nodes live")
        publisher = f"http://127.0.0.1:{settings.pubsub_metrics_port}/healthz"
        wait_until(lambda: requests.get(publisher, timeout=5).ok, 90, "the main publisher consuming")
        yield edge
    finally:
        for service in reversed(list(edge.services.values())):
            service.stop()
        for name, service in edge.services.items():
            text = service.log_path.read_text(errors="replace")
            if "Traceback" in text:
                print(f"--- {name} ---\n{text[-4000:]}")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def current_window(event_id: str, total: int = 7) -> dict[str, Any]:
    start = now_ms() // WINDOW_MS * WINDOW_MS
    return make_aggregate(event_id, start, start + WINDOW_MS, {"🔥": total})


# --------------------------------------------------------------------------- clients and transports


class SyncViewer:
    """python-socketio's synchronous ``Client`` (websocket-client underneath for WebSocket)."""

    def __init__(self, transports: list[str] | None):
        self.client = socketio.Client(reconnection=False, handle_sigint=False)
        self.transports = transports
        self.updates: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client.on(EMOJI_UPDATE, self.updates.put)

    def connect(self, url: str, token: str) -> None:
        self.client.connect(url, auth={"token": token}, transports=self.transports, wait_timeout=15)

    def transport(self) -> str:
        return self.client.transport()

    def close(self) -> None:
        self.client.disconnect()


def test_every_stock_client_connects_on_every_transport_and_gets_its_events_updates(stack: EdgeStack):
    node = "c0-s0"
    url = stack.url(node)
    kinds = ["Client", "Client websocket", "AsyncClient", "AsyncClient websocket", "websocket-client Engine.IO"]
    events = {kind: unique("kind") for kind in kinds}
    sync_viewers = {"Client": SyncViewer(None), "Client websocket": SyncViewer(["websocket"])}
    async_viewers = {
        "AsyncClient": Watcher(events["AsyncClient"]),
        "AsyncClient websocket": Watcher(events["AsyncClient websocket"]),
    }
    raw = RawEngineIO(url)  # websocket-client's default Origin: the node's own

    async def scenario() -> dict[str, Any]:
        try:
            for kind, viewer in sync_viewers.items():
                await asyncio.to_thread(viewer.connect, url, stack.token(node, events[kind]))
            await async_viewers["AsyncClient"].connect(
                url, stack.token(node, events["AsyncClient"]), transports=("polling", "websocket")
            )
            await async_viewers["AsyncClient websocket"].connect(
                url, stack.token(node, events["AsyncClient websocket"])
            )
            answer = raw.connect({"token": stack.token(node, events["websocket-client Engine.IO"])})
            assert answer.startswith("40{"), f"the raw Engine.IO connect was answered {answer!r}"
            await asyncio.to_thread(stack.wait_routed, node, *events.values())
            sent = publish_aggregates(
                stack.settings, [current_window(event_id, n + 1) for n, event_id in enumerate(events.values())]
            )
            by_event = {record["event_id"]: record for record in sent}
            received: dict[str, Any] = {}
            for kind, viewer in sync_viewers.items():
                received[kind] = await asyncio.to_thread(viewer.updates.get, True, 30)
            for kind, viewer in async_viewers.items():
                await viewer.wait_for(lambda w: bool(w.view), 30, "its update")
                received[kind] = next(iter(viewer.view.values()))
            received["websocket-client Engine.IO"] = await asyncio.to_thread(raw.next_update)
            # The default transports start on polling and must be upgraded, not stuck there.
            await asyncio.to_thread(
                wait_until, lambda: sync_viewers["Client"].transport() == "websocket", 30, "the Client's upgrade"
            )
            async_client = async_viewers["AsyncClient"].client
            assert async_client is not None
            for _ in range(300):
                if async_client.transport() == "websocket":
                    break
                await asyncio.sleep(0.1)
            transports = {
                "Client": sync_viewers["Client"].transport(),
                "Client websocket": sync_viewers["Client websocket"].transport(),
                "AsyncClient": async_client.transport(),
            }
            return {"received": received, "sent": by_event, "transports": transports}
        finally:
            for viewer in sync_viewers.values():
                await asyncio.to_thread(viewer.close)
            for viewer in async_viewers.values():
                await viewer.disconnect()
            raw.close()

    outcome = asyncio.run(scenario())

    for kind in kinds:
        assert outcome["received"][kind] == outcome["sent"][events[kind]], kind
    assert outcome["transports"] == {"Client": "websocket", "Client websocket": "websocket", "AsyncClient": "websocket"}
    assert all(alive for alive in (service.alive() for service in stack.services.values()))


def test_a_foreign_browser_origin_is_refused_on_polling_and_websocket_and_the_nodes_own_is_accepted(stack: EdgeStack):
    url = stack.url("c0-s0")
    own = url  # http://host:port: what a page served by the node, or websocket-client, sends
    listed = stack.settings.cors_origins[0]
    foreign = "http://evil.example"

    def polling_status(origin: str | None) -> int:
        headers = {"Origin": origin} if origin else {}
        return requests.get(
            url + "/socket.io/", params={"EIO": "4", "transport": "polling"}, headers=headers, timeout=5
        ).status_code

    def websocket_opens(origin: str | None) -> bool:
        try:
            RawEngineIO(url, origin=origin, suppress_origin=origin is None).close()
            return True
        except (AssertionError, websocket.WebSocketException, OSError):
            return False  # refused at the upgrade, or closed before Engine.IO opened

    def stock_client_with(origin: str | None) -> str:
        # websocket-client sends the node's own origin unless told another one.
        options = {} if origin is None else {"websocket_extra_options": {"origin": origin}}
        client = socketio.Client(reconnection=False, handle_sigint=False, **options)
        try:
            client.connect(
                url, auth={"token": stack.token("c0-s0", "origin")}, transports=["websocket"], wait_timeout=10
            )
            client.disconnect()
            return "connected"
        except (socketio.exceptions.ConnectionError, ValueError) as error:
            return f"refused: {error}"

    assert {origin: polling_status(origin) for origin in (None, own, listed, foreign)} == {
        None: 200,
        own: 200,
        listed: 200,
        foreign: 400,
    }
    assert {origin: websocket_opens(origin) for origin in (None, own, listed, foreign)} == {
        None: True,
        own: True,
        listed: True,
        foreign: False,
    }
    assert stock_client_with(None) == "connected"
    assert stock_client_with(listed) == "connected"
    assert stock_client_with(foreign).startswith("refused")


# --------------------------------------------------------------------------- state on join


def test_a_viewer_joining_ten_seconds_into_an_event_is_sent_every_window_so_far_at_once_on_any_node(stack: EdgeStack):
    event_id = unique("late")
    early = Watcher(event_id)
    late = {node: Watcher(event_id) for node in NODES}  # c0 held the event all along; c1 never saw it

    async def scenario() -> dict[str, Any]:
        live = None
        try:
            assert await early.connect(stack.url("c0-s0"), stack.token("c0-s0", event_id))
            await asyncio.to_thread(stack.wait_routed, "c0-s0", event_id)
            live = LiveEvent(stack.settings, event_id).start()
            await asyncio.sleep(10)
            windows_before = {}
            first_full: dict[str, float] = {}
            for node, watcher in late.items():
                windows_before[node] = set(live.finals())
                assert await watcher.connect(stack.url(node), stack.token(node, event_id))
            for node, watcher in late.items():
                await watcher.wait_for(
                    lambda w, node=node: windows_before[node] <= set(w.view), 30, "every window so far"
                )
                first_full[node] = (
                    max(
                        min(at for at, record in watcher.arrivals if record["window_start"] == start)
                        for start in windows_before[node]
                    )
                    - watcher.connected_at
                )
            await asyncio.sleep(2)
            live.stop()
            finals = live.finals()
            for watcher in (early, *late.values()):
                await watcher.wait_for(
                    lambda w: all(w.view.get(s, {}).get("total") == t for s, t in finals.items()),
                    30,
                    "every window's final count",
                )
            return {"windows_before": windows_before, "first_full": first_full, "finals": live.final_counts()}
        finally:
            if live is not None and live._thread is not None and live._thread.is_alive():
                live.stop()
            for watcher in (early, *late.values()):
                await watcher.disconnect()

    outcome = asyncio.run(scenario())

    print(
        "connect -> every earlier window, by node:",
        {node: f"{seconds * 1000:.0f} ms" for node, seconds in outcome["first_full"].items()},
    )
    for node, watcher in late.items():
        assert len(outcome["windows_before"][node]) >= 5, "ten seconds make five windows or more"
        first_seen = list(dict.fromkeys(record["window_start"] for _, record in watcher.arrivals))
        assert first_seen == sorted(first_seen), f"{node}: windows not sent oldest first"
        assert first_seen[0] == min(outcome["windows_before"][node])
        assert {start: record["counts"] for start, record in watcher.view.items()} == {
            start: {emoji: n for emoji, n in counts.items() if n} for start, counts in outcome["finals"].items()
        }
        assert watcher.out_of_order == [] and watcher.foreign == []
    assert early.out_of_order == []


# --------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("back_on", ["c0-s0", "c1-s0"], ids=["same node", "node of another cluster"])
def test_a_viewer_away_six_seconds_that_reconnects_with_since_ends_with_every_window_exact(
    stack: EdgeStack, back_on: str
):
    event_id = unique("away")
    watcher = Watcher(event_id)
    readbacks_before = stack.metric(back_on, "emostream_subscriber_readbacks_total")

    async def scenario() -> dict[str, Any]:
        live = LiveEvent(stack.settings, event_id).start()
        try:
            assert await watcher.connect(stack.url("c0-s0"), stack.token("c0-s0", event_id))
            await watcher.wait_for(lambda w: len(w.view) >= 3, 30, "three windows")
            await watcher.disconnect()
            # The viewer cannot know a window final until the processor's lateness has passed: ask again for two.
            since = max(watcher.view) - 2 * WINDOW_MS
            await asyncio.sleep(6)
            reconnected_at = time.monotonic()
            assert await watcher.connect(stack.url(back_on), stack.token(back_on, event_id), since=since)
            await asyncio.sleep(3)
        finally:
            live.stop()
        finals = live.finals()
        await watcher.wait_for(
            lambda w: all(
                w.view.get(start, {}).get("total") == total for start, total in finals.items() if start >= min(w.view)
            ),
            30,
            "every window exact",
        )
        after = [record for at, record in watcher.arrivals if at >= reconnected_at]
        await watcher.disconnect()
        return {"since": since, "finals": finals, "after": after}

    outcome = asyncio.run(scenario())

    finals = outcome["finals"]
    first = min(watcher.view)
    assert watcher.totals() == {start: total for start, total in finals.items() if start >= first}
    assert len([start for start in finals if start >= first]) >= 7, "six seconds away and more around it"
    assert watcher.out_of_order == [] and watcher.foreign == []
    assert all(record["window_start"] >= outcome["since"] for record in outcome["after"]), "sent a window before since"
    if back_on == "c1-s0":
        assert stack.metric(back_on, "emostream_subscriber_readbacks_total") > readbacks_before


class AtTheCeiling(random.Random):
    """Backoff without jitter: every wait is its ceiling, so a viewer stays away exactly that long."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.mark.parametrize("back_on", ["c0-s0", "c1-s0"], ids=["same node", "node of another cluster"])
def test_the_python_viewer_dropped_for_six_seconds_comes_back_by_itself_with_since_and_every_window_exact(
    stack: EdgeStack, back_on: str
):
    event_id = unique("comeback")
    readbacks_before = stack.metric(back_on, "emostream_subscriber_readbacks_total")
    # Idle connections of another event steer registration, which sends a viewer to the least-loaded node.
    ballast = [Watcher("ballast") for _ in range(6)]
    viewer = Viewer(
        registration_url(stack.settings),
        event_id=event_id,
        backoff_initial=6.0,
        backoff_max=6.0,
        rng=AtTheCeiling(),
        settle_ms=stack.settings.settle_ms,
    )

    async def steer(counts: dict[str, int], viewer_on: str | None = None) -> None:
        """Hold ``counts`` ballast connections on the nodes, and wait until registration sees them."""
        for watcher in ballast:
            await watcher.disconnect()
        watchers = iter(ballast)
        for node, count in counts.items():
            for _ in range(count):
                assert await next(watchers).connect(stack.url(node), stack.token(node, "ballast"))
        seen = {node: count + (node == viewer_on) for node, count in counts.items()}
        await asyncio.to_thread(stack.wait_connections, seen)

    async def scenario() -> dict[str, Any]:
        live = LiveEvent(stack.settings, event_id).start()
        try:
            await steer({"c0-s0": 0, "c1-s0": 2})
            await viewer.start(timeout=30)
            assert viewer.subscriber == "c0-s0"
            await viewer.wait_for(lambda v: len(v.windows) >= 4, 30)
            if back_on == "c1-s0":  # make c1-s0 the least loaded once the viewer has gone
                await steer({"c0-s0": 3, "c1-s0": 0}, viewer_on="c0-s0")
            held_before = {start: aggregate_version(record) for start, record in viewer.windows.items()}
            # Registration takes the slot back, as it does for a viewer that gives it up or is moved:
            # the node drops the connection, and the viewer registers again after its backoff.
            assignment = viewer.assignment
            answer = await asyncio.to_thread(
                requests.post,
                registration_url(stack.settings) + "/unregister",
                json={"client_id": assignment["client_id"], "token": assignment["token"]},
                timeout=10,
            )
            assert answer.status_code == 200, answer.text
            await viewer.wait_for(lambda v: not v.connected, 15)
            dropped_at = time.time()
            since = viewer.since()
            await viewer.wait_for(lambda v: v.connected, 30)
            back_at = time.time()
            await asyncio.sleep(3)
        finally:
            live.stop()
            for watcher in ballast:
                await watcher.disconnect()
        finals = live.finals()
        await viewer.wait_for(
            lambda v: all(v.windows.get(start, {}).get("total") == total for start, total in finals.items()),
            30,
        )
        await viewer.close()
        return {
            "since": since,
            "held_before": held_before,
            "dropped_at": dropped_at,
            "back_at": back_at,
            "finals": live.final_counts(),
        }

    outcome = asyncio.run(scenario())

    assert viewer.subscribers_seen == ["c0-s0", back_on]
    assert (viewer.registrations, viewer.reconnects) == (2, 1)
    assert outcome["back_at"] - outcome["dropped_at"] >= 5.5, "not away the six seconds of its backoff"
    # Every window of the event exact, each held once (an overwrite per window, never a sum).
    finals = outcome["finals"]
    assert len(finals) >= 8, "six seconds away and more around it"
    assert {start: record["counts"] for start, record in viewer.windows.items()} == {
        start: {emoji: n for emoji, n in counts.items() if n} for start, counts in finals.items()
    }
    # It came back with since: the node sent every window from it, and none before.
    after = [delivery for delivery in viewer.deliveries if delivery.received_at > outcome["dropped_at"]]
    assert outcome["since"] is not None
    assert min(delivery.aggregate["window_start"] for delivery in after) == outcome["since"]
    # What it held already, and what was routed while it was away, came again as replays: never timed.
    held_before = outcome["held_before"]
    for delivery in after:
        record = delivery.aggregate
        if aggregate_version(record) <= held_before.get(record["window_start"], (-1, -1)):
            assert delivery.replayed, delivery
        if record.get("routed_at", record["emitted_at"]) < outcome["dropped_at"] * 1000:
            assert delivery.replayed and delivery.delay_ms() is None, delivery
    assert any(not delivery.replayed for delivery in after), "nothing live after the replay"
    # No record counted as new twice: one fresh delivery at most per window and version.
    fresh = [(d.aggregate["window_start"], aggregate_version(d.aggregate)) for d in viewer.deliveries if not d.replayed]
    assert len(fresh) == len(set(fresh))
    if back_on == "c1-s0":
        assert stack.metric(back_on, "emostream_subscriber_readbacks_total") > readbacks_before


# --------------------------------------------------------------------------- bad input and stampedes


def test_since_values_that_are_not_epoch_milliseconds_are_refused_and_others_are_served(stack: EdgeStack):
    node = "c0-s0"
    url = stack.url(node)
    event_id = unique("since")
    refused_before = stack.metric(node, "emostream_subscriber_refused_total", reason="bad_since")
    bad = {"true": True, "float": 1.5, "string": str(now_ms()), "huge": 2**60, "list": [now_ms()]}

    async def scenario() -> dict[str, Any]:
        live = LiveEvent(stack.settings, event_id).start()
        try:
            await asyncio.sleep(4.5)
            started = min(live.finals())
            refusals = {}
            for name, since in bad.items():
                watcher = Watcher(event_id)
                assert not await watcher.connect(url, stack.token(node, event_id), since=since), name
                refusals[name] = watcher.refusal
            served = {}
            for name, since in {
                "none": None,
                "zero": 0,
                "negative": -5,
                "past the horizon": now_ms() - 3_600_000,
                "in the future": now_ms() + 3_600_000,
                "the event's start": started,
            }.items():
                watcher = Watcher(event_id)
                assert await watcher.connect(url, stack.token(node, event_id), since=since), (name, watcher.refusal)
                await watcher.wait_for(lambda w: bool(w.view), 30, f"an update for since={since!r}")
                served[name] = min(watcher.view)
                await watcher.disconnect()
            raw_refusals = []
            for text in ('{"token": "%s", "since": 1e400}', '{"token": "%s", "since": 123456789012345678901234567890}'):
                raw = RawEngineIO(url)
                try:
                    raw.ws.send("40" + text % stack.token(node, event_id))
                    raw_refusals.append(raw.next_packet())
                finally:
                    raw.close()
            return {"refusals": refusals, "served": served, "raw": raw_refusals, "started": started}
        finally:
            live.stop()

    outcome = asyncio.run(scenario())

    for name, message in outcome["refusals"].items():
        assert "since" in (message or ""), (name, message)
    for packet in outcome["raw"]:
        assert packet.startswith("44") and "since" in json.loads(packet[2:])["message"], packet
    started = outcome["started"]
    served = outcome["served"]
    for name in ("none", "zero", "negative", "past the horizon", "the event's start"):
        assert served[name] == started, f"{name}: served from {served[name]}, the event started at {started}"
    assert served["in the future"] > started
    assert stack.metric(node, "emostream_subscriber_refused_total", reason="bad_since") - refused_before == len(bad) + 2
    assert requests.get(url + "/healthz", timeout=5).status_code == 200


def test_many_viewers_reconnecting_at_once_to_a_node_without_the_event_share_one_read_back(stack: EdgeStack):
    node = "c1-s0"
    url = stack.url(node)
    event_id = unique("stampede")
    viewers = [Watcher(event_id) for _ in range(60)]
    before = {
        "readbacks": stack.metric(node, "emostream_subscriber_readbacks_total"),
        "started": stack.metric(node, "emostream_subscriber_readback_waits_total", flight="started"),
        "shared": stack.metric(node, "emostream_subscriber_readback_waits_total", flight="shared"),
    }

    async def scenario() -> dict[int, int]:
        # Nobody watches the event anywhere: its windows are only in the aggregate topic.
        live = LiveEvent(stack.settings, event_id).start()
        try:
            await asyncio.sleep(6)
            since = min(live.finals())
            connected = await asyncio.gather(
                *(viewer.connect(url, stack.token(node, event_id), since=since) for viewer in viewers)
            )
            assert all(connected), [viewer.refusal for viewer in viewers if viewer.refusal]
            await asyncio.sleep(2)
        finally:
            live.stop()
        finals = live.finals()
        for viewer in viewers:
            await viewer.wait_for(lambda w: w.totals() == finals, 30, "every window exact")
        for viewer in viewers:
            await viewer.disconnect()
        return finals

    finals = asyncio.run(scenario())

    assert len(finals) >= 4
    assert stack.metric(node, "emostream_subscriber_readbacks_total") - before["readbacks"] == 1
    assert stack.metric(node, "emostream_subscriber_readback_waits_total", flight="started") - before["started"] == 1
    shared = stack.metric(node, "emostream_subscriber_readback_waits_total", flight="shared") - before["shared"]
    print(
        f"{len(viewers)} viewers reconnecting at once: 1 read-back, {shared:.0f} shared it, the rest served from memory"
    )
    assert all(viewer.out_of_order == [] for viewer in viewers)
    assert stack.metric(node, "emostream_subscriber_history_events") >= 1
    assert stack.metric(node, "emostream_subscriber_history_bytes") > 0
