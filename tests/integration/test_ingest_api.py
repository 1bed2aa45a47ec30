"""The ingest HTTP API in-process (Flask test client) with its real buffer, producer and broker.

The event contract, which both auth modes share, is tested here in open mode, where a batch may
hold many users; what token mode adds is in tests/security/test_senders.py.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder, run_wsgi_app

from emostream.ingest.api import create_app, ingest_of, shutdown
from emostream.ingest.batcher import EmojiBatcher
from emostream.ingest.journal import read_segment
from emostream.settings import Settings
from emostream.wire import now_ms
from tests.harness.ingest import create_emoji_topic, records_of
from tests.harness.settings import unique_topics
from tests.harness.support import free_port, metric_value

pytestmark = pytest.mark.integration

HEART = "\u2764\ufe0f"
BATCH_MAX = 50
BURST = 40


@pytest.fixture(scope="module")
def ingest_settings(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = unique_topics(base_settings).replace(
        state_dir=str(tmp_path_factory.mktemp("ingest-state")),
        flush_interval_ms=100,
        batch_max_events=BATCH_MAX,
        max_body_bytes=64 * 1024,
        rate_limit_per_user=0.1,  # a token per 10 s: a test's second request cannot sneak in
        rate_burst_per_user=BURST,
        ingest_auth="open",
    )
    create_emoji_topic(settings)
    return settings


@pytest.fixture(scope="module")
def app(ingest_settings):
    app = create_app(ingest_settings)
    yield app
    shutdown(app, timeout=10)


@pytest.fixture
def client(app):
    return app.test_client()


def event(user_id: str, emoji: str = "🔥", **fields) -> dict:
    return {"user_id": user_id, "emoji_type": emoji, "timestamp": now_ms(), **fields}


def post_json(client, path: str, payload, **kwargs):
    return client.post(path, data=json.dumps(payload, ensure_ascii=False), content_type="application/json", **kwargs)


# --------------------------------------------------------------------------- accepted emoji


def test_accepted_emoji_appear_on_emoji_topic_once_each_with_their_fields_and_key(client, ingest_settings):
    tag = uuid.uuid4().hex[:8]
    before = now_ms()
    single = post_json(client, "/emoji", event(f"{tag}-a", HEART))
    batch = post_json(
        client,
        "/emojis",
        [
            event(f"{tag}-b", "👏", event_id="final"),
            event(f"{tag}-c", "🏏", timestamp="2026-01-01T00:00:00Z")
            | {"timestamp": _iso(now_ms())},  # ISO-8601 timestamps are accepted and stored as ms
            event(f"{tag}-b", "😂", event_id="final"),
        ],
    )

    assert (single.status_code, single.get_json()["accepted"]) == (202, 1)
    assert (batch.status_code, batch.get_json()["accepted"]) == (202, 3)

    records = records_of(ingest_settings, {f"{tag}-a", f"{tag}-b", f"{tag}-c"}, expected=4)
    assert len(records) == 4
    by_emoji = {r.value["emoji_type"]: r for r in records}
    assert set(by_emoji) == {HEART, "👏", "🏏", "😂"}
    assert by_emoji[HEART].key == f"live|{tag}-a"
    assert by_emoji["👏"].key == f"final|{tag}-b"
    for record in records:
        assert set(record.value) == {"user_id", "emoji_type", "timestamp", "event_id", "received_at"}
        assert isinstance(record.value["timestamp"], int)
        assert before <= record.value["received_at"] <= now_ms()
    # The answer names the received_at its emoji were stamped with: the window they count in.
    assert by_emoji[HEART].value["received_at"] == single.get_json()["received_at"]
    assert {by_emoji[e].value["received_at"] for e in ("👏", "🏏", "😂")} == {batch.get_json()["received_at"]}
    # One user's emoji share a key, so a partition, in the order they were posted.
    same_user = [r for r in records if r.value["user_id"] == f"{tag}-b"]
    assert len({r.partition for r in same_user}) == 1
    assert [r.value["emoji_type"] for r in sorted(same_user, key=lambda r: r.offset)] == ["👏", "😂"]


def test_the_original_projects_send_emoji_path_answers_exactly_like_emoji(client, ingest_settings):
    """POST /send-emoji (the original project's path) is /emoji: same answers, both intake paths."""
    allowed = ingest_settings.cors_origins[0]
    tag = uuid.uuid4().hex[:8]
    bodies = [
        (json.dumps(event(f"{tag}-ok", HEART), ensure_ascii=False).encode(), "application/json"),
        (json.dumps(event(f"{tag}-bad", "🦄")).encode(), "application/json"),
        (json.dumps([event(f"{tag}-list")]).encode(), "application/json"),
        (b"{not json", "application/json"),
        (json.dumps(event(f"{tag}-text")).encode(), "text/plain"),
    ]

    def answer(response):
        body = response.get_json()
        body.pop("received_at", None)
        return response.status_code, response.headers["Content-Type"], body

    for headers in ({}, {"Origin": allowed}):
        for body, content_type in bodies:
            original = client.post("/send-emoji", data=body, content_type=content_type, headers=headers)
            current = client.post("/emoji", data=body, content_type=content_type, headers=headers)
            assert answer(original) == answer(current), (headers, body[:40])
    assert post_json(client, "/send-emoji", event(f"{tag}-ok", HEART)).status_code == 202

    # The good body was accepted five times (each path, with and without an Origin, and once more):
    # five records, nothing of the refused bodies.
    records = records_of(ingest_settings, {f"{tag}-ok", f"{tag}-bad", f"{tag}-list", f"{tag}-text"}, expected=5)
    assert Counter(r.value["user_id"] for r in records) == {f"{tag}-ok": 5}


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def test_emoji_types_lists_the_configured_set(client, ingest_settings):
    response = client.get("/emoji-types")
    assert response.status_code == 200
    assert response.get_json() == {"emoji_types": list(ingest_settings.emoji_types)}
    assert HEART in response.get_json()["emoji_types"]


def test_healthz_reports_kafka_reachable(client, ingest_settings):
    response = client.get("/healthz")
    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "ok"
    assert body["kafka"]["reachable"] is True
    assert body["topic"] == ingest_settings.emoji_topic


def test_metrics_count_accepted_rejected_sent_and_request_latency(client, ingest_settings):
    before = client.get("/metrics").get_data(as_text=True)
    tag = uuid.uuid4().hex[:8]
    post_json(client, "/emojis", [event(f"{tag}-{n}") for n in range(5)])
    post_json(client, "/emoji", event("bad user id"))
    records_of(ingest_settings, {f"{tag}-{n}" for n in range(5)}, expected=5, settle=0.3)
    after = client.get("/metrics").get_data(as_text=True)

    accepted = "emostream_ingest_accepted_emoji_total"
    assert metric_value(after, accepted) - metric_value(before, accepted) == 5
    invalid = "emostream_ingest_rejected_requests_total"
    # The labelled counter appears with its first rejection.
    assert (
        metric_value(after, invalid, reason="invalid_event")
        - metric_value(before, invalid, 0.0, reason="invalid_event")
        == 1
    )
    for name, labels in (
        ("emostream_ingest_sent_emoji_total", {}),
        ("emostream_ingest_send_errors_total", {}),
        ("emostream_ingest_buffered_emoji", {}),
        ("emostream_ingest_request_seconds_count", {"endpoint": "emojis"}),
    ):
        metric_value(after, name, **labels)  # fails when the metric is not exposed


# --------------------------------------------------------------------------- bad input

NOW = object()  # placeholder for "a valid timestamp now"


def bad_events() -> list[tuple[str, dict | str, str]]:
    return [
        ("missing emoji_type", {"user_id": "u", "timestamp": NOW}, "missing field(s): emoji_type"),
        ("missing everything", {}, "missing field(s): user_id, emoji_type, timestamp"),
        ("empty user_id", {"user_id": "", "emoji_type": "🔥", "timestamp": NOW}, "user_id must be"),
        ("long user_id", {"user_id": "x" * 65, "emoji_type": "🔥", "timestamp": NOW}, "user_id must be"),
        ("user_id with a space", {"user_id": "a b", "emoji_type": "🔥", "timestamp": NOW}, "user_id must be"),
        ("user_id with a newline", {"user_id": "ab\n", "emoji_type": "🔥", "timestamp": NOW}, "user_id must be"),
        ("numeric user_id", {"user_id": 7, "emoji_type": "🔥", "timestamp": NOW}, "user_id must be"),
        ("event_id with |", {"user_id": "u", "emoji_type": "🔥", "timestamp": NOW, "event_id": "a|b"}, "event_id"),
        ("long event_id", {"user_id": "u", "emoji_type": "🔥", "timestamp": NOW, "event_id": "e" * 65}, "event_id"),
        ("unknown emoji", {"user_id": "u", "emoji_type": "🍕", "timestamp": NOW}, "emoji_type must be one of"),
        ("heart without FE0F", {"user_id": "u", "emoji_type": "\u2764", "timestamp": NOW}, "emoji_type must be one of"),
        ("old timestamp", {"user_id": "u", "emoji_type": "🔥", "timestamp": -301_000}, "away from server time"),
        ("future timestamp", {"user_id": "u", "emoji_type": "🔥", "timestamp": +301_000}, "away from server time"),
        ("boolean timestamp", {"user_id": "u", "emoji_type": "🔥", "timestamp": True}, "not a boolean"),
        ("text timestamp", {"user_id": "u", "emoji_type": "🔥", "timestamp": "yesterday"}, "not ISO-8601"),
        ("not an object", "🔥", "a JSON object"),
    ]


def materialize(bad: dict | str) -> dict | str:
    if not isinstance(bad, dict):
        return bad
    out = dict(bad)
    if out.get("timestamp") is NOW:
        out["timestamp"] = now_ms()
    elif isinstance(out.get("timestamp"), int) and not isinstance(out["timestamp"], bool):
        out["timestamp"] = now_ms() + out["timestamp"]  # offsets from now
    return out


@pytest.mark.parametrize(("case", "bad", "message"), bad_events(), ids=[case for case, _, _ in bad_events()])
def test_an_invalid_event_gets_400_with_what_is_wrong_at_both_endpoints(client, case, bad, message):
    single = post_json(client, "/emoji", materialize(bad))
    batch = post_json(client, "/emojis", [event("fine-1"), materialize(bad), event("fine-2")])

    assert single.status_code == 400
    assert message in single.get_json()["error"]
    assert batch.status_code == 400
    assert batch.get_json()["error"].startswith("event 1: ")
    assert message in batch.get_json()["error"]


def test_request_level_mistakes_get_the_right_status_and_a_json_error(client, ingest_settings):
    cases = [
        (client.post("/emoji", data=b"{not json", content_type="application/json"), 400, "not valid JSON"),
        (client.post("/emoji", data=b'{"user_id":"\xff"}', content_type="application/json"), 400, "not valid JSON"),
        (client.post("/emoji", data=json.dumps(event("u")), content_type="text/plain"), 415, "Content-Type"),
        (client.post("/emoji", data=b"[" * 20_000 + b"]" * 20_000, content_type="application/json"), 400, "JSON"),
        (post_json(client, "/emoji", [event("u")]), 400, "send arrays to /emojis"),
        (post_json(client, "/emoji", None), 400, "one event as a JSON object"),
        (post_json(client, "/emojis", event("u")), 400, "JSON array"),
        (post_json(client, "/emojis", []), 400, "no emoji events"),
        (post_json(client, "/emojis", [event(f"u{n}") for n in range(BATCH_MAX + 1)]), 413, f"at most {BATCH_MAX}"),
        (post_json(client, "/emoji", event("u", pad="x" * ingest_settings.max_body_bytes)), 413, "larger than"),
        (client.get("/emoji"), 405, ""),
        (client.post("/nowhere"), 404, ""),
    ]
    for response, status, message in cases:
        assert response.status_code == status, response.get_data(as_text=True)
        assert response.is_json
        assert message in response.get_json()["error"]


def test_nothing_of_a_rejected_batch_is_produced(client, ingest_settings):
    tag = uuid.uuid4().hex[:8]
    refused_users: set[str] = set()
    for n, (_, bad, _) in enumerate(bad_events()):
        users = [f"{tag}-{n}-first", f"{tag}-{n}-last"]
        refused_users.update(users)
        response = post_json(client, "/emojis", [event(users[0]), materialize(bad), event(users[1])])
        assert response.status_code == 400
    too_many = [event(f"{tag}-big-{n}") for n in range(BATCH_MAX + 1)]
    refused_users.update(e["user_id"] for e in too_many)
    assert post_json(client, "/emojis", too_many).status_code == 413
    marker = f"{tag}-marker"
    assert post_json(client, "/emoji", event(marker)).status_code == 202

    records = records_of(ingest_settings, refused_users | {marker}, expected=1, settle=1.5)

    assert [r.value["user_id"] for r in records] == [marker]


# --------------------------------------------------------------------------- rate limit, CORS


def test_a_user_over_the_rate_limit_gets_429_with_retry_after_and_nothing_of_that_request_is_produced(
    client, ingest_settings
):
    tag = uuid.uuid4().hex[:8]
    greedy, other = f"{tag}-greedy", f"{tag}-other"

    burst = post_json(client, "/emojis", [event(greedy) for _ in range(BURST)])
    over = post_json(client, "/emojis", [event(other), event(greedy)])
    single_over = post_json(client, "/emoji", event(greedy))
    unaffected = post_json(client, "/emoji", event(other))

    assert burst.status_code == 202
    assert over.status_code == 429
    assert int(over.headers["Retry-After"]) >= 1
    assert "too many emoji" in over.get_json()["error"]
    assert single_over.status_code == 429
    assert unaffected.status_code == 202
    counts = Counter(r.value["user_id"] for r in records_of(ingest_settings, {greedy, other}, expected=BURST + 1))
    assert counts == {greedy: BURST, other: 1}


def test_cors_allows_the_configured_viewer_origins_only(client, ingest_settings):
    allowed = ingest_settings.cors_origins[0]
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "Content-Type"}

    ok = client.options("/emojis", headers={"Origin": allowed, **preflight})
    refused = client.options("/emojis", headers={"Origin": "http://attacker.example", **preflight})
    posted = post_json(client, "/emoji", event("cors-user"), headers={"Origin": allowed})

    assert ok.headers.get("Access-Control-Allow-Origin") == allowed
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert posted.headers.get("Access-Control-Allow-Origin") == allowed
    assert "Retry-After" in posted.headers.get("Access-Control-Expose-Headers", "")


