"""Simulate a crowd: viewers register and listen, senders tap emoji, the books are checked.

python3 client_simulator.py                          20 viewers, 100 emoji/s, 30 s
python3 client_simulator.py --viewers 1000 --rate 2000 --duration 60 --events final,semi
python3 client_simulator.py --classic                the original: 5 threaded clients x 20 emoji
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from typing import Any

import requests

from emostream import logs
from emostream.clients.classic import run_classic
from emostream.clients.crowd import Crowd, CrowdPlan, parse_mix
from emostream.clients.report import dump, format_report, write_progress
from emostream.settings import Settings

log = logging.getLogger("emostream.clients.simulator")


def parse_args(settings: Settings, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_ingest = f"http://{settings.ingest_host}:{settings.ingest_port}"
    default_registration = f"http://{settings.registration_host}:{settings.registration_port}"
    parser.add_argument(
        "--ingest", default=default_ingest, help="ingest URL; several, comma-separated, are tried in turn"
    )
    parser.add_argument("--registration", default=default_registration, help="registration service URL")
    parser.add_argument("--viewers", type=int, default=20, help="viewers that register and listen")
    parser.add_argument("--senders", type=int, default=0, help="users that send (default: the viewers themselves)")
    parser.add_argument("--rate", type=float, default=100.0, help="emoji per second, all senders together")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of sending; 0 runs until Ctrl-C")
    parser.add_argument("--events", default="live", help="comma-separated event ids the crowd spreads over")
    parser.add_argument("--mix", default="", help='emoji weights, e.g. "🔥=5,👏=3,😂=1" (default: uniform)')
    parser.add_argument("--batch", type=int, default=1, help="emoji per request (1: POST /emoji, more: POST /emojis)")
    parser.add_argument("--burst-every", type=float, default=0.0, help="seconds between bursts (0: none)")
    parser.add_argument("--burst-seconds", type=float, default=2.0, help="length of a burst")
    parser.add_argument("--burst-factor", type=float, default=5.0, help="rate multiplier during a burst")
    parser.add_argument("--probe-interval", type=float, default=0.25, help="seconds between latency probes (0: none)")
    parser.add_argument(
        "--drain",
        type=float,
        default=0.0,
        help="most seconds to wait for final counts after sending (default: window + settle time + 4 s)",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight at most")
    parser.add_argument(
        "--wait-for-stack", type=float, default=0.0, help="wait up to this many seconds for ingest and registration"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable crowd")
    parser.add_argument("--json", action="store_true", help="print the final report as JSON")
    parser.add_argument(
        "--classic", action="store_true", help="the original behaviour: 5 threaded clients, 20 emoji each"
    )
    return parser.parse_args(argv)


def plan_from_args(args: argparse.Namespace, settings: Settings) -> CrowdPlan:
    try:
        mix = parse_mix(args.mix, settings.emoji_types)
    except ValueError as error:
        raise SystemExit(f"--mix: {error}") from None
    return CrowdPlan(
        ingest_urls=ingest_urls(args),
        registration_url=args.registration.rstrip("/"),
        viewers=args.viewers,
        senders=args.senders,
        rate=args.rate,
        duration=args.duration,
        events=tuple(e.strip() for e in args.events.split(",") if e.strip()),
        mix=mix,
        batch=max(1, args.batch),
        burst_every=args.burst_every,
        burst_seconds=args.burst_seconds,
        burst_factor=args.burst_factor,
        probe_interval=args.probe_interval,
        drain=args.drain,
        concurrency=args.concurrency,
        window_ms=settings.window_seconds * 1000,
        settle_ms=settings.settle_ms,
        seed=args.seed,
    )


def ingest_urls(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(u.strip().rstrip("/") for u in args.ingest.split(",") if u.strip())


def wait_for_stack(urls: list[str], timeout: float) -> None:
    """Wait until every service answers its /healthz with 200 (ok), or exit saying which did not."""
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not become healthy within {timeout:.0f} s")
            time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    """``client_simulator.py``: 0 when every finished window was exact, 2 when emoji were lost or doubled."""
    settings = Settings.from_env()
    logs.configure(settings)
    args = parse_args(settings, argv)
    if args.wait_for_stack:
        wait_for_stack([*ingest_urls(args), args.registration], args.wait_for_stack)
    if args.classic:
        results = run_classic(settings, ingest_urls(args)[0], args.registration)
        log.info("classic run finished: %s", results)
        return 0 if results.get("accepted") else 1
    report = asyncio.run(run(plan_from_args(args, settings)))
    if sys.stderr.isatty():
        sys.stderr.write("\n")  # after the progress line rewritten in place
    sys.stdout.write((dump(report) if args.json else format_report(report)) + "\n")
    return 0 if report["emoji_lost"] == 0 and report["emoji_extra"] == 0 else 2


async def run(plan: CrowdPlan) -> dict[str, Any]:
    crowd = Crowd(plan)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, crowd.stop)  # stop sending, report, unregister
    # In a log (make run) a progress line every few seconds would drown the services' lines.
    return await crowd.run(progress=write_progress, every=2.0 if sys.stderr.isatty() else 30.0)
