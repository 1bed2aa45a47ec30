"""Schemathesis against docs/openapi.yaml: every HTTP endpoint of ingest and registration.

Requests that fit the description (positive) and requests that break it (negative) go
to the real services over HTTP. Every answer must conform to the description (status,
content type, body, Retry-After), no answer is a 5xx, requests that break the
description are refused with a 4xx, and ingest writes to Kafka exactly the emoji it
answered 202 for: nothing of a refused request, all of an accepted one. Ingest requests go
with whatever ``Authorization`` the description's bearer scheme generates, or, for three in
four requests that fit the description, a genuine send credential for the body's first event
(so that some are accepted and the checks past the credential are fuzzed too). A request made
to break the description keeps its header: that may be what it breaks.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis import checks as st_checks
from schemathesis.core import NOT_SET

from emostream import kafka
from emostream.settings import ROOT
from emostream.wire import CLIENT_ID_RE, DEFAULT_EVENT_ID, EVENT_ID_RE, now_ms
from tests.harness.security import SecurityStack
from tests.harness.senders import send_headers
from tests.harness.support import read_topic

pytestmark = pytest.mark.integration

OPENAPI = ROOT / "docs" / "openapi.yaml"
INGEST_OPERATIONS = [
    ("POST", "/emoji"),
    ("POST", "/send-emoji"),
    ("POST", "/emojis"),
    ("GET", "/emoji-types"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
]
REGISTRATION_OPERATIONS = [
    ("POST", "/register"),
    ("POST", "/unregister"),
    ("GET", "/subscribers"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/dashboard"),
    ("GET", "/config.json"),
    ("GET", "/dashboard/data.json"),
    ("GET", "/web/assets/{name}"),
    ("GET", "/web/vendor/{name}"),
]
# Examples per operation and mode: bodies and path parameters are where the bugs would be.
BODY_EXAMPLES, PATH_EXAMPLES, PLAIN_EXAMPLES = 150, 80, 10

CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
    st_checks.response_headers_conformance,
]


def openapi_schema() -> Any:
    return schemathesis.openapi.from_path(OPENAPI)


class Tally:
    """What the fuzzing sent and got back, for the assertions and the report."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.statuses: Counter[int] = Counter()
        self.by_operation: Counter[str] = Counter()
        self.accepted: Counter[tuple[str, str, str]] = Counter()  # (user_id, emoji, event_id) answered 202
        self.negative_accepted: list[str] = []

    def note(self, label: str, status: int) -> None:
        with self.lock:
            self.requests += 1
            self.statuses[status] += 1
            self.by_operation[label] += 1


def fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    tally: Tally,
    on_response=None,
    prepare=None,
) -> None:
    """Run ``EXAMPLES`` cases of one operation in one mode against ``base_url``."""
    label = f"{operation.method.upper()} {operation.path} ({mode.value})"
    session = requests.Session()
    strategy = operation.as_strategy(generation_mode=mode)

    @seed(8)  # the same inputs every run: a failure here reproduces
    @hypothesis_settings(
        max_examples=_examples(operation),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, variant=st.integers(0, 3))
    def run(case, variant):
        if prepare is not None:
            prepare(case, variant)
        response = case.call(base_url=base_url, session=session, timeout=15)
        tally.note(label, response.status_code)
        case.validate_response(response, checks=CHECKS)
        # Data that breaks the description must not be taken.
        if mode is GenerationMode.NEGATIVE and case.body is not NOT_SET and not 400 <= response.status_code < 500:
            tally.negative_accepted.append(f"{label}: {case.body!r:.300} -> {response.status_code}")
        if on_response is not None:
            on_response(case, response)

    try:
        run()
    finally:
        session.close()


def _examples(operation: Any) -> int:
    if operation.method.upper() == "POST":
        return BODY_EXAMPLES
    return PATH_EXAMPLES if "{" in operation.path else PLAIN_EXAMPLES


def make_some_timestamps_current(case: Any, variant: int) -> None:
    """Most generated timestamps are years away from now (a 400); make some current so 202s happen too."""
    if variant == 0 or case.body is None:
        return
    events = case.body if isinstance(case.body, list) else [case.body]
    for event in events:
        if (
            isinstance(event, dict)
            and isinstance(event.get("timestamp"), int)
            and not isinstance(event["timestamp"], bool)
        ):
            event["timestamp"] = now_ms()


def with_send_credentials(settings, mode: GenerationMode):
    """Current timestamps for some cases, and (positive cases only) a genuine credential for the
    first event's client for three in four."""

    def prepare(case: Any, variant: int) -> None:
        make_some_timestamps_current(case, variant)
        if mode is not GenerationMode.POSITIVE or variant == 3 or case.body is NOT_SET:
            return
        events = case.body if isinstance(case.body, list) else [case.body]
        first = events[0] if events and isinstance(events[0], dict) else {}
        user_id, event_id = first.get("user_id"), first.get("event_id", DEFAULT_EVENT_ID)
        if (
            isinstance(user_id, str)
            and isinstance(event_id, str)
            and CLIENT_ID_RE.fullmatch(user_id)
            and EVENT_ID_RE.fullmatch(event_id)
        ):
            case.headers = {**(case.headers or {}), **send_headers(settings, user_id, event_id)}

    return prepare