# --------------------------------------------------------------------------- backpressure


def test_a_full_buffer_answers_503_with_retry_after_and_shutdown_still_delivers_what_it_holds(ingest_settings):
    settings = ingest_settings.replace(buffer_max=10, flush_interval_ms=600_000, flush_max_events=1_000_000)
    app = create_app(settings)
    client = app.test_client()
    tag = uuid.uuid4().hex[:8]
    try:
        held = post_json(client, "/emojis", [event(f"{tag}-{n}") for n in range(10)])
        full = post_json(client, "/emoji", event(f"{tag}-overflow"))
        assert held.status_code == 202
        assert full.status_code == 503
        assert full.headers["Retry-After"] == "1"
        assert "buffer is full" in full.get_json()["error"]
        assert ingest_of(app).batcher.held == 10
    finally:
        assert shutdown(app, timeout=15) == 0

    records = records_of(settings, {f"{tag}-{n}" for n in range(10)} | {f"{tag}-overflow"}, expected=10)
    assert sorted(r.value["user_id"] for r in records) == sorted(f"{tag}-{n}" for n in range(10))


def test_with_kafka_unreachable_requests_turn_to_503_and_what_was_accepted_stays_in_the_journal(
    ingest_settings, tmp_path
):
    settings = ingest_settings.replace(
        kafka_bootstrap=f"127.0.0.1:{free_port()}",  # nothing listens there
        kafka_unavailable_seconds=1.0,
        state_dir=str(tmp_path),
    )
    app = create_app(settings)
    client = app.test_client()
    accepted_users: list[str] = []
    statuses = []
    try:
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            user_id = f"offline-{len(statuses)}"
            response = post_json(client, "/emoji", event(user_id))
            statuses.append(response.status_code)
            if response.status_code == 202:
                accepted_users.append(user_id)
            elif "unreachable" in response.get_json()["error"]:
                break  # earlier 503s may come from the lag rule, which can fire first
            time.sleep(0.05)
        health = client.get("/healthz")
    finally:
        spooled = shutdown(app, timeout=1)

    assert statuses[-1] == 503
    assert set(statuses) <= {202, 503}
    assert health.status_code == 503
    assert health.get_json()["kafka"]["reachable"] is False
    assert spooled == len(accepted_users)
    journal = [record for path in (tmp_path / "ingest-journal").glob("*.seg") for record in read_segment(path)]
    assert sorted(json.loads(value)["user_id"] for _, value in journal) == sorted(accepted_users)


