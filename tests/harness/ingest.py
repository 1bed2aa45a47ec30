"""What the ingest tests share: the emoji topic, reading it back, running ``app.py``."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from emostream import kafka
from emostream.settings import Settings
from tests.harness.support import ServiceProcess, read_topic, wait_http


def create_emoji_topic(settings: Settings) -> None:
    kafka.ensure_topics(settings, [spec for spec in kafka.topics(settings) if spec.name == settings.emoji_topic])


def records_of(settings: Settings, users: set[str], expected: int, settle: float = 1.0) -> list:
    """Records on the emoji topic whose user_id is in ``users`` (waits for ``expected``, then ``settle`` s)."""

    def mine(records):
        return [r for r in records if isinstance(r.value, dict) and r.value.get("user_id") in users]

    return mine(read_topic(settings, settings.emoji_topic, until=lambda rs: len(mine(rs)) >= expected, settle=settle))


def start_ingest(settings: Settings, log_dir: Path, timeout: float = 60.0) -> ServiceProcess:
    """``python3 app.py`` with ``settings``, once /healthz answers 200 (stopped again if it never does)."""
    service = ServiceProcess("app.py", settings, log_dir)
    url = f"http://127.0.0.1:{settings.ingest_port}/healthz"
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                # A connection waits in the listen queue until a worker has booted: allow for that.
                if wait_http(url, timeout=timeout, process=service.process).status_code == 200:
                    return service
            except requests.Timeout:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"ingest did not become healthy:\n{service.log()}")
            time.sleep(0.2)
    except BaseException:
        service.stop()
        raise
