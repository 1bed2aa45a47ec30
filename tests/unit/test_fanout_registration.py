"""The registration API on a fixed membership: assignment, tokens, bad input, unregistering."""

from __future__ import annotations

import time

import pytest
from flask import Blueprint
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from emostream.fanout.membership import Membership, NodeState
from emostream.fanout.registration import ViewerControl, create_app
from emostream.kafka import KafkaUnavailable
from emostream.settings import Settings
from emostream.wire import InvalidMessage, TokenClaims, issue_token, now_ms, verify_send_token, verify_token


class RecordingControl(ViewerControl):
    def __init__(self):
        self.revoked: list[tuple[TokenClaims, str]] = []
        self.revoked_senders: list[tuple[str, str, int, int]] = []

    def revoke(self, claims, token):
        self.revoked.append((claims, token))

    def revoke_sender(self, client_id, event_id, revoked_at, until):
        self.revoked_senders.append((client_id, event_id, revoked_at, until))


@pytest.fixture
def settings():
    return Settings.from_env(environ={}, token_secret="unit-secret", token_ttl_seconds=60)


@pytest.fixture
def members():
    members = Membership(expiry_seconds=6)
    for node_id, cluster in [("c0-s0", 0), ("c1-s0", 1)]:
        members.apply(node_id, NodeState(node_id, cluster, f"http://127.0.0.1:700{cluster}", 0, 100, now_ms()).record())
    return members


@pytest.fixture
def control():
    return RecordingControl()


@pytest.fixture
def client(settings, members, control):
    return create_app(settings, membership=members, control=control).test_client()


def test_register_answers_a_node_and_a_signed_token_for_it(client, settings):
    before = time.time()
    response = client.post("/register", json={"client_id": "phone-1", "event_id": "final"})

    assert response.status_code == 200
    body = response.get_json()
    assert body["client_id"] == "phone-1" and body["event_id"] == "final"
    assert body["subscriber"] in {"c0-s0", "c1-s0"}
    assert body["url"] == f"http://127.0.0.1:700{body['cluster']}"
    claims = verify_token(settings.secret, body["token"], body["subscriber"])
    assert (claims.client_id, claims.event_id) == ("phone-1", "final")
    assert before + 60 - 1 <= claims.expires_at <= time.time() + 60


def test_register_without_a_body_gets_a_fresh_client_id_and_the_default_event(client):
    first = client.post("/register").get_json()
    second = client.post("/register", json={}).get_json()

    assert first["event_id"] == "live" and second["event_id"] == "live"
    assert first["client_id"] != second["client_id"]


def test_consecutive_registrations_alternate_between_equally_loaded_nodes(client):
    nodes = [client.post("/register", json={"client_id": f"v{i}"}).get_json()["subscriber"] for i in range(6)]

    assert sorted(nodes) == ["c0-s0"] * 3 + ["c1-s0"] * 3


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400),
        ({"data": "client_id=x", "content_type": "application/x-www-form-urlencoded"}, 415),
        ({"json": ["client_id", "x"]}, 400),
        ({"json": "x"}, 400),
        ({"json": {"client_id": 7}}, 400),
        ({"json": {"client_id": "has space"}}, 400),
        ({"json": {"client_id": "x" * 65}}, 400),
        ({"json": {"event_id": "a|b"}}, 400),
        ({"json": {"event_id": None}}, 400),
        ({"json": {"eventid": "final"}}, 400),
        ({"data": "x" * 10_000, "content_type": "application/json"}, 413),
    ],
)
def test_register_with_garbage_is_a_4xx_with_a_json_error(client, kwargs, status):
    response = client.post("/register", **kwargs)

    assert response.status_code == status
    assert isinstance(response.get_json()["error"], str) and response.get_json()["error"]


def test_register_with_no_live_node_is_a_503_with_retry_after(settings, control):
    client = create_app(settings, membership=Membership(6), control=control).test_client()

    response = client.post("/register", json={})

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "subscriber" in response.get_json()["error"]