def test_a_buffer_that_falls_behind_answers_503_before_its_emoji_would_reach_the_processor_too_late(
    ingest_settings, tmp_path
):
    import time

    settings = ingest_settings.replace(
        kafka_unavailable_seconds=600,  # only the lag rule can refuse
        ingest_max_lag_ms=300,
        state_dir=str(tmp_path),
    )

    def no_producer():
        raise OSError("no producer can be made")  # the flusher keeps every emoji: it falls behind in sending

    app = create_app(settings, EmojiBatcher(settings, producer_factory=no_producer).start())
    client = app.test_client()
    try:
        first = post_json(client, "/emoji", event("lag-first"))
        deadline = time.monotonic() + 30
        while (late := post_json(client, "/emoji", event("lag-later"))).status_code == 202:
            assert time.monotonic() < deadline, "the lag never refused a request"
            time.sleep(0.05)
        health = client.get("/healthz").get_json()
    finally:
        shutdown(app, timeout=1)

    assert first.status_code == 202
    assert late.status_code == 503
    assert late.headers["Retry-After"] == "1"
    assert "behind" in late.get_json()["error"]
    assert health["lag_seconds"] > 0.3


# --------------------------------------------------------------------------- property


def arbitrary_json():
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    return st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    )


def near_events(emoji: tuple[str, ...]):
    """Objects shaped like events whose fields are each right or wrong."""
    return st.fixed_dictionaries(
        {},
        optional={
            "user_id": st.from_regex(r"\A[A-Za-z0-9_.:@-]{1,64}\Z") | arbitrary_json(),
            "emoji_type": st.sampled_from(emoji) | arbitrary_json(),
            "timestamp": st.integers() | st.text(max_size=30) | arbitrary_json(),
            "event_id": st.from_regex(r"\A[A-Za-z0-9_.-]{1,64}\Z") | arbitrary_json(),
        },
    )


