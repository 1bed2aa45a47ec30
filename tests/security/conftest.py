"""One small real stack for the security suite: ingest, registration, publishers, two nodes.

Every service runs as its own process on free ports with the test broker, at log level
DEBUG (the most talkative configuration is the one that would leak a secret), and with
a token secret unique to the run, so a test can grep every log for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests

from emostream.settings import Settings
from tests.harness.fanout import fanout_settings, live_nodes, wait_until
from tests.harness.faults import wait_for_topic_metadata
from tests.harness.security import NODES, SecurityStack
from tests.harness.support import ServiceProcess, free_port, wait_http


@pytest.fixture(scope="package")
def security_stack(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurityStack]:
    state = tmp_path_factory.mktemp("security")
    settings = fanout_settings(
        base_settings,
        clusters=1,
        subscribers_per_cluster=len(NODES),
        subscriber_capacity=1000,
        ingest_port=free_port(),
        ingest_workers=2,
        ingest_threads=8,
        state_dir=str(state / "state"),
        log_level="DEBUG",
        # A secret that cannot be confused with anything else in a log.
        token_secret="sec-" + uuid.uuid4().hex + uuid.uuid4().hex,
    )
    wait_for_topic_metadata(settings)
    log_dir = state / "logs"
    log_dir.mkdir()
    stack = SecurityStack(settings, log_dir)
    stack.services["ingest"] = ServiceProcess("app.py", settings, log_dir)
    stack.services["registration"] = ServiceProcess("registration_app.py", settings, log_dir)
    stack.services["publisher"] = ServiceProcess("pubsub_service.py", settings, log_dir)
    stack.services["cluster-publisher"] = ServiceProcess("pubsub_service.py", settings, log_dir, "--cluster", "0")
    for node_id in NODES:
        stack.services[node_id] = ServiceProcess(
            "subscriber_service.py", settings, log_dir, "--id", node_id, "--cluster", "0", "--port", "0"
        )
    try:
        wait_until(
            lambda: wait_http(stack.ingest_url + "/healthz", 60, stack.services["ingest"].process).status_code == 200,
            90,
            "ingest healthy",
        )
        wait_http(stack.registration_url + "/healthz", 60, stack.services["registration"].process)
        wait_until(lambda: sorted(live_nodes(settings)) == list(NODES), 90, "both subscriber nodes live")
        wait_until(lambda: requests.get(stack.publisher_ops_url + "/healthz", timeout=5).ok, 90, "main publisher")
        yield stack
    finally:
        for service in reversed(list(stack.services.values())):
            service.stop()