def test_unregister_with_the_clients_own_token_revokes_it_at_its_node(client, control):
    registered = client.post("/register", json={"client_id": "phone-1"}).get_json()

    response = client.post("/unregister", json={"client_id": "phone-1", "token": registered["token"]})

    assert response.status_code == 200
    assert response.get_json()["unregistered"] == "phone-1"
    [(claims, token)] = control.revoked
    assert token == registered["token"] and claims.subscriber_id == registered["subscriber"]


def test_unregister_with_someone_elses_token_is_refused(client, control):
    client.post("/register", json={"client_id": "victim"})
    attacker = client.post("/register", json={"client_id": "attacker"}).get_json()

    response = client.post("/unregister", json={"client_id": "victim", "token": attacker["token"]})

    assert response.status_code == 403
    assert "another client" in response.get_json()["error"]
    assert control.revoked == []


def test_unregister_with_a_forged_or_expired_token_is_refused(client, settings, control):
    forged = issue_token(b"not-the-secret", TokenClaims("phone-1", "live", "c0-s0", int(time.time()) + 60))
    expired = issue_token(settings.secret, TokenClaims("phone-1", "live", "c0-s0", int(time.time()) - 1))

    for token in (forged, expired, "garbage"):
        response = client.post("/unregister", json={"client_id": "phone-1", "token": token})
        assert response.status_code == 401, token
        assert response.get_json()["error"]
    assert control.revoked == []


@pytest.mark.parametrize(
    "body",
    [None, [], {"client_id": "x"}, {"token": "t"}, {"client_id": 5, "token": "t"}, {"client_id": "x", "token": 5}],
)
def test_unregister_with_garbage_is_a_400(client, body):
    response = client.post("/unregister", json=body) if body is not None else client.post("/unregister")

    assert response.status_code == 400
    assert response.get_json()["error"]


def test_subscribers_lists_the_membership_with_liveness_and_pending_viewers(client):
    client.post("/register", json={"client_id": "v1"})

    view = client.get("/subscribers").get_json()

    assert [n["subscriber_id"] for n in view["subscribers"]] == ["c0-s0", "c1-s0"]
    assert all(n["alive"] for n in view["subscribers"])
    assert view["live_nodes"] == 2
    assert sum(view["pending"].values()) == 1


def test_healthz_and_metrics(client):
    client.post("/register", json={})
    client.post("/register", json=[])

    assert client.get("/healthz").get_json() == {"status": "ok", "live_nodes": 2, "membership_ready": True}
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "emostream_registrations_total" in metrics
    assert 'emostream_registration_refused_total{reason="bad_request"} 1.0' in metrics


def test_extra_blueprints_mount_on_the_same_app(settings, members, control):
    page = Blueprint("page", __name__)
    page.add_url_rule("/", "index", lambda: "viewer page")

    client = create_app(settings, [page], membership=members, control=control).test_client()

    assert client.get("/").get_data(as_text=True) == "viewer page"
    assert client.post("/register").status_code == 200


CONTROL_SUFFIXES = ["\n", "\r\n", "\r", "\t", "\x00", "\x1b", "\u2028", " "]


@pytest.mark.parametrize("suffix", CONTROL_SUFFIXES)
@pytest.mark.parametrize("field", ["client_id", "event_id"])
def test_register_refuses_an_id_with_a_trailing_newline_or_control_character(client, field, suffix):
    response = client.post("/register", json={field: "phone-1" + suffix})

    assert response.status_code == 400
    assert field in response.get_json()["error"]


@pytest.mark.parametrize("suffix", CONTROL_SUFFIXES)
def test_unregister_refuses_a_client_id_with_a_trailing_newline_or_control_character(client, suffix):
    token = client.post("/register", json={"client_id": "phone-1"}).get_json()["token"]

    response = client.post("/unregister", json={"client_id": "phone-1" + suffix, "token": token})

    assert response.status_code == 400


# --------------------------------------------------------------------------- send credentials


