"""A viewer whose subscriber node dies re-registers and carries on from another node, with `since`.

Its own module, after the others: it kills one of the shared stack's nodes.
"""

from __future__ import annotations

import math
import os
import re
import signal
from urllib.parse import urlsplit

import psutil
import pytest
from playwright.sync_api import expect

from tests.harness.browser import event_id, membership, screenshot, wait_for_window_start

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.spark, pytest.mark.faults]


def node_pid(stack, subscriber_id: str) -> int:
    """The process of a subscriber node: from its heartbeat, else whoever listens on its port."""
    node = next(n for n in membership(stack) if n.get("subscriber_id", n.get("id")) == subscriber_id)
    if node.get("pid"):
        return int(node["pid"])
    port = urlsplit(node["url"]).port
    for connection in psutil.net_connections("tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return connection.pid
    raise LookupError(f"no process listens for {subscriber_id} on port {port}")


def test_killing_the_viewers_node_shows_reconnecting_then_updates_resume_from_another_node(open_viewer, web_stack):
    event = event_id("outage")
    viewer = open_viewer(event)
    page = viewer.page
    window_ms = web_stack.settings.window_seconds * 1000

    fire_window = wait_for_window_start(window_ms)
    viewer.button("fire").click()
    expect(viewer.fire_count()).to_have_text("1", timeout=20_000)
    expect(viewer.locator("#delay-count")).to_have_text("1", timeout=20_000)
    assert page.evaluate("document.body.dataset.since") == ""  # a first connection asks for no window again
    lost = (viewer.node(), viewer.locator("#status-node").get_attribute("title"))

    os.kill(node_pid(web_stack, lost[0]), signal.SIGKILL)

    connection = viewer.locator("#status-connection")
    expect(connection).to_have_attribute("data-state", "reconnecting", timeout=10_000)
    screenshot(page, "viewer-reconnecting")
    expect(connection).to_have_attribute("data-state", "connected", timeout=45_000)
    # The manager restarts a dead node under the same id, but never at the same address here.
    now_on = (viewer.node(), viewer.locator("#status-node").get_attribute("title"))
    assert now_on != lost, "the viewer came back on the node that was killed"
    # It came back asking for every window it may not hold final: from its newest (the tap's) back
    # over the settle time and one more; the node sent the tap's window again, held as it was.
    lateness = math.ceil(web_stack.settings.settle_ms / window_ms) + 1
    assert page.evaluate("document.body.dataset.since") == str(fire_window - lateness * window_ms)
    expect(page.locator("body")).to_have_attribute("data-replays", re.compile(r"^[1-9]"), timeout=20_000)
    fire_slot = viewer.locator(f'#window-strip li[data-window-start="{fire_window}"] .strip-label')
    expect(fire_slot).to_contain_text("🔥 1")

    window_start = wait_for_window_start(window_ms)
    viewer.tap("party", 2)
    expect(viewer.locator("#window-counts")).to_have_attribute("data-window-start", str(window_start), timeout=20_000)
    expect(viewer.locator('#window-counts li[data-emoji="🎉"] .wc-count')).to_have_text("2", timeout=20_000)
    # Three taps, three delays: nothing sent again was timed as a tap's.
    expect(viewer.locator("#delay-count")).to_have_text("3", timeout=20_000)
    expect(fire_slot).to_contain_text("🔥 1")
    # The only console errors allowed are the browser's own reports of the dead node's socket.
    unexpected = [e for e in viewer.errors if "WebSocket" not in e and "ERR_CONNECTION_REFUSED" not in e]
    assert unexpected == []
