"""What the fan-out tests share: settings for a small fast topology, waiting, aggregates."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import requests

from emostream import kafka
from emostream.clients.viewer import Viewer
from emostream.fanout.ops import ensure_fanout_topics
from emostream.settings import Settings
from emostream.wire import make_aggregate
from tests.harness.settings import unique_topics
from tests.harness.support import free_port


def fanout_settings(base: Settings, **overrides: Any) -> Settings:
    """Topics of their own, free ports, nodes on port 0, and heartbeats fast enough for tests.

    The expiry leaves room for a loaded test machine: a node that stalls for a few seconds
    must not be taken for dead in a test about something else.
    """
    settings = unique_topics(base).replace(
        subscriber_base_port=0,
        registration_port=free_port(),
        manager_port=free_port(),
        pubsub_metrics_port=free_port(),
        heartbeat_seconds=1.0,
        heartbeat_expiry_seconds=6.0,
        token_ttl_seconds=600,
        **overrides,
    )
    kafka.ensure_topics(settings)
    ensure_fanout_topics(settings)
    return settings


def registration_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.registration_port}"


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (requests.RequestException, KeyError, ValueError) as error:
            last = error
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def membership(settings: Settings) -> dict[str, Any]:
    """GET /subscribers of the registration service."""
    return requests.get(registration_url(settings) + "/subscribers", timeout=5).json()


def live_nodes(settings: Settings) -> dict[str, dict[str, Any]]:
    return {node["subscriber_id"]: node for node in membership(settings)["subscribers"] if node["alive"]}


def publish_aggregates(settings: Settings, aggregates: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write aggregates to the aggregate topic (what the processor would do), keyed as the contract says."""
    producer = kafka.producer(settings)
    sent = []
    try:
        for aggregate in aggregates:
            producer.send(
                settings.aggregate_topic, key=f"{aggregate['event_id']}|{aggregate['window_start']}", value=aggregate
            )
            sent.append(aggregate)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)
    return sent


def windows(event_id: str, starts: Iterable[int], base_ms: int = 1_700_000_000_000) -> list[dict[str, Any]]:
    """One aggregate per window start (in window numbers), for ``event_id``."""
    return [
        make_aggregate(event_id, base_ms + n * 2000, base_ms + (n + 1) * 2000, {"🔥": 1000 * n + 7, "👏": n + 1})
        for n in starts
    ]


def received_windows(viewer: Any) -> list[int]:
    """The window starts a viewer received, in arrival order."""
    return [delivery.aggregate["window_start"] for delivery in viewer.deliveries]


async def all_connected(viewers: Iterable[Any], timeout: float) -> None:
    """Wait until every viewer is connected; on timeout say which are not and why."""
    viewers = list(viewers)
    try:
        await asyncio.wait_for(asyncio.gather(*(viewer.wait_connected() for viewer in viewers)), timeout)
    except TimeoutError:
        stuck = [
            f"{viewer.client_id} (seen {viewer.subscribers_seen}, last error {viewer.last_error!r})"
            for viewer in viewers
            if not viewer.connected
        ]
        raise AssertionError(f"{len(stuck)} viewer(s) not connected after {timeout:.0f} s: {stuck}") from None


@asynccontextmanager
async def started_viewers(
    settings: Settings, count: int, event_id: str, timeout: float = 60, **options: Any
) -> AsyncIterator[list[Viewer]]:
    """``count`` viewers of ``event_id``, started; every viewer in the list is closed at the end.

    Viewers added to the list inside the block are closed with the others.
    """
    viewers = [Viewer(registration_url(settings), event_id=event_id, **options) for _ in range(count)]
    try:
        await asyncio.gather(*(viewer.start(timeout=timeout) for viewer in viewers))
        yield viewers
    finally:
        await asyncio.gather(*(viewer.close() for viewer in viewers))


def served_by(viewers: list[Viewer], node_id: str) -> list[Viewer]:
    """The viewers connected to ``node_id``; a test that takes that node away needs at least one."""
    on_node = [viewer for viewer in viewers if viewer.subscriber == node_id]
    assert on_node, f"the balancer put nobody on {node_id}"
    return on_node


async def rejoin(
    settings: Settings, viewers: list[Viewer], displaced: list[Viewer], fresh: int, timeout: float
) -> list:
    """After a node went away: ``fresh`` new viewers of "final" join (added to ``viewers``),
    ``displaced`` ones connect again, and the membership counts every viewer."""
    newcomers = [Viewer(registration_url(settings), event_id="final") for _ in range(fresh)]
    await asyncio.gather(*(viewer.start(timeout=timeout) for viewer in newcomers))
    viewers.extend(newcomers)
    await all_connected(displaced, 60)
    await asyncio.to_thread(
        wait_until,
        lambda: membership(settings)["connections"] == len(viewers),
        30,
        "every viewer connected again",
    )
    return newcomers


async def event_in_heartbeats(settings: Settings, event_id: str) -> None:
    """Wait until a live node's heartbeat lists ``event_id``: routing follows heartbeats."""
    await asyncio.to_thread(
        wait_until,
        lambda: any(node["events"].get(event_id) for node in live_nodes(settings).values()),
        30,
        "the viewer's event in a heartbeat",
    )