def test_register_answers_a_send_credential_for_the_same_client_and_event(client, settings):
    before_ms = now_ms()
    body = client.post("/register", json={"client_id": "phone-1", "event_id": "final"}).get_json()

    claims = verify_send_token(settings.secret, body["send_token"])
    assert (claims.client_id, claims.event_id, claims.expires_at) == ("phone-1", "final", body["expires_at"])
    assert before_ms <= claims.issued_at <= now_ms()
    # Neither token passes for the other: they are signed with different salts.
    with pytest.raises(InvalidMessage):
        verify_token(settings.secret, body["send_token"])
    with pytest.raises(InvalidMessage):
        verify_send_token(settings.secret, body["token"])


def test_unregister_revokes_the_send_credentials_of_that_client_and_event_issued_so_far(client, control, settings):
    body = client.post("/register", json={"client_id": "phone-1", "event_id": "final"}).get_json()
    issued_at = verify_send_token(settings.secret, body["send_token"]).issued_at

    client.post("/unregister", json={"client_id": "phone-1", "token": body["token"]})

    [(client_id, event_id, revoked_at, until)] = control.revoked_senders
    assert (client_id, event_id) == ("phone-1", "final")
    assert issued_at <= revoked_at <= now_ms()
    assert until >= body["expires_at"]  # kept until every credential it covers has expired


def test_unregister_answers_503_and_keeps_the_slot_when_the_revocation_cannot_be_recorded(settings, members):
    class Unreachable(RecordingControl):
        def revoke_sender(self, client_id, event_id, revoked_at, until):
            raise KafkaUnavailable("no broker")

    control = Unreachable()
    client = create_app(settings, membership=members, control=control).test_client()
    body = client.post("/register", json={"client_id": "phone-1"}).get_json()

    response = client.post("/unregister", json={"client_id": "phone-1", "token": body["token"]})

    assert response.status_code == 503
    assert "revocation" in response.get_json()["error"]
    assert control.revoked == []  # the viewer token too stays until a retry succeeds


def test_registrations_are_limited_per_source_address_behind_a_trusted_proxy(settings, members, control):
    limited = settings.replace(
        trusted_proxies=("127.0.0.1/32",), registrations_per_source=0.01, registration_burst_per_source=3
    )
    client = create_app(limited, membership=members, control=control).test_client()

    def register(forwarded_for):
        return client.post("/register", json={}, headers={"X-Forwarded-For": forwarded_for})

    answers = [register("198.51.100.7").status_code for _ in range(4)]
    assert answers == [200, 200, 200, 429]
    refused = register("198.51.100.7")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "address" in refused.get_json()["error"]
    # Another address behind the same proxy, and the proxy's own (loopback, exempt), still register;
    # what the client wrote left of the proxy's entry does not make it another source.
    assert register("198.51.100.8").status_code == 200
    assert register("203.0.113.1, 198.51.100.7").status_code == 429
    assert client.post("/register", json={}).status_code == 200


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "client_id": _json_values | st.from_regex(r"[A-Za-z0-9_.:@-]{1,70}", fullmatch=True),
                "event_id": _json_values | st.from_regex(r"[A-Za-z0-9_.|-]{1,70}", fullmatch=True),
            },
        ),
        _json_values,
    )
)
def test_any_registration_body_gets_a_credential_for_exactly_its_fields_or_a_4xx(client, settings, body):
    response = client.post("/register", json=body)

    assert response.status_code in (200, 400), response.get_data(as_text=True)
    if response.status_code == 400:
        assert response.get_json()["error"]
        return
    answer = response.get_json()
    claims = verify_send_token(settings.secret, answer["send_token"])
    assert (claims.client_id, claims.event_id) == (answer["client_id"], answer["event_id"])
    if isinstance(body, dict) and body.get("client_id") is not None:  # null: the service picks one
        assert claims.client_id == body["client_id"]
    if isinstance(body, dict) and "event_id" in body:
        assert claims.event_id == body["event_id"]
