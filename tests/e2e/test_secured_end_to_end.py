"""The whole pipeline on a SASL_SSL broker, each service with its own user and ACLs: counts are exact."""

from __future__ import annotations

import asyncio
import json

import pytest

from emostream.clients.crowd import Crowd
from tests.e2e.test_end_to_end import assert_exact, crowd_plan
from tests.harness.settings import isolated_settings, unique_topics
from tests.harness.stack import running_stack, stack_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.secured]


@pytest.fixture(scope="module")
def secured_stack(secured_kafka, tmp_path_factory):
    state = tmp_path_factory.mktemp("secured-e2e")
    planned = stack_settings(
        unique_topics(isolated_settings(state)),
        clusters=2,
        subscribers_per_cluster=2,
        trigger_ms=500,
        checkpoint_dir=str(state / "checkpoint"),
    )
    settings = secured_kafka.prepare_topics(planned)
    with running_stack(settings, state, timeout=180) as running:
        yield running


def test_every_finished_window_counts_exactly_on_the_secured_broker(secured_stack):
    report = asyncio.run(Crowd(crowd_plan(secured_stack, duration=10.0)).run())
    assert_exact(report, secured_stack)


def test_services_reconnect_with_their_credentials_after_the_secured_broker_restarts(secured_stack, secured_kafka):
    before = secured_kafka.node.pid()
    secured_kafka.restart()
    assert secured_kafka.node.pid() not in (None, before)  # the broker really went away and came back
    report = asyncio.run(Crowd(crowd_plan(secured_stack, duration=10.0, seed=13, drain=120.0)).run())
    assert_exact(report, secured_stack)


def test_no_service_logs_a_kafka_password(secured_stack, secured_kafka):
    passwords = [entry["password"] for entry in json.loads(secured_kafka.credentials_file.read_text()).values()]
    logs = secured_stack.logs(tail=1_000_000) + secured_kafka.node.log_file.read_text(errors="replace")

    assert "subscriber" in logs and "Kafka Server started" in logs  # the logs are there to search
    assert not [password for password in passwords if password in logs]
