"""Viewer tokens, secrets in logs, and debug modes, against the running services.

A token is the only thing that lets a viewer onto a subscriber node. These tests play
the attacker with a real Socket.IO client: tokens forged, tampered, expired, replayed
at another node, replayed after being given back, and used to reach another event's
updates. Then they check that no service ever wrote the secret (or a whole token) to
its log, and that no debugger or stack trace is reachable in the default configuration.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
import zlib
from typing import Any

import pytest
import requests
import socketio
from flask import Blueprint

from emostream.fanout.membership import Membership
from emostream.fanout.registration import ViewerControl
from emostream.fanout.registration import create_app as create_registration_app
from emostream.ingest.api import create_app as create_ingest_app
from emostream.ingest.batcher import EmojiBatcher
from emostream.settings import ROOT, Settings
from emostream.wire import EMOJI_UPDATE, TokenClaims, issue_token
from tests.harness.fanout import live_nodes, publish_aggregates, wait_until, windows
from tests.harness.security import SecurityStack

pytestmark = pytest.mark.integration

# Tokens this module was handed or made; none may show up in a log.
ISSUED: list[str] = []


def register(stack: SecurityStack, client_id: str, event_id: str) -> dict[str, Any]:
    answer = requests.post(
        stack.registration_url + "/register", json={"client_id": client_id, "event_id": event_id}, timeout=5
    )
    assert answer.status_code == 200, answer.text
    assignment = answer.json()
    ISSUED.append(assignment["token"])
    return assignment


async def connect(url: str, auth: Any) -> tuple[socketio.AsyncClient | None, str | None]:
    """Connect a real Socket.IO client; (client, None) when let in, (None, the node's reason) when refused."""
    client = socketio.AsyncClient(reconnection=False, handle_sigint=False)
    reasons: list[str] = []
    client.on(
        "connect_error", lambda data=None: reasons.append(str(data.get("message") if isinstance(data, dict) else data))
    )
    try:
        await client.connect(url, auth=auth, transports=["websocket"], wait_timeout=10)
    except socketio.exceptions.ConnectionError as error:
        await client.disconnect()
        return None, reasons[-1] if reasons else str(error)
    return client, None


def resign(token: str, change: dict[str, Any]) -> str:
    """The token with its claims changed but its old signature kept (what an attacker can do)."""
    payload, signature = token.rsplit(".", 1)
    compressed = payload.startswith(".")  # itsdangerous marks a zlib-compressed payload so
    payload = payload.removeprefix(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    claims = json.loads(zlib.decompress(raw) if compressed else raw)
    claims.update(change)
    encoded = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).decode().rstrip("=")
    return f"{encoded}.{signature}"


def test_a_node_lets_in_only_its_own_valid_tokens_and_refuses_every_forgery_and_replay(security_stack: SecurityStack):
    stack = security_stack
    settings = stack.settings
    assignment = register(stack, "token-owner", "tokens")
    token, home = assignment["token"], assignment["subscriber"]
    other = next(node for node in live_nodes(settings) if node != home)
    home_url, other_url = assignment["url"], live_nodes(settings)[other]["url"]
    soon = int(time.time()) + 600

    attempts = {
        "forged with another secret": (
            home_url,
            issue_token(b"guessed-secret", TokenClaims("x", "tokens", home, soon)),
        ),
        "expired": (
            home_url,
            issue_token(settings.secret, TokenClaims("token-owner", "tokens", home, int(time.time()) - 5)),
        ),
        "replayed at another node": (other_url, token),
        "claims changed to another node": (other_url, resign(token, {"s": other})),
        "claims changed to another event": (home_url, resign(token, {"e": "someone-elses-event"})),
        "expiry pushed back": (home_url, resign(token, {"x": soon + 10**6})),
        "signature dropped": (home_url, token.rsplit(".", 1)[0]),
        "not a string": (home_url, {"nested": token}),
    }
    ISSUED.extend(token for _, token in attempts.values() if isinstance(token, str))

    async def scenario() -> tuple[dict[str, str | None], str | None, str | None]:
        refusals = {}
        for name, (url, attempt) in attempts.items():
            client, reason = await connect(url, {"token": attempt})
            if client is not None:
                await client.disconnect()
            refusals[name] = reason
        owner, refused = await connect(home_url, {"token": token})
        assert refused is None, refused
        dropped = asyncio.Event()
        owner.on("disconnect", lambda reason=None: dropped.set())
        given_back = requests.post(
            stack.registration_url + "/unregister", json={"client_id": "token-owner", "token": token}, timeout=5
        )
        assert given_back.status_code == 200, given_back.text
        try:
            await asyncio.wait_for(dropped.wait(), 15)
            drop = None
        except TimeoutError:
            drop = "the node kept the connection of a token that was given back"
        await owner.disconnect()
        _, after_unregister = await connect(home_url, {"token": token})
        return refusals, drop, after_unregister

    refusals, drop, after_unregister = asyncio.run(scenario())

    let_in = [name for name, reason in refusals.items() if reason is None]
    assert let_in == [], f"let in: {let_in}"
    assert "another subscriber node" in refusals["replayed at another node"]
    assert "expired" in refusals["expired"]
    for name in (
        "forged with another secret",
        "claims changed to another event",
        "expiry pushed back",
        "signature dropped",
    ):
        assert "not valid" in refusals[name], (name, refusals[name])
    assert drop is None, drop
    assert after_unregister is not None and "unregistered" in after_unregister


def test_a_token_for_one_event_never_delivers_another_events_updates(security_stack: SecurityStack):
    stack = security_stack
    settings = stack.settings
    mine, theirs = "event-mine", "event-theirs"
    intruder = register(stack, "intruder", mine)
    watcher = register(stack, "watcher", theirs)  # so the publishers do route the other event here

    async def scenario() -> tuple[list[str], list[str]]:
        seen: dict[str, list[str]] = {"intruder": [], "watcher": []}
        clients = []
        for name, assignment, auth in (
            # The intruder asks for the other event every way it could think of.
            (
                "intruder",
                intruder,
                {"token": intruder["token"], "event_id": theirs, "room": theirs, "events": [theirs]},
            ),
            ("watcher", watcher, {"token": watcher["token"]}),
        ):
            client, refused = await connect(assignment["url"], auth)
            assert refused is None, refused
            client.on(EMOJI_UPDATE, lambda aggregate, name=name: seen[name].append(aggregate["event_id"]))
            clients.append(client)
        try:
            intruder_client = clients[0]
            for trick in ("join", "join_room", "subscribe", "enter_room"):
                await intruder_client.emit(trick, {"room": theirs, "event_id": theirs})
            await asyncio.to_thread(
                wait_until,
                lambda: all(
                    any(node["events"].get(event) for node in live_nodes(settings).values()) for event in (mine, theirs)
                ),
                30,
                "both events in the heartbeats",
            )
            publish_aggregates(settings, windows(theirs, [1, 2, 3]) + windows(mine, [4]))
            await asyncio.wait_for(_until(lambda: len(seen["watcher"]) >= 3 and len(seen["intruder"]) >= 1), 30)
            # A later round reaching both: the node sent it after the first, on the same connections,
            # so anything of the first round misrouted to the intruder would have come before it.
            publish_aggregates(settings, windows(theirs, [5]) + windows(mine, [6]))
            await asyncio.wait_for(_until(lambda: len(seen["watcher"]) >= 4 and len(seen["intruder"]) >= 2), 30)
            return seen["intruder"], seen["watcher"]
        finally:
            for client in clients:
                await client.disconnect()

    intruder_got, watcher_got = asyncio.run(scenario())

    assert intruder_got == [mine] * 2
    assert watcher_got == [theirs] * 4


def test_unregister_needs_the_clients_own_unforged_token(security_stack: SecurityStack):
    stack = security_stack
    victim = register(stack, "victim", "tokens")
    url = stack.registration_url + "/unregister"
    stranger = requests.post(url, json={"client_id": "stranger", "token": victim["token"]}, timeout=5)
    forged = requests.post(
        url,
        json={"client_id": "victim", "token": resign(victim["token"], {"c": "victim", "x": int(time.time()) + 10**6})},
        timeout=5,
    )
    assert stranger.status_code == 403
    assert forged.status_code == 401


def test_the_secret_and_whole_tokens_never_appear_in_a_log_or_an_answer(security_stack: SecurityStack):
    stack = security_stack
    secret = stack.settings.token_secret
    # Traffic that touches tokens everywhere: registrations, connections, refusals, give-backs.
    assignment = register(stack, "log-watch", "tokens")

    async def touch() -> None:
        client, _ = await connect(assignment["url"], {"token": assignment["token"]})
        await connect(assignment["url"], {"token": assignment["token"] + "x"})
        if client is not None:
            await client.disconnect()

    asyncio.run(touch())
    requests.post(
        stack.registration_url + "/unregister",
        json={"client_id": "log-watch", "token": assignment["token"]},
        timeout=5,
    )
    answers = {
        url: requests.get(url, timeout=5).text
        for base in (stack.ingest_url, stack.registration_url, stack.publisher_ops_url, *_node_urls(stack))
        for url in (base + "/healthz", base + "/metrics")
    }
    answers[stack.registration_url + "/subscribers"] = requests.get(
        stack.registration_url + "/subscribers", timeout=5
    ).text

    logs = stack.logs()
    assert sum(len(text) for text in logs.values()) > 10_000, "the services logged almost nothing at DEBUG"
    assert len(ISSUED) >= 2
    leaks = [
        (name, what)
        for name, text in {**logs, **answers}.items()
        for what, needle in [("secret", secret)] + [("token", token) for token in ISSUED]
        if needle in text
    ]
    assert leaks == []


def test_no_debugger_and_no_stack_trace_is_reachable_in_the_default_configuration(security_stack: SecurityStack):
    stack = security_stack
    services = {
        "ingest": stack.ingest_url,
        "registration": stack.registration_url,
        "publisher": stack.publisher_ops_url,
        **{f"node {n}": url for n, url in zip(("c0-s0", "c0-s1"), _node_urls(stack), strict=True)},
    }
    probes = [
        ("GET", "/console", None),  # the Werkzeug debugger's console
        ("GET", "/?__debugger__=yes&cmd=resource&f=debugger.js", None),
        ("GET", "/no-such-page", None),
        ("DELETE", "/healthz", None),
        ("POST", "/emoji", b"{not json"),
        ("POST", "/register", b"[" * 5000),
    ]
    bodies = {}
    for service, base in services.items():
        for method, path, body in probes:
            answer = requests.request(
                method, base + path, data=body, headers={"Content-Type": "application/json"}, timeout=5
            )
            bodies[(service, method, path)] = (answer.status_code, answer.text)

    assert all(status < 500 for status, _ in bodies.values()), {k: v for k, v in bodies.items() if v[0] >= 500}
    revealing = re.compile(r"Traceback|File \"|Werkzeug Debugger|__debugger__|" + re.escape(str(ROOT)))
    assert [key for key, (_, text) in bodies.items() if revealing.search(text)] == []
    assert all(bodies[(service, "GET", "/console")][0] == 404 for service in services)


def test_an_unexpected_error_is_a_bare_500_without_details_and_debug_is_off(tmp_path):
    # The default configuration, as `python3 app.py` and `python3 registration_app.py` read it.
    settings = Settings.from_env(environ={}, state_dir=str(tmp_path))
    crash = Blueprint("crash", __name__)

    @crash.get("/crash")
    def crash_route():
        raise RuntimeError(f"internal detail {ROOT}")

    class NoControl(ViewerControl):
        def revoke(self, claims, token):  # pragma: no cover - not used here
            pass

        def revoke_sender(self, client_id, event_id, revoked_at, until):  # pragma: no cover - not used here
            pass

    ingest = create_ingest_app(
        settings, batcher=EmojiBatcher(settings, producer_factory=lambda: None, probe=lambda: True)
    )
    ingest.register_blueprint(crash)
    registration = create_registration_app(
        settings, [crash], membership=Membership(settings.heartbeat_expiry_seconds), control=NoControl()
    )
    for app in (ingest, registration):
        assert app.debug is False
        answer = app.test_client().get("/crash")
        assert answer.status_code == 500
        assert answer.get_json() == {"error": "internal error"}
        assert str(ROOT) not in answer.get_data(as_text=True)


def _node_urls(stack: SecurityStack) -> list[str]:
    nodes = live_nodes(stack.settings)
    return [nodes[node_id]["url"] for node_id in ("c0-s0", "c0-s1")]


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("script", "variable"),
    [("registration_app.py", "EMOSTREAM_REGISTRATION_HOST"), ("subscriber_service.py", "EMOSTREAM_SUBSCRIBER_HOST")],
)
def test_a_token_service_refuses_to_listen_beyond_loopback_with_the_public_development_secret(
    script, variable, tmp_path
):
    # Anyone can read the built-in secret, so serving it to other machines would let them mint tokens.
    # The service stops before it binds or touches Kafka: nothing listens, nothing is created.
    env = {
        "PATH": os.environ["PATH"],
        "EMOSTREAM_STATE_DIR": str(tmp_path),
        "EMOSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        variable: "0.0.0.0",
    }
    refused = subprocess.run(
        [sys.executable, str(ROOT / script)], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )

    assert refused.returncode != 0
    assert "EMOSTREAM_TOKEN_SECRET" in refused.stderr and "0.0.0.0" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_only_loopback_addresses_may_serve_with_the_development_secret():
    development = Settings.from_env(environ={})
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        development.require_secret_for(host, "node")
    for host in ("0.0.0.0", "::", "10.0.0.5", "viewers.example.org"):
        with pytest.raises(SystemExit, match="EMOSTREAM_TOKEN_SECRET"):
            development.require_secret_for(host, "node")
    configured = Settings.from_env(environ={"EMOSTREAM_TOKEN_SECRET": "a-long-random-value"})
    configured.require_secret_for("0.0.0.0", "node")