def test_ingest_answers_every_described_and_malformed_request_per_its_description_and_writes_only_what_it_accepted(
    security_stack: SecurityStack,
):
    stack = security_stack
    schema = openapi_schema()
    tally = Tally()
    # The topic is the suite's: only what is written from here on is this test's.
    before = kafka.end_offsets(stack.settings, stack.settings.emoji_topic)

    def count_accepted(case, response):
        if response.status_code != 202:
            return
        events = case.body if isinstance(case.body, list) else [case.body]
        assert response.json()["accepted"] == len(events)
        with tally.lock:
            for event in events:
                tally.accepted[(event["user_id"], event["emoji_type"], event.get("event_id", DEFAULT_EVENT_ID))] += 1

    for method, path in INGEST_OPERATIONS:
        operation = schema[path][method]
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if method == "POST" else [])
        for mode in modes:
            fuzz_operation(
                operation, mode, stack.ingest_url, tally, count_accepted, with_send_credentials(stack.settings, mode)
            )

    expected = sum(tally.accepted.values())

    def new_records(records: list) -> list:
        return [r for r in records if r.offset >= before.get(r.partition, 0)]

    records = read_topic(
        stack.settings, stack.settings.emoji_topic, until=lambda rs: len(new_records(rs)) >= expected, settle=3
    )
    written = Counter((r.value["user_id"], r.value["emoji_type"], r.value["event_id"]) for r in new_records(records))

    report_figures("ingest", tally, written=sum(written.values()))
    assert tally.statuses.keys().isdisjoint(range(500, 600)), tally.statuses
    assert tally.negative_accepted == [], "\n".join(tally.negative_accepted)
    assert expected > 0, f"no generated request was accepted: {tally.statuses}"
    assert written == tally.accepted, "the topic holds something other than exactly the accepted emoji"
    assert all(stack.alive().values()), stack.alive()
    assert requests.get(stack.ingest_url + "/healthz", timeout=5).status_code == 200


def test_registration_answers_every_described_and_malformed_request_per_its_description(security_stack: SecurityStack):
    stack = security_stack
    schema = openapi_schema()
    tally = Tally()
    assigned: Counter[str] = Counter()

    def count_assignments(case, response):
        if case.path == "/register" and response.status_code == 200:
            assigned[response.json()["subscriber"]] += 1

    for method, path in REGISTRATION_OPERATIONS:
        operation = schema[path][method]
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if method == "POST" else [])
        for mode in modes:
            fuzz_operation(operation, mode, stack.registration_url, tally, count_assignments)

    report_figures("registration", tally)
    assert tally.statuses.keys().isdisjoint(range(500, 600)), tally.statuses
    assert tally.negative_accepted == [], "\n".join(tally.negative_accepted)
    assert sum(assigned.values()) > 0 and set(assigned) <= {"c0-s0", "c0-s1"}, assigned
    # Still serving: a well-formed registration gets a node.
    answer = requests.post(stack.registration_url + "/register", json={"event_id": "after-fuzz"}, timeout=5)
    assert answer.status_code == 200, answer.text
    assert all(stack.alive().values()), stack.alive()


def report_figures(service: str, tally: Tally, **extra: Any) -> None:
    """One line per service for the suite's summary (pytest -rP or the log shows it)."""
    figures = {"requests": tally.requests, "statuses": dict(sorted(tally.statuses.items())), **extra}
    print(f"fuzzing {service}: {figures} by operation {dict(tally.by_operation)}")


def test_the_pages_static_routes_serve_nothing_outside_their_folders(security_stack: SecurityStack):
    base = security_stack.registration_url
    attempts = [
        "/web/assets/../../emostream/settings.py",
        "/web/assets/..%2f..%2femostream%2fsettings.py",
        "/web/assets/%2e%2e/%2e%2e/requirements.txt",
        "/web/assets/....//....//requirements.txt",
        "/web/assets//etc/passwd",
        "/web/assets/%2fetc%2fpasswd",
        "/web/vendor/..%2f..%2frequirements.txt",
        "/web/vendor/%2e%2e",
    ]
    host, port = base.removeprefix("http://").split(":")
    answers = {}
    for path in attempts:
        # http.client sends the path as written; requests would resolve the dot segments first.
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read().decode(errors="replace")
            answers[path] = (response.status, response.getheader("Location") or "", body)
        finally:
            connection.close()
    # Not found, or (for doubled slashes) Werkzeug's redirect to the merged path inside the folder.
    served = {path: status for path, (status, location, _) in answers.items() if status != 404}
    assert set(served.values()) <= {308}, served
    assert all("/web/assets/" in answers[path][1] for path in served), answers
    assert not any("root:" in body or "EMOSTREAM" in body for _, _, body in answers.values())
