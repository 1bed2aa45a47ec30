"""Fuzzing a subscriber node's Socket.IO handshake, at the wire level.

The attacker here speaks Engine.IO v4 itself over a raw WebSocket (and over HTTP
long-polling), so it can send what no well-behaved client library would: auth payloads
of every JSON type, tokens that are forged, mangled, expired, for another node or far
too large, and frames that are not Socket.IO at all. Not one may be let in, and the
node must stay healthy and keep serving its real viewers afterwards.
"""

from __future__ import annotations

import asyncio
import json
import string
import time
from collections import Counter
from typing import Any

import pytest
import requests
import websocket
from hypothesis import HealthCheck, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from emostream.clients.viewer import Viewer
from emostream.wire import TokenClaims, issue_token
from tests.harness.fanout import live_nodes, publish_aggregates, wait_until, windows
from tests.harness.security import SecurityStack

pytestmark = pytest.mark.integration

NODE = "c0-s0"
TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_.="


class Handshake:
    """One raw Engine.IO WebSocket to a node: open it, send a CONNECT, read the verdict."""

    def __init__(self, node_url: str, origin: str | None = None):
        ws_url = node_url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.ws = websocket.create_connection(ws_url, timeout=3, suppress_origin=origin is None, origin=origin)
        opening = self.ws.recv()
        if not (isinstance(opening, str) and opening.startswith("0{")):
            raise AssertionError(f"not an Engine.IO open packet: {opening!r}")
        # A refusal comes back in milliseconds; some garbage is silently ignored: do not wait long.
        self.ws.settimeout(1.0)

    def connect(self, auth_json: str | None) -> str:
        """Send a Socket.IO CONNECT to "/" with the given raw JSON; 'accepted', 'refused' or 'closed'."""
        return self.send_raw("40" + (auth_json or ""))

    def send_raw(self, frame: str | bytes, then: str | None = None) -> str:
        """Send ``frame`` (and ``then`` right after it), and read the first verdict."""
        try:
            if isinstance(frame, bytes):
                self.ws.send_binary(frame)
            else:
                self.ws.send(frame)
            if then is not None:
                self.ws.send(then)
            while True:
                answer = self.ws.recv()
                if answer in ("2", "3"):  # Engine.IO ping/pong: not a verdict
                    continue
                if isinstance(answer, str) and answer.startswith("40"):
                    return "accepted"
                if isinstance(answer, str) and answer.startswith("44"):
                    return "refused"
                if answer == "" or answer is None:
                    return "closed"
                return f"other:{answer!r:.80}"
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            return "closed"
        except websocket.WebSocketTimeoutException:
            return "no answer"

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )


def mangled(token: str) -> st.SearchStrategy[str]:
    """A valid token with one change: a character swapped, cut short, extended, or re-cased."""
    swap = st.tuples(st.integers(0, len(token) - 1), st.sampled_from(TOKEN_ALPHABET)).map(
        lambda change: token[: change[0]] + change[1] + token[change[0] + 1 :]
    )
    return (
        swap
        | st.integers(0, len(token) - 1).map(lambda n: token[:n])
        | st.text(TOKEN_ALPHABET, min_size=1, max_size=20).map(lambda tail: token + tail)
        | st.just(token.swapcase())
        | st.just(token + "\n")
        | st.just(" " + token)
    ).filter(lambda candidate: candidate != token)


def auth_payloads(secret: bytes, valid: str) -> st.SearchStrategy[str]:
    """Raw JSON texts for the CONNECT packet, none of which should be let in."""
    soon = int(time.time()) + 3600
    crafted = st.sampled_from(
        [
            issue_token(b"not-the-secret", TokenClaims("v", "live", NODE, soon)),  # forged
            issue_token(b"", TokenClaims("v", "live", NODE, soon)),  # signed with an empty secret
            issue_token(secret, TokenClaims("v", "live", NODE, int(time.time()) - 1)),  # expired
            issue_token(secret, TokenClaims("v", "live", "c0-s1", soon)),  # for the other node
            issue_token(secret, TokenClaims("v", "live", "c9-s9", soon)),  # for a node that does not exist
            valid.split(".")[0],  # the claims without a signature
            valid.split(".")[0] + ".",  # an empty signature
        ]
    )
    token_values = (
        crafted
        | mangled(valid)
        | st.text(TOKEN_ALPHABET, max_size=300)
        | st.integers(1000, 40_000).map(lambda n: "A" * n)  # past the 1 KB token limit and the 16 KB frame limit
        | json_values()
    )
    as_objects = st.fixed_dictionaries({"token": token_values}, optional={"event_id": st.text(max_size=10)})
    payloads = as_objects | json_values() | st.just(None)
    raw = payloads.map(lambda value: json.dumps(value))
    # Also not JSON at all, and nothing after the packet type.
    return raw | st.text(max_size=200) | st.just("")


def garbage_frames() -> st.SearchStrategy[str | bytes]:
    """Frames that are not a proper CONNECT: other packet types, other namespaces, noise, binary."""
    return (
        st.sampled_from(
            [
                '42["emoji_update",{"event_id":"live"}]',  # an event before connecting
                "41",  # disconnect before connecting
                '40/admin,{"token":"x"}',  # a namespace the node does not serve
                "4",
                "6",
                "1",
                '45-["x",{"_placeholder":true,"num":0}]',  # a binary event announcing an attachment
            ]
        )
        | st.text(max_size=300)
        | st.binary(max_size=300)
    )


