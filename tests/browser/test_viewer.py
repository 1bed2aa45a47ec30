"""The viewer page in a real browser against the real stack: taps, counts, isolation, access."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.harness.browser import DESKTOP, PHONE, event_id, screenshot, wait_for_window_start

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]

UPDATE_TIMEOUT_MS = 20_000  # "within a few seconds", with room for a loaded 2-core machine


def test_three_taps_show_in_their_window_for_every_viewer_of_the_event_and_no_other(open_viewer, web_stack):
    final = event_id("final")
    alice = open_viewer(final)
    bob = open_viewer(final)
    carol = open_viewer(event_id("semi"))

    window_start = wait_for_window_start(web_stack.settings.window_seconds * 1000)
    alice.tap("fire", 3)

    for viewer in (alice, bob):
        counts = viewer.locator("#window-counts")
        expect(counts).to_have_attribute("data-window-start", str(window_start), timeout=UPDATE_TIMEOUT_MS)
        expect(viewer.fire_count()).to_have_text("3", timeout=UPDATE_TIMEOUT_MS)
        expect(viewer.locator("#window-range")).to_contain_text("3 total")
        latest = viewer.locator(f'#window-strip li[data-window-start="{window_start}"] .strip-label')
        expect(latest).to_contain_text("🔥 3")

    # Alice sees her own delay, one figure per tap.
    expect(alice.locator("#delay-count")).to_have_text("3", timeout=UPDATE_TIMEOUT_MS)
    expect(alice.locator("#delay-last")).to_have_text(re.compile(r"^\d+(\.\d+)? m?s$"))
    expect(bob.locator("#delay-last")).to_have_text("–")  # Bob did not tap

    # Carol is live on her own event (she sees her own tap) and never got the other event's.
    carol.button("clap").click()
    expect(carol.locator('#window-counts li[data-emoji="👏"] .wc-count')).to_have_text("1", timeout=UPDATE_TIMEOUT_MS)
    expect(carol.fire_count()).to_have_text("0")
    expect(carol.locator("#window-strip .strip-label", has_text="🔥")).to_have_count(0)
    assert carol.page.evaluate("document.body.dataset.foreignUpdates") is None

    screenshot(alice.page, "viewer-desktop")
    for viewer in (alice, bob, carol):
        assert viewer.errors == []


def test_a_late_joiner_is_shown_the_events_windows_at_once_without_floating_them_as_live(open_viewer, web_stack):
    event = event_id("late")
    early = open_viewer(event)
    window_start = wait_for_window_start(web_stack.settings.window_seconds * 1000)
    early.tap("fire", 3)
    expect(early.fire_count()).to_have_text("3", timeout=UPDATE_TIMEOUT_MS)
    expect(early.page.locator("body")).to_have_attribute("data-floats", re.compile(r"^[1-9]"))

    late = open_viewer(event)

    # The node sends the event's recent windows on joining: the late joiner has the tap's window
    # at once, as history, neither floated nor taken for its own taps.
    latest = late.locator(f'#window-strip li[data-window-start="{window_start}"] .strip-label')
    expect(latest).to_contain_text("🔥 3", timeout=UPDATE_TIMEOUT_MS)
    expect(late.fire_count()).to_have_text("3")
    expect(late.page.locator("body")).to_have_attribute("data-replays", re.compile(r"^[1-9]"))
    assert late.page.evaluate("document.body.dataset.floats") is None
    expect(late.locator("#delay-last")).to_have_text("–")
    assert early.errors == [] and late.errors == []


def test_keyboard_alone_picks_an_event_and_sends_emoji(open_viewer, web_stack):
    viewer = open_viewer(event_id("start"))
    page = viewer.page
    target = event_id("keys")

    for _ in range(8):  # the skip link and the navigation come first
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "event-input":
            break
    expect(page.locator("#event-input")).to_be_focused()
    page.keyboard.press("Control+A")
    page.keyboard.type(target)
    page.keyboard.press("Enter")
    expect(viewer.locator("#status-event")).to_have_text(target)
    expect(viewer.locator("#status-connection")).to_have_attribute("data-state", "connected", timeout=30_000)

    # Keys 1..0 send the emoji in order, as the page says; focus must be outside the text field.
    page.locator("#emoji-buttons button").first.focus()
    wait_for_window_start(web_stack.settings.window_seconds * 1000)
    page.keyboard.press("2")  # 👏
    page.keyboard.press("Enter")  # activates the focused button: 🔥
    expect(viewer.locator("#delay-count")).to_have_text("2", timeout=UPDATE_TIMEOUT_MS)  # both counted
    strip = viewer.locator("#window-strip")
    expect(strip).to_contain_text("👏 1")
    expect(strip).to_contain_text("🔥 1")
    assert viewer.errors == []


def test_every_control_has_a_readable_name(open_viewer):
    viewer = open_viewer(event_id("names"))
    buttons = viewer.locator("#emoji-buttons button")
    expect(buttons).to_have_count(10)
    names = [buttons.nth(i).get_attribute("aria-label") for i in range(10)]
    assert all(name and name.startswith("Send ") and len(name) > len("Send ") for name in names)
    assert len(set(names)) == 10
    expect(viewer.page.get_by_label("Event", exact=True)).to_be_visible()
    expect(viewer.page.get_by_role("status").first).to_be_attached()


def _boxes(page) -> dict[str, tuple]:
    selectors = ["#stage", "#emoji-buttons", "#window-counts", "#window-strip", "#delay-last", "#status-connection"]
    boxes = {}
    for selector in selectors:
        box = page.locator(selector).bounding_box()
        boxes[selector] = (round(box["x"]), round(box["y"]), round(box["width"]), round(box["height"]))
    return boxes


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_updates_do_not_move_the_layout_and_nothing_scrolls_sideways(open_viewer, web_stack, viewport):
    viewer = open_viewer(event_id("layout"), viewport)
    page = viewer.page
    before = _boxes(page)

    wait_for_window_start(web_stack.settings.window_seconds * 1000)
    for name in ("fire", "clap", "love", "fire"):
        viewer.button(name).click()
    expect(viewer.locator("#delay-count")).to_have_text("4", timeout=UPDATE_TIMEOUT_MS)  # all four counted

    assert _boxes(page) == before
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    if viewport is PHONE:
        screenshot(page, "viewer-phone", full_page=True)
    assert viewer.errors == []
