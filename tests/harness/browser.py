"""What the browser tests and bench/viewer_bench.py share: Chromium, the web stack, page helpers.

The stack is the whole pipeline with registration serving the pages (see
tests/browser/conftest.py for the fixtures that start it once per package).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

from emostream.settings import ROOT, Settings
from tests.harness.senders import send_headers
from tests.harness.stack import Stack, unique_stack_settings
from tests.harness.support import read_topic

CHROMIUM = Path(os.environ.get("EMOSTREAM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
SCREENSHOTS = ROOT / "docs" / "screenshots"
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


def web_stack_settings(base: Settings, state: Path, clusters: int) -> Settings:
    """A stack whose pages, served by registration, may call the other services from the browser."""
    settings = unique_stack_settings(base, state, clusters=clusters, subscribers_per_cluster=2, trigger_ms=300)
    # The pages are served by registration: its origin is the one the browser calls from.
    return settings.replace(cors_origins=(f"http://127.0.0.1:{settings.registration_port}",))


def serves_pages_and_counts(stack: Stack) -> None:
    """Registration serves the viewer page, and an emoji has gone all the way through."""
    page = requests.get(f"{stack.registration_url}/", timeout=10)
    assert page.status_code == 200 and b"emoji-buttons" in page.content, (
        f"registration does not serve the viewer page (HTTP {page.status_code}): "
        "its app must mount emostream.webui.blueprint(settings)"
    )
    warm_up(stack)


def warm_up(stack: Stack, timeout: float = 240.0) -> None:
    """Wait until one emoji has gone all the way to the aggregate topic.

    A fresh processor's first micro-batches take many seconds (Spark compiles its plans);
    the tests should measure a running pipeline, not a starting one.
    """
    event = event_id("warmup")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        emoji = {"user_id": "warmup", "emoji_type": "🔥", "timestamp": time.time_ns() // 1_000_000, "event_id": event}
        headers = send_headers(stack.settings, "warmup", event)
        requests.post(f"{stack.ingest_url}/emoji", json=emoji, headers=headers, timeout=10).raise_for_status()
        records = read_topic(
            stack.settings,
            stack.settings.aggregate_topic,
            until=lambda records: any(r.value.get("event_id") == event for r in records if isinstance(r.value, dict)),
            timeout=min(30.0, max(1.0, deadline - time.monotonic())),
        )
        if any(isinstance(r.value, dict) and r.value.get("event_id") == event for r in records):
            return
    raise TimeoutError(f"no aggregate reached {stack.settings.aggregate_topic} within {timeout:.0f} s")


@dataclass
class Viewer:
    """One browser tab on the viewer page, with what its console said."""

    page: object
    errors: list[str] = field(default_factory=list)

    def locator(self, selector: str, **options):
        return self.page.locator(selector, **options)

    def button(self, name: str):
        return self.page.get_by_role("button", name=f"Send {name}", exact=True)

    def tap(self, name: str, times: int = 1) -> None:
        """Click the button ``times`` in one go, so that every tap leaves the page within a moment.

        Clicked one by one through the browser driver, taps on a loaded machine can spread over
        more than what is left of a window.
        """
        self.button(name).evaluate("(button, times) => { for (let i = 0; i < times; i++) button.click(); }", times)

    def node(self) -> str:
        return self.page.locator("#status-node").inner_text()

    def fire_count(self):
        return self.page.locator('#window-counts li[data-emoji="🔥"] .wc-count')


def event_id(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


def wait_for_window_start(window_ms: int, earliest: int = 100, latest: int = 500) -> int:
    """Sleep until early in a window, so a few quick taps all land in it; return its start."""
    while True:
        now = time.time_ns() // 1_000_000
        position = now % window_ms
        if earliest <= position <= latest:
            return now - position
        time.sleep(((earliest - position) % window_ms) / 1000 + 0.001)


def wait_until(page, expression: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript expression until it is true (page.wait_for_function would need eval, which the CSP forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout:.0f} s: {expression}")
        time.sleep(0.25)


def screenshot(page, name: str, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if os.environ.get("EMOSTREAM_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / path.name)
    return path


def membership(stack: Stack) -> list[dict]:
    body = requests.get(f"{stack.registration_url}/subscribers", timeout=5).json()
    nodes = body.get("subscribers", body) if isinstance(body, dict) else body
    return list(nodes.values()) if isinstance(nodes, dict) else nodes
