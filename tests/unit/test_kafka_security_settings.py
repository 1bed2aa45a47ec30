"""Kafka security settings: each client's options, the tools' properties file, bad settings, the ACL table."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from emostream.kafka import security
from emostream.settings import KAFKA_SERVICES, Settings


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    return path


@pytest.fixture
def credentials_file(tmp_path: Path) -> Path:
    path = tmp_path / "credentials.json"
    entries = {service: {"username": f"user-{service}", "password": f"pw-{service}"} for service in KAFKA_SERVICES}
    path.write_text(json.dumps(entries))
    return path


def secured(**changes) -> Settings:
    return Settings.from_env(
        environ={"EMOSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "EMOSTREAM_KAFKA_BOOTSTRAP": "kafka-1:9093"},
        **changes,
    )


def test_plaintext_is_the_default_and_adds_no_credentials():
    settings = Settings.from_env(environ={}).for_kafka_service("ingest")

    assert security.kafka_python_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert security.librdkafka_options(settings) == {"security.protocol": "plaintext"}
    assert security.spark_kafka_options(settings) == {"kafka.security.protocol": "PLAINTEXT"}


def test_each_service_takes_its_own_user_from_the_credentials_file(credentials_file, ca_file):
    base = secured(kafka_credentials_file=str(credentials_file), kafka_ca_file=str(ca_file), kafka_username="other")

    ingest = base.for_kafka_service("ingest")
    processor = base.for_kafka_service("processor")

    assert (ingest.kafka_username, ingest.kafka_password) == ("user-ingest", "pw-ingest")
    assert (processor.kafka_username, processor.kafka_password) == ("user-processor", "pw-processor")
    # A child started with the resolved settings resolves its own entry again.
    child = Settings.from_env(environ=ingest.to_env()).for_kafka_service("node")
    assert child.kafka_username == "user-node"


def test_settings_become_each_clients_options(ca_file):
    settings = secured(
        kafka_username="emostream-ingest", kafka_password='p"w\\d', kafka_ca_file=str(ca_file)
    ).for_kafka_service("ingest")

    assert security.kafka_python_options(settings) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "emostream-ingest",
        "sasl_plain_password": 'p"w\\d',
        "ssl_cafile": str(ca_file),
        "ssl_check_hostname": True,
    }
    assert security.librdkafka_options(settings) == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "emostream-ingest",
        "sasl.password": 'p"w\\d',
        "ssl.ca.location": str(ca_file),
        "ssl.endpoint.identification.algorithm": "https",
    }
    spark = security.spark_kafka_options(settings)
    assert spark["kafka.security.protocol"] == "SASL_SSL"
    assert spark["kafka.sasl.mechanism"] == "SCRAM-SHA-512"
    assert spark["kafka.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="emostream-ingest" password="p\\"w\\\\d";'
    )
    assert spark["kafka.ssl.truststore.type"] == "PEM"
    # Executors on other machines need no copy of the CA file: the certificate travels inline.
    assert spark["kafka.ssl.truststore.certificates"] == ca_file.read_text()


def test_the_password_may_come_from_a_file(tmp_path, ca_file):
    password_file = tmp_path / "password"
    password_file.write_text("from-the-file\n")
    settings = secured(kafka_username="u", kafka_password_file=str(password_file), kafka_ca_file=str(ca_file))

    assert security.librdkafka_options(settings.for_kafka_service("admin"))["sasl.password"] == "from-the-file"


def test_the_tools_properties_file_is_private_and_complete(tmp_path, ca_file):
    settings = secured(kafka_username="emostream-admin", kafka_password="s3cret", kafka_ca_file=str(ca_file))

    path = security.write_client_properties(
        settings.for_kafka_service("admin"), tmp_path / "tools" / "client.properties"
    )

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    assert lines["security.protocol"] == "SASL_SSL"
    assert lines["sasl.mechanism"] == "SCRAM-SHA-512"
    assert 'username="emostream-admin" password="s3cret"' in lines["sasl.jaas.config"]
    assert lines["ssl.truststore.type"] == "PEM"
    assert lines["ssl.truststore.location"] == str(ca_file)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kafka_security_protocol": "SSL_PLEASE"}, "is not one of PLAINTEXT, SASL_SSL"),
        ({"kafka_sasl_mechanism": "PLAIN"}, "is not one of SCRAM-SHA-512"),
        ({"kafka_username": ""}, "needs a Kafka user"),
        ({"kafka_password": ""}, "has no password"),
        ({"kafka_password": "", "kafka_password_file": "/nonexistent/password"}, "cannot be read"),
        ({"kafka_ca_file": ""}, "EMOSTREAM_KAFKA_CA_FILE"),
        ({"kafka_ca_file": "/nonexistent/ca.pem"}, "does not exist"),
        ({"kafka_credentials_file": "/nonexistent/credentials.json"}, "does not exist"),
    ],
)
def test_bad_security_settings_fail_at_startup_with_what_to_fix(ca_file, changes, message):
    good = {"kafka_username": "u", "kafka_password": "hunter2-secret", "kafka_ca_file": str(ca_file)}
    settings = secured(**{**good, **changes})

    with pytest.raises(SystemExit) as failed:
        settings.for_kafka_service("ingest")

    assert message in str(failed.value)
    assert 'p"' not in str(failed.value)


def test_a_credentials_file_without_the_service_is_refused(tmp_path, ca_file):
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps({"admin": {"username": "a", "password": "b"}}))

    with pytest.raises(SystemExit, match="no username and password for the service 'ingest'"):
        secured(kafka_credentials_file=str(path), kafka_ca_file=str(ca_file)).for_kafka_service("ingest")


def test_the_local_secured_broker_supplies_the_credentials_and_ca_by_default(tmp_path):
    settings = Settings.from_env(
        environ={"EMOSTREAM_KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "EMOSTREAM_STATE_DIR": str(tmp_path)}
    )
    with pytest.raises(SystemExit, match="start the local broker first"):
        settings.for_kafka_service("ingest")
    assert settings.local_kafka_home == tmp_path / "kafka-secured"


def test_ingest_may_only_write_the_emoji_topic_and_read_the_revocations():
    settings = Settings.from_env(environ={})
    ingest = {(g.resource, g.name, g.operation) for g in security.acl_table(settings) if g.service == "ingest"}

    assert ingest == {
        ("TOPIC", settings.emoji_topic, "WRITE"),
        ("TOPIC", settings.emoji_topic, "DESCRIBE"),
        ("TOPIC", settings.revocation_topic, "READ"),
        ("TOPIC", settings.revocation_topic, "DESCRIBE"),
    }


def test_only_the_processor_may_write_aggregates_and_only_publishers_route_them():
    settings = Settings.from_env(environ={})
    table = security.acl_table(settings)

    def writers(topic: str) -> set[str]:
        return {g.service for g in table if g.name == topic and g.operation == "WRITE"}

    assert writers(settings.aggregate_topic) == {"processor"}
    assert writers(settings.dead_letter_topic) == {"processor"}
    assert writers(f"{settings.cluster_topic_prefix}0") == {"publisher"}
    assert writers(f"{settings.cluster_topic_prefix}0_socketio") == {"cluster-publisher", "registration"}
    assert writers(settings.membership_topic) == {"node", "manager"}
    assert writers(settings.revocation_topic) == {"registration"}
    assert all(g.service != "admin" for g in table)  # a super user, by the broker's configuration
