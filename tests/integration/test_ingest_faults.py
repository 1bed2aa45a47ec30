"""Ingest across broker outages, on a broker of the module's own (never the shared test broker)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests

from emostream.devstack.broker import BrokerNode
from emostream.ingest.journal import read_segment
from emostream.settings import ROOT, Settings
from emostream.wire import now_ms
from tests.harness.ingest import Poster, create_emoji_topic, records_of, start_ingest
from tests.harness.settings import unique_topics
from tests.harness.support import free_port

pytestmark = [pytest.mark.integration, pytest.mark.faults]

UNAVAILABLE_SECONDS = 2.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    broker = BrokerNode(
        home=tmp_path_factory.mktemp("ingest-faults") / "kafka",
        port=free_port(),
        controller_port=free_port(),
        heap="256m",
        jars=ROOT / "build" / "jars" / "kafka",
    )
    broker.start()
    yield broker
    broker.stop(kill=True)


@pytest.fixture
def fault_settings(base_settings: Settings, node: BrokerNode, tmp_path: Path) -> Settings:
    if not node.is_running():
        node.start()
    settings = unique_topics(base_settings).replace(
        kafka_bootstrap=node.bootstrap,
        kafka_unavailable_seconds=UNAVAILABLE_SECONDS,
        ingest_port=free_port(),
        ingest_workers=2,
        ingest_threads=4,
        state_dir=str(tmp_path / "state"),
        # A user per emoji, to find each again on the topic: open mode's contract (loopback).
        ingest_auth="open",
    )
    create_emoji_topic(settings)
    return settings


def test_broker_restart_turns_requests_to_503_without_hanging_and_every_accepted_emoji_arrives_once(
    fault_settings, node, tmp_path
):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    service = start_ingest(fault_settings, log_dir)
    poster = Poster(fault_settings.ingest_port, uuid.uuid4().hex[:8])
    try:
        poster.start()
        assert poster.wait_for(202, timeout=10)
        time.sleep(1)

        stopped_at = time.monotonic()
        node.stop()
        turned_503 = poster.wait_for(503, timeout=UNAVAILABLE_SECONDS + 20)
        poster.wait_for(503, timeout=10)  # a while of refusals
        node.start()
        started_at = time.monotonic()
        recovered = poster.wait_for(202, timeout=60)
        poster.wait_for(202, timeout=10)
    finally:
        poster.stopping.set()
        poster.join(30)
        exit_code = service.stop()

    log = service.log_path.read_text()
    statuses = Counter(poster.statuses())
    refused_at = [at for (_, status, _), at in zip(poster.answers, poster.answered_at, strict=True) if status == 503]
    print(
        f"\nFAULT ingest, its only broker stopped and started: {dict(statuses)}; refused from "
        f"{min(refused_at, default=stopped_at) - stopped_at:.1f} s after the stop to "
        f"{max(refused_at, default=started_at) - started_at:.1f} s after the start"
    )
    assert turned_503, f"no 503 while the broker was down: {statuses}"
    # Refused only from the outage on (after the grace of kafka_unavailable_seconds), and not long after it ended.
    assert all(stopped_at + UNAVAILABLE_SECONDS - 0.5 <= at <= started_at + 30 for at in refused_at), refused_at
    assert recovered, f"no 202 after the broker came back: {statuses}\n{log}"
    assert set(statuses) == {202, 503}, statuses  # every request answered: none timed out
    assert all(retry_after and int(retry_after) >= 1 for _, status, retry_after in poster.answers if status == 503)
    assert exit_code == 0, log

    accepted = {user_id for user_id, status, _ in poster.answers if status == 202}
    refused = {user_id for user_id, status, _ in poster.answers if status == 503}
    produced = Counter(
        r.value["user_id"] for r in records_of(fault_settings, accepted | refused, expected=len(accepted), settle=3)
    )
    assert set(produced) == accepted, f"lost: {len(accepted - set(produced))}, unexpected: {set(produced) - accepted}"
    assert [user for user, count in produced.items() if count > 1] == []


def test_what_a_shutdown_cannot_deliver_stays_in_the_journal_and_the_next_start_delivers_it_once(
    fault_settings, node, tmp_path
):
    # The emoji wait in the buffers (no timed flush) until the shutdown, which finds the broker gone.
    settings = fault_settings.replace(flush_interval_ms=600_000, flush_max_events=10**7)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    tag = uuid.uuid4().hex[:8]
    users = [f"{tag}-{n}" for n in range(200)]
    service = start_ingest(settings, log_dir)
    try:
        for n in range(0, len(users), 20):
            batch = [{"user_id": u, "emoji_type": "😮", "timestamp": now_ms()} for u in users[n : n + 20]]
            response = requests.post(f"http://127.0.0.1:{settings.ingest_port}/emojis", json=batch, timeout=10)
            assert response.status_code == 202, response.text
        node.stop()
        os.kill(service.pid, signal.SIGTERM)
        exit_code = service.process.wait(90)
    finally:
        service.stop()
    log = service.log_path.read_text()
    journal = Path(settings.state_dir) / "ingest-journal"
    assert exit_code == 0, log
    assert sum(len(read_segment(path)) for path in journal.glob("*.seg")) == len(users), log

    node.start()
    again = start_ingest(settings.replace(flush_interval_ms=100), log_dir)
    try:
        produced = Counter(r.value["user_id"] for r in records_of(settings, set(users), expected=len(users), settle=2))
    finally:
        again.stop()

    assert set(produced) == set(users)
    assert set(produced.values()) == {1}
    assert not any(journal.glob("*.seg"))
