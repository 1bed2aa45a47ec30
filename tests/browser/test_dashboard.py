"""The operator dashboard in a real browser, while the client simulator drives the stack."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.harness.browser import screenshot, wait_until
from tests.harness.support import ServiceProcess

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]

NUMBER = re.compile(r"^\d+(\.\d+)?k?$")
DURATION = re.compile(r"^\d+(\.\d+)? m?s$")
VIEWERS = 8


@pytest.fixture
def crowd(web_stack, tmp_path):
    """The client simulator: viewers on two events and a steady stream of taps, for a minute at most."""
    simulator = ServiceProcess(
        "client_simulator.py",
        web_stack.settings,
        tmp_path,
        "--viewers",
        str(VIEWERS),
        "--rate",
        "60",
        "--duration",
        "60",
        "--events",
        "dash-a,dash-b",
        "--probe-interval",
        "0",
    )
    yield simulator
    simulator.stop(timeout=30)


def tile_number(page, tile: str):
    return page.locator(f"#{tile} .tile-number")


def test_dashboard_charts_show_live_numbers_while_the_simulator_runs(open_page, web_stack, crowd):
    dashboard = open_page("/dashboard")
    page = dashboard.page

    # Every service answers its /healthz.
    expect(page.locator('#services li[data-up="true"]')).to_have_count(5, timeout=30_000)

    # Emoji flow in, aggregates flow out, batches take time, viewers are connected.
    expect(tile_number(page, "tile-ingest")).to_have_text(NUMBER, timeout=30_000)
    expect(tile_number(page, "tile-aggregates")).to_have_text(NUMBER, timeout=30_000)
    expect(tile_number(page, "tile-batch")).to_have_text(DURATION, timeout=30_000)
    expect(tile_number(page, "tile-viewers")).to_have_text(str(VIEWERS), timeout=30_000)
    # End to end: the dashboard's own probe taps and times the whole pipeline.
    expect(tile_number(page, "tile-latency")).to_have_text(DURATION, timeout=45_000)
    assert float(tile_number(page, "tile-ingest").inner_text().rstrip("k")) > 0

    # The subscriber nodes of both clusters with their load.
    settings = web_stack.settings
    nodes = settings.clusters * settings.subscribers_per_cluster
    expect(page.locator("#clusters section.cluster")).to_have_count(settings.clusters)
    expect(page.locator("#clusters tbody tr")).to_have_count(nodes)

    # The charts are drawn, and they move: a line of several points in every tile (20 s of them).
    wait_until(
        page,
        "Number(document.body.dataset.samples || 0) >= 20"
        " && document.querySelectorAll('.tile svg polyline.line').length >= 6",
    )
    for tile in ("tile-ingest", "tile-aggregates", "tile-batch", "tile-viewers", "tile-latency", "tile-nodes"):
        points = page.locator(f"#{tile} svg polyline.line").first.get_attribute("points")
        assert len(points.split()) >= 2, tile
    first = page.locator("#updated").inner_text()
    expect(page.locator("#updated")).not_to_have_text(first, timeout=5_000)

    screenshot(page, "dashboard")
    assert dashboard.errors == []
    assert crowd.alive(), crowd.log()


def test_a_viewer_in_the_simulated_crowd_sees_its_windows_fill_up(open_viewer, crowd):
    viewer = open_viewer("dash-a")
    # Five windows of the crowd's taps on the strip, and a total on the stage.
    wait_until(viewer.page, "document.querySelectorAll('#window-strip li.strip-slot:not(.empty)').length >= 5", 60)
    expect(viewer.locator("#stage-total")).to_have_text(re.compile(r"^[1-9]"))
    screenshot(viewer.page, "viewer-crowd")
    assert viewer.errors == []
