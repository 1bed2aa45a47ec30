"""The test run's secured broker: a second local broker with a SASL_SSL listener, SCRAM users and ACLs.

Only tests that ask for it start it (once per session), on free ports, with its state under
build/test-state/kafka-secured-<the plain test broker's port>, so two test sessions never share it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from emostream import kafka
from emostream.devstack.broker import BrokerNode
from emostream.kafka.security import apply_acls, usernames
from emostream.settings import ROOT, Settings
from tests.harness.broker import TEST_KAFKA_PORT, TEST_STATE
from tests.harness.support import free_port


@dataclass(frozen=True)
class SecuredBroker:
    node: BrokerNode

    @property
    def ca_file(self) -> Path:
        return self.node.home / "tls" / "ca.pem"

    @property
    def credentials_file(self) -> Path:
        return self.node.home / "credentials.json"

    def client_settings(self, settings: Settings) -> Settings:
        """``settings`` pointed at this broker: services take their own users, the test itself is the admin."""
        return settings.replace(
            kafka_bootstrap=self.node.bootstrap,
            kafka_security_protocol="SASL_SSL",
            kafka_ca_file=str(self.ca_file),
            kafka_credentials_file=str(self.credentials_file),
        ).for_kafka_service("admin")

    def prepare_topics(self, settings: Settings) -> Settings:
        """Create ``settings``' topics and their ACLs as the admin; returns the admin's settings."""
        admin = self.client_settings(settings)
        kafka.ensure_topics(admin)
        apply_acls(admin, usernames(self.credentials_file))
        return admin

    def restart(self, timeout: float = 120.0) -> None:
        self.node.stop()
        self.node.start(timeout)


def secured_broker_node() -> BrokerNode:
    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    return BrokerNode(
        home=TEST_STATE / f"kafka-secured-{TEST_KAFKA_PORT}",
        port=port,
        controller_port=controller_port,
        heap="384m",
        jars=ROOT / "build" / "jars" / "kafka",
        secured=True,
    )


def start_secured_broker(timeout: float = 120.0) -> SecuredBroker:
    """A fresh secured broker (what an earlier run left in its folder is stopped and removed)."""
    node = secured_broker_node()
    if node.is_running():
        node.stop()
    shutil.rmtree(node.home, ignore_errors=True)
    node.start(timeout)
    return SecuredBroker(node)