def test_arbitrary_json_and_bytes_never_get_a_5xx_nor_produce_part_of_a_batch(client, ingest_settings):
    tag = uuid.uuid4().hex[:8]
    serial = iter(range(10**9))
    accepted: set[str] = set()
    refused: set[str] = set()
    junk = arbitrary_json() | near_events(ingest_settings.emoji_types)

    @hypothesis_settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(
        items=st.lists(st.one_of(st.none(), junk), max_size=6),
        raw=st.binary(max_size=200),
        use_raw=st.booleans(),
        path=st.sampled_from(["/emoji", "/emojis"]),
        content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"]),
    )
    def post(items, raw, use_raw, path, content_type):
        # None stands for a valid event with a user_id of its own, so partial batches show on Kafka.
        users = [f"{tag}-{next(serial)}" for _ in items]
        body_items = [event(users[n]) if item is None else item for n, item in enumerate(items)]
        valid_users = [users[n] for n, item in enumerate(items) if item is None]
        if use_raw:
            body, users_in_body = raw, []
        elif path == "/emoji":
            body = json.dumps(body_items[0] if body_items else body_items, ensure_ascii=False).encode()
            users_in_body = valid_users[:1] if items and items[0] is None else []
        else:
            body, users_in_body = json.dumps(body_items, ensure_ascii=False).encode(), valid_users

        response = client.post(path, data=body, content_type=content_type)

        assert response.status_code < 500, response.get_data(as_text=True)
        assert response.is_json
        if response.status_code == 202:
            assert response.get_json()["accepted"] == (1 if path == "/emoji" else len(body_items))
            accepted.update(users_in_body)
        else:
            assert "error" in response.get_json()
            refused.update(users_in_body)

    post()

    assert accepted, "no example was accepted: the property test exercised only rejections"
    records = records_of(ingest_settings, accepted | refused, expected=len(accepted), settle=1.5)
    produced = Counter(r.value["user_id"] for r in records)
    assert set(produced) == accepted
    assert set(produced.values()) == {1}


