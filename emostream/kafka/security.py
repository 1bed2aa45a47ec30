"""Kafka security from the settings: each client library's options, the tools' properties file, the ACLs.

The settings say how a process connects (``EMOSTREAM_KAFKA_SECURITY_PROTOCOL``, a SCRAM user
and password, the CA file; :meth:`Settings.kafka_client_security` checks them). This module
turns them into what each client takes: kafka-python's keyword arguments, librdkafka's
dotted keys, the Java client's properties (Spark's source and sink, the console tools).

:func:`acl_table` is the least-privilege contract of a secured cluster: which service's user
may do what to which topic or group. ``python -m emostream.kafka`` applies it as the admin.
``python -m emostream.kafka.security_cli`` writes the tools' properties file and prints the table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emostream.settings import KAFKA_SERVICES, KafkaSecurity, Settings

# ----------------------------------------------------------------------------- client options


def kafka_python_options(settings: Settings) -> dict[str, Any]:
    """kafka-python's keyword arguments (producer, consumer and admin alike)."""
    security = settings.kafka_client_security()
    if not security.secured:
        return {"security_protocol": "PLAINTEXT"}
    return {
        "security_protocol": security.protocol,
        "sasl_mechanism": security.mechanism,
        "sasl_plain_username": security.username,
        "sasl_plain_password": security.password,
        "ssl_cafile": security.ca_file,
        "ssl_check_hostname": True,
    }


def librdkafka_options(settings: Settings) -> dict[str, Any]:
    """librdkafka's (confluent-kafka's) configuration keys."""
    security = settings.kafka_client_security()
    if not security.secured:
        return {"security.protocol": "plaintext"}
    return {
        "security.protocol": security.protocol.lower(),
        "sasl.mechanisms": security.mechanism,
        "sasl.username": security.username,
        "sasl.password": security.password,
        "ssl.ca.location": security.ca_file,
        "ssl.endpoint.identification.algorithm": "https",
    }


def java_client_properties(settings: Settings, inline_ca: bool = False) -> dict[str, str]:
    """The Java client's properties; ``inline_ca`` puts the CA's PEM text in them instead of its path.

    Spark's executors may run on other machines than the driver: with the certificate inline
    they need no copy of the CA file.
    """
    security = settings.kafka_client_security()
    if not security.secured:
        return {"security.protocol": "PLAINTEXT"}
    properties = {
        "security.protocol": security.protocol,
        "sasl.mechanism": security.mechanism,
        "sasl.jaas.config": _jaas(security),
        "ssl.truststore.type": "PEM",
    }
    if inline_ca:
        properties["ssl.truststore.certificates"] = Path(security.ca_file).read_text()
    else:
        properties["ssl.truststore.location"] = security.ca_file
    return properties


def spark_kafka_options(settings: Settings) -> dict[str, str]:
    """The options Spark's Kafka source and sink pass to their clients (``kafka.``-prefixed)."""
    return {f"kafka.{key}": value for key, value in java_client_properties(settings, inline_ca=True).items()}


def _jaas(security: KafkaSecurity) -> str:
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f"username={quoted(security.username)} password={quoted(security.password)};"
    )


