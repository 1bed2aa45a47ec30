"""The crowd's pacing against an ingest that cannot keep up: bounded work, an honest report, a prompt stop."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from emostream.clients.books import Ledger
from emostream.clients.crowd import Crowd, CrowdPlan, parse_mix
from emostream.settings import DEFAULT_EMOJI
from emostream.wire import make_aggregate, now_ms


class SilentViewer:
    """A viewer that registers nowhere: these tests are about the senders."""

    def __init__(self, *args):
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class SlowIngest:
    """An ingest that takes ``delay`` seconds per request and counts what it has in hand."""

    def __init__(self, delay: float):
        self.delay = delay
        self.in_hand = 0
        self.peak = 0
        self.requests = 0
        self.last_request_at = 0.0  # monotonic

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.last_request_at = time.monotonic()
        self.in_hand += 1
        self.peak = max(self.peak, self.in_hand)
        try:
            await request.read()
            await asyncio.sleep(self.delay)
            return web.json_response({"accepted": 1, "received_at": now_ms()}, status=202)
        finally:
            self.in_hand -= 1


async def serve(ingest: SlowIngest) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/emoji", ingest.handle)
    app.router.add_post("/emojis", ingest.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


def plan(url: str, **changes) -> CrowdPlan:
    values = dict(
        ingest_urls=(url,),
        registration_url="http://127.0.0.1:9",
        viewers=2,
        rate=2_000.0,
        duration=2.0,
        probe_interval=0,
        drain=0.5,
        concurrency=8,
        seed=7,
        mix=parse_mix("", DEFAULT_EMOJI),
    )
    values.update(changes)
    return CrowdPlan(**values)


def test_a_crowd_asked_for_more_than_ingest_takes_keeps_its_work_bounded_and_says_what_it_could_not_send():
    async def scenario():
        ingest = SlowIngest(delay=0.2)
        runner, url = await serve(ingest)
        try:
            crowd = Crowd(plan(url), viewer_factory=SilentViewer)
            report = await asyncio.wait_for(crowd.run(), timeout=60)
            return crowd, ingest, report
        finally:
            await runner.cleanup()

    crowd, ingest, report = asyncio.run(scenario())

    assert crowd.in_flight_peak <= 8
    assert ingest.peak <= 8
    # 8 requests of 0.2 s in flight carry at most 40 emoji/s, against the 2,000/s asked for.
    assert report["emoji_asked"] >= 2_000
    assert report["emoji_sent"] == ingest.requests
    assert report["emoji_unsent"] == report["emoji_asked"] - report["emoji_sent"] > 0
    assert report["sent_per_second"] < report["asked_per_second"]
    assert report["emoji_accepted"] == report["emoji_sent"]
    # It stopped sending at its duration: no request began after that.
    assert report["sending_seconds"] >= 2.0
    assert ingest.last_request_at <= crowd._sending_stopped


def test_stop_ends_a_run_without_a_duration_promptly_and_still_reports():
    async def scenario():
        ingest = SlowIngest(delay=0.05)
        runner, url = await serve(ingest)
        try:
            crowd = Crowd(plan(url, duration=0, rate=200.0), viewer_factory=SilentViewer)
            run = asyncio.create_task(crowd.run())
            while ingest.requests < 20:
                await asyncio.sleep(0.05)
            crowd.stop()
            # Without a duration only stop() ends the run; the bound is generous.
            report = await asyncio.wait_for(run, timeout=30)
            return report, ingest.requests
        finally:
            await runner.cleanup()

    report, requests = asyncio.run(scenario())

    assert report["emoji_sent"] == requests >= 20
    assert report["emoji_accepted"] == requests


@pytest.mark.parametrize("viewers", [1, 3])
def test_settled_windows_keep_their_verdicts_and_drop_their_details(viewers):
    ledger = Ledger(2000)
    for v in range(viewers):
        ledger.viewer_events[f"v{v}"] = "final"
    for window_start in (0, 2000, 4000):
        ledger.accept("final", ["🔥", "🔥"], window_start + 10)
        for v in range(viewers):
            ledger.update(f"v{v}", make_aggregate("final", window_start, window_start + 2000, {"🔥": 2}))
    ledger.accept("final", ["👏"], 6010)  # a window no viewer got
    before = ledger.check(8000, ["final"])

    assert ledger.settle(6000, ["final"]) == 3

    assert ledger.check(8000, ["final"]) == before
    assert before["windows_checked"] == 4 and before["windows_exact"] == 3 and before["emoji_lost"] == 1
    assert set(ledger.accepted_by_window) == {("final", 6000)}
    assert all(set(seen) <= {("final", 6000)} for seen in ledger.final_by_viewer.values())


class RecordingService:
    """Registration and ingest in one: hands out send credentials (or none, as an older
    registration did) and keeps the Authorization header and sender of every emoji request."""

    def __init__(self, with_send_token: bool):
        self.with_send_token = with_send_token
        self.registered: list[tuple[str, str]] = []
        self.sent: list[tuple[str | None, str, str]] = []  # (Authorization, user_id, event_id)

    async def register(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.registered.append((body["client_id"], body["event_id"]))
        answer = {
            "client_id": body["client_id"],
            "event_id": body["event_id"],
            "cluster": 0,
            "subscriber": "c0-s0",
            "url": "http://127.0.0.1:9",
            "token": "t",
        }
        if self.with_send_token:
            answer["send_token"] = f"send-{body['client_id']}-{body['event_id']}"
        return web.json_response(answer)

    async def emoji(self, request: web.Request) -> web.Response:
        body = await request.json()
        for item in body if isinstance(body, list) else [body]:
            self.sent.append((request.headers.get("Authorization"), item["user_id"], item["event_id"]))
        return web.json_response({"accepted": 1, "received_at": now_ms()}, status=202)


@pytest.mark.parametrize("with_send_token", [True, False])
def test_each_sender_sends_with_the_credential_of_its_own_registration_or_none_from_an_older_service(
    with_send_token,
):
    async def scenario():
        service = RecordingService(with_send_token)
        app = web.Application()
        app.router.add_post("/register", service.register)
        app.router.add_post("/emoji", service.emoji)
        app.router.add_post("/emojis", service.emoji)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        try:
            changes = dict(registration_url=url, rate=100.0, duration=1.5, events=("final", "semi"), batch=3, senders=4)
            crowd = Crowd(plan(url, **changes), viewer_factory=SilentViewer)
            report = await asyncio.wait_for(crowd.run(), timeout=60)
            return service, report
        finally:
            await runner.cleanup()

    service, report = asyncio.run(scenario())

    assert report["emoji_accepted"] == len(service.sent) > 0
    # One registration per sender and event, however many requests it sent.
    assert len(service.registered) == len(set(service.registered)) <= 4 * 2
    for authorization, user_id, event_id in service.sent:
        assert (user_id, event_id) in service.registered
        expected = f"Bearer send-{user_id}-{event_id}" if with_send_token else None
        assert authorization == expected
