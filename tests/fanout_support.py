"""What the fan-out tests share: settings for a small fast topology, waiting, aggregates."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import requests

from emostream import kafka
from emostream.fanout.ops import ensure_fanout_topics
from emostream.settings import Settings
from emostream.wire import make_aggregate
from tests.conftest import unique_topics
from tests.support import free_port


def fanout_settings(base: Settings, **overrides: Any) -> Settings:
    """Topics of their own, free ports, nodes on port 0, and heartbeats fast enough for tests."""
    settings = unique_topics(base).replace(
        subscriber_base_port=0,
        registration_port=free_port(),
        manager_port=free_port(),
        pubsub_metrics_port=free_port(),
        heartbeat_seconds=0.5,
        heartbeat_expiry_seconds=2.0,
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
    import asyncio

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