def test_garbage_and_hostile_handshakes_are_all_refused_and_the_node_keeps_serving(security_stack: SecurityStack):
    stack = security_stack
    settings = stack.settings
    node_url = stack.node_url(NODE)
    valid = issue_token(settings.secret, TokenClaims("fuzz-valid", "live", NODE, int(time.time()) + 3600))
    verdicts: Counter[str] = Counter()
    let_in: list[str] = []

    # The control: a well-formed CONNECT with a valid token is accepted over the same raw path.
    control = Handshake(node_url)
    assert control.connect(json.dumps({"token": valid})) == "accepted"
    control.close()

    @seed(3)
    @hypothesis_settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(payload=auth_payloads(settings.secret, valid))
    def hostile_connect(payload: str):
        handshake = Handshake(node_url)
        try:
            verdict = handshake.connect(payload)
        finally:
            handshake.close()
        verdicts[verdict.split(":")[0]] += 1
        if verdict == "accepted":
            let_in.append(payload[:200])

    @seed(4)
    @hypothesis_settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(frame=garbage_frames())
    def garbage_then_nothing(frame: str | bytes):
        handshake = Handshake(node_url)
        try:
            # A CONNECT without a token right behind the garbage: the node must still refuse it
            # (or have closed the connection), never take the garbage as a way in.
            verdict = handshake.send_raw(frame, then="40{}")
        finally:
            handshake.close()
        verdicts[verdict.split(":")[0]] += 1
        if verdict == "accepted":
            let_in.append(repr(frame)[:200])

    hostile_connect()
    garbage_then_nothing()

    print(f"handshake fuzzing of {NODE}: {sum(verdicts.values())} inputs, verdicts {dict(verdicts)}")
    assert let_in == []
    health = requests.get(node_url + "/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json()["connections"] == 0, "a refused handshake left a viewer behind"
    assert stack.alive()[NODE]
    metrics = requests.get(node_url + "/metrics", timeout=5).text
    assert 'emostream_subscriber_refused_total{reason="invalid"}' in metrics
    assert_real_viewers_still_connect_and_receive(stack, "after-handshake-fuzz")


def test_a_viewer_connection_from_a_foreign_origin_is_refused(security_stack: SecurityStack):
    # A page on another site must not open a viewer connection in a visitor's browser.
    node_url = security_stack.node_url(NODE)
    allowed = security_stack.settings.cors_origins[0]

    def websocket_opens(origin: str) -> bool:
        try:
            Handshake(node_url, origin=origin).close()
            return True
        except (AssertionError, websocket.WebSocketException, OSError):
            return False  # refused at the upgrade, or closed before Engine.IO opened

    def polling_status(origin: str) -> int:
        return requests.get(
            node_url + "/socket.io/", params={"EIO": "4", "transport": "polling"}, headers={"Origin": origin}, timeout=5
        ).status_code

    assert websocket_opens(allowed) is True
    assert websocket_opens("http://evil.example") is False
    assert polling_status(allowed) == 200
    assert polling_status("http://evil.example") == 400


def test_long_polling_requests_with_garbage_never_get_a_5xx(security_stack: SecurityStack):
    node_url = security_stack.node_url(NODE)
    statuses: Counter[int] = Counter()
    session = requests.Session()

    @seed(5)
    @hypothesis_settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "OPTIONS"]),
        query=st.dictionaries(
            st.sampled_from(["EIO", "transport", "sid", "t", "b64", "j"]),
            st.text(max_size=30) | st.sampled_from(["4", "3", "polling", "websocket", "x"]),
            max_size=5,
        ),
        body=st.binary(max_size=2000) | st.text(max_size=2000).map(str.encode) | st.just(b'40{"token":"x"}'),
    )
    def poll(method: str, query: dict[str, str], body: bytes):
        response = session.request(
            method,
            node_url + "/socket.io/",
            params=query,
            data=body,
            timeout=10,
            headers={"Content-Type": "text/plain"},
        )
        statuses[response.status_code] += 1
        assert response.status_code < 500, (method, query, body[:100], response.status_code, response.text[:200])

    poll()
    session.close()
    print(f"long-polling fuzzing of {NODE}: {sum(statuses.values())} requests, statuses {dict(statuses)}")
    assert requests.get(node_url + "/healthz", timeout=5).status_code == 200


def assert_real_viewers_still_connect_and_receive(stack: SecurityStack, event_id: str) -> None:
    """A viewer registers, connects and gets its event's update, end to end through the publishers."""
    settings = stack.settings

    async def scenario() -> list[int]:
        viewers = [Viewer(stack.registration_url, event_id=event_id) for _ in range(4)]
        try:
            await asyncio.gather(*(viewer.start(timeout=30) for viewer in viewers))
            await asyncio.to_thread(
                wait_until,
                lambda: sum(node["events"].get(event_id, 0) for node in live_nodes(settings).values()) == 4,
                30,
                "the viewers' event in the heartbeats",
            )
            publish_aggregates(settings, windows(event_id, [1]))
            await asyncio.gather(*(viewer.wait_for_updates(1, timeout=30) for viewer in viewers))
            return [viewer.received for viewer in viewers]
        finally:
            await asyncio.gather(*(viewer.close() for viewer in viewers))

    assert asyncio.run(scenario()) == [1, 1, 1, 1]
