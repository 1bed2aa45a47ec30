"""Send credentials, their cache and revocations, and the source address of a request (pure logic)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emostream.ingest.senders import Revocations, SenderAuth, Unauthorized
from emostream.ingest.server import check_auth
from emostream.settings import Settings
from emostream.sources import SourcePolicy
from emostream.wire import SendClaims, TokenClaims, issue_send_token, issue_token, now_ms, revocation_record

SECRET = b"unit-secret"


def credential(client_id="phone-1", event_id="final", expires_in=60, issued_at=None, secret=SECRET) -> str:
    issued = now_ms() if issued_at is None else issued_at
    return issue_send_token(secret, SendClaims(client_id, event_id, issued, int(time.time()) + expires_in))


@pytest.fixture
def auth():
    return SenderAuth(SECRET, Revocations())


def reason_of(auth: SenderAuth, header) -> str:
    with pytest.raises(Unauthorized) as refused:
        auth.verify(header)
    return refused.value.reason


def test_a_genuine_credential_names_its_client_and_event(auth):
    claims = auth.verify(f"Bearer {credential()}")
    assert (claims.client_id, claims.event_id) == ("phone-1", "final")
    assert auth.verify(f"bearer   {credential()}  ").client_id == "phone-1"  # the scheme is case-insensitive


@pytest.mark.parametrize(
    "header, reason",
    [
        (None, "no_credential"),
        ("", "no_credential"),
        ("Basic dXNlcjpwYXNz", "bad_credential"),
        ("Bearer", "bad_credential"),
        ("Bearer a b", "bad_credential"),
        ("Bearer not-a-token", "bad_credential"),
        (f"Bearer {credential(secret=b'another-secret')}", "bad_credential"),
        (
            f"Bearer {issue_token(SECRET, TokenClaims('phone-1', 'final', 'c0-s0', int(time.time()) + 60))}",
            "bad_credential",
        ),
        (f"Bearer {credential(expires_in=-1)}", "expired_credential"),
    ],
)
def test_a_missing_malformed_forged_or_expired_credential_is_refused_with_its_reason(auth, header, reason):
    assert reason_of(auth, header) == reason


def test_a_cached_credential_is_still_refused_once_it_expires(auth):
    token = credential(expires_in=5)
    assert auth.verify(f"Bearer {token}", now=time.time())
    assert auth.cached() == 1
    with pytest.raises(Unauthorized, match="expired"):
        auth.verify(f"Bearer {token}", now=time.time() + 10)


def test_a_revocation_voids_credentials_issued_up_to_it_and_not_later_ones(auth):
    issued = now_ms()
    old = credential(issued_at=issued)
    assert auth.verify(f"Bearer {old}")  # cached before the revocation arrives
    auth.revocations.apply(revocation_record("phone-1", "final", issued + 1, int(time.time()) + 60))

    assert reason_of(auth, f"Bearer {old}") == "revoked_credential"
    assert auth.verify(f"Bearer {credential(issued_at=issued + 2)}")  # registered again afterwards
    assert auth.verify(f"Bearer {credential('phone-1', 'live', issued_at=issued)}")  # another event
    assert auth.verify(f"Bearer {credential('phone-2', 'final', issued_at=issued)}")  # another client


def test_an_older_revocation_read_late_does_not_undo_a_newer_one_and_expired_ones_are_dropped():
    revocations = Revocations()
    now = int(time.time())
    revocations.apply(revocation_record("a", "live", 2000, now + 60))
    revocations.apply(revocation_record("a", "live", 1000, now + 60))
    revocations.apply(revocation_record("b", "live", 1000, now - 1))
    claims = SendClaims("a", "live", 1500, now + 60)
    assert revocations.revoked(claims, "live|a")
    assert revocations.prune(now) == 1 and len(revocations) == 1


def test_the_cache_stays_bounded():
    auth = SenderAuth(SECRET, Revocations(), cache_entries=8)
    for index in range(20):
        auth.verify(f"Bearer {credential(f'phone-{index}')}")
    assert auth.cached() == 8


@given(st.text(max_size=300))
def test_any_authorization_header_is_either_accepted_or_refused_with_a_reason(header):
    auth = SenderAuth(SECRET, Revocations())
    try:
        auth.verify(header)
    except Unauthorized as refused:
        assert refused.reason in {"no_credential", "bad_credential", "expired_credential", "revoked_credential"}


# --------------------------------------------------------------------------- source address


def test_the_source_is_the_peer_unless_the_peer_is_a_trusted_proxy():
    policy = SourcePolicy(trusted_proxies=["127.0.0.1/32", "10.0.0.0/8"], exempt=[])
    assert policy.source("198.51.100.7", "203.0.113.9") == "198.51.100.7"  # an untrusted peer's header is ignored
    assert policy.source("127.0.0.1", "203.0.113.9") == "203.0.113.9"
    # The right-most address no trusted proxy wrote; what the client put further left is its own claim.
    assert policy.source("127.0.0.1", "1.2.3.4, 203.0.113.9, 10.1.1.1") == "203.0.113.9"
    assert policy.source("127.0.0.1", "10.2.2.2, 10.1.1.1") == "10.2.2.2"
    assert policy.source("127.0.0.1", None) == "127.0.0.1"


def test_exempt_sources_have_no_limit_and_the_default_exempts_loopback_only():
    policy = SourcePolicy.of(Settings.from_env(environ={}))
    assert policy.limited_source("127.0.0.1") is None
    assert policy.limited_source("::1") is None
    assert policy.limited_source("192.0.2.10") == "192.0.2.10"
    # Behind an untrusted local proxy the peer is loopback: a deployment with a proxy must trust it.
    assert policy.limited_source("127.0.0.1", "192.0.2.10") is None


def test_a_setting_that_is_no_cidr_stops_with_its_name():
    with pytest.raises(SystemExit, match="EMOSTREAM_TRUSTED_PROXIES"):
        SourcePolicy(trusted_proxies=["not-an-address"])


@given(st.text(max_size=200))
def test_any_forwarded_for_header_yields_a_bounded_source(header):
    policy = SourcePolicy(trusted_proxies=["127.0.0.1/32"], exempt=[])
    source = policy.limited_source("127.0.0.1", header)
    assert source is None or 0 < len(source) <= 64


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "ingest.example"])
def test_open_mode_refuses_to_listen_beyond_loopback(host):
    with pytest.raises(SystemExit, match="EMOSTREAM_INGEST_AUTH=open"):
        check_auth(Settings.from_env(environ={}, ingest_auth="open", ingest_host=host))
    check_auth(Settings.from_env(environ={}, ingest_auth="open", ingest_host="127.0.0.1"))


def test_token_mode_beyond_loopback_needs_a_secret_and_an_unknown_mode_is_refused():
    with pytest.raises(SystemExit, match="development token secret"):
        check_auth(Settings.from_env(environ={}, ingest_host="0.0.0.0"))
    check_auth(Settings.from_env(environ={}, ingest_host="0.0.0.0", token_secret="s3cret"))
    with pytest.raises(SystemExit, match="EMOSTREAM_INGEST_AUTH='closed'"):
        check_auth(Settings.from_env(environ={}, ingest_auth="closed"))


def test_with_kafka_unreachable_the_revocation_follower_waits_and_genuine_credentials_are_still_taken(tmp_path):
    """Availability first: a follower that cannot read revocations does not stop a live event."""
    from emostream.ingest.api import create_app, ingest_of
    from emostream.ingest.batcher import EmojiBatcher
    from tests.harness.support import free_port

    settings = Settings.from_env(
        environ={}, kafka_bootstrap=f"127.0.0.1:{free_port()}", state_dir=str(tmp_path), token_secret="unit-secret"
    )
    batcher = EmojiBatcher(settings, producer_factory=lambda: None, probe=lambda: True)
    app = create_app(settings, batcher=batcher)
    follower = ingest_of(app).follower
    try:
        client = app.test_client()
        token = issue_send_token(settings.secret, SendClaims("phone-1", "live", now_ms(), int(time.time()) + 60))
        body = {"user_id": "phone-1", "emoji_type": settings.emoji_types[0], "timestamp": now_ms()}

        accepted = client.post("/emoji", json=body, headers={"Authorization": f"Bearer {token}"})
        refused = client.post("/emoji", json=body)

        assert accepted.status_code == 202, accepted.get_json()
        assert refused.status_code == 401
        revocations = client.get("/healthz").get_json()["revocations"]
        assert revocations["caught_up"] is False and revocations["state"] != "following"
    finally:
        follower.stop(timeout=1)
