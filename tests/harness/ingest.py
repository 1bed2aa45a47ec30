"""What the ingest tests share: the emoji topic, reading it back, running ``app.py``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import requests

from emostream import kafka
from emostream.settings import Settings
from emostream.wire import now_ms
from tests.harness.senders import send_headers
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


class Poster(threading.Thread):
    """Posts one emoji at a time, each from a user of its own, and keeps every answer.

    With ``settings`` each request carries its user's send credential (an ingest in token mode);
    without, none (open mode).
    """

    def __init__(self, port: int, tag: str, settings: Settings | None = None):
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/emoji"
        self.tag = tag
        self.settings = settings
        self.answers: list[tuple[str, int | str, str | None]] = []  # (user_id, status or error, Retry-After)
        self.answered_at: list[float] = []  # when each answer came (monotonic s)
        self.stopping = threading.Event()

    def run(self) -> None:
        session = requests.Session()
        n = 0
        while not self.stopping.is_set() and n < 20_000:
            user_id = f"{self.tag}-{n}"
            n += 1
            try:
                response = session.post(
                    self.url,
                    json={"user_id": user_id, "emoji_type": "🔥", "timestamp": now_ms()},
                    headers=send_headers(self.settings, user_id) if self.settings is not None else None,
                    timeout=(5, 10),
                )
                answer = (user_id, response.status_code, response.headers.get("Retry-After"))
            except requests.RequestException as error:
                answer = (user_id, type(error).__name__, None)
            self.answered_at.append(time.monotonic())
            self.answers.append(answer)
            time.sleep(0.01)

    def statuses(self) -> list[int | str]:
        return [status for _, status, _ in self.answers]

    def wait_for(self, status: int, timeout: float) -> bool:
        """Wait until an answer with ``status`` arrives after the answers seen so far."""
        seen = len(self.answers)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if status in self.statuses()[seen:]:
                return True
            time.sleep(0.05)
        return False