def write_client_properties(settings: Settings, path: Path) -> Path:
    """The Java tools' ``--command-config`` file (0600: it holds a password)."""
    lines = [f"{key}={_escape_property(value)}" for key, value in java_client_properties(settings).items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write("# Written by EmoStream from its EMOSTREAM_KAFKA_* settings; it holds a password.\n")
        out.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


def _escape_property(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def tools_properties_path(settings: Settings) -> Path:
    return Path(settings.state_dir) / "kafka-tools" / "client.properties"


# ----------------------------------------------------------------------------- ACLs

TOPIC = "TOPIC"
GROUP = "GROUP"
LITERAL = "LITERAL"
PREFIXED = "PREFIXED"


@dataclass(frozen=True)
class Grant:
    """One ACL: ``service``'s user may do ``operation`` on a topic or group (by name, or name prefix)."""

    service: str
    resource: str  # TOPIC or GROUP
    name: str
    operation: str  # READ, WRITE, DESCRIBE
    pattern: str = LITERAL


def _topic(name: str, writers: Iterable[str] = (), readers: Iterable[str] = ()) -> list[Grant]:
    """A topic's writers may write it, its readers read it; both may describe it (metadata, offsets)."""
    grants = []
    for service in writers:
        grants += [Grant(service, TOPIC, name, "WRITE"), Grant(service, TOPIC, name, "DESCRIBE")]
    for service in readers:
        grants += [Grant(service, TOPIC, name, "READ"), Grant(service, TOPIC, name, "DESCRIBE")]
    return grants


def _group(name: str, service: str, pattern: str = LITERAL) -> list[Grant]:
    return [Grant(service, GROUP, name, "READ", pattern)]


def acl_table(settings: Settings) -> list[Grant]:
    """Who may do what on a secured cluster: each service exactly its job; the admin is a super user."""
    # Imported here: the topic specs build clients, and the clients import this module.
    from emostream.kafka.topic_specs import (
        CLUSTER_PUBLISHER_GROUP_PREFIX,
        PROCESSOR_GROUP_PREFIX,
        channel_topic,
        cluster_topic,
        main_publisher_group,
    )

    s = settings
    grants = [
        *_topic(s.emoji_topic, writers=["ingest"], readers=["processor"]),
        *_topic(s.aggregate_topic, writers=["processor"], readers=["publisher", "node"]),
        *_topic(s.dead_letter_topic, writers=["processor"]),
        *_topic(s.membership_topic, writers=["node", "manager"], readers=["registration", "manager", "publisher"]),
        *_topic(s.revocation_topic, writers=["registration"], readers=["ingest"]),
        *_group(PROCESSOR_GROUP_PREFIX, "processor", PREFIXED),
        *_group(main_publisher_group(s), "publisher"),
        *_group(CLUSTER_PUBLISHER_GROUP_PREFIX, "cluster-publisher", PREFIXED),
    ]
    for cluster in range(s.clusters):
        grants += _topic(cluster_topic(s, cluster), writers=["publisher"], readers=["cluster-publisher"])
        # Registration writes "disconnect this viewer" to the channel when a token is revoked.
        grants += _topic(channel_topic(s, cluster), writers=["cluster-publisher", "registration"], readers=["node"])
    # One line per new topic: *_topic(s.<topic>, writers=[...], readers=[...]).
    return list(dict.fromkeys(grants))


def usernames(credentials_file: str | Path) -> dict[str, str]:
    """``{service: username}`` of a credentials file."""
    entries = json.loads(Path(credentials_file).read_text())
    return {service: entry["username"] for service, entry in entries.items() if service in KAFKA_SERVICES}


def apply_acls(admin_settings: Settings, users: dict[str, str], grants: Iterable[Grant] | None = None) -> int:
    """Create the ACLs of ``grants`` (default: :func:`acl_table`) for the ``users`` of each service.

    Creating an ACL that exists changes nothing, so this runs on every start; ACLs that are
    no longer in the table are left for an operator to remove. Returns how many were sent.
    """
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    from emostream.kafka.clients import admin
    from emostream.kafka.errors import KafkaError, translate_errors

    grants = list(acl_table(admin_settings) if grants is None else grants)
    acls = [
        ACL(
            principal=f"User:{users[grant.service]}",
            host="*",
            operation=ACLOperation[grant.operation],
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(
                ResourceType[grant.resource], grant.name, ACLResourcePatternType[grant.pattern]
            ),
        )
        for grant in grants
        if grant.service in users
    ]
    client = admin(admin_settings)
    try:
        with translate_errors():
            result = client.create_acls(acls)
    finally:
        client.close()
    if result["failed"]:
        acl, error = result["failed"][0]
        raise KafkaError(f"creating {len(result['failed'])} ACL(s) failed, e.g. {acl}: {error}")
    return len(acls)


def ensure_users(admin_settings: Settings) -> list[str]:
    """Create, as the admin, the SCRAM user of each entry of the credentials file the cluster lacks.

    Existing users keep their passwords: rotating one is an operator's act. Returns the names created.
    """
    from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

    from emostream.kafka.clients import admin
    from emostream.kafka.errors import translate_errors

    entries = json.loads(Path(admin_settings.kafka_credentials_file).read_text())
    mechanism = ScramMechanism[admin_settings.kafka_sasl_mechanism.upper().replace("-", "_")]
    client = admin(admin_settings)
    try:
        with translate_errors():
            described = client.describe_user_scram_credentials()
            known = _scram_usernames(described)
            missing = [
                entry
                for service, entry in entries.items()
                if service in KAFKA_SERVICES and entry["username"] not in known
            ]
            if missing:
                client.alter_user_scram_credentials(
                    [UserScramCredentialUpsertion(e["username"], mechanism, e["password"]) for e in missing]
                )
    finally:
        client.close()
    return [entry["username"] for entry in missing]


def _scram_usernames(described: dict[str, Any]) -> set[str]:
    """The users that have a credential, from kafka-python's ``{user: {"error", "credential_infos"}}``."""
    return {user for user, info in described.items() if not info.get("error") and info.get("credential_infos")}


def acl_markdown(settings: Settings) -> str:
    """The ACL table as Markdown, a row per service and resource."""
    rows: dict[tuple[str, str, str, str], list[str]] = {}
    for grant in acl_table(settings):
        rows.setdefault((grant.service, grant.resource.lower(), grant.name, grant.pattern.lower()), []).append(
            grant.operation
        )
    lines = ["| Service | Resource | Name | Pattern | Operations |", "| --- | --- | --- | --- | --- |"]
    for (service, resource, name, pattern), operations in rows.items():
        lines.append(f"| {service} | {resource} | `{name}` | {pattern} | {', '.join(operations)} |")
    return "\n".join(lines)
