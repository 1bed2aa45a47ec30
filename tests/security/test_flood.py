"""Flooding: one user far over its rate limit is refused; everyone else keeps being accepted.

Correctness only: who got 202 and who got 429, and what reached Kafka. How much a flood
slows the others down is measured by bench/flood_bench.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from emostream.wire import now_ms
from tests.harness.security import SecurityStack
from tests.harness.senders import send_headers
from tests.harness.support import read_topic

pytestmark = pytest.mark.integration

FLOOD_SECONDS = 4.0
FLOOD_THREADS = 6
FLOOD_BATCH = 20
POLITE_USERS = 12
POLITE_INTERVAL = 0.25  # 4 emoji/s each, far below the limit


def test_a_flooding_user_gets_429_while_every_other_users_emoji_is_accepted_and_written_once(
    security_stack: SecurityStack,
):
    stack = security_stack
    settings = stack.settings
    tag = uuid.uuid4().hex[:8]
    flooder = f"flood-{tag}"
    polite = [f"polite-{tag}-{n}" for n in range(POLITE_USERS)]
    stop_at = time.monotonic() + FLOOD_SECONDS
    lock = threading.Lock()
    flood_answers: Counter[int] = Counter()
    flood_accepted = 0
    retry_after: list[str | None] = []
    polite_answers: dict[str, Counter[int]] = {user: Counter() for user in polite}
    polite_accepted: Counter[str] = Counter()

    def flood() -> None:
        nonlocal flood_accepted
        session = requests.Session()
        session.headers.update(send_headers(settings, flooder))
        sent = 0
        while time.monotonic() < stop_at and sent < 2000:
            batch = [{"user_id": flooder, "emoji_type": "🔥", "timestamp": now_ms()} for _ in range(FLOOD_BATCH)]
            answer = session.post(stack.ingest_url + "/emojis", json=batch, timeout=10)
            sent += 1
            with lock:
                flood_answers[answer.status_code] += 1
                if answer.status_code == 202:
                    flood_accepted += answer.json()["accepted"]
                elif answer.status_code == 429:
                    retry_after.append(answer.headers.get("Retry-After"))

    def behave(user: str) -> None:
        session = requests.Session()
        session.headers.update(send_headers(settings, user))
        while time.monotonic() < stop_at:
            answer = session.post(
                stack.ingest_url + "/emoji",
                json={"user_id": user, "emoji_type": "👏", "timestamp": now_ms()},
                timeout=10,
            )
            with lock:
                polite_answers[user][answer.status_code] += 1
                if answer.status_code == 202:
                    polite_accepted[user] += 1
            time.sleep(POLITE_INTERVAL)

    started = time.monotonic()
    with ThreadPoolExecutor(FLOOD_THREADS + POLITE_USERS) as pool:
        jobs = [pool.submit(flood) for _ in range(FLOOD_THREADS)] + [pool.submit(behave, user) for user in polite]
        for job in jobs:
            job.result()
    elapsed = time.monotonic() - started

    expected = {flooder: flood_accepted, **polite_accepted}
    records = read_topic(
        settings,
        settings.emoji_topic,
        until=lambda rs: _count_users(rs, expected) == expected,
        timeout=60,
        settle=2,
    )
    written = _count_users(records, expected)

    print(
        f"flood: {sum(flood_answers.values())} flooder requests of {FLOOD_BATCH} ({dict(flood_answers)}), "
        f"{flood_accepted} emoji accepted in {elapsed:.1f} s; {sum(polite_accepted.values())} emoji of "
        f"{POLITE_USERS} other users, answers {dict(sum(polite_answers.values(), Counter()))}"
    )
    assert flood_answers[429] > flood_answers[202], flood_answers
    assert all(value is not None and int(value) >= 1 for value in retry_after)
    # Each ingest worker holds its own buckets: at most a burst plus the sustained rate, per worker.
    ceiling = settings.ingest_workers * (settings.rate_burst_per_user + settings.rate_limit_per_user * elapsed)
    assert flood_accepted <= ceiling, (flood_accepted, ceiling)
    assert {user: set(answers) for user, answers in polite_answers.items()} == {user: {202} for user in polite}
    assert written == expected, "the topic does not hold exactly the accepted emoji of each user"


def _count_users(records, users) -> Counter[str]:
    return Counter(r.value["user_id"] for r in records if isinstance(r.value, dict) and r.value.get("user_id") in users)
