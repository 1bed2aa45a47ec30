"""Browser tests: Debian's headless Chromium, driven by Playwright, against the whole stack.

One stack serves every browser test of this package (Spark takes a while to start):
the processor, ingest, registration (which serves the pages), the main publisher and the
subscriber manager with 2 clusters x 2 nodes, each a child process on free ports.
Screenshots land in test-artifacts/browser/; with EMOSTREAM_UPDATE_SCREENSHOTS=1 they are
also copied to docs/screenshots/, the ones the README shows.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator

import pytest

from emostream.settings import ROOT
from emostream.webui.pages import SOCKETIO_DIST
from tests.harness.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    Viewer,
    serves_pages_and_counts,
    web_stack_settings,
)
from tests.harness.stack import Stack, running_stack


def _missing(reason: str) -> None:
    # On CI a missing browser is a broken set-up, not a reason to skip silently.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


# Package scope: Playwright's sync API runs an event loop in this thread while it lives, and
# the rest of the suite calls asyncio.run(), so the browser must be gone when this package ends.
@pytest.fixture(scope="package")
def browser():
    if not CHROMIUM.is_file() and os.environ.get("CI") and os.geteuid() == 0:
        # A fresh CI machine: the project's own installer fetches Debian's package.
        subprocess.run([str(ROOT / "bin" / "setup-browser")], check=False, timeout=600)
    if not CHROMIUM.is_file():
        _missing(f"{CHROMIUM} is missing: run bin/setup-browser")
    if not (SOCKETIO_DIST / "socket.io.min.js").is_file():
        _missing("web/node_modules is missing: run bin/setup")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="package")
def web_stack(base_settings, tmp_path_factory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("browser-stack")
    settings = web_stack_settings(base_settings, state, clusters=2)
    with running_stack(settings, state, timeout=240, ready=serves_pages_and_counts) as stack:
        yield stack


@pytest.fixture
def open_page(browser, web_stack: Stack) -> Iterator[Callable[..., Viewer]]:
    """Open a page of the stack in a fresh browser context (its own storage: its own viewer id)."""
    contexts = []

    def open_(path: str = "/", viewport: dict | None = None) -> Viewer:
        context = browser.new_context(viewport=viewport or DESKTOP, device_scale_factor=1)
        contexts.append(context)
        page = context.new_page()
        viewer = Viewer(page)
        page.on("console", lambda message: message.type == "error" and viewer.errors.append(message.text))
        page.on("pageerror", lambda error: viewer.errors.append(str(error)))
        page.goto(f"{web_stack.registration_url}{path}")
        return viewer

    yield open_
    for context in contexts:
        context.close()


@pytest.fixture
def open_viewer(open_page) -> Callable[..., Viewer]:
    """A viewer page on ``event``, connected to its subscriber node."""
    from playwright.sync_api import expect

    def open_(event: str, viewport: dict | None = None) -> Viewer:
        viewer = open_page(f"/?event={event}", viewport)
        expect(viewer.locator("#status-connection")).to_have_attribute("data-state", "connected", timeout=30_000)
        expect(viewer.locator("#status-event")).to_have_text(event)
        return viewer

    return open_