# --------------------------------------------------------------------------- two paths, one answer


def test_browser_and_other_clients_get_the_same_answers(client, ingest_settings):
    """Requests without an Origin are answered in front of Flask (FastIntake), browsers' through it."""
    allowed = ingest_settings.cors_origins[0]
    tag = uuid.uuid4().hex[:8]
    serial = iter(range(1000))

    def cases():
        user = f"{tag}-{next(serial)}"
        return [
            ("/emoji", json.dumps(event(user)).encode(), "application/json"),
            ("/emojis", json.dumps([event(user + "b"), event(user + "c", HEART)]).encode(), "application/json"),
            ("/emoji", json.dumps(event(user, "🦄")).encode(), "application/json; charset=utf-8"),
            ("/emojis", json.dumps([event(user), {"user_id": "bad|id"}]).encode(), "application/json"),
            ("/emoji", b"{not json", "application/json"),
            ("/emoji", b'{"user_id":"\xff"}', "application/json"),
            ("/emoji", b"[" * 20_000 + b"]" * 20_000, "application/json"),
            ("/emoji", json.dumps(event(user)).encode(), "text/plain"),
            ("/emojis", json.dumps(event(user)).encode(), "application/vnd.emoji+json"),
            ("/emoji", b"", "application/json"),
            ("/emoji", b" " * (ingest_settings.max_body_bytes + 1), "application/json"),
        ]

    def answer(response):
        body = response.get_json()
        body.pop("received_at", None)
        return response.status_code, response.headers["Content-Type"], body

    for (path, body, content_type), (_, browser_body, _) in zip(cases(), cases(), strict=True):
        plain = client.post(path, data=body, content_type=content_type)
        browser = client.post(path, data=browser_body, content_type=content_type, headers={"Origin": allowed})
        assert answer(plain) == answer(browser), (path, body[:40])
        assert "Access-Control-Allow-Origin" not in plain.headers
        assert browser.headers["Access-Control-Allow-Origin"] == allowed

    # A chunked body (no Content-Length; the server ends the stream): read, and held to the same size limit.
    app = client.application
    for expected, body in ((202, json.dumps(event(f"{tag}-chunked")).encode()), (413, b" " * 70_000)):
        environ = EnvironBuilder("/emoji", method="POST", data=body, content_type="application/json").get_environ()
        del environ["CONTENT_LENGTH"]
        environ["wsgi.input_terminated"] = True
        chunks, status, _ = run_wsgi_app(app, environ)
        assert int(status.split()[0]) == expected, b"".join(chunks)
