"""Tap → on screen: the viewer page in headless Chromium against a Python viewer, same stack, same run.

    .venv/bin/python bench/viewer_bench.py                 # 20 taps each, 1 cluster x 2 nodes
    .venv/bin/python bench/viewer_bench.py --taps 40

It starts the whole stack on free ports (processor, ingest, registration with the pages,
main publisher, subscriber manager), waits until one emoji has gone all the way through,
then measures two viewers side by side, each on an event of its own:

``python``   the dashboard's synthetic viewer (emostream.webui.LatencyProbe: requests +
             python-socketio): tap → the ``emoji_update`` that counts it: the baseline
``browser``  the viewer page in Debian's headless Chromium: a click on 🔥 → the page has
             the window that counts it (the delay the page itself shows)

Both tap in the middle of a window, once a window each. The difference is what the
browser adds on top of the pipeline: the click, CORS, the page's JavaScript. The whole
pipeline dominates both; on a busy 2-core machine expect seconds, not milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from _common import kafka_for_bench

from emostream import webui
from tests.harness.browser import CHROMIUM, CHROMIUM_ARGS, wait_for_window_start, warm_up, web_stack_settings
from tests.harness.settings import isolated_settings
from tests.harness.stack import Stack, running_stack


def parse_seconds(text: str) -> float:
    value, unit = text.split()
    return float(value) / 1000 if unit == "ms" else float(value)


def quantiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * len(ordered))) - 1)]
    return statistics.median(ordered), p95, ordered[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taps", type=int, default=20, help="taps per viewer")
    parser.add_argument(
        "--bootstrap", help="Kafka bootstrap servers (default: EMOSTREAM_KAFKA_BOOTSTRAP, else a broker of its own)"
    )
    args = parser.parse_args(argv)
    if not CHROMIUM.is_file():
        raise SystemExit(f"{CHROMIUM} is missing: run bin/setup-browser")

    state = Path(tempfile.mkdtemp(prefix="viewer-bench-"))
    with kafka_for_bench(args.bootstrap, state, heap="384m", kill=True) as bootstrap:
        settings = web_stack_settings(isolated_settings(state, kafka_bootstrap=bootstrap), state, clusters=1)
        print(f"starting the stack (logs in {state / 'logs'}) ...", flush=True)
        with running_stack(settings, state, timeout=240, ready=warm_up) as stack:
            python, browser = measure(stack, args.taps)

    print(f"\ntap → on screen, {args.taps} taps each, 1 cluster x 2 nodes, trigger {settings.trigger_ms} ms")
    print(f"{'viewer':<10}{'taps':>6}{'p50 s':>9}{'p95 s':>9}{'max s':>9}")
    for name, values in (("python", python), ("browser", browser)):
        if values:
            p50, p95, top = quantiles(values)
            print(f"{name:<10}{len(values):>6}{p50:>9.3f}{p95:>9.3f}{top:>9.3f}")
        else:
            print(f"{name:<10}{0:>6}{'–':>9}{'–':>9}{'–':>9}")
    if python and browser:
        extra = statistics.median(browser) - statistics.median(python)
        print(f"\nthe browser adds {extra * 1000:+.0f} ms at the median over the python baseline (same run)")
    return 0


def measure(stack: Stack, taps: int) -> tuple[list[float], list[float]]:
    from playwright.sync_api import expect, sync_playwright

    settings = stack.settings
    window_ms = settings.window_seconds * 1000
    probe = webui.LatencyProbe(settings, stack.ingest_url, stack.registration_url)
    python: list[float] = []
    observe = probe.histogram.observe
    probe.histogram.observe = lambda seconds: (python.append(seconds), observe(seconds))  # type: ignore[method-assign]
    probe.wanted()

    browser: list[float] = []
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = chromium.new_page(viewport={"width": 1366, "height": 900})
        page.goto(f"{stack.registration_url}/?event=bench-{uuid.uuid4().hex[:8]}")
        expect(page.locator("#status-connection")).to_have_attribute("data-state", "connected", timeout=30_000)
        fire = page.get_by_role("button", name="Send fire", exact=True)
        for tap in range(1, taps + 1):
            probe.wanted()
            # Three quarters into a window: the probe taps at one and three quarters of its own.
            wait_for_window_start(window_ms, earliest=window_ms // 2, latest=window_ms * 3 // 4)
            fire.click()
            expect(page.locator("#delay-last")).to_have_attribute("data-taps-timed", str(tap), timeout=60_000)
            browser.append(parse_seconds(page.locator("#delay-last").inner_text()))
            print(f"\rtap {tap}/{taps}", end="", flush=True)
        chromium.close()
    deadline = time.monotonic() + 10
    while len(python) < taps and time.monotonic() < deadline:
        probe.wanted()
        time.sleep(0.5)
    return python[:taps], browser


if __name__ == "__main__":
    raise SystemExit(main())
