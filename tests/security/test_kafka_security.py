"""The secured broker lets no one in uninvited: credentials checked, each service held to its ACLs."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from emostream import kafka
from emostream.fanout.publisher import cluster_group_id, main_group_id
from emostream.kafka.errors import from_librdkafka
from emostream.settings import ROOT, Settings

pytestmark = [pytest.mark.integration, pytest.mark.secured]


def first_client_errors(settings: Settings, overrides: dict, timeout: float = 30.0) -> list[kafka.KafkaError]:
    """The errors librdkafka reports while ``settings`` (changed by ``overrides``) try to send one record."""
    errors: list[kafka.KafkaError] = []
    producer = kafka.ingest_producer(
        settings, error_cb=lambda error: errors.append(from_librdkafka(error)), **overrides
    )
    try:
        future = producer.send(settings.emoji_topic, b'{"intruder": true}', "intruder")
        deadline = time.monotonic() + timeout
        while not errors and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        producer.close(timeout=0)
    assert not future.succeeded()
    return errors


def record_count(settings: Settings, topic: str) -> int:
    return sum(kafka.end_offsets(settings, topic).values())


def test_a_client_without_credentials_is_refused(secured_settings):
    # The same broker serves its admin: what is refused below is the missing credential.
    assert record_count(secured_settings, secured_settings.emoji_topic) == 0
    plaintext = {"security.protocol": "plaintext"}
    tls_without_user = {"security.protocol": "ssl", "ssl.ca.location": secured_settings.kafka_ca_file}

    for overrides in (plaintext, tls_without_user):
        errors = first_client_errors(secured_settings, overrides)
        assert errors, overrides
        assert all(isinstance(error, kafka.KafkaUnavailable) for error in errors), errors

    assert record_count(secured_settings, secured_settings.emoji_topic) == 0


def test_a_wrong_password_is_refused(secured_settings):
    ingest = secured_settings.for_kafka_service("ingest")
    wrong = ingest.replace(kafka_credentials_file="", kafka_password=ingest.kafka_password + "-wrong")

    errors = first_client_errors(wrong, {})

    assert any(isinstance(error, kafka.AuthenticationFailed) for error in errors), errors
    assert record_count(secured_settings, secured_settings.emoji_topic) == 0


def test_the_ingest_credentials_cannot_write_the_aggregate_topic(secured_settings):
    ingest = secured_settings.for_kafka_service("ingest")
    producer = kafka.ingest_producer(ingest)
    try:
        allowed = producer.send(ingest.emoji_topic, b"{}", "live|u1")
        forged = producer.send(ingest.aggregate_topic, b'{"event_id": "live", "counts": {}}', "live|0")
        producer.flush(timeout=60)  # both reports are in: the refusal is one
    finally:
        producer.close(timeout=0)

    assert allowed.succeeded()  # connected and authenticated: the refusal is the ACL's
    assert forged.is_done and not forged.succeeded()
    assert isinstance(forged.exception, kafka.KafkaError)
    assert "authorization failed" in str(forged.exception).lower()
    assert not kafka.retriable(forged.exception)
    assert record_count(secured_settings, secured_settings.aggregate_topic) == 0


def produce(settings: Settings, service: str, topic: str) -> None:
    producer = kafka.producer(settings.for_kafka_service(service), max_block_ms=15_000)
    try:
        with kafka.translate_errors():
            producer.send(topic, key="k", value={"from": service}).get(timeout=15)
    finally:
        producer.close(timeout=5)


def consume_one(settings: Settings, service: str, topic: str, group_id: str | None = None) -> None:
    """Read the first record of ``topic`` as ``service`` (committing it in ``group_id`` when given)."""
    consumer = kafka.consumer(
        settings.for_kafka_service(service),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=15_000,
    )
    try:
        with kafka.translate_errors():
            if group_id is None:
                kafka.assign_at_beginning(consumer, topic, timeout=15)
            else:
                consumer.subscribe([topic])
            deadline = time.monotonic() + 30
            records: list = []
            while not records and time.monotonic() < deadline:
                records = [r for batch in consumer.poll(timeout_ms=500).values() for r in batch]
            assert records, f"{service} read nothing from {topic}"
            if group_id is not None:
                kafka.commit(consumer)
    finally:
        consumer.close(autocommit=False)


def test_each_service_user_can_do_its_job(secured_settings):
    s = secured_settings
    cluster, channel = kafka.cluster_topic(s, 0), kafka.channel_topic(s, 0)
    produce(s, "ingest", s.emoji_topic)
    consume_one(s, "processor", s.emoji_topic)
    produce(s, "processor", s.aggregate_topic)
    produce(s, "processor", s.dead_letter_topic)
    consume_one(s, "publisher", s.aggregate_topic, group_id=main_group_id(s))
    consume_one(s, "node", s.aggregate_topic)  # a joining viewer's read-back
    produce(s, "publisher", cluster)
    consume_one(s, "cluster-publisher", cluster, group_id=cluster_group_id(s, 0))
    produce(s, "cluster-publisher", channel)
    produce(s, "registration", channel)
    consume_one(s, "node", channel)
    produce(s, "node", s.membership_topic)
    produce(s, "manager", s.membership_topic)
    for service in ("registration", "manager", "publisher"):
        consume_one(s, service, s.membership_topic)


@pytest.mark.parametrize(
    ("service", "topic"),
    [
        ("ingest", "aggregate_topic"),
        ("processor", "membership_topic"),
        ("publisher", "emoji_topic"),
        ("node", "aggregate_topic"),
        ("registration", "aggregate_topic"),
        ("manager", "dead_letter_topic"),
    ],
)
def test_a_service_may_not_write_another_services_topic(secured_settings, service, topic):
    with pytest.raises(kafka.NotAuthorized):
        produce(secured_settings, service, getattr(secured_settings, topic))


def test_a_service_may_not_read_with_another_services_group(secured_settings):
    produce(secured_settings, "processor", secured_settings.aggregate_topic)

    with pytest.raises(kafka.NotAuthorized):
        consume_one(
            secured_settings, "node", secured_settings.aggregate_topic, group_id=main_group_id(secured_settings)
        )


def test_the_console_consumer_reads_with_the_written_properties_file(secured_settings, tmp_path):
    marker = uuid.uuid4().hex
    producer = kafka.producer(secured_settings)
    producer.send(secured_settings.aggregate_topic, key="final|0", value={"marker": marker}).get(timeout=30)
    producer.close()
    env = {
        **os.environ,
        **secured_settings.to_env(),
        "EMOSTREAM_KAFKA_USERNAME": "",
        "EMOSTREAM_KAFKA_PASSWORD": "",
        "EMOSTREAM_STATE_DIR": str(tmp_path),
    }

    done = subprocess.run(
        [
            str(ROOT / "bin" / "kafka-console-consumer"),
            "--topic",
            secured_settings.aggregate_topic,
            "--from-beginning",
            "--max-messages",
            "1",
            "--timeout-ms",
            "60000",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert marker in done.stdout, done.stderr
    properties = tmp_path / "kafka-tools" / "client.properties"
    assert "security.protocol=SASL_SSL" in properties.read_text()
    assert oct(properties.stat().st_mode & 0o777) == "0o600"
