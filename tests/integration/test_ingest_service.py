"""``python3 app.py``: gunicorn with several workers, each with its own buffer and producer."""

from __future__ import annotations

import os
import signal
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from emostream.settings import Settings
from emostream.wire import now_ms
from tests.harness.ingest import create_emoji_topic, records_of, start_ingest
from tests.harness.settings import unique_topics
from tests.harness.support import free_port, metric_of, read_topic

pytestmark = pytest.mark.integration


def event(user_id: str) -> dict:
    return {"user_id": user_id, "emoji_type": "👏", "timestamp": now_ms()}


def post_batches(port: int, batches: list[list[dict]]) -> list[int]:
    """POST every batch over a fresh connection each (so both workers take some), 8 at a time."""

    def post(batch: list[dict]) -> int:
        return requests.post(f"http://127.0.0.1:{port}/emojis", json=batch, timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(post, batches))


def metric(port: int, name: str) -> float:
    return metric_of(f"http://127.0.0.1:{port}/metrics", name)


@pytest.fixture(scope="module")
def service_settings(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = unique_topics(base_settings).replace(
        ingest_port=free_port(),
        ingest_workers=2,
        ingest_threads=4,
        state_dir=str(tmp_path_factory.mktemp("ingest-service-state")),
        # Delivery across workers, with batches of many users each: open mode's contract (loopback).
        # Credentials against the real service are tests/security/test_senders.py.
        ingest_auth="open",
    )
    create_emoji_topic(settings)
    return settings


@pytest.fixture(scope="module")
def ingest(service_settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    service = start_ingest(service_settings, tmp_path_factory.mktemp("ingest-service-logs"))
    yield service
    assert service.stop() == 0, service.log()


def test_emoji_posted_to_the_gunicorn_workers_reach_kafka_once_each(ingest, service_settings):
    tag = uuid.uuid4().hex[:8]
    batches = [[event(f"{tag}-{b}-{n}") for n in range(10)] for b in range(30)]

    statuses = post_batches(service_settings.ingest_port, batches)

    assert statuses == [202] * 30
    users = {e["user_id"] for batch in batches for e in batch}
    produced = Counter(r.value["user_id"] for r in records_of(service_settings, users, expected=300))
    assert set(produced) == users
    assert set(produced.values()) == {1}


def test_every_worker_reports_the_metrics_of_all_workers(ingest, service_settings):
    port = service_settings.ingest_port
    tag = uuid.uuid4().hex[:8]
    post_batches(port, [[event(f"{tag}-{b}-{n}") for n in range(5)] for b in range(20)])
    records_of(service_settings, {f"{tag}-{b}-{n}" for b in range(20) for n in range(5)}, expected=100, settle=0.6)

    # Each GET is a new connection, answered by whichever worker takes it: all must agree.
    accepted = {metric(port, "emostream_ingest_accepted_emoji_total") for _ in range(12)}
    sent = {metric(port, "emostream_ingest_sent_emoji_total") for _ in range(12)}

    assert len(accepted) == 1
    assert accepted.pop() >= 100
    assert len(sent) == 1


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_sigterm_to_the_master_delivers_every_workers_full_buffer_before_exit_and_ingest_restarts_cleanly(
    service_settings, tmp_path, worker_class
):
    settings = unique_topics(service_settings).replace(
        ingest_worker_class=worker_class,
        ingest_port=free_port(),
        flush_interval_ms=600_000,  # nothing leaves the buffers unless the shutdown sends it
        flush_max_events=10**7,
        state_dir=str(tmp_path / "state"),
    )
    create_emoji_topic(settings)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    tag = uuid.uuid4().hex[:8]
    batches = [[event(f"{tag}-{b}-{n}") for n in range(100)] for b in range(30)]
    users = {e["user_id"] for batch in batches for e in batch}

    service = start_ingest(settings, log_dir)
    try:
        assert post_batches(settings.ingest_port, batches) == [202] * 30
        assert read_topic(settings, settings.emoji_topic, until=1, timeout=1.5) == []  # all still buffered
        os.kill(service.pid, signal.SIGTERM)  # the master only, as a process manager would
        exit_code = service.process.wait(60)
    finally:
        service.stop()

    log = service.log_path.read_text()
    assert exit_code == 0, log
    assert log.count("flushed its buffer to Kafka") == settings.ingest_workers, log
    produced = Counter(r.value["user_id"] for r in records_of(settings, users, expected=len(users)))
    assert set(produced) == users
    assert set(produced.values()) == {1}
    assert not any((tmp_path / "state" / "ingest-journal").glob("*.seg"))

    again = start_ingest(settings.replace(flush_interval_ms=100), log_dir)
    try:
        assert post_batches(settings.ingest_port, [[event(f"{tag}-after")]]) == [202]
        assert len(records_of(settings, {f"{tag}-after"}, expected=1, settle=0)) == 1
    finally:
        assert again.stop() == 0, again.log()
