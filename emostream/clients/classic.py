"""The original client simulator: a handful of threaded clients, each registering and sending 20 emoji.

Each sends with the send credential its registration returned; one that could not register
sends without (an ingest in open mode takes it, one in token mode answers 401).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections import Counter
from typing import Any

import requests

from emostream.clients.registration import Registration, RegistrationError, send_headers
from emostream.settings import Settings
from emostream.wire import now_ms


def run_classic(
    settings: Settings,
    ingest_url: str,
    registration_url: str,
    clients: int = 5,
    emoji_each: int = 20,
    interval: float = 0.5,
) -> dict[str, Any]:
    """Run the clients to the end; the outcome counted by kind (registered, accepted, rejected_<status>)."""
    results: Counter[str] = Counter()
    lock = threading.Lock()

    def count(outcome: str) -> None:
        with lock:
            results[outcome] += 1

    def client(index: int) -> None:
        with requests.Session() as http:
            client_id = f"classic-{uuid.uuid4().hex[:6]}-{index}"
            registration = Registration(registration_url, http)
            try:
                assignment = registration.register(client_id=client_id)
            except RegistrationError:
                assignment = None
            count("registered" if assignment is not None else "registration_failed")
            headers = send_headers(assignment) if assignment is not None else {}
            for _ in range(emoji_each):
                emoji = random.choice(settings.emoji_types)
                body = {"user_id": client_id, "emoji_type": emoji, "timestamp": now_ms()}
                try:
                    status = http.post(f"{ingest_url}/emoji", json=body, headers=headers, timeout=10).status_code
                except requests.RequestException:
                    status = "connection"
                count("accepted" if status == 202 else f"rejected_{status}")
                time.sleep(interval)
            if assignment is not None:
                # Best effort: a classic client never connects, so no node holds a viewer for it.
                with contextlib.suppress(RegistrationError):
                    registration.unregister(assignment)

    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return dict(results)
